"""Keras layers of the package, one public layer class a module named after it
(`multi_head_attention.py` holds `MultiHeadAttention`); `_`-prefixed modules hold the
helpers and base classes they share."""

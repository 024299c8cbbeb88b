"""Keras layers of the package, one public layer class a module named after it
(`multi_head_attention.py` holds `MultiHeadAttention`); `_`-prefixed modules hold the
helpers and base classes they share."""

__all__ = ["ALiBiBias", "RelativePositionBias", "RMSNorm", "RotaryEmbedding"]

# Position and normalization layers of modern decoders (RoPE, ALiBi, T5 bias, RMSNorm).
from keras_attention.layers.alibi_bias import ALiBiBias  # noqa: E402
from keras_attention.layers.relative_position_bias import RelativePositionBias  # noqa: E402
from keras_attention.layers.rms_norm import RMSNorm  # noqa: E402
from keras_attention.layers.rotary_embedding import RotaryEmbedding  # noqa: E402

"""Conversions from other libraries' models into this package's model classes.

`keras_attention.convert.keras_hub`: keras-hub backbones and causal LMs to
:class:`~keras_attention.models.CausalLanguageModel` (config map and weight map per
family; keras-hub is imported only when a conversion runs).
"""

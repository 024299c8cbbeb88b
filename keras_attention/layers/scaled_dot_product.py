"""Kept for compatibility: `ScaledDotProductAttention` now lives in
`keras_attention.layers.scaled_dot_product_attention`; this module re-exports it."""

from keras_attention.layers.scaled_dot_product_attention import ScaledDotProductAttention

__all__ = ["ScaledDotProductAttention"]

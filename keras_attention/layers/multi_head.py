"""Kept for compatibility: `MultiHeadAttention` now lives in
`keras_attention.layers.multi_head_attention`; this module re-exports it."""

from keras_attention.layers.multi_head_attention import MultiHeadAttention

__all__ = ["MultiHeadAttention"]

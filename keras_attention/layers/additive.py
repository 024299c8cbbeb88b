"""Kept for compatibility: `AdditiveAttention` now lives in
`keras_attention.layers.additive_attention`; this module re-exports it."""

from keras_attention.layers.additive_attention import AdditiveAttention

__all__ = ["AdditiveAttention"]

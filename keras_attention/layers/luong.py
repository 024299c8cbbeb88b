"""Kept for compatibility: `LuongAttention` now lives in
`keras_attention.layers.luong_attention`; this module re-exports it."""

from keras_attention.layers.luong_attention import LuongAttention

__all__ = ["LuongAttention"]

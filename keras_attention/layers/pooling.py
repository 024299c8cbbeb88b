"""Kept for compatibility: `AttentionPooling` now lives in
`keras_attention.layers.attention_pooling`; this module re-exports it."""

from keras_attention.layers.attention_pooling import AttentionPooling

__all__ = ["AttentionPooling"]

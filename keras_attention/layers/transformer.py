"""Kept for compatibility: `FeedForward`, `TransformerEncoder` and `TransformerDecoder`
now live in `keras_attention.layers.feed_forward`, `.transformer_encoder` and
`.transformer_decoder`; this module re-exports them."""

from keras_attention.layers.feed_forward import FeedForward
from keras_attention.layers.transformer_decoder import TransformerDecoder
from keras_attention.layers.transformer_encoder import TransformerEncoder

__all__ = ["FeedForward", "TransformerDecoder", "TransformerEncoder"]

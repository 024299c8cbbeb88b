"""keras_attention: attention layers for Keras 3.

Scaled dot-product, self-, multi-head and cross-attention, additive (Bahdanau) and
Luong attention, attention pooling, positional encodings and Transformer blocks, all
built on one attention function (`keras_attention.ops`) and one mask module
(`keras_attention.masks`).
"""

__version__ = "0.1.0"

# The attention function and the masks every layer is built on.
from keras_attention import masks, ops

# Attention layers.
from keras_attention.layers.additive_attention import AdditiveAttention
from keras_attention.layers.attention_pooling import AttentionPooling
from keras_attention.layers.luong_attention import LuongAttention
from keras_attention.layers.multi_head_attention import MultiHeadAttention
from keras_attention.layers.scaled_dot_product_attention import ScaledDotProductAttention
from keras_attention.layers.self_attention import SelfAttention

# Positional encodings and Transformer blocks.
from keras_attention.layers.feed_forward import FeedForward
from keras_attention.layers.positional import (
    PositionEmbedding,
    SinusoidalPositionEncoding,
    TokenAndPositionEmbedding,
)
from keras_attention.layers.transformer_decoder import TransformerDecoder
from keras_attention.layers.transformer_encoder import TransformerEncoder

# Model builders and text generation; saving and export; attention-map pictures
# (`plot` imports matplotlib only when a picture is drawn).
from keras_attention import export, models, plot  # noqa: E402  isort: skip

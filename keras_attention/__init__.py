"""keras_attention: attention layers for Keras 3.

Scaled dot-product, self-, multi-head and cross-attention, additive (Bahdanau) and
Luong attention, attention pooling, positional encodings and Transformer blocks, all
built on one attention function (`keras_attention.ops`) and one mask module
(`keras_attention.masks`).
"""

__version__ = "0.1.0"

from keras_attention import masks, ops
from keras_attention.layers.scaled_dot_product import ScaledDotProductAttention
from keras_attention.layers.self_attention import SelfAttention

# -- multi-head attention (issue 4) --
from keras_attention.layers.multi_head import MultiHeadAttention
# -- additive, Luong, pooling (issue 5) --
from keras_attention.layers.additive import AdditiveAttention
from keras_attention.layers.luong import LuongAttention
from keras_attention.layers.pooling import AttentionPooling
# -- positional encodings, transformer blocks (issue 6) --
from keras_attention.layers.positional import (
    PositionEmbedding,
    SinusoidalPositionEncoding,
    TokenAndPositionEmbedding,
)
from keras_attention.layers.transformer import (
    FeedForward,
    TransformerDecoder,
    TransformerEncoder,
)
from keras_attention import models  # noqa: E402  (builders, generate)
# -- export, plot (issue 7) --
from keras_attention import distribution, export, plot  # noqa: E402  (plot imports matplotlib lazily)

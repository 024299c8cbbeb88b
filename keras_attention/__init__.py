"""keras_attention: attention layers for Keras 3.

Scaled dot-product, self-, multi-head and cross-attention, additive (Bahdanau) and
Luong attention, attention pooling, positional encodings and Transformer blocks, all
built on one attention function (`keras_attention.ops`) and one mask module
(`keras_attention.masks`).
"""

__version__ = "0.1.0"

# Modules: the attention function (`ops`) and the masks every layer is built on, the
# model builders and text generation (`models`), saving and export (`export`), and
# attention-map pictures (`plot`, which imports matplotlib only when it draws), and
# layout maps for `keras.distribution` (`distribution`), and conversions from keras-hub
# (`convert`, which registers the models' `from_keras_hub`).
from keras_attention import convert, distribution, export, masks, models, ops, plot

# Layers: the attentions, the positional encodings and the Transformer blocks.
from keras_attention.layers.additive_attention import AdditiveAttention
from keras_attention.layers.alibi_bias import ALiBiBias
from keras_attention.layers.attention_pooling import AttentionPooling
from keras_attention.layers.feed_forward import FeedForward
from keras_attention.layers.grouped_query_attention import (
    GroupedQueryAttention,
    GroupQueryAttention,
)
from keras_attention.layers.luong_attention import LuongAttention
from keras_attention.layers.mixture_of_experts import MixtureOfExperts
from keras_attention.layers.multi_head_attention import MultiHeadAttention
from keras_attention.layers.positional import (
    PositionEmbedding,
    SinusoidalPositionEncoding,
    TokenAndPositionEmbedding,
)
from keras_attention.layers.relative_position_bias import RelativePositionBias
from keras_attention.layers.rms_norm import RMSNorm
from keras_attention.layers.rotary_embedding import RotaryEmbedding
from keras_attention.layers.scaled_dot_product_attention import ScaledDotProductAttention
from keras_attention.layers.self_attention import SelfAttention
from keras_attention.layers.transformer_decoder import TransformerDecoder
from keras_attention.layers.transformer_encoder import TransformerEncoder

"""The attention options of `MultiHeadAttention`, checked and resolved: the position
embedding, the score bias, the soft cap, the QK-norms, the scale and the
implementation path (with Keras' `flash_attention`)."""

import keras

from keras_attention import _validation
from keras_attention import ops as attention_ops
from keras_attention.layers import _common
from keras_attention.layers._layer_normalization import LayerNormalization
from keras_attention.layers.rms_norm import RMSNorm
from keras_attention.layers.rotary_embedding import RotaryEmbedding

# The per-head query/key normalizations (`query_norm`, `key_norm`).
QK_NORMS = (None, "rms_norm", "layer_norm")
# The projections `use_bias` may name.
BIAS_PARTS = ("query", "key", "value", "output")


def check_sizes(num_heads, key_dim, value_dim, num_key_value_heads, output_dim):
    """The head counts and sizes: positive ints (all but the first two optional), and
    `num_key_value_heads` dividing `num_heads`."""
    _validation.check_positive_int(num_heads, "num_heads")
    _validation.check_positive_int(key_dim, "key_dim")
    _validation.check_positive_int(value_dim, "value_dim", allow_none=True)
    _validation.check_positive_int(num_key_value_heads, "num_key_value_heads", allow_none=True)
    _validation.check_positive_int(output_dim, "output_dim", allow_none=True)
    if num_key_value_heads is not None and num_heads % num_key_value_heads:
        raise ValueError(
            "`num_heads` must be divisible by `num_key_value_heads`. Received: "
            f"num_heads={num_heads}, num_key_value_heads={num_key_value_heads}"
        )


def set_score_options(
    layer,
    position_embedding,
    score_bias,
    soft_cap,
    query_norm,
    key_norm,
    qk_norm_epsilon,
    attention_scale,
):
    """Check the options that change the scores and set them on the attention `layer`
    (which has `key_dim`, `num_heads` and `dtype_policy`): the constructor arguments
    and the resolved `rotary_embedding`, `query_norm_layer`, `key_norm_layer`."""
    layer.rotary_embedding = rotary_embedding(position_embedding, layer.key_dim)
    if isinstance(position_embedding, dict):
        position_embedding = layer.rotary_embedding
    layer.position_embedding = position_embedding
    layer.score_bias = score_bias_layer(score_bias, layer.num_heads)
    if soft_cap is not None:
        _validation.check_positive_float(soft_cap, "soft_cap")
    if attention_scale is not None:
        _validation.check_positive_float(attention_scale, "attention_scale")
    _validation.check_positive_float(qk_norm_epsilon, "qk_norm_epsilon")
    layer.soft_cap, layer.attention_scale = soft_cap, attention_scale
    layer.query_norm, layer.key_norm = query_norm, key_norm
    layer.qk_norm_epsilon = qk_norm_epsilon
    dtype = layer.dtype_policy
    layer.query_norm_layer = qk_norm(query_norm, "query_norm", dtype, qk_norm_epsilon)
    layer.key_norm_layer = qk_norm(key_norm, "key_norm", dtype, qk_norm_epsilon)


def score_options_config(layer):
    """The `get_config` entries of the options `set_score_options` set."""
    position = layer.position_embedding
    return {
        "position_embedding": position
        if position in (None, "rotary")
        else keras.saving.serialize_keras_object(position),
        "score_bias": _common.serialize_shared_layer(layer.score_bias),
        "soft_cap": layer.soft_cap,
        "query_norm": layer.query_norm,
        "key_norm": layer.key_norm,
        "qk_norm_epsilon": layer.qk_norm_epsilon,
        "attention_scale": layer.attention_scale,
    }


def rotary_embedding(position_embedding, key_dim):
    """The `RotaryEmbedding` of `position_embedding` (None, "rotary", an instance or
    its config), checked against `key_dim`; None without one."""
    if isinstance(position_embedding, dict):
        position_embedding = keras.saving.deserialize_keras_object(position_embedding)
    if position_embedding == "rotary":
        position_embedding = RotaryEmbedding(name="rotary_embedding")
    if position_embedding is None:
        return None
    if not isinstance(position_embedding, RotaryEmbedding):
        raise ValueError(
            "`position_embedding` must be None, 'rotary' or a RotaryEmbedding "
            f"instance. Received: position_embedding={position_embedding!r}"
        )
    position_embedding.rotated_dim(key_dim)  # odd rotated dims raise
    return position_embedding


def score_bias_layer(score_bias, num_heads):
    """`score_bias` (None, a position bias layer or its config), checked to give one
    bias per query head."""
    if isinstance(score_bias, dict):
        score_bias = keras.saving.deserialize_keras_object(score_bias)
    if score_bias is None:
        return None
    if not isinstance(score_bias, keras.layers.Layer) or not callable(score_bias):
        raise ValueError(
            "`score_bias` must be None or a position bias layer such as "
            f"ALiBiBias or RelativePositionBias. Received: score_bias={score_bias!r}"
        )
    heads = getattr(score_bias, "num_heads", num_heads)
    if heads != num_heads:
        raise ValueError(
            "`score_bias` must give one bias per query head: its num_heads "
            f"must be {num_heads}. Received: score_bias.num_heads={heads}"
        )
    return score_bias


def qk_norm(kind, name, dtype, epsilon=1e-6):
    """The per-head normalization layer of `kind` (one of `QK_NORMS`), or None."""
    _validation.check_one_of(kind, name, QK_NORMS)
    if kind == "rms_norm":
        return RMSNorm(epsilon=epsilon, name=name, dtype=dtype)
    if kind == "layer_norm":
        return LayerNormalization(epsilon=epsilon, center=False, name=name, dtype=dtype)
    return None


def implementation(implementation, flash_attention, dropout):
    """The attention path from `implementation` and Keras' `flash_attention` (`True`
    is `"fused"`, `False` is `"plain"`); `"fused"` refuses dropout, as Keras' flash
    attention does."""
    attention_ops.check_implementation(implementation)
    if flash_attention is not None:
        _validation.check_bool(flash_attention, "flash_attention")
        implied = "fused" if flash_attention else "plain"
        if implementation not in (None, implied):
            raise ValueError(
                f"`flash_attention={flash_attention}` means implementation={implied!r}. "
                f"Received: implementation={implementation!r}, "
                f"flash_attention={flash_attention}"
            )
        implementation = implied
    if implementation == "fused" and dropout > 0:
        raise _validation.keras_error(
            "flash_dropout",
            "implementation='fused' (flash_attention=True) cannot apply attention dropout; "
            f"set dropout=0 or use another implementation. Received: dropout={dropout}",
        )
    return implementation


def implementation_for_call(implementation, dropout, return_attention_scores, training):
    """The path of one call: the attention weights and attention dropout need the
    full score matrix, so `"plain"`; `"fused"` refuses them."""
    if implementation == "fused" and return_attention_scores:
        raise _validation.keras_error(
            "flash_scores",
            "implementation='fused' (flash_attention=True) cannot return the attention "
            "weights; use implementation=None or 'plain'. Received: "
            "return_attention_scores=True",
        )
    if implementation == "fused" and training and dropout > 0:
        raise _validation.keras_error(
            "flash_dropout",
            "implementation='fused' (flash_attention=True) cannot apply attention "
            f"dropout. Received: dropout={dropout}, training=True",
        )
    if return_attention_scores or (training and dropout > 0):
        return "plain"
    return implementation

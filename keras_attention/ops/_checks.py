"""Argument checks of the attention function: shapes, masks and biases; the default
scale and the grouped-query key/value repeat."""

import math

import keras
from keras import ops

from keras_attention import masks as masks_lib


def is_static_dim(dim):
    """Whether `dim` is a Python int (a dimension known while tracing), not `None`, a
    symbolic dimension or a tensor."""
    return isinstance(dim, int) and not isinstance(dim, bool)


def all_static(shape):
    """Whether every dimension of `shape` is a Python int."""
    return all(is_static_dim(d) for d in shape)


def check_qkv_shapes(q_shape, k_shape, v_shape):
    """Raise `ValueError` unless query, key and value shapes fit together."""
    ranks = (len(q_shape), len(k_shape), len(v_shape))
    if min(ranks) < 2 or len(set(ranks)) != 1:
        raise ValueError(
            "`query`, `key` and `value` must have the same rank, at least 2: "
            "(..., q_len, d_k), (..., kv_len, d_k), (..., kv_len, d_v). Received: "
            f"query.shape={tuple(q_shape)}, key.shape={tuple(k_shape)}, "
            f"value.shape={tuple(v_shape)}"
        )
    if _differ(q_shape[-1], k_shape[-1]):
        raise ValueError(
            "The last dimension (d_k) of `query` and `key` must be equal. Received: "
            f"query.shape={tuple(q_shape)}, key.shape={tuple(k_shape)}"
        )
    if _differ(k_shape[-2], v_shape[-2]):
        raise ValueError(
            "`key` and `value` must have the same length (axis -2, kv_len). "
            f"Received: key.shape={tuple(k_shape)}, value.shape={tuple(v_shape)}"
        )
    for axis in range(len(q_shape) - 2):
        dims = (q_shape[axis], k_shape[axis], v_shape[axis])
        if axis == 1 and len(q_shape) == 4 and kv_heads_divide(q_shape, k_shape, v_shape):
            continue  # grouped-query heads
        known = {d for d in dims if is_static_dim(d)}
        if len(known) > 1:
            raise ValueError(
                "`query`, `key` and `value` must have the same leading (batch/head) "
                f"dimensions. Received: query.shape={tuple(q_shape)}, "
                f"key.shape={tuple(k_shape)}, value.shape={tuple(v_shape)}"
            )


def check_mask(mask, scores_shape):
    """Validate a boolean mask against the static scores shape; return it as bool."""
    mask = masks_lib.validate_mask(mask)
    if mask is None:
        return None
    if len(mask.shape) > len(scores_shape):
        raise ValueError(
            f"`mask` of shape {tuple(mask.shape)} has more dimensions than the "
            f"attention scores of shape {scores_shape}."
        )
    masks_lib.check_broadcastable(scores_shape, tuple(mask.shape), "scores", "mask")
    return mask


def check_bias(bias, scores_shape):
    """Validate a score bias: a callable, or a tensor each of whose dimensions is 1 or
    the scores' (a bias never broadcasts the scores to a larger shape)."""
    if bias is None or callable(bias):
        return bias
    bias = ops.convert_to_tensor(bias)
    if not keras.backend.is_float_dtype(bias.dtype):
        raise TypeError(
            "`bias` must be a float tensor (or a callable returning one). "
            f"Received: bias.dtype={keras.backend.standardize_dtype(bias.dtype)}"
        )
    shape = tuple(bias.shape)
    fits = len(shape) <= len(scores_shape) and all(
        b in (None, 1) or s is None or b == s
        for b, s in zip(reversed(shape), reversed(scores_shape))
    )
    if not fits:
        raise ValueError(
            "`bias` must broadcast to the attention scores of shape "
            f"{tuple(scores_shape)} (each dimension 1 or equal). "
            f"Received: bias.shape={shape}"
        )
    return bias


def default_scale(query):
    """`1 / sqrt(d_k)`: a Python float, or a tensor when `d_k` is not static."""
    d_k = query.shape[-1]
    if not is_static_dim(d_k):
        return 1.0 / ops.sqrt(ops.cast(ops.shape(query)[-1], "float32"))
    return 1.0 / math.sqrt(d_k)


def repeat_kv_heads(query, key, value):
    """Grouped-query keys and values repeated to the queries' heads: query head `h`
    uses key/value head `h // group` (contiguous groups)."""
    if len(query.shape) != 4 or not kv_heads_divide(query.shape, key.shape, value.shape):
        return key, value
    group = query.shape[1] // key.shape[1]
    return ops.repeat(key, group, axis=1), ops.repeat(value, group, axis=1)


def kv_heads_divide(q_shape, k_shape, v_shape):
    """Whether `(batch, heads, seq, dim)` keys and values have fewer heads than the
    queries, a divisor of them (grouped-query attention)."""
    heads, kv_heads = q_shape[1], k_shape[1]
    return (
        is_static_dim(heads)
        and is_static_dim(kv_heads)
        and v_shape[1] == kv_heads
        and kv_heads < heads
        and heads % kv_heads == 0
    )


def _differ(a, b):
    return is_static_dim(a) and is_static_dim(b) and a != b

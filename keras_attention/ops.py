"""The attention math: `softmax(Q K^T * scale + bias) V`, written once with `keras.ops`.

Every layer of the package projects its inputs and calls
:func:`scaled_dot_product_attention`; none re-implements the math. The head
reshapes shared by the multi-head layers live here too.
"""

import math
import numbers

import keras
from keras import ops

from keras_attention import masks as masks_lib

__all__ = [
    "scaled_dot_product_attention",
    "attention_from_scores",
    "split_heads",
    "merge_heads",
]

_LOW_PRECISION = ("float16", "bfloat16")


def scaled_dot_product_attention(
    query,
    key,
    value,
    mask=None,
    causal=False,
    scale=None,
    dropout_rate=0.0,
    seed=None,
    training=False,
    return_attention_scores=False,
):
    """Scaled dot-product attention: `softmax(Q K^T * scale + bias) V`.

    Each query is compared with every key by a dot product; the scores become
    probabilities with a softmax over the keys, and the output is the probability-
    weighted sum of the values. Dot products of `d_k`-dimensional vectors with unit-
    variance entries have variance `d_k`, so without `scale = 1/sqrt(d_k)` the
    softmax saturates for large `d_k` and its gradients vanish.

    Args:
        query: `(..., q_len, d_k)`.
        key: `(..., kv_len, d_k)`.
        value: `(..., kv_len, d_v)`.
        mask: optional boolean tensor broadcastable to `(..., q_len, kv_len)`,
            `True` where the query may attend the key (0/1 integers are accepted).
        causal: if `True`, query `i` attends only keys `j <= i` (top-left aligned,
            as in Keras and PyTorch). Combined with `mask` by logical AND.
        scale: positive float multiplying the scores; default `1 / sqrt(d_k)`.
        dropout_rate: float in `[0, 1)`, dropout on the attention probabilities
            (applied only when `training` is true).
        seed: int or `keras.random.SeedGenerator` for dropout.
        training: whether dropout is active.
        return_attention_scores: if `True`, also return the attention probabilities
            (after softmax and masking, before dropout).

    Returns:
        `(..., q_len, d_v)`, or `(output, weights)` with weights
        `(..., q_len, kv_len)` when `return_attention_scores=True`.
        A query row whose keys are all masked gets zero weights and a zero output,
        with zero (finite) gradients, rather than a uniform average or NaN.

    Example:
    >>> import numpy as np
    >>> q = np.random.rand(2, 4, 8).astype("float32")
    >>> kv = np.random.rand(2, 6, 8).astype("float32")
    >>> scaled_dot_product_attention(q, kv, kv).shape
    TensorShape([2, 4, 8])
    """
    query = ops.convert_to_tensor(query)
    key = ops.convert_to_tensor(key, dtype=query.dtype)
    value = ops.convert_to_tensor(value, dtype=query.dtype)
    _check_qkv_shapes(query.shape, key.shape, value.shape)
    _check_dropout_rate(dropout_rate)
    if scale is None:
        scale = _default_scale(query)
    else:
        _check_scale(scale)

    mask = _check_mask(mask, tuple(query.shape[:-1]) + (key.shape[-2],))
    if causal:
        q_len, kv_len = ops.shape(query)[-2], ops.shape(key)[-2]
        mask = masks_lib.combine_masks(mask, masks_lib.causal_mask(q_len, kv_len))

    # Scaling the queries (q_len * d_k numbers) is cheaper than scaling the scores
    # (q_len * kv_len) and keeps float16 products further from overflow.
    query = query * ops.cast(scale, query.dtype)
    scores = ops.einsum("...qd,...kd->...qk", query, key)
    return attention_from_scores(
        scores,
        value,
        mask=mask,
        dropout_rate=dropout_rate,
        seed=seed,
        training=training,
        return_attention_scores=return_attention_scores,
    )


def attention_from_scores(
    scores,
    value,
    mask=None,
    dropout_rate=0.0,
    seed=None,
    training=False,
    return_attention_scores=False,
):
    """Masked softmax of raw scores, then the weighted sum of values.

    The second half of every attention in the package: dot-product attention computes
    `scores = Q K^T * scale`, additive attention `v^T tanh(W_q q + W_k k)`, and both
    finish here, so masking, the float32 softmax and the zero rows live in one place.

    Args:
        scores: `(..., q_len, kv_len)` attention logits.
        value: `(..., kv_len, d_v)`.
        mask: optional boolean, broadcastable to `scores`, `True` = may attend.
        dropout_rate, seed, training, return_attention_scores: as in
            :func:`scaled_dot_product_attention`.

    Returns:
        `(..., q_len, d_v)`, or `(output, weights)` with `return_attention_scores`.
    """
    _check_dropout_rate(dropout_rate)
    mask = _check_mask(mask, tuple(scores.shape))
    # Softmax in float32 even under mixed precision: float16 exp() overflows at 11.
    if keras.backend.standardize_dtype(scores.dtype) in _LOW_PRECISION:
        scores = ops.cast(scores, "float32")
    if mask is not None:
        scores = scores + masks_lib.mask_to_bias(mask, scores.dtype)
    if scores.shape[-1] == 1:
        # A softmax over one key is 1 (keras.ops.softmax would warn about the axis).
        weights = ops.ones_like(scores)
    else:
        weights = ops.softmax(scores, axis=-1)
    if mask is not None:
        # Exact zeros for masked keys; a fully masked row (where the softmax of equal
        # biases is uniform) becomes all zeros, so its output is 0 and its gradient
        # is 0, instead of the mean of the values.
        weights = weights * ops.cast(mask, weights.dtype)
    weights = ops.cast(weights, value.dtype)

    probabilities = weights
    if training and dropout_rate > 0.0:
        probabilities = keras.random.dropout(weights, rate=dropout_rate, seed=seed)
    output = ops.matmul(probabilities, value)
    if return_attention_scores:
        return output, weights
    return output


def split_heads(x, num_heads):
    """`(batch, seq, num_heads * head_dim)` -> `(batch, num_heads, seq, head_dim)`.

    Head `h` takes features `h * head_dim:(h + 1) * head_dim`.
    """
    shape = ops.shape(x)
    head_dim = x.shape[-1] // num_heads
    x = ops.reshape(x, (shape[0], shape[1], num_heads, head_dim))
    return ops.transpose(x, (0, 2, 1, 3))


def merge_heads(x):
    """`(batch, num_heads, seq, head_dim)` -> `(batch, seq, num_heads * head_dim)`."""
    shape = ops.shape(x)
    x = ops.transpose(x, (0, 2, 1, 3))
    return ops.reshape(x, (shape[0], shape[2], x.shape[2] * x.shape[3]))


def _check_mask(mask, scores_shape):
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


def _default_scale(query):
    d_k = query.shape[-1]
    if d_k is None:
        return 1.0 / ops.sqrt(ops.cast(ops.shape(query)[-1], "float32"))
    return 1.0 / math.sqrt(d_k)


def _check_qkv_shapes(q_shape, k_shape, v_shape):
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
        known = {d for d in dims if d is not None}
        if len(known) > 1:
            raise ValueError(
                "`query`, `key` and `value` must have the same leading (batch/head) "
                f"dimensions. Received: query.shape={tuple(q_shape)}, "
                f"key.shape={tuple(k_shape)}, value.shape={tuple(v_shape)}"
            )


def _differ(a, b):
    return a is not None and b is not None and a != b


def _check_dropout_rate(rate, name="dropout_rate"):
    if (
        not isinstance(rate, numbers.Real)
        or isinstance(rate, bool)
        or not 0.0 <= rate < 1.0
    ):
        raise ValueError(
            f"`{name}` must be a float in [0, 1). Received: {name}={rate!r}"
        )


def _check_scale(scale):
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not scale > 0:
        raise ValueError(f"`scale` must be a positive float. Received: scale={scale!r}")

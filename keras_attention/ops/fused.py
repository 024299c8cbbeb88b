"""The fused path: the backend's own kernel (`keras.ops.dot_product_attention`) with
this package's semantics."""

from keras import ops

from keras_attention import backend as backend_lib
from keras_attention import masks as masks_lib


def attend(query, key, value, mask, score_mod, scale=1.0):
    """`keras.ops.dot_product_attention` with this package's semantics.

    `scale` multiplies `Q K^T` in the kernel (1.0 when the queries arrive scaled).
    Keras' function wants `(batch, seq, heads, dim)`; its fully masked rows average
    the values, so they are zeroed here. A score bias is passed as Keras' `bias`, with
    the mask folded into it (Keras' PyTorch backend takes one or the other).
    """
    d_k, d_v = query.shape[-1], value.shape[-1]
    if not backend_lib.fused_supports(query.shape, key.shape, value.shape):
        # The kernel needs one head size: zero features change no dot product (the
        # scale is explicit) and zero value features give zero outputs, sliced off
        # below.
        size = max(d_k, d_v)
        query, key, value = (
            ops.pad(x, [(0, 0)] * 3 + [(0, size - x.shape[-1])]) for x in (query, key, value)
        )
    q_len, kv_len = ops.shape(query)[-2], ops.shape(key)[-2]
    mask = masks_lib.combine_masks(mask, score_mod.mask(q_len, kv_len))
    to_bshd = lambda x: ops.transpose(x, (0, 2, 1, 3))  # noqa: E731
    scores_shape = tuple(ops.shape(query)[:-1]) + (kv_len,)
    full_mask = None
    if mask is not None:
        full_mask = ops.broadcast_to(mask, scores_shape)
    bias = score_mod.block_bias(q_len, kv_len)
    if bias is not None:
        bias = ops.cast(bias, query.dtype)
        if full_mask is not None:
            bias = bias + masks_lib.mask_to_bias(full_mask, query.dtype)
        bias = ops.broadcast_to(bias, scores_shape)
    output = ops.dot_product_attention(
        to_bshd(query),
        to_bshd(key),
        to_bshd(value),
        bias=bias,
        mask=full_mask if bias is None else None,
        scale=scale,
    )
    output = to_bshd(output)
    if output.shape[-1] != d_v:
        output = output[..., :d_v]
    if full_mask is not None:
        has_key = ops.any(full_mask, axis=-1, keepdims=True)
        output = output * ops.cast(has_key, output.dtype)
    return output

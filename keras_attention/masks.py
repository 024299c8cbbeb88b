"""Boolean attention masks: build them, combine them, check them, turn them into biases.

Every mask in this package is boolean with ``True`` meaning "this query may attend to
this key". Masks are broadcast against attention scores of shape
``(..., q_len, kv_len)``. This module is the only place that knows how a mask becomes
an additive bias on the scores (:func:`mask_to_bias`).
"""

import keras
import numpy as np
from keras import ops

from keras_attention import _validation, backend

__all__ = [
    "causal_mask",
    "padding_mask",
    "merge_attention_masks",
    "combine_masks",
    "sliding_window_mask",
    "mask_to_bias",
    "large_negative_number",
    "validate_mask",
    "check_broadcastable",
    "flatten_attention_mask",
]

# The most negative number we add to a masked score, per compute dtype. It must be
# far below any real score (so exp() of it is exactly 0 after the row max is
# subtracted) yet stay finite when a score is added to it: float16 tops out at 65504,
# so half of its range is used there; bfloat16 and float32 have range to spare.
_LARGE_NEGATIVE = {
    "float16": -3.0e4,
    "bfloat16": -1.0e9,
    "float32": -1.0e9,
    "float64": -1.0e9,
}


def large_negative_number(dtype):
    """The additive bias used for masked positions in `dtype` (a finite number).

    Example:
    >>> large_negative_number("float16")
    -30000.0
    """
    name = _dtype_name(dtype)
    if name not in _LARGE_NEGATIVE:
        raise TypeError(
            "`dtype` must be a floating dtype (float16, bfloat16, float32 or "
            f"float64). Received: dtype={name}"
        )
    return _LARGE_NEGATIVE[name]


def mask_to_bias(mask, dtype="float32"):
    """Turn a boolean mask into an additive bias: 0 where allowed, a large negative
    number (chosen for `dtype`, see :func:`large_negative_number`) where masked.

    Args:
        mask: boolean (or 0/1 integer) tensor, `True` = may attend.
        dtype: the dtype of the scores the bias is added to.

    Returns:
        A tensor of `dtype` with the shape of `mask`.
    """
    mask = validate_mask(mask)
    zero = ops.zeros((), dtype=dtype)
    neg = ops.full((), large_negative_number(dtype), dtype=dtype)
    return ops.where(mask, zero, neg)


def causal_mask(q_len, kv_len=None, offset=0):
    """Lower-triangular mask of shape `(q_len, kv_len)`: `True` where `j <= i + offset`.

    Query `i` may attend key `j` when `j <= i + offset`. With `offset=0` the mask is
    top-left aligned, as in Keras and PyTorch. Incremental decoding writes the new
    queries at cache position `offset`, so query `i` sees every cached key up to
    `offset + i`.

    Args:
        q_len: number of queries (int or scalar tensor).
        kv_len: number of keys; defaults to `q_len`.
        offset: position of the first query among the keys (int or scalar tensor).

    Example:
    >>> keras.ops.convert_to_numpy(causal_mask(2, 3))
    array([[ True, False, False],
           [ True,  True, False]])
    """
    if kv_len is None:
        kv_len = q_len
    _validation.check_index(q_len, "q_len")
    _validation.check_index(kv_len, "kv_len")
    rows = ops.expand_dims(backend.positions(q_len), -1)
    cols = ops.expand_dims(backend.positions(kv_len), 0)
    return ops.less_equal(cols, rows + ops.cast(offset, "int32"))


def sliding_window_mask(q_len, kv_len, window, offset=0):
    """Local-attention band: `True` where `|i + offset - j| < window`.

    Query `i` sees the `window - 1` keys on each side of position `i` and key `i`
    itself. Combine it with :func:`causal_mask` (through :func:`combine_masks`) for a
    one-sided window of the `window` most recent keys.

    Args:
        q_len: number of queries.
        kv_len: number of keys.
        window: positive integer, half-width of the band plus one.
        offset: position of the first query among the keys (int or scalar tensor),
            as in :func:`causal_mask`.

    Returns:
        Boolean tensor of shape `(q_len, kv_len)`.
    """
    _validation.check_positive_int(window, "window")
    rows = ops.expand_dims(backend.positions(q_len) + ops.cast(offset, "int32"), -1)
    cols = ops.expand_dims(backend.positions(kv_len), 0)
    return ops.less(ops.abs(rows - cols), window)


def padding_mask(mask, query_mask=None):
    """Attention mask from Keras sequence masks.

    Args:
        mask: `(batch, kv_len)` Keras mask of the keys/values (`True` = real token),
            as produced by `Embedding(mask_zero=True)`.
        query_mask: optional `(batch, q_len)` Keras mask of the queries. Padded
            queries then attend nothing, so their outputs are zeros.

    Returns:
        Boolean `(batch, 1, kv_len)` (or `(batch, q_len, kv_len)` with `query_mask`),
        broadcastable to scores of shape `(batch, q_len, kv_len)`. Insert a head axis
        at position 1 for `(batch, heads, q_len, kv_len)` scores.
    """
    result = ops.expand_dims(_keras_mask(mask, "mask", "kv_len"), 1)
    if query_mask is not None:
        query_mask = _keras_mask(query_mask, "query_mask", "q_len")
        result = ops.logical_and(result, ops.expand_dims(query_mask, -1))
    return result


def merge_attention_masks(
    query_mask=None,
    value_mask=None,
    key_mask=None,
    attention_mask=None,
    use_causal_mask=False,
    q_len=None,
    kv_len=None,
):
    """The one mask an attention layer applies, from everything it was given.

    Combines (logical AND) the Keras masks of the inputs, an explicit
    `attention_mask` and the causal mask. This is the single path by which the
    layers of this package turn their mask arguments into attention masks.

    Args:
        query_mask: `(batch, q_len)` Keras mask of the queries; padded queries
            attend nothing (their attention outputs are zeros).
        value_mask: `(batch, kv_len)` Keras mask of the values.
        key_mask: `(batch, kv_len)` Keras mask of the keys.
        attention_mask: `(q_len, kv_len)` (the same for every batch element),
            `(batch, q_len, kv_len)` or `(batch, heads, q_len, kv_len)`; a size-1
            batch or head axis broadcasts. Boolean, or 0/1 integers or floats (see
            :func:`validate_mask`).
        use_causal_mask: add `causal_mask(q_len, kv_len)`.
        q_len, kv_len: lengths (ints or scalar tensors), needed for the causal mask.

    Returns:
        A boolean mask broadcastable to `(batch, q_len, kv_len)`, or to
        `(batch, heads, q_len, kv_len)` when `attention_mask` has a head axis;
        `None` if there is nothing to mask.
    """
    parts = []
    key_padding = combine_masks(value_mask, key_mask)
    if key_padding is not None:
        check_broadcastable(
            (None, _static(kv_len)),
            tuple(key_padding.shape),
            "keys (batch, kv_len)",
            "value_mask" if key_mask is None else "key_mask",
        )
        parts.append(padding_mask(key_padding))
    if query_mask is not None:
        query_mask = _keras_mask(query_mask, "query_mask", "q_len")
        check_broadcastable(
            (None, _static(q_len)),
            tuple(query_mask.shape),
            "queries (batch, q_len)",
            "query_mask",
        )
        parts.append(ops.expand_dims(query_mask, -1))
    if use_causal_mask:
        if q_len is None or kv_len is None:
            raise ValueError("`q_len` and `kv_len` are required with use_causal_mask=True.")
        parts.append(ops.expand_dims(causal_mask(q_len, kv_len), 0))
    if attention_mask is not None:
        attention_mask = validate_mask(attention_mask, name="attention_mask")
        rank = len(attention_mask.shape)
        if rank not in (2, 3, 4):
            raise ValueError(
                "`attention_mask` must have shape (q_len, kv_len), (batch, q_len, "
                "kv_len) or (batch, num_heads, q_len, kv_len). "
                f"Received: attention_mask.shape={tuple(attention_mask.shape)}"
            )
        if rank == 2:
            # One mask for the whole batch, as Keras broadcasts it.
            attention_mask = ops.expand_dims(attention_mask, 0)
            rank = 3
        expected = (None,) * (rank - 2) + (_static(q_len), _static(kv_len))
        check_broadcastable(
            expected,
            tuple(attention_mask.shape),
            "scores (batch, q_len, kv_len)",
            "attention_mask",
        )
        if rank == 4:
            parts = [ops.expand_dims(part, 1) for part in parts]
        combined = combine_masks(*parts)
        if combined is not None:
            check_broadcastable(
                tuple(combined.shape),
                tuple(attention_mask.shape),
                "mask from the inputs' Keras masks",
                "attention_mask",
            )
        return combine_masks(combined, attention_mask)
    return combine_masks(*parts)


def flatten_attention_mask(attention_mask, batch_dims, q_dims, kv_dims, name="attention_mask"):
    """An attention mask over several attention axes as a rank-4 mask over one.

    For attention over `k` axes of inputs of higher rank (Keras' `attention_axes`),
    the scores have shape `(*batch_dims, heads, *q_dims, *kv_dims)`, where
    `batch_dims` are the batch axis and the axes that are not attention axes. As in
    Keras, a mask gives the trailing `2k` axes `(*q_dims, *kv_dims)`; its leading
    axes align with the leading axes of the scores, and any missing axes are
    inserted just before the query axes (so a mask without a head axis broadcasts
    over the heads). The result is that mask, broadcast and flattened to
    `(prod(batch_dims), 1 or heads, prod(q_dims), prod(kv_dims))`, to match queries
    and keys flattened in the same (row-major) order.

    Args:
        attention_mask: boolean (or 0/1) mask, see above.
        batch_dims, q_dims, kv_dims: sizes (ints or scalar tensors).
        name: the argument's name for error messages.
    """
    mask = validate_mask(attention_mask, name=name)
    num_batch, k = len(batch_dims), len(q_dims)
    rank = num_batch + 1 + 2 * k
    if not 2 * k <= len(mask.shape) <= rank:
        raise ValueError(
            f"`{name}` must have between {2 * k} and {rank} axes: (batch, other "
            f"axes..., heads, query attention axes..., key attention axes...), "
            f"leading axes optional. Received: {name}.shape={tuple(mask.shape)}"
        )
    leading = len(mask.shape) - 2 * k
    for _ in range(rank - len(mask.shape)):
        mask = ops.expand_dims(mask, leading)
    expected = tuple(_static(d) for d in batch_dims) + (None,)
    expected += tuple(_static(d) for d in q_dims) + tuple(_static(d) for d in kv_dims)
    check_broadcastable(expected, tuple(mask.shape), "attention scores", name)
    heads = mask.shape[num_batch]
    heads = ops.shape(mask)[num_batch] if heads is None else heads
    target = tuple(batch_dims) + (heads,) + tuple(q_dims) + tuple(kv_dims)
    mask = ops.broadcast_to(mask, target)
    q_len, kv_len = 1, 1
    for dim in q_dims:
        q_len = q_len * dim
    for dim in kv_dims:
        kv_len = kv_len * dim
    return ops.reshape(mask, (-1, heads, q_len, kv_len))


def _keras_mask(mask, name, length_name):
    """`mask` as a boolean `(batch, length)` Keras sequence mask, or a `ValueError`."""
    mask = validate_mask(mask, name=name)
    if len(mask.shape) != 2:
        raise ValueError(
            f"`{name}` must be a (batch, {length_name}) Keras mask. "
            f"Received: {name}.shape={tuple(mask.shape)}"
        )
    return mask


def _static(length):
    return int(length) if isinstance(length, (int, np.integer)) else None


def combine_masks(*masks):
    """Logical AND of boolean masks; `None` entries are skipped.

    Shapes must broadcast against each other (checked on the static shapes).

    Returns:
        The combined boolean mask, or `None` when every mask is `None`.

    Example:
    >>> keras_mask = np.array([[True, True, False]])  # the third token is padding
    >>> mask = combine_masks(causal_mask(3), None, padding_mask(keras_mask))
    >>> keras.ops.convert_to_numpy(mask)
    array([[[ True, False, False],
            [ True,  True, False],
            [ True,  True, False]]])
    """
    result = None
    for index, mask in enumerate(masks):
        if mask is None:
            continue
        mask = validate_mask(mask, name=f"masks[{index}]")
        if result is None:
            result = mask
            continue
        check_broadcastable(
            tuple(result.shape), tuple(mask.shape), "combined mask", f"masks[{index}]"
        )
        result = ops.logical_and(result, mask)
    return result


def validate_mask(mask, name="mask"):
    """Convert `mask` to a boolean tensor: `True` where attention is allowed.

    Boolean masks are taken as they are; integer masks are read as `mask != 0`.
    Float masks are read as Keras' attention layers read them (`ops.cast(mask,
    "bool")`, i.e. `mask != 0`), so code written for Keras runs unchanged; but a
    float mask must hold only 0 and 1. An additive bias (0 where allowed, `-inf` or
    `-1e9` where masked) read as `!= 0` would be exactly inverted, so where the
    values are known (eager calls) anything other than 0 and 1 raises a
    `ValueError`. Inside a traced function the values cannot be checked.
    """
    if mask is None:
        return None
    mask = ops.convert_to_tensor(mask)
    dtype = _dtype_name(mask.dtype)
    if dtype == "bool":
        return mask
    if dtype.startswith(("int", "uint")):
        return ops.not_equal(mask, 0)
    if dtype.startswith(("float", "bfloat")):
        values = backend.concrete_value(mask)
        if values is not None:
            values = np.asarray(values, dtype="float32")
            bad = values[(values != 0) & (values != 1)]
            if bad.size:
                raise ValueError(
                    f"`{name}` must be a boolean tensor, or a 0/1 integer or float "
                    f"tensor, with 1 where attention is allowed (a float mask is "
                    f"read as `{name} != 0`, as in Keras). Received: {name} with "
                    f"dtype={dtype} holding {float(bad.flat[0])}"
                )
        return ops.not_equal(mask, ops.zeros((), dtype=mask.dtype))
    raise TypeError(
        f"`{name}` must be a boolean (or 0/1 integer or float) tensor with True "
        f"where attention is allowed. Received: {name} with dtype={dtype}"
    )


def check_broadcastable(shape_a, shape_b, name_a, name_b):
    """Raise `ValueError` unless static shapes `shape_a` and `shape_b` broadcast.

    Unknown (`None`) dimensions are assumed compatible.
    """
    for dim_a, dim_b in zip(reversed(shape_a), reversed(shape_b)):
        if dim_a is None or dim_b is None or dim_a == dim_b or 1 in (dim_a, dim_b):
            continue
        raise ValueError(
            f"`{name_b}` of shape {tuple(shape_b)} is not broadcastable to "
            f"`{name_a}` of shape {tuple(shape_a)}."
        )


def _dtype_name(dtype):
    return keras.backend.standardize_dtype(dtype)

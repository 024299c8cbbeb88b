"""The shapes of `MultiHeadAttention` beyond `(batch, seq, features)`, as in Keras:
`attention_axes` (which axes of rank-`r` inputs are attended over, and the
flatten/unflatten that runs such a call as a rank-3 attention) and `output_shape`.

Inputs are `(batch, ..., features)`. The attention axes (non-negative, in order) are
attended over; every other axis but the features acts as a batch axis. A call moves the
other axes next to the batch axis (transpose by `perm`), flattens the attention axes in
row-major order into one sequence axis, so that the rank-3 attention sees
`(batch * other axes, prod(attention axes), features)`, and puts the result back:
the output as `query.shape[:-1] + output features`, the scores in Keras' layout
`(batch, other axes..., num_heads, query axes..., key axes...)`.
"""

from keras import ops

from keras_attention import _validation, masks


def check_attention_axes(attention_axes):
    """The constructor's `attention_axes` (an int or a tuple of ints) as a tuple, or None."""
    if attention_axes is None:
        return None
    axes = (attention_axes,) if _validation._is_int(attention_axes) else attention_axes
    if (
        not isinstance(axes, (tuple, list))
        or not axes
        or not all(_validation._is_int(axis) for axis in axes)
        or 0 in axes
        or len(set(axes)) != len(axes)
    ):
        raise ValueError(
            "`attention_axes` must be None, an int or a tuple of distinct ints "
            "(axes of the inputs, neither the batch axis 0 nor the features axis). "
            f"Received: attention_axes={attention_axes!r}"
        )
    return tuple(int(axis) for axis in axes)


def check_output_shape(output_shape, output_dim):
    """`output_shape` (Keras' name: an int or a tuple of ints) as a tuple, or None."""
    if output_shape is None:
        return None
    if output_dim is not None:
        raise ValueError(
            "Pass `output_dim` or `output_shape` (Keras' name), not both. Received: "
            f"output_dim={output_dim!r}, output_shape={output_shape!r}"
        )
    shape = (output_shape,) if _validation._is_int(output_shape) else output_shape
    if (
        not isinstance(shape, (tuple, list))
        or not shape
        or not all(_validation._is_int(dim) and dim > 0 for dim in shape)
    ):
        raise _validation.keras_error(
            "output_shape",
            "`output_shape` must be a positive integer or a non-empty tuple of "
            f"positive integers. Received: output_shape={output_shape!r}",
        )
    return tuple(int(dim) for dim in shape)


def attention_axes_for(attention_axes, rank):
    """The attention axes for inputs of `rank` as non-negative ints, in order: all but
    the batch and features axes when `attention_axes` is None."""
    if attention_axes is None:
        return tuple(range(1, rank - 1))
    axes = tuple(axis + rank if axis < 0 else axis for axis in attention_axes)
    if any(not 1 <= axis <= rank - 2 for axis in axes) or len(set(axes)) != len(axes):
        raise ValueError(
            "`attention_axes` must be distinct axes of the inputs other than the "
            f"batch axis (0) and the features axis (-1), i.e. in [1, {rank - 2}] "
            f"or [{1 - rank}, -2] for inputs of rank {rank}. Received: "
            f"attention_axes={attention_axes}"
        )
    return axes


def check_shapes(query_shape, value_shape, key_shape, attention_axes):
    """The shape checks of `MultiHeadAttention` (`build`, `call`, symbolic shapes):
    ranks, attention axes, key/value lengths and the batch (non-attention) axes."""
    rank = len(query_shape)
    if rank < 3:
        raise ValueError(
            "`query` must be rank 3 (batch, seq, features) or higher. "
            f"Received: query.shape={query_shape}"
        )
    for name, shape in (("value", value_shape), ("key", key_shape)):
        if len(shape) != rank:
            message = (
                f"`{name}` must be rank {rank}, the rank of `query`. Received: "
                f"query.shape={query_shape}, {name}.shape={shape}"
            )
            if name == "key":
                raise _validation.keras_error("key_value_shapes", message)
            raise ValueError(message)
    axes = attention_axes_for(attention_axes, rank)
    if not _validation.compatible(key_shape[1:-1], value_shape[1:-1]):
        raise _validation.keras_error(
            "key_value_shapes",
            "`key` and `value` must have the same length (the same shape except "
            f"for the last axis, features). Received: key.shape={key_shape}, "
            f"value.shape={value_shape}",
        )
    batch_axes = [axis for axis in range(rank - 1) if axis not in axes]
    query_batch = tuple(query_shape[axis] for axis in batch_axes)
    value_batch = tuple(value_shape[axis] for axis in batch_axes)
    if not _validation.compatible(query_batch, value_batch):
        raise ValueError(
            "`query` and `value` must agree on the batch axis and the axes that "
            f"are not attention axes ({tuple(batch_axes)}). Received: "
            f"query.shape={query_shape}, value.shape={value_shape}"
        )


def check_built_features(inputs):
    """Each `(name, tensor, dense)` of `inputs` has the feature size (last axis) its
    projection `dense` was built for."""
    for name, tensor, dense in inputs:
        expected = dense.kernel.shape[0]
        if tensor.shape[-1] is not None and tensor.shape[-1] != expected:
            raise ValueError(
                f"The last dimension (features) of `{name}` must be {expected}, "
                f"as when the layer was built. Received: {name}.shape={tuple(tensor.shape)}"
            )


def needs_flattening(attention_axes, rank):
    """Whether a call differs from the rank-3 attention over axis 1."""
    return rank > 3 or attention_axes_for(attention_axes, rank) != (1,)


def scores_shape(query_shape, key_shape, axes, num_heads):
    """The static shape of the attention scores in Keras' layout:
    `(batch, other axes..., num_heads, query axes..., key axes...)`."""
    others = [axis for axis in range(len(query_shape) - 1) if axis not in axes]
    return (
        tuple(query_shape[axis] for axis in others)
        + (num_heads,)
        + tuple(query_shape[axis] for axis in axes)
        + tuple(key_shape[axis] for axis in axes)
    )


def _prod(dims):
    """The product of static ints and/or scalar tensors (a size of a merged axis)."""
    result = 1
    for dim in dims:
        result = result * dim
    return result


def attend_over_axes(
    attend,
    query,
    value,
    key,
    keras_masks,
    attention_mask,
    attention_axes,
    output_features,
    num_heads,
):
    """Attention over `attention_axes` of inputs of any rank, run as the rank-3 attention.

    `attend(query, key, value, attention_mask=...)` is the rank-3 attention, returning
    `(output, scores)` with scores None unless asked for. The other axes move next to
    the batch axis, the attention axes become one sequence axis, `attend` runs, and
    its output (trailing axes `output_features`) and scores are put back in place.
    """
    if any(mask is not None for mask in keras_masks):
        raise ValueError(
            "Keras masks (`query_mask`, `value_mask`, `key_mask`) are only used "
            "with rank-3 inputs attending over axis 1; for other inputs pass an "
            "`attention_mask`. Received a Keras mask with "
            f"query.shape={tuple(query.shape)}, attention_axes={attention_axes}"
        )
    rank = len(query.shape)
    axes = attention_axes_for(attention_axes, rank)
    others = [axis for axis in range(1, rank - 1) if axis not in axes]
    perm = [0] + others + list(axes) + [rank - 1]
    q_shape, kv_shape = ops.shape(query), ops.shape(value)
    batch_dims = [q_shape[axis] for axis in [0] + others]
    q_dims = [q_shape[axis] for axis in axes]
    kv_dims = [kv_shape[axis] for axis in axes]

    def flatten(tensor, dims):
        return ops.reshape(ops.transpose(tensor, perm), (-1, _prod(dims), tensor.shape[-1]))

    if attention_mask is not None:
        attention_mask = masks.flatten_attention_mask(
            attention_mask, batch_dims, q_dims, kv_dims, name="attention_mask"
        )
    output, scores = attend(
        flatten(query, q_dims),
        flatten(key, kv_dims),
        flatten(value, kv_dims),
        attention_mask=attention_mask,
    )
    output = ops.reshape(output, tuple(batch_dims) + tuple(q_dims) + tuple(output_features))
    # Inverse permutation of the non-feature axes; output axes stay last.
    inverse = [perm[:-1].index(axis) for axis in range(rank - 1)]
    inverse += list(range(rank - 1, rank - 1 + len(output_features)))
    output = ops.transpose(output, inverse)
    if scores is None:
        return output
    scores = ops.reshape(scores, tuple(batch_dims) + (num_heads,) + tuple(q_dims) + tuple(kv_dims))
    return output, scores

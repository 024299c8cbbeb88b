"""The query/value plumbing shared by `ScaledDotProductAttention`, `AdditiveAttention`
and `LuongAttention`."""

import keras
from keras import ops

from keras_attention import _validation, masks
from keras_attention.layers import _common


class QueryValueAttention(keras.layers.Layer):
    """Base of the query-over-values attentions: a query attends over a value sequence.

    Handles what the classic layers share: the single-step query of an RNN decoder
    (rank 2, `(batch, features)`, treated as one query step), the Keras masks, the
    shape checks and the symbolic shapes. Subclasses build their projections in
    `_build_scores(query_shape, key_shape)` and implement
    `_attend(query, key, value, mask, **attention_arguments)` on rank-3 queries,
    finishing with `keras_attention.ops` (`scaled_dot_product_attention` or
    `attention_from_scores`), to which they pass `attention_arguments` on: the
    dropout (`dropout_rate`, `seed`, `training`) and `return_attention_scores`.

    Also takes the list calls of `keras.layers.Attention` and
    `keras.layers.AdditiveAttention`: `layer([query, value])`,
    `layer([query, value, key], mask=[query_mask, value_mask])`.
    """

    def __init__(self, dropout=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        _validation.check_rate(dropout, "dropout")
        self.dropout = dropout
        self.seed = seed
        self.supports_masking = True
        self.seed_generator = keras.random.SeedGenerator(seed) if dropout > 0 else None

    def build(self, query_shape=None, value_shape=None, key_shape=None, **input_shape):
        if value_shape is None:
            # Keras' list form: build([query, value(, key)] shapes), also by its
            # keyword `build(input_shape=...)`.
            shapes = _input_shape(query_shape, input_shape, "build")
            query_shape, value_shape, key_shape = self._unpack_inputs(shapes, "input_shape")
        query_shape, value_shape = tuple(query_shape), tuple(value_shape)
        _validation.check_rank(
            value_shape, range(3, 100), "value", "rank 3 (batch, kv_len, features) or higher"
        )
        rank = len(value_shape)
        _validation.check_rank(
            query_shape,
            (2, rank) if rank == 3 else (rank,),
            "query",
            f"rank {rank} like `value` (batch, ..., q_len, features)"
            + (" or rank 2 (batch, features)" if rank == 3 else ""),
        )
        if rank > 3 and not _validation.compatible(query_shape[:-2], value_shape[:-2]):
            raise ValueError(
                "`query` and `value` must have the same batch axes (all but the last "
                f"two). Received: query.shape={query_shape}, value.shape={value_shape}"
            )
        if key_shape is None:
            key_shape = value_shape
        else:
            key_shape = tuple(key_shape)
            _validation.check_rank(key_shape, rank, "key", f"rank {rank}, the rank of `value`")
            if not _validation.compatible(key_shape[:-1], value_shape[:-1]):
                raise _validation.keras_error(
                    "key_value_shapes",
                    "`key` and `value` must have the same length and batch axes (every "
                    f"axis but the features). Received: key.shape={key_shape}, "
                    f"value.shape={value_shape}",
                )
        self._build_scores(query_shape, key_shape)
        self.built = True

    def _build_scores(self, query_shape, key_shape):
        """Build the score sublayers; `query_shape` may be rank 2 or 3."""

    def call(
        self,
        query,
        value=None,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        use_causal_mask=False,
        return_attention_scores=False,
        training=None,
        mask=None,
    ):
        if isinstance(query, (list, tuple)) and value is not None:
            # Keras' list form with the mask by position: layer(inputs, mask).
            mask, value = _positional(mask, value, "mask"), None
            if isinstance(value_mask, (list, tuple)):  # filled by Keras for `mask`
                value_mask = None
        if value is None:  # Keras' list form: layer([query, value(, key)], mask=[...]).
            query, value, key = self._unpack_inputs(query, "inputs")
            if isinstance(query_mask, (list, tuple)):
                # Keras filled in the Keras masks of the listed inputs.
                mask = query_mask if mask is None else mask
                query_mask = None
            query_mask, value_mask = self._unpack_masks(mask, query_mask, value_mask)
        elif mask is not None and not isinstance(mask, (list, tuple)):
            query_mask = mask if query_mask is None else query_mask
        if key is None:
            key = value
            key_mask = None
        rank = len(query.shape)
        if rank == 2:
            # An RNN decoder state is one query step: attend as a length-1 sequence.
            query = ops.expand_dims(query, 1)
            if query_mask is not None and len(query_mask.shape) == 1:
                query_mask = ops.expand_dims(query_mask, 1)
            if attention_mask is not None and len(attention_mask.shape) == 2:
                attention_mask = ops.expand_dims(attention_mask, 1)
        batch_shape = tuple(ops.shape(query)[:-2])
        if rank > 3:
            # Keras' N-D form (batch, ..., len, features): the leading axes are
            # batch axes, flattened into one for the rank-3 attention.
            q_len, kv_len = ops.shape(query)[-2], ops.shape(key)[-2]
            query, value, key = (
                ops.reshape(x, (-1, ops.shape(x)[-2], x.shape[-1])) for x in (query, value, key)
            )
            query_mask = _flatten(query_mask, batch_shape, (q_len,))
            value_mask = _flatten(value_mask, batch_shape, (kv_len,))
            key_mask = _flatten(key_mask, batch_shape, (kv_len,))
            if attention_mask is not None and len(attention_mask.shape) > 2:
                attention_mask = _flatten(attention_mask, batch_shape, (q_len, kv_len))
        mask = masks.merge_attention_masks(
            query_mask=query_mask,
            value_mask=value_mask,
            key_mask=key_mask,
            attention_mask=attention_mask,
            use_causal_mask=use_causal_mask,
            q_len=ops.shape(query)[1],
            kv_len=ops.shape(key)[1],
        )
        outputs = self._attend(
            query,
            key,
            value,
            mask,
            dropout_rate=self.dropout,
            seed=self.seed_generator,
            training=bool(training),
            return_attention_scores=return_attention_scores,
        )
        outputs = outputs if return_attention_scores else (outputs,)
        if rank == 2:
            outputs = tuple(ops.squeeze(x, 1) for x in outputs)
        elif rank > 3:
            outputs = tuple(ops.reshape(x, batch_shape + tuple(ops.shape(x)[1:])) for x in outputs)
        return outputs if return_attention_scores else outputs[0]

    def _attend(self, query, key, value, mask, **attention_arguments):
        raise NotImplementedError

    def compute_mask(self, inputs, mask=None):
        """The output's Keras mask: the query's (`mask[0]` in the list form, as in
        Keras); None for a single query step, which has no time axis."""
        if isinstance(inputs, (list, tuple)):
            inputs = self._unpack_inputs(inputs, "inputs")[0]
            if isinstance(mask, (list, tuple)):
                mask = self._unpack_masks(mask, None, None)[0]
        if mask is None or len(inputs.shape) == 2:
            return None
        return ops.convert_to_tensor(mask)

    def compute_output_shape(
        self, query_shape=None, value_shape=None, key_shape=None, **input_shape
    ):
        if value_shape is None:
            shapes = _input_shape(query_shape, input_shape, "compute_output_shape")
            query_shape, value_shape, key_shape = self._unpack_inputs(shapes, "input_shape")
        return tuple(query_shape[:-1]) + (value_shape[-1],)

    def compute_output_spec(
        self, query, value=None, key=None, return_attention_scores=False, **kwargs
    ):
        if value is None:
            query, value, key = self._unpack_inputs(query, "inputs")
        key = value if key is None else key
        scores_shape = tuple(query.shape[:-1]) + (key.shape[-2],)
        return _common.attention_output_spec(
            self,
            self.compute_output_shape(query.shape, value.shape, key.shape),
            scores_shape,
            return_attention_scores,
        )

    def get_config(self):
        config = super().get_config()
        config.update({"dropout": self.dropout, "seed": self.seed})
        return config

    def _unpack_inputs(self, inputs, name):
        """`[query, value]` or `[query, value, key]` (Keras' list form, of tensors or
        of shapes) as a triple; one tensor or one shape is refused."""
        layer = type(self).__name__
        if not _is_list_of_inputs(inputs):
            received = tuple(inputs) if _is_shape(inputs) else getattr(inputs, "shape", inputs)
            raise _validation.keras_error(
                "inputs_list",
                f"Called with one input, `{name}` must be a list [query, value] or "
                "[query, value, key] (or pass `value` as an argument). Received: "
                f"one input of shape {_shape_repr(received)}",
                layer=layer,
            )
        expected = f"`{name}` must be a list [query, value] or [query, value, key]"
        _check_length(inputs, name, "inputs_length", expected, layer)
        return inputs[0], inputs[1], inputs[2] if len(inputs) == 3 else None

    def _unpack_masks(self, mask, query_mask, value_mask):
        """Keras' `mask=[query_mask, value_mask]` (a third, key, entry is ignored as
        in Keras: the value's mask covers the keys)."""
        if mask is None:
            return query_mask, value_mask
        layer = type(self).__name__
        expected = "With a list of inputs, `mask` must be a list [query_mask, value_mask]"
        if not isinstance(mask, (list, tuple)):
            raise _validation.keras_error(
                "mask_list",
                f"{expected}. Received: mask of type {type(mask).__name__}",
                layer=layer,
            )
        _check_length(mask, "mask", "mask_length", expected, layer)
        return (
            mask[0] if query_mask is None else query_mask,
            mask[1] if value_mask is None else value_mask,
        )


def _check_length(items, name, phrase, expected, layer):
    """Keras' error `phrase` of `layer`, with `expected`, unless the list `items`
    (the argument `name`) has 2 or 3 entries."""
    if len(items) not in (2, 3):
        raise _validation.keras_error(
            phrase, f"{expected}. Received: {name} of length {len(items)}", layer=layer
        )


def _positional(keyword, positional, name):
    """The `mask` of Keras' list form, given by position or by keyword."""
    if keyword is not None and positional is not None:
        raise TypeError(f"Got `{name}` both by position and by keyword.")
    return positional if keyword is None else keyword


def _input_shape(query_shape, keywords, method):
    """The list of shapes of Keras' list form: given positionally, or as Keras'
    keyword `input_shape` (taken as `**keywords`: Keras matches every named argument of
    `build` to an argument of `call`)."""
    unknown = sorted(set(keywords) - {"input_shape"})
    if unknown:
        raise TypeError(f"{method}() got unexpected keyword arguments {unknown}")
    if "input_shape" in keywords and query_shape is not None:
        raise TypeError(f"{method}() got both `query_shape` and `input_shape`")
    return keywords.get("input_shape", query_shape)


def _is_shape(value):
    """A static shape: a tuple or list of ints and Nones (not a list of shapes)."""
    return isinstance(value, (tuple, list)) and all(
        dim is None or _validation._is_int(dim) for dim in value
    )


def _is_list_of_inputs(inputs):
    """A list/tuple of tensors or of shapes (Keras' list form), not one shape."""
    return isinstance(inputs, (list, tuple)) and not (inputs and _is_shape(inputs))


def _shape_repr(shape):
    try:
        return str(tuple(shape))
    except TypeError:
        return repr(shape)


def _flatten(tensor, batch_shape, tail_shape):
    """`tensor` `(*batch_shape, *tail_shape)` (leading axes may be missing or of
    size 1, as broadcasting allows) as `(prod(batch_shape), *tail_shape)`; None
    stays None."""
    if tensor is None:
        return None
    tail_shape = tuple(tail_shape)
    tensor = ops.broadcast_to(ops.convert_to_tensor(tensor), batch_shape + tail_shape)
    return ops.reshape(tensor, (-1,) + tail_shape)

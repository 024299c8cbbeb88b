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

    def build(self, query_shape, value_shape=None, key_shape=None):
        if value_shape is None:  # Keras' list form: build([query, value(, key)] shapes).
            query_shape, value_shape, key_shape = _unpack_inputs(query_shape, "inputs")
        _validation.check_rank(
            query_shape,
            (2, 3),
            "query",
            "rank 3 (batch, q_len, features) or rank 2 (batch, features)",
        )
        _validation.check_rank(value_shape, 3, "value", "rank 3 (batch, kv_len, features)")
        if key_shape is None:
            key_shape = value_shape
        else:
            _validation.check_rank(key_shape, 3, "key", "rank 3 (batch, kv_len, features)")
            for axis, what in ((0, "batch size"), (1, "length (axis 1, kv_len)")):
                if None not in (key_shape[axis], value_shape[axis]) and (
                    key_shape[axis] != value_shape[axis]
                ):
                    raise ValueError(
                        f"`key` and `value` must have the same {what}. Received: "
                        f"key.shape={tuple(key_shape)}, value.shape={tuple(value_shape)}"
                    )
        self._build_scores(tuple(query_shape), tuple(key_shape))
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
        if value is None:  # Keras' list form: layer([query, value(, key)], mask=[...]).
            query, value, key = _unpack_inputs(query, "inputs")
            if isinstance(query_mask, (list, tuple)):
                # Keras filled in the Keras masks of the listed inputs.
                mask = query_mask if mask is None else mask
                query_mask = None
            query_mask, value_mask = _unpack_masks(mask, query_mask, value_mask)
        elif mask is not None and not isinstance(mask, (list, tuple)):
            query_mask = mask if query_mask is None else query_mask
        if key is None:
            key = value
            key_mask = None
        single_step = len(query.shape) == 2
        if single_step:
            # An RNN decoder state is one query step: attend as a length-1 sequence.
            query = ops.expand_dims(query, 1)
            if query_mask is not None and len(query_mask.shape) == 1:
                query_mask = ops.expand_dims(query_mask, 1)
            if attention_mask is not None and len(attention_mask.shape) == 2:
                attention_mask = ops.expand_dims(attention_mask, 1)
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
        if not single_step:
            return outputs
        if return_attention_scores:
            return ops.squeeze(outputs[0], 1), ops.squeeze(outputs[1], 1)
        return ops.squeeze(outputs, 1)

    def _attend(self, query, key, value, mask, **attention_arguments):
        raise NotImplementedError

    def compute_mask(self, query, previous_mask=None):
        if isinstance(query, (list, tuple)):
            query = query[0]
            if isinstance(previous_mask, (list, tuple)):
                previous_mask = previous_mask[0]
        # A sequence query keeps its padding mask; a single step has no time axis.
        if len(query.shape) == 2:
            return None
        return previous_mask

    def compute_output_shape(self, query_shape, value_shape=None, key_shape=None):
        if value_shape is None:
            query_shape, value_shape, key_shape = _unpack_inputs(query_shape, "input_shape")
        return tuple(query_shape[:-1]) + (value_shape[-1],)

    def compute_output_spec(
        self, query, value=None, key=None, return_attention_scores=False, **kwargs
    ):
        if value is None:
            query, value, key = _unpack_inputs(query, "inputs")
        key = value if key is None else key
        scores_shape = tuple(query.shape[:-1]) + (key.shape[1],)
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


def _unpack_inputs(inputs, name):
    """`[query, value]` or `[query, value, key]` (Keras' list form) as a triple."""
    if not isinstance(inputs, (list, tuple)) or len(inputs) not in (2, 3):
        raise ValueError(
            f"Called with one input, `{name}` must be a list [query, value] or "
            f"[query, value, key] (or pass `value` as an argument). Received: "
            f"{name} of type {type(inputs).__name__}"
            + (f" and length {len(inputs)}" if isinstance(inputs, (list, tuple)) else "")
        )
    query, value = inputs[0], inputs[1]
    return query, value, inputs[2] if len(inputs) == 3 else None


def _unpack_masks(mask, query_mask, value_mask):
    """Keras' `mask=[query_mask, value_mask]` (a third, key, entry is ignored as in
    Keras: the value's mask covers the keys)."""
    if mask is None:
        return query_mask, value_mask
    if not isinstance(mask, (list, tuple)) or len(mask) not in (2, 3):
        raise ValueError(
            "With a list of inputs, `mask` must be a list [query_mask, value_mask]. "
            f"Received: mask of type {type(mask).__name__}"
        )
    return (
        mask[0] if query_mask is None else query_mask,
        mask[1] if value_mask is None else value_mask,
    )

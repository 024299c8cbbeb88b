"""`AdditiveAttention`: Bahdanau attention, `v^T tanh(W_q q + W_k k)`."""

import keras
from keras import ops

from keras_attention import _validation
from keras_attention import ops as attention_ops
from keras_attention.layers import _common
from keras_attention.layers._query_value import QueryValueAttention


@keras.saving.register_keras_serializable(package="keras_attention")
class AdditiveAttention(QueryValueAttention):
    """Additive (Bahdanau) attention: a small MLP scores each query-key pair.

    `score(q, k) = v^T tanh(W_q q + W_k k)`, with `W_q`, `W_k` two `Dense(units)`
    sublayers (`query_dense`, `key_dense`) and `v` a `Dense(1, use_bias=False)`
    (`score_dense`); then `softmax(score + mask)` over the keys weights the values.
    Unlike dot-product attention, queries and keys may have different sizes, and
    the score is not a bilinear form, which helps small models (Bahdanau et al.,
    2015). The cost is a `(batch, q_len, kv_len, units)` intermediate.

    Without `units` it is `keras.layers.AdditiveAttention`:
    `score(q, k) = sum(scale * tanh(q + k))` with no projections (queries and keys
    of the same size `dim`) and, with `use_scale=True` (the default), a learned
    `scale` weight of shape `(dim,)`; the same list calls
    `layer([query, value, key], mask=[query_mask, value_mask])` work.

    Args:
        units: positive int, size of the hidden layer of the score MLP; `None`
            for Keras' form without projections (see above).
        use_scale: only without `units`: whether the `tanh` terms are weighted by a
            learned `scale` vector (else summed). Defaults to `True`, as in Keras.
        use_bias: whether `query_dense` and `key_dense` have biases.
        dropout: float in `[0, 1)`, dropout on the attention probabilities.
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer,
        kernel_constraint, bias_constraint: passed to the `Dense` sublayers.
        seed: int, seed for dropout.
        **kwargs: base layer arguments (`name`, `dtype`, `activity_regularizer`, ...).

    Call arguments:
        query: `(batch, q_len, query_features)`, or `(batch, query_features)` for a
            single query step (e.g. an RNN decoder state).
        value: `(batch, kv_len, value_features)`.
        key: optional `(batch, kv_len, key_features)`; defaults to `value`.
        query_mask, value_mask, key_mask: Keras masks `(batch, len)`; filled in by
            Keras from `Embedding(mask_zero=True)`, `Masking` and similar layers.
        attention_mask: boolean `(batch, q_len, kv_len)` (`(batch, kv_len)` for a
            single query step), `True` = may attend.
        use_causal_mask: if `True`, query `i` attends only keys `j <= i`.
        return_attention_scores: if `True`, also return the attention weights.
        training: whether dropout is active.

    Returns:
        `(batch, q_len, value_features)` (or `(batch, value_features)` for a single
        query step), and with `return_attention_scores=True` also the weights
        `(batch, q_len, kv_len)` (or `(batch, kv_len)`). A sequence output carries
        the query's Keras mask; a query whose keys are all masked gives zeros.

    Example:
    >>> import numpy as np
    >>> decoder = np.random.rand(2, 3, 16).astype("float32")
    >>> encoder = np.random.rand(2, 7, 32).astype("float32")
    >>> context, weights = AdditiveAttention(8)(
    ...     decoder, encoder, return_attention_scores=True)
    >>> tuple(context.shape), tuple(weights.shape)
    ((2, 3, 32), (2, 3, 7))
    """

    def __init__(
        self,
        units=None,
        use_bias=True,
        dropout=0.0,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        seed=None,
        use_scale=None,
        **kwargs,
    ):
        super().__init__(dropout=dropout, seed=seed, **kwargs)
        self.projection = _common.ProjectionSettings.from_arguments(locals(), self.dtype_policy)
        _validation.check_positive_int(units, "units", allow_none=True)
        _validation.check_bool(use_bias, "use_bias")
        if use_scale is not None:
            _validation.check_bool(use_scale, "use_scale")
            if units is not None:
                raise ValueError(
                    "`use_scale` is only used without `units` (Keras' form); with "
                    "`units` the score vector `score_dense` is always learned. "
                    f"Received: units={units!r}, use_scale={use_scale!r}"
                )
        self.units = units
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.scale = None
        self.query_dense = self.key_dense = self.score_dense = None
        if units is not None:
            self.query_dense = self.projection.dense(units, "query")
            self.key_dense = self.projection.dense(units, "key")
            self.score_dense = self.projection.dense(1, "score", use_bias=False)

    def _build_scores(self, query_shape, key_shape):
        if self.units is None:
            if None in (query_shape[-1], key_shape[-1]) or query_shape[-1] != key_shape[-1]:
                raise ValueError(
                    "Without `units`, queries and keys must have the same known size "
                    f"(last axis). Received: query.shape={query_shape}, "
                    f"key.shape={key_shape}; pass `units` to project them"
                )
            if self.use_scale is not False:
                self.scale = self.add_weight(
                    name="scale",
                    shape=(query_shape[-1],),
                    initializer=self.projection.kernel_initializer,
                    regularizer=self.projection.kernel_regularizer,
                    constraint=self.projection.kernel_constraint,
                    trainable=True,
                )
            return
        self.query_dense.build(query_shape)
        self.key_dense.build(key_shape)
        self.score_dense.build((None, None, None, self.units))

    def _attend(self, query, key, value, mask, **attention_arguments):
        if self.units is None:
            hidden = ops.tanh(ops.expand_dims(query, 2) + ops.expand_dims(key, 1))
            if self.scale is not None:
                hidden = hidden * ops.cast(self.scale, hidden.dtype)
            scores = ops.sum(hidden, axis=-1)
        else:
            # (batch, q_len, 1, units) + (batch, 1, kv_len, units): every pair at once.
            hidden = ops.tanh(
                ops.expand_dims(self.query_dense(query), 2)
                + ops.expand_dims(self.key_dense(key), 1)
            )
            scores = ops.squeeze(self.score_dense(hidden), -1)
        return attention_ops.attention_from_scores(scores, value, mask=mask, **attention_arguments)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "use_bias": self.use_bias,
                "use_scale": self.use_scale,
                **self.projection.get_config(),
            }
        )
        return config

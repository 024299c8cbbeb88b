"""`LuongAttention`: the dot, general and concat scores of Luong et al. (2015)."""

import keras
from keras import ops

from keras_attention import _validation
from keras_attention import ops as attention_ops
from keras_attention.layers import _common
from keras_attention.layers._query_value import QueryValueAttention

_SCORES = ("dot", "general", "concat")


@keras.saving.register_keras_serializable(package="keras_attention")
class LuongAttention(_common.NothingToQuantize, QueryValueAttention):
    """Luong attention with the three score functions of Luong et al. (2015).

    - `score="dot"`: `q . k` (no weights; queries and keys must have equal sizes).
      With `scale=True` this is scaled dot-product attention, `q . k / sqrt(d_k)`.
    - `score="general"`: `q . (W k)`, with `W` a `Dense(query_features,
      use_bias=False)` sublayer `key_dense` applied to the keys, so queries and keys
      may differ in size. A key bias would add `q . b` to every score of a query,
      which the softmax cancels, hence none.
    - `score="concat"`: `v^T tanh(W [q; k])`, with `W` a `Dense(units)` sublayer
      `concat_dense` on the concatenation and `v` a `Dense(1, use_bias=False)`
      sublayer `score_dense`. Materializes `(batch, q_len, kv_len, q_f + k_f)`.

    The weights are `softmax(score + mask)` over the keys; the output is their
    weighted sum of the values.

    `keras.layers.Attention` is this layer with `score="dot"` (its default): it takes
    the same `use_scale` (a learned scalar multiplying the dot/general scores),
    `score_mode="dot"`, `dropout` and `seed`, and the same list calls
    `layer([query, value, key], mask=[query_mask, value_mask])`.

    Args:
        score: one of `"dot"`, `"general"`, `"concat"`.
        units: positive int, hidden size of the concat score; required for
            `score="concat"` and refused for the others.
        scale: if `True`, divide dot/general scores by `sqrt(d_k)` (kept as the
            attribute `scale_by_sqrt_dim`).
        use_scale: if `True`, a learned scalar weight `scale` (initialized to 1)
            multiplies the dot/general scores, as in `keras.layers.Attention`; the
            attribute `scale` is that weight, or `None` without `use_scale`, as there.
        score_mode: Keras' name for `score`; only `"dot"` (Keras' `"concat"`,
            `w * sum(tanh(q + k))`, is not Luong's concat score: use
            `AdditiveAttention()` for a sum of `tanh(q + k)`).
        use_bias: whether `concat_dense` has a bias (concat score only).
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
    >>> decoder_state = np.random.rand(2, 16).astype("float32")
    >>> encoder = np.random.rand(2, 7, 32).astype("float32")
    >>> context = LuongAttention("general")(decoder_state, encoder)
    >>> tuple(context.shape)
    (2, 32)
    """

    def __init__(
        self,
        score="dot",
        units=None,
        scale=False,
        use_bias=True,
        dropout=0.0,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        seed=None,
        use_scale=False,
        score_mode=None,
        **kwargs,
    ):
        super().__init__(dropout=dropout, seed=seed, **kwargs)
        if score_mode is not None:
            if score_mode != "dot":
                raise ValueError(
                    "`score_mode` (Keras' name for `score`) must be 'dot': Keras' "
                    "'concat' score w * sum(tanh(q + k)) is not Luong's concat score; "
                    "use `AdditiveAttention()` for sum(tanh(q + k)) scores. "
                    f"Received: score_mode={score_mode!r}"
                )
            if score != "dot":
                raise ValueError(
                    "Pass `score` or `score_mode` (Keras' name), not both. Received: "
                    f"score={score!r}, score_mode={score_mode!r}"
                )
        self.projection = _common.ProjectionSettings.from_arguments(locals(), self.dtype_policy)
        _validation.check_one_of(score, "score", _SCORES)
        if score == "concat":
            _validation.check_positive_int(units, "units")
        elif units is not None:
            raise ValueError(
                "`units` is only used by score='concat' and must be None for "
                f"score={score!r}. Received: units={units!r}"
            )
        _validation.check_bool(scale, "scale")
        if scale and score == "concat":
            raise ValueError(
                "`scale=True` applies to the 'dot' and 'general' scores only. "
                "Received: scale=True with score='concat'"
            )
        _validation.check_bool(use_bias, "use_bias")
        _validation.check_bool(use_scale, "use_scale")
        if use_scale and score == "concat":
            raise ValueError(
                "`use_scale=True` applies to the 'dot' and 'general' scores only. "
                "Received: use_scale=True with score='concat'"
            )
        self.use_scale = use_scale
        self.score_mode = score_mode
        # Keras' name: the learned weight of `use_scale` (built in `build`).
        self.scale = None
        self.score = score
        self.units = units
        self.scale_by_sqrt_dim = scale
        self.use_bias = use_bias
        # `general` needs the query size, known only in build().
        self.key_dense = None
        if score == "concat":
            self.concat_dense = self.projection.dense(units, "concat")
            self.score_dense = self.projection.dense(1, "score", use_bias=False)

    def _build_scores(self, query_shape, key_shape):
        if self.use_scale:
            self.scale = self.add_weight(name="scale", shape=(), initializer="ones", trainable=True)
        query_features, key_features = query_shape[-1], key_shape[-1]
        if self.score == "dot":
            if None not in (query_features, key_features) and (query_features != key_features):
                raise ValueError(
                    "score='dot' needs queries and keys of the same size (last "
                    f"axis). Received: query.shape={query_shape}, "
                    f"key.shape={key_shape}; use score='general' to compare "
                    "different sizes"
                )
        elif self.score == "general":
            if query_features is None:
                raise ValueError(
                    "score='general' needs a known query size (last axis). "
                    f"Received: query.shape={query_shape}"
                )
            self.key_dense = self.projection.dense(query_features, "key", use_bias=False)
            self.key_dense.build(key_shape)
        else:
            if None in (query_features, key_features):
                raise ValueError(
                    "score='concat' needs known query and key sizes (last axis). "
                    f"Received: query.shape={query_shape}, key.shape={key_shape}"
                )
            self.concat_dense.build((None, None, None, query_features + key_features))
            self.score_dense.build((None, None, None, self.units))

    def _attend(self, query, key, value, mask, **attention_arguments):
        if self.score in ("dot", "general"):
            if self.score == "general":
                key = self.key_dense(key)
            if self.scale is not None:
                # (s q) . k = s (q . k): the learned scale of keras.layers.Attention.
                query = query * ops.cast(self.scale, query.dtype)
            # scale=None is the default 1/sqrt(d_k); 1.0 leaves the scores as q . k.
            return attention_ops.scaled_dot_product_attention(
                query,
                key,
                value,
                mask=mask,
                scale=None if self.scale_by_sqrt_dim else 1.0,
                **attention_arguments,
            )
        # Pair every query with every key: (batch, q_len, kv_len, q_f + k_f).
        q_len, kv_len = ops.shape(query)[1], ops.shape(key)[1]
        pairs = ops.concatenate(
            [
                ops.repeat(ops.expand_dims(query, 2), kv_len, axis=2),
                ops.repeat(ops.expand_dims(key, 1), q_len, axis=1),
            ],
            axis=-1,
        )
        hidden = ops.tanh(self.concat_dense(pairs))
        scores = ops.squeeze(self.score_dense(hidden), -1)
        return attention_ops.attention_from_scores(scores, value, mask=mask, **attention_arguments)

    @property
    def score_scale(self):
        """The former name of the `use_scale` weight `scale` (Keras' name)."""
        return self.scale

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "score": self.score,
                "units": self.units,
                "scale": self.scale_by_sqrt_dim,
                "use_scale": self.use_scale,
                "score_mode": self.score_mode,
                "use_bias": self.use_bias,
                **self.projection.get_config(),
            }
        )
        return config

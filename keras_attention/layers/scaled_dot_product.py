"""`ScaledDotProductAttention`: the attention core as a Keras layer without weights."""

import keras

from keras_attention import masks
from keras_attention import ops as attention_ops
from keras_attention.layers import _common


@keras.saving.register_keras_serializable(package="keras_attention")
class ScaledDotProductAttention(keras.layers.Layer):
    """Scaled dot-product attention, `softmax(Q K^T * scale + mask) V`, with no weights.

    The layer wraps `keras_attention.ops.scaled_dot_product_attention` so it can be
    used in functional models with Keras masks; bring your own projections.

    Args:
        dropout: float in `[0, 1)`, dropout on the attention probabilities.
        scale: positive float multiplying the scores; default `1 / sqrt(d_k)`.
        seed: int, seed for dropout.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        query: `(batch, q_len, d_k)`.
        value: `(batch, kv_len, d_v)`.
        key: optional `(batch, kv_len, d_k)`; defaults to `value`.
        query_mask, value_mask, key_mask: Keras masks `(batch, len)`; filled in by
            Keras from `Embedding(mask_zero=True)` and similar layers.
        attention_mask: boolean `(batch, q_len, kv_len)`, `True` = may attend.
        use_causal_mask: if `True`, query `i` attends only keys `j <= i`.
        return_attention_scores: if `True`, also return the attention weights.
        training: whether dropout is active.

    Returns:
        `(batch, q_len, d_v)`, and with `return_attention_scores=True` also the
        weights `(batch, q_len, kv_len)`. The output carries the query's Keras mask.

    Example:
    >>> import numpy as np
    >>> layer = ScaledDotProductAttention()
    >>> q = np.random.rand(2, 3, 16).astype("float32")
    >>> v = np.random.rand(2, 5, 16).astype("float32")
    >>> out, weights = layer(q, v, return_attention_scores=True)
    >>> out.shape, weights.shape
    (TensorShape([2, 3, 16]), TensorShape([2, 3, 5]))
    """

    def __init__(self, dropout=0.0, scale=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        _common.check_rate(dropout, "dropout")
        if scale is not None:
            attention_ops._check_scale(scale)
        self.dropout = dropout
        self.scale = scale
        self.seed = seed
        self.supports_masking = True
        self.seed_generator = keras.random.SeedGenerator(seed) if dropout > 0 else None

    def build(self, query_shape, value_shape, key_shape=None):
        _common.check_rank(query_shape, 3, "query", "rank 3 (batch, q_len, d_k)")
        _common.check_rank(value_shape, 3, "value", "rank 3 (batch, kv_len, d_v)")
        if key_shape is not None:
            _common.check_rank(key_shape, 3, "key", "rank 3 (batch, kv_len, d_k)")
        self.built = True

    def call(
        self,
        query,
        value,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        use_causal_mask=False,
        return_attention_scores=False,
        training=None,
    ):
        if key is None:
            key = value
            key_mask = None
        q_len, kv_len = keras.ops.shape(query)[1], keras.ops.shape(key)[1]
        mask = masks.merge_attention_masks(
            query_mask=query_mask,
            value_mask=value_mask,
            key_mask=key_mask,
            attention_mask=attention_mask,
            use_causal_mask=use_causal_mask,
            q_len=q_len,
            kv_len=kv_len,
        )
        return attention_ops.scaled_dot_product_attention(
            query,
            key,
            value,
            mask=mask,
            scale=self.scale,
            dropout_rate=self.dropout,
            seed=self.seed_generator,
            training=bool(training),
            return_attention_scores=return_attention_scores,
        )

    def compute_output_shape(self, query_shape, value_shape, key_shape=None):
        return tuple(query_shape[:-1]) + (value_shape[-1],)

    def compute_output_spec(
        self, query, value, key=None, return_attention_scores=False, **kwargs
    ):
        key = value if key is None else key
        return _common.attention_output_spec(
            self,
            self.compute_output_shape(query.shape, value.shape, key.shape),
            (query.shape[0], query.shape[1], key.shape[1]),
            return_attention_scores,
        )

    def get_config(self):
        config = super().get_config()
        config.update({"dropout": self.dropout, "scale": self.scale, "seed": self.seed})
        return config

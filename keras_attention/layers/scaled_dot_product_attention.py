"""`ScaledDotProductAttention`: the attention core as a Keras layer without weights."""

import keras

from keras_attention import _validation
from keras_attention import ops as attention_ops
from keras_attention.layers._common import NothingToQuantize
from keras_attention.layers._query_value import QueryValueAttention


@keras.saving.register_keras_serializable(package="keras_attention")
class ScaledDotProductAttention(NothingToQuantize, QueryValueAttention):
    """Scaled dot-product attention, `softmax(Q K^T * scale + mask) V`, with no weights.

    The layer wraps `keras_attention.ops.scaled_dot_product_attention` so it can be
    used in functional models with Keras masks; bring your own projections.

    Args:
        dropout: float in `[0, 1)`, dropout on the attention probabilities.
        scale: positive float multiplying the scores; default `1 / sqrt(d_k)`.
        seed: int, seed for dropout.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        query: `(batch, q_len, d_k)`, or `(batch, d_k)` for a single query step.
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
        weights `(batch, q_len, kv_len)` (without the `q_len` axis for a single
        query step). The output carries the query's Keras mask.

    Example:
    >>> import numpy as np
    >>> layer = ScaledDotProductAttention()
    >>> q = np.random.rand(2, 3, 16).astype("float32")
    >>> v = np.random.rand(2, 5, 16).astype("float32")
    >>> out, weights = layer(q, v, return_attention_scores=True)
    >>> tuple(out.shape), tuple(weights.shape)
    ((2, 3, 16), (2, 3, 5))
    """

    def __init__(self, dropout=0.0, scale=None, seed=None, **kwargs):
        super().__init__(dropout=dropout, seed=seed, **kwargs)
        if scale is not None:
            _validation.check_positive_float(scale, "scale")
        self.scale = scale

    def _attend(self, query, key, value, mask, **attention_arguments):
        return attention_ops.scaled_dot_product_attention(
            query, key, value, mask=mask, scale=self.scale, **attention_arguments
        )

    def get_config(self):
        config = super().get_config()
        config["scale"] = self.scale
        return config

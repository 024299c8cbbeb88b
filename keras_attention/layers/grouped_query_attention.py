"""`GroupedQueryAttention`: `MultiHeadAttention` under the names of Keras' layer."""

import keras

from keras_attention import _validation
from keras_attention.layers.multi_head_attention import MultiHeadAttention


@keras.saving.register_keras_serializable(package="keras_attention")
class GroupedQueryAttention(MultiHeadAttention):
    """Grouped-query attention with the arguments of Keras' `GroupedQueryAttention`
    (exported as `keras.layers.GroupQueryAttention`; `GroupQueryAttention` here too).

    `num_query_heads` query heads share `num_key_value_heads` key/value heads in
    contiguous groups (query head `h` uses key/value head
    `h // (num_query_heads // num_key_value_heads)`), every head of size `head_dim`:
    `MultiHeadAttention(num_heads=num_query_heads, key_dim=head_dim,
    num_key_value_heads=num_key_value_heads)`, with everything that layer offers
    (implementations, decoding cache, gate, attention axes). The output has the
    query's feature size, and `query` and `value` must have the same feature size,
    as in Keras.

    Args:
        head_dim: positive int, size of each query/key/value head.
        num_query_heads: positive int, number of query heads.
        num_key_value_heads: positive int dividing `num_query_heads`.
        dropout, use_bias, use_gate, kernel_initializer, bias_initializer,
        kernel_regularizer, bias_regularizer, activity_regularizer,
        kernel_constraint, bias_constraint, seed: as in :class:`MultiHeadAttention`.
        **kwargs: the other arguments of :class:`MultiHeadAttention`
            (`implementation`, `attention_axes`, ...) and base layer arguments.

    Call arguments:
        The same as :class:`MultiHeadAttention` (and `keras.layers.GroupedQueryAttention`):
        `query, value, key=None, attention_mask=None, return_attention_scores=False,
        training=None, use_causal_mask=False`, plus the decoding cache.

    Returns:
        `(batch, q_len, query_features)`, and with `return_attention_scores=True`
        also the weights `(batch, num_query_heads, q_len, kv_len)`.

    Example:
    >>> import numpy as np
    >>> layer = GroupedQueryAttention(head_dim=8, num_query_heads=4, num_key_value_heads=2)
    >>> x = np.random.rand(2, 5, 16).astype("float32")
    >>> out, scores = layer(x, x, return_attention_scores=True)
    >>> tuple(out.shape), tuple(scores.shape)
    ((2, 5, 16), (2, 4, 5, 5))
    """

    # The arguments of `MultiHeadAttention` that this layer names differently.
    _hidden_base_arguments = ("num_heads", "key_dim", "value_dim")

    def __init__(self, head_dim, num_query_heads, num_key_value_heads, **kwargs):
        _validation.check_positive_int(head_dim, "head_dim")
        _validation.check_positive_int(num_query_heads, "num_query_heads")
        _validation.check_positive_int(num_key_value_heads, "num_key_value_heads")
        if num_query_heads % num_key_value_heads:
            raise ValueError(
                "`num_query_heads` must be divisible by `num_key_value_heads`. "
                f"Received: num_query_heads={num_query_heads}, "
                f"num_key_value_heads={num_key_value_heads}"
            )
        for name in self._hidden_base_arguments:
            if name in kwargs:
                raise TypeError(
                    f"`GroupedQueryAttention` takes `head_dim` and `num_query_heads`, "
                    f"not `{name}` (use `MultiHeadAttention` for that). Received: "
                    f"{name}={kwargs[name]!r}"
                )
        super().__init__(
            num_heads=num_query_heads,
            key_dim=head_dim,
            num_key_value_heads=num_key_value_heads,
            **kwargs,
        )
        self.head_dim = head_dim
        self.num_query_heads = num_query_heads

    def _check_shapes(self, query_shape, value_shape, key_shape):
        _check_features(query_shape, value_shape)
        super()._check_shapes(query_shape, value_shape, key_shape)

    def compute_output_shape(self, query_shape, value_shape, key_shape=None):
        _check_features(query_shape, value_shape)  # first, as Keras' layer
        return super().compute_output_shape(query_shape, value_shape, key_shape)

    def get_config(self):
        config = super().get_config()
        for name in self._hidden_base_arguments:
            config.pop(name)
        config.update({"head_dim": self.head_dim, "num_query_heads": self.num_query_heads})
        return config


def _check_features(query_shape, value_shape):
    """The query and value feature sizes must agree (where known), as in Keras."""
    query_features, value_features = tuple(query_shape)[-1], tuple(value_shape)[-1]
    if None not in (query_features, value_features) and query_features != value_features:
        raise _validation.keras_error(
            "query_value_features",
            "`query` and `value` must have the same feature size (last axis). "
            f"Received: query.shape={tuple(query_shape)}, value.shape={tuple(value_shape)}",
        )


# Keras exports this layer as `keras.layers.GroupQueryAttention`: the same name here,
# so that changing the import is enough.
GroupQueryAttention = GroupedQueryAttention

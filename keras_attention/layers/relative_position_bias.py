"""`RelativePositionBias`: T5's learned, bucketed relative position bias."""

import keras
from keras import ops

from keras_attention import _validation, backend
from keras_attention import ops as attention_ops
from keras_attention.layers._position_bias import _PositionBias


@keras.saving.register_keras_serializable(package="keras_attention")
class RelativePositionBias(_PositionBias):
    """T5's learned relative position bias (Raffel et al. 2020).

    `bias[h, i, j] = E[bucket(j - i), h]` with a learned table `E`
    `(num_buckets, num_heads)` and the buckets of
    :func:`keras_attention.ops.relative_position_buckets` (exact for small distances,
    logarithmic up to `max_distance`). T5 computes it once and shares it across
    layers: pass the same instance to every layer's `MultiHeadAttention(score_bias=...)`
    (its weights are then shared in memory; a `.keras` reload gives each layer its own
    copy with the same values).

    Args:
        num_buckets: positive int (32 in T5).
        max_distance: int greater than the exact buckets' reach, `num_buckets // 4`
            bidirectional or `num_buckets // 2` (128 in T5).
        bidirectional: `True` for encoders, `False` for causal decoders.
        num_heads: positive int.
        embeddings_initializer: initializer of the table.
        **kwargs: base layer arguments.

    Call arguments:
        query_positions: int `(q_len,)` or `(batch, q_len)`.
        key_positions: int `(kv_len,)` or `(batch, kv_len)`.

    Returns:
        `(..., num_heads, q_len, kv_len)` float bias.

    Example:
    >>> import numpy as np
    >>> layer = RelativePositionBias(num_buckets=8, max_distance=16, num_heads=2)
    >>> tuple(layer(np.arange(4), np.arange(6)).shape)
    (2, 4, 6)
    """

    def __init__(
        self,
        num_buckets=32,
        max_distance=128,
        bidirectional=True,
        num_heads=8,
        embeddings_initializer="random_normal",
        **kwargs,
    ):
        super().__init__(num_heads, **kwargs)
        _validation.check_positive_int(num_buckets, "num_buckets")
        _validation.check_positive_int(max_distance, "max_distance")
        _validation.check_bool(bidirectional, "bidirectional")
        if num_buckets < (4 if bidirectional else 2):
            raise ValueError(
                "`num_buckets` must be at least 4 (bidirectional) or 2. Received: "
                f"num_buckets={num_buckets}, bidirectional={bidirectional}"
            )
        # T5's log-spaced buckets span distances from the exact ones' end
        # (`max_exact`, half the buckets of a direction) to `max_distance`, dividing
        # by `log(max_distance / max_exact)`: that must be positive, or the buckets
        # come out negative (wrapping to the wrong bias) or INT_MIN (issue 35).
        max_exact = num_buckets // (4 if bidirectional else 2)
        if max_distance <= max_exact:
            raise ValueError(
                "`max_distance` must be greater than the distances the exact buckets "
                f"cover (num_buckets // {4 if bidirectional else 2} = {max_exact}"
                f"{', bidirectional' if bidirectional else ''}), so at least "
                f"{max_exact + 1}. Received: max_distance={max_distance} "
                f"(num_buckets={num_buckets}, bidirectional={bidirectional})"
            )
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    def build(self, query_positions_shape=None, key_positions_shape=None):
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.num_buckets, self.num_heads),
            initializer=self.embeddings_initializer,
        )
        self.built = True

    def call(self, query_positions, key_positions):
        buckets = attention_ops.relative_position_buckets(
            self._relative(query_positions, key_positions),
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        bias = ops.take(self.embeddings, buckets, axis=0)  # (..., q, k, heads)
        return backend.moveaxis(bias, -1, -3)  # (..., heads, q, k)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_buckets": self.num_buckets,
                "max_distance": self.max_distance,
                "bidirectional": self.bidirectional,
                "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
            }
        )
        return config

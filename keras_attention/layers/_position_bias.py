"""The base of the score-bias layers (`ALiBiBias`, T5's `RelativePositionBias`).

Both are callables `bias(query_positions, key_positions)` returning
`(..., num_heads, len(query_positions), len(key_positions))`, the form
`keras_attention.ops.scaled_dot_product_attention(bias=...)` evaluates one block at a
time, so no `(q_len, kv_len)` bias is ever built for a whole long sequence. Pass one
to `MultiHeadAttention(score_bias=...)`.
"""

import keras
from keras import ops

from keras_attention import _validation
from keras_attention.layers._common import NothingToQuantize


class _PositionBias(NothingToQuantize, keras.layers.Layer):
    """Shared call/shape logic: positions `(..., q)` and `(..., k)` -> `(..., heads, q, k)`."""

    def __init__(self, num_heads, **kwargs):
        super().__init__(**kwargs)
        _validation.check_positive_int(num_heads, "num_heads")
        self.num_heads = num_heads

    def build(self, query_positions_shape=None, key_positions_shape=None):
        self.built = True

    def _relative(self, query_positions, key_positions):
        query_positions = ops.convert_to_tensor(query_positions)
        key_positions = ops.convert_to_tensor(key_positions)
        return ops.expand_dims(key_positions, -2) - ops.expand_dims(query_positions, -1)

    def compute_output_shape(self, query_positions_shape, key_positions_shape):
        return tuple(query_positions_shape[:-1]) + (
            self.num_heads,
            query_positions_shape[-1],
            key_positions_shape[-1],
        )

    def get_config(self):
        config = super().get_config()
        config["num_heads"] = self.num_heads
        return config

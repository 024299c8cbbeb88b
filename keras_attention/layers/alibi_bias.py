"""`ALiBiBias`: the ALiBi linear distance penalty on the attention scores."""

import keras
from keras import ops

from keras_attention import ops as attention_ops
from keras_attention.layers._position_bias import _PositionBias


@keras.saving.register_keras_serializable(package="keras_attention")
class ALiBiBias(_PositionBias):
    """ALiBi (Press et al. 2022): a linear distance penalty per head, no weights.

    `bias[h, i, j] = -m_h * |i - j|`, with the head slopes `m_h` of
    :func:`keras_attention.ops.alibi_slopes` (`2^(-8/H), 2^(-16/H), ...`, and the
    authors' interleaving for head counts that are not powers of two). With a causal
    mask only `j <= i` is visible, where this is the paper's `m_h * (j - i)`.

    Args:
        num_heads: positive int.
        **kwargs: base layer arguments.

    Call arguments:
        query_positions: `(q_len,)` or `(batch, q_len)` positions (ints or floats).
        key_positions: `(kv_len,)` or `(batch, kv_len)`.

    Returns:
        `(..., num_heads, q_len, kv_len)` float bias.

    Example:
    >>> import numpy as np
    >>> bias = ALiBiBias(num_heads=2)(np.arange(3), np.arange(3))
    >>> np.asarray(bias)[:, 0, 2].tolist()  # distance 2, slopes 1/16 and 1/256
    [-0.125, -0.0078125]
    """

    def call(self, query_positions, key_positions):
        distance = ops.abs(ops.cast(self._relative(query_positions, key_positions), "float32"))
        slopes = ops.convert_to_tensor(attention_ops.alibi_slopes(self.num_heads), "float32")
        bias = -ops.expand_dims(distance, -3) * ops.reshape(slopes, (-1, 1, 1))
        return ops.cast(bias, self.compute_dtype)

"""`SelfAttention`: single-head self-attention with its own query/key/value projections."""

import keras

from keras_attention import _validation
from keras_attention import ops as attention_ops
from keras_attention.layers import _common


@keras.saving.register_keras_serializable(package="keras_attention")
class SelfAttention(keras.layers.Layer):
    """Single-head self-attention: every position attends to every (allowed) position.

    `Q = x W_q`, `K = x W_k`, `V = x W_v` (three `Dense(units)` sublayers held as
    `query_dense`, `key_dense`, `value_dense`), then
    `softmax(Q K^T / sqrt(units) + mask) V`.

    Args:
        units: positive int, size of queries, keys, values and of the output.
        use_bias: whether the projections have biases.
        dropout: float in `[0, 1)`, dropout on the attention probabilities.
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer,
        kernel_constraint, bias_constraint: passed to the three `Dense` projections.
        seed: int, seed for dropout.
        **kwargs: base layer arguments (`name`, `dtype`, `activity_regularizer`, ...).

    Call arguments:
        inputs: `(batch, seq, features)`.
        mask: `(batch, seq)` Keras mask, filled in by Keras (e.g. from
            `Embedding(mask_zero=True)`): padded positions are never attended and
            their own outputs are zeros.
        attention_mask: boolean `(batch, seq, seq)`, `True` = may attend.
        use_causal_mask: if `True`, position `i` attends only positions `j <= i`.
        return_attention_scores: if `True`, also return the attention weights.
        training: whether dropout is active.

    Returns:
        `(batch, seq, units)`, and with `return_attention_scores=True` also the
        weights `(batch, seq, seq)`. The output carries the input's Keras mask.

    Example:
    >>> import keras
    >>> inputs = keras.Input((None,), dtype="int32")
    >>> x = keras.layers.Embedding(100, 32, mask_zero=True)(inputs)
    >>> x = SelfAttention(32)(x, use_causal_mask=True)
    >>> x.shape
    (None, None, 32)
    """

    def __init__(
        self,
        units,
        use_bias=True,
        dropout=0.0,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.projection = _common.ProjectionSettings.from_arguments(locals(), self.dtype_policy)
        _validation.check_positive_int(units, "units")
        _validation.check_bool(use_bias, "use_bias")
        _validation.check_rate(dropout, "dropout")
        self.units = units
        self.use_bias = use_bias
        self.dropout = dropout
        self.seed = seed
        self.supports_masking = True
        self.seed_generator = keras.random.SeedGenerator(seed) if dropout > 0 else None
        self.query_dense = self.projection.dense(units, "query")
        self.key_dense = self.projection.dense(units, "key")
        self.value_dense = self.projection.dense(units, "value")

    def build(self, inputs_shape):
        _validation.check_rank(inputs_shape, 3, "inputs", "rank 3 (batch, seq, features)")
        for dense in (self.query_dense, self.key_dense, self.value_dense):
            dense.build(inputs_shape)
        self.built = True

    def call(
        self,
        inputs,
        mask=None,
        attention_mask=None,
        use_causal_mask=False,
        return_attention_scores=False,
        training=None,
    ):
        attention_mask = _common.self_attention_mask(
            mask, keras.ops.shape(inputs)[1], attention_mask, use_causal_mask
        )
        return attention_ops.scaled_dot_product_attention(
            self.query_dense(inputs),
            self.key_dense(inputs),
            self.value_dense(inputs),
            mask=attention_mask,
            dropout_rate=self.dropout,
            seed=self.seed_generator,
            training=bool(training),
            return_attention_scores=return_attention_scores,
        )

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape[:-1]) + (self.units,)

    def compute_output_spec(self, inputs, return_attention_scores=False, **kwargs):
        return _common.attention_output_spec(
            self,
            self.compute_output_shape(inputs.shape),
            (inputs.shape[0], inputs.shape[1], inputs.shape[1]),
            return_attention_scores,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "use_bias": self.use_bias,
                "dropout": self.dropout,
                "seed": self.seed,
                **self.projection.get_config(),
            }
        )
        return config

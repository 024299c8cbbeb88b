"""`AttentionPooling`: learned query vectors pool a sequence by attending over time."""

import keras
from keras import ops

from keras_attention import _validation, masks
from keras_attention import ops as attention_ops
from keras_attention.layers import _common


@keras.saving.register_keras_serializable(package="keras_attention")
class AttentionPooling(keras.layers.Layer):
    """Attention pooling over time: a learned context vector picks what to keep.

    `keys = tanh(x W + b)` (a `Dense(units)` sublayer `key_dense`; `keys = x` when
    `units` is None), `weights = softmax(keys . u + mask)` over the time axis for
    each of the `num_queries` learned query vectors `u` (the weight `query`), and
    the output is the weighted sum of the inputs `x` over time (Yang et al., 2016).
    A drop-in replacement for `GlobalAveragePooling1D` that learns which time
    steps matter; padded steps (Keras mask) get no weight, and a sequence that is
    entirely padding pools to zeros.

    Args:
        units: positive int, size of the keys; `None` compares the inputs with
            the queries directly.
        num_queries: positive int, number of learned queries (pooled vectors).
        use_bias: whether `key_dense` has a bias.
        scale: if `True`, divide the scores by `sqrt(key_size)`.
        dropout: float in `[0, 1)`, dropout on the attention probabilities.
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer,
        kernel_constraint, bias_constraint: for `key_dense`; the kernel settings
            also initialize, regularize and constrain the `query` weight.
        seed: int, seed for dropout.
        **kwargs: base layer arguments (`name`, `dtype`, `activity_regularizer`, ...).

    Call arguments:
        inputs: `(batch, seq, features)`.
        mask: `(batch, seq)` Keras mask, filled in by Keras (e.g. from
            `Embedding(mask_zero=True)`).
        return_attention_scores: if `True`, also return the pooling weights.
        training: whether dropout is active.

    Returns:
        `(batch, features)` when `num_queries=1`, else
        `(batch, num_queries, features)`; with `return_attention_scores=True` also
        the weights, `(batch, seq)` or `(batch, num_queries, seq)`. The output
        carries no Keras mask (the time axis is gone).

    Example:
    >>> import keras
    >>> tokens = keras.Input((None,), dtype="int32")
    >>> x = keras.layers.Embedding(1000, 32, mask_zero=True)(tokens)
    >>> x = AttentionPooling(units=16)(x)
    >>> x.shape
    (None, 32)
    """

    def __init__(
        self,
        units=None,
        num_queries=1,
        use_bias=True,
        scale=False,
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
        _validation.check_positive_int(units, "units", allow_none=True)
        _validation.check_positive_int(num_queries, "num_queries")
        _validation.check_bool(use_bias, "use_bias")
        _validation.check_bool(scale, "scale")
        _validation.check_rate(dropout, "dropout")
        self.units = units
        self.num_queries = num_queries
        self.use_bias = use_bias
        self.scale = scale
        self.dropout = dropout
        self.seed = seed
        self.supports_masking = True
        self.seed_generator = keras.random.SeedGenerator(seed) if dropout > 0 else None
        self.key_dense = None
        if units is not None:
            self.key_dense = self.projection.dense(units, "key", activation="tanh")

    def build(self, inputs_shape):
        _validation.check_sequence(inputs_shape, "inputs")
        key_size = inputs_shape[-1]
        if self.key_dense is not None:
            self.key_dense.build(inputs_shape)
            key_size = self.units
        kwargs = self.projection.dense_kwargs()
        self.query = self.add_weight(
            name="query",
            shape=(self.num_queries, key_size),
            initializer=kwargs["kernel_initializer"],
            regularizer=kwargs["kernel_regularizer"],
            constraint=kwargs["kernel_constraint"],
        )
        self.built = True

    def call(self, inputs, mask=None, return_attention_scores=False, training=None):
        keys = inputs if self.key_dense is None else self.key_dense(inputs)
        batch_size = ops.shape(inputs)[0]
        # The same learned queries for every sequence of the batch.
        query = ops.broadcast_to(
            ops.expand_dims(ops.cast(self.query, keys.dtype), 0),
            (batch_size,) + tuple(self.query.shape),
        )
        attention_mask = masks.merge_attention_masks(
            value_mask=mask, q_len=self.num_queries, kv_len=ops.shape(inputs)[1]
        )
        outputs = attention_ops.scaled_dot_product_attention(
            query,
            keys,
            inputs,
            mask=attention_mask,
            scale=None if self.scale else 1.0,
            dropout_rate=self.dropout,
            seed=self.seed_generator,
            training=bool(training),
            return_attention_scores=return_attention_scores,
        )
        if self.num_queries > 1:
            return outputs
        if return_attention_scores:
            return ops.squeeze(outputs[0], 1), ops.squeeze(outputs[1], 1)
        return ops.squeeze(outputs, 1)

    def compute_mask(self, inputs, previous_mask=None):
        return None

    def _pooled_shape(self, inputs_shape, last):
        if self.num_queries == 1:
            return (inputs_shape[0], last)
        return (inputs_shape[0], self.num_queries, last)

    def compute_output_shape(self, inputs_shape):
        return self._pooled_shape(inputs_shape, inputs_shape[-1])

    def compute_output_spec(self, inputs, return_attention_scores=False, **kwargs):
        return _common.attention_output_spec(
            self,
            self.compute_output_shape(inputs.shape),
            self._pooled_shape(inputs.shape, inputs.shape[1]),
            return_attention_scores,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "num_queries": self.num_queries,
                "use_bias": self.use_bias,
                "scale": self.scale,
                "dropout": self.dropout,
                "seed": self.seed,
                **self.projection.get_config(),
            }
        )
        return config

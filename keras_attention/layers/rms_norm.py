"""`RMSNorm`: root-mean-square layer normalization (no centring, no offset)."""

import keras
from keras import ops

from keras_attention import _validation
from keras_attention.layers._common import NothingToQuantize


@keras.saving.register_keras_serializable(package="keras_attention")
class RMSNorm(NothingToQuantize, keras.layers.Layer):
    """Root-mean-square normalization (Zhang & Sennrich 2019), as in Llama and T5.

    `y = x / sqrt(mean(x^2) + epsilon) * scale` over the last axis: LayerNorm without
    subtracting the mean and without an offset. Computed in float32 under mixed
    precision (the mean of squares overflows float16 early).

    Args:
        epsilon: positive float added to the mean square.
        scale_initializer: initializer of the learned `scale` `(features,)`.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `(..., features)`.

    Returns:
        Same shape as `inputs`, carrying the input's Keras mask.

    Example:
    >>> import numpy as np
    >>> y = RMSNorm()(np.array([[3.0, 4.0]], "float32"))
    >>> [round(float(v), 4) for v in np.asarray(y)[0]]  # (3, 4) / sqrt(12.5)
    [0.8485, 1.1314]
    """

    def __init__(self, epsilon=1e-6, scale_initializer="ones", **kwargs):
        super().__init__(**kwargs)
        _validation.check_positive_float(epsilon, "epsilon")
        self.epsilon = epsilon
        self.scale_initializer = keras.initializers.get(scale_initializer)
        self.supports_masking = True

    def build(self, inputs_shape):
        _validation.check_known_features(inputs_shape, "inputs")
        self.scale = self.add_weight(
            name="scale", shape=(inputs_shape[-1],), initializer=self.scale_initializer
        )
        self.built = True

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        x = x * ops.rsqrt(ops.mean(ops.square(x), axis=-1, keepdims=True) + self.epsilon)
        return ops.cast(x * ops.cast(self.scale, "float32"), self.compute_dtype)

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "epsilon": self.epsilon,
                "scale_initializer": keras.initializers.serialize(self.scale_initializer),
            }
        )
        return config

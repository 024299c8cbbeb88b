"""Helpers shared by the layers: the Dense projection settings and symbolic outputs."""

import keras

# The argument checks live in `keras_attention._validation`; `keras_attention.models`
# still reads these three from here.
from keras_attention._validation import (  # noqa: F401
    check_bool,
    check_positive_int,
    check_rate,
)

_INITIALIZER_KEYS = ("kernel_initializer", "bias_initializer")
_REGULARIZER_KEYS = ("kernel_regularizer", "bias_regularizer")
_CONSTRAINT_KEYS = ("kernel_constraint", "bias_constraint")


class ProjectionSettings:
    """The initializer/regularizer/constraint arguments shared by Dense projections.

    `activity_regularizer` is not among them: it goes to the base `keras.layers.Layer`
    and regularizes the layer's output, as for any Keras layer.

    Layers keep one of these, pass `dense_kwargs()` to every Dense sublayer they
    create and merge `get_config()` into their own config.
    """

    def __init__(
        self,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
    ):
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)

    def dense_kwargs(self):
        """Keyword arguments for a `keras.layers.Dense` sublayer (fresh objects, so
        sublayers never share an initializer's state)."""
        kwargs = {}
        for key in _INITIALIZER_KEYS:
            kwargs[key] = keras.initializers.get(
                keras.initializers.serialize(getattr(self, key))
            )
        for key in _REGULARIZER_KEYS:
            value = getattr(self, key)
            kwargs[key] = None if value is None else keras.regularizers.get(
                keras.regularizers.serialize(value)
            )
        for key in _CONSTRAINT_KEYS:
            value = getattr(self, key)
            kwargs[key] = None if value is None else keras.constraints.get(
                keras.constraints.serialize(value)
            )
        return kwargs

    def get_config(self):
        config = {}
        for key in _INITIALIZER_KEYS:
            config[key] = keras.initializers.serialize(getattr(self, key))
        for key in _REGULARIZER_KEYS:
            config[key] = keras.regularizers.serialize(getattr(self, key))
        for key in _CONSTRAINT_KEYS:
            config[key] = keras.constraints.serialize(getattr(self, key))
        return config


def attention_output_spec(layer, output_shape, scores_shape, return_attention_scores):
    """Symbolic outputs of an attention layer: the output, plus the attention scores
    when `return_attention_scores` is true. Used by `compute_output_spec`, so that
    symbolic shapes come from the same formulas as `compute_output_shape`."""
    output = keras.KerasTensor(output_shape, dtype=layer.compute_dtype)
    if not return_attention_scores:
        return output
    return output, keras.KerasTensor(scores_shape, dtype=layer.compute_dtype)

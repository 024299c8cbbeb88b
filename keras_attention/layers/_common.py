"""Helpers shared by the layers: argument checks and the Dense projection settings."""

import numbers

import keras

_INITIALIZER_KEYS = ("kernel_initializer", "bias_initializer")
_REGULARIZER_KEYS = ("kernel_regularizer", "bias_regularizer")
_CONSTRAINT_KEYS = ("kernel_constraint", "bias_constraint")


def check_positive_int(value, name, allow_none=False):
    """Raise `ValueError` unless `value` is a positive int (or `None` if allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"`{name}` must be a positive integer. Received: {name}={value!r}"
        )


def check_rate(value, name="dropout"):
    """Raise `ValueError` unless `value` is a float in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"`{name}` must be a float in [0, 1). Received: {name}={value!r}")


def check_bool(value, name):
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool. Received: {name}={value!r}")


def check_rank(shape, expected, name, what):
    """Raise `ValueError` unless the static `shape` has rank in `expected`."""
    expected = (expected,) if isinstance(expected, int) else tuple(expected)
    if len(shape) not in expected:
        raise ValueError(
            f"`{name}` must be {what}. Received: {name}.shape={tuple(shape)}"
        )


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

"""Helpers shared by the layers: the Dense projection settings and symbolic outputs."""

import keras

# The Dense arguments a layer passes on unchanged to its projections, and the Keras
# module that turns each into an object (and back into config).
_SETTING_MODULES = {
    "kernel_initializer": keras.initializers,
    "bias_initializer": keras.initializers,
    "kernel_regularizer": keras.regularizers,
    "bias_regularizer": keras.regularizers,
    "kernel_constraint": keras.constraints,
    "bias_constraint": keras.constraints,
}
# Keras' defaults of those not None, as in `keras.layers.Dense`.
_DEFAULTS = {"kernel_initializer": "glorot_uniform", "bias_initializer": "zeros"}
INITIALIZER_KEYS = ("kernel_initializer", "bias_initializer")


class ProjectionSettings:
    """The settings a layer shares among its `Dense` projections, and their factory.

    Holds `use_bias`, the dtype policy and the initializer/regularizer/constraint
    arguments (`settings`, Keras' names and defaults); `dense(units, name)` builds a
    `keras.layers.Dense` with them, so a layer states only what is its own (units,
    name, and where it differs: a bias-free score vector, an activation).
    `get_config()` merges into the layer's config.

    A layer keeps the Keras-style arguments (`kernel_initializer=...`) in its own
    signature and hands them over in one line with `from_arguments(locals(), dtype)`.

    `activity_regularizer` is not among them: it goes to the base `keras.layers.Layer`
    and regularizes the layer's output, as for any Keras layer.
    """

    def __init__(self, use_bias=True, dtype=None, **settings):
        unknown = sorted(set(settings) - set(_SETTING_MODULES))
        if unknown:
            raise TypeError(
                f"Unknown projection settings {unknown}; expected some of {list(_SETTING_MODULES)}."
            )
        self.use_bias = use_bias
        self.dtype = dtype
        for key, module in _SETTING_MODULES.items():
            setattr(self, key, module.get(settings.get(key, _DEFAULTS.get(key))))

    @classmethod
    def from_arguments(cls, arguments, dtype):
        """The settings among a layer constructor's `arguments` (its `locals()`, taken
        before it rebinds any of them): `use_bias` and the initializer/regularizer/
        constraint arguments it has; the ones it lacks keep Keras' defaults."""
        names = ("use_bias", *_SETTING_MODULES)
        return cls(dtype=dtype, **{name: arguments[name] for name in names if name in arguments})

    def dense(self, units, name, use_bias=None, activation=None):
        """A `keras.layers.Dense(units)` projection named `name` with these settings;
        `use_bias` (default: the layer's) and `activation` are per projection."""
        return keras.layers.Dense(
            units,
            activation=activation,
            use_bias=self.use_bias if use_bias is None else use_bias,
            name=name,
            dtype=self.dtype,
            **self.dense_kwargs(),
        )

    def dense_kwargs(self, keys=tuple(_SETTING_MODULES)):
        """The `keys` settings as keyword arguments for a sublayer: fresh objects, so
        sublayers never share an initializer's state."""
        kwargs = {}
        for key in keys:
            value, module = getattr(self, key), _SETTING_MODULES[key]
            kwargs[key] = None if value is None else module.get(module.serialize(value))
        return kwargs

    def get_config(self, keys=tuple(_SETTING_MODULES)):
        """The `keys` settings as config entries (`use_bias` is the layer's own)."""
        return {key: _SETTING_MODULES[key].serialize(getattr(self, key)) for key in keys}


def attention_output_spec(layer, output_shape, scores_shape, return_attention_scores):
    """Symbolic outputs of an attention layer: the output, plus the attention scores
    when `return_attention_scores` is true. Used by `compute_output_spec`, so that
    symbolic shapes come from the same formulas as `compute_output_shape`."""
    output = keras.KerasTensor(output_shape, dtype=layer.compute_dtype)
    if not return_attention_scores:
        return output
    return output, keras.KerasTensor(scores_shape, dtype=layer.compute_dtype)

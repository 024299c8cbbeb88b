"""What conversions from other libraries need from the model classes: the entry
points that the layer above (`keras_attention.convert`) registers here, so that
`CausalLanguageModel.from_keras_hub` works without `models` importing upward; and
the dtype policy a converted model is built, saved and reloaded under."""

import contextlib

import keras

# source library name -> function(target_class, model_or_preset, **arguments)
_CONVERTERS = {}


def register(source, function):
    """Called by `keras_attention.convert.<source>` when it is imported (the package
    `keras_attention` imports it, so importing any part of the package registers it)."""
    _CONVERTERS[source] = function


def converter(source):
    """The registered conversion from `source` (e.g. `"keras_hub"`)."""
    if source not in _CONVERTERS:
        raise ImportError(
            f"No conversion from {source} is registered; `import keras_attention` "
            f"(or `keras_attention.convert.{source}`) registers it."
        )
    return _CONVERTERS[source]


@contextlib.contextmanager
def dtype_policy_scope(policy):
    """Build layers under the global dtype `policy` (a name or a `DTypePolicy`;
    `None` keeps the current one), restoring the previous policy after."""
    if policy is None:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def policy_config(model):
    """The `get_config` entry of `model`'s dtype policy: its name when it is not
    float32 (a bfloat16 or float16 conversion reloads as one), else nothing."""
    name = model.dtype_policy.name
    return {} if name == "float32" else {"dtype": name}

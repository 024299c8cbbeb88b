"""Argument checks, configs and layer factories shared by the builders and model
classes. A `config` here is the dict of a model's constructor arguments."""

import keras
from keras import ops

from keras_attention import _validation
from keras_attention.layers._layer_normalization import LayerNormalization
from keras_attention.layers.positional import TokenAndPositionEmbedding
from keras_attention.layers.rms_norm import RMSNorm
from keras_attention.layers.transformer_encoder import TransformerEncoder

# The `keras.Model` arguments the model classes take besides their own.
MODEL_KWARGS = ("name", "trainable")


def check_common(config):
    """Check the architecture arguments every model of this package has."""
    for name in (
        "vocabulary_size",
        "sequence_length",
        "num_layers",
        "embedding_dim",
        "num_heads",
        "intermediate_dim",
    ):
        _validation.check_positive_int(config[name], name)
    _validation.check_rate(config["dropout"], "dropout")
    embedding_dim, num_heads = config["embedding_dim"], config["num_heads"]
    if embedding_dim % num_heads and config.get("head_dim") is None:
        raise ValueError(
            "`embedding_dim` must be divisible by `num_heads` (each head gets "
            f"embedding_dim // num_heads features). Received: embedding_dim="
            f"{embedding_dim}, num_heads={num_heads}"
        )


def check_model_kwargs(kwargs, class_name):
    """A `TypeError` for keyword arguments that are neither the class's nor
    `keras.Model`'s (a functional `keras.Model` ignores them silently)."""
    unknown = sorted(set(kwargs) - set(MODEL_KWARGS))
    if unknown:
        received = ", ".join(f"{name}={kwargs[name]!r}" for name in unknown)
        raise TypeError(
            f"Unrecognized keyword arguments passed to {class_name}: {unknown}. Besides "
            f"its own arguments it takes the `keras.Model` arguments {MODEL_KWARGS}. "
            f"Received: {received}"
        )


def config_from_arguments(arguments):
    """The constructor arguments in `arguments` (a constructor's `locals()` at its
    start), in their order, without `self`, `kwargs` and `__class__`."""
    return {
        name: value
        for name, value in arguments.items()
        if name not in ("self", "kwargs", "__class__")
    }


def model_config(arguments, class_name):
    """The config of a model class's constructor from its `locals()` at its start
    (`arguments`), after the checks every model class makes: no unknown keyword
    argument, valid common architecture arguments."""
    check_model_kwargs(arguments["kwargs"], class_name)
    config = config_from_arguments(arguments)
    check_common(config)
    return config


def set_config(model, config):
    """Keep the constructor arguments `config` as attributes of `model`, and their
    names for :func:`get_config`."""
    for name, value in config.items():
        setattr(model, name, value)
    # Not tracked by Keras (a plain attribute, like the compiled generate functions).
    object.__setattr__(model, "_config_names", tuple(config))


def get_config(model):
    """`model.get_config()`: the `keras.Model` arguments and those of `set_config`."""
    return {
        "name": model.name,
        "trainable": model.trainable,
        **{name: getattr(model, name) for name in model._config_names},
    }


def embedding(name, config, scale=False):
    """The `TokenAndPositionEmbedding` of `config` (`mask_zero` defaults to `True`)."""
    return TokenAndPositionEmbedding(
        config["vocabulary_size"],
        config["sequence_length"],
        config["embedding_dim"],
        mask_zero=config.get("mask_zero", True),
        # rotary positions live in the attention: token embeddings only
        position="none" if config["position"] == "rotary" else config["position"],
        scale_by_sqrt_dim=scale,
        name=name,
    )


def encoder_layers(config, **block_kwargs):
    """`num_layers` `TransformerEncoder`s (`encoder_layer_{i}`) with `block_kwargs`."""
    return [
        TransformerEncoder(
            config["intermediate_dim"],
            config["num_heads"],
            dropout=config["dropout"],
            name=f"encoder_layer_{i}",
            **block_kwargs,
        )
        for i in range(config["num_layers"])
    ]


def apply(layers, x):
    """`x` through `layers` in order, skipping the `None` entries."""
    for layer in layers:
        if layer is not None:
            x = layer(x)
    return x


def norm(config, name, enabled=True):
    """The model-level normalization of `config` (`normalization`,
    `layer_norm_epsilon`; a LayerNorm offset when `use_bias` covers "norm"), or
    None when not `enabled`."""
    if not enabled:
        return None
    epsilon = config["layer_norm_epsilon"]
    if config["normalization"] == "rms_norm":
        return RMSNorm(epsilon=epsilon, name=name)
    use_bias = config["use_bias"]
    center = use_bias if isinstance(use_bias, bool) else "norm" in use_bias
    return LayerNormalization(epsilon=epsilon, center=center, name=name)


def scaling(scale, soft_cap, name):
    """A :class:`Scaling` layer, or None when both settings are off."""
    if scale is None and soft_cap is None:
        return None
    return Scaling(scale, soft_cap, name=name)


@keras.saving.register_keras_serializable(package="keras_attention")
class Scaling(keras.layers.Layer):
    """`y = x * scale`, then with `soft_cap` `soft_cap * tanh(y / soft_cap)`: the
    embedding scale (Gemma's `sqrt(d)`) and the logit scale and final soft-cap
    (Gemma 2). No weights; the Keras mask passes through (for `fit`'s loss)."""

    def __init__(self, scale=None, soft_cap=None, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale
        self.soft_cap = soft_cap
        self.supports_masking = True

    def call(self, inputs):
        x = inputs
        if self.scale is not None:
            x = x * ops.cast(self.scale, x.dtype)
        if self.soft_cap is not None:
            cap = ops.cast(self.soft_cap, x.dtype)
            x = ops.tanh(x / cap) * cap
        return x

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "soft_cap": self.soft_cap}

"""Argument checks, configs and layer factories shared by the builders and model
classes. A `config` here is the dict of a model's constructor arguments."""

from keras_attention import _validation
from keras_attention.layers.positional import TokenAndPositionEmbedding
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
    if embedding_dim % num_heads:
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
        position=config["position"],
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

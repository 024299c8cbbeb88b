"""Samplers for `generate`: greedy, random (temperature), top-k, top-p and beam search."""

import keras

from keras_attention.models.samplers.beam_sampler import BeamSampler
from keras_attention.models.samplers.greedy_sampler import GreedySampler
from keras_attention.models.samplers.random_sampler import RandomSampler
from keras_attention.models.samplers.sampler import Sampler
from keras_attention.models.samplers.top_k_sampler import TopKSampler
from keras_attention.models.samplers.top_p_sampler import TopPSampler

__all__ = [
    "Sampler",
    "GreedySampler",
    "RandomSampler",
    "TopKSampler",
    "TopPSampler",
    "BeamSampler",
    "get",
    "serialize",
]

_BY_NAME = {
    "greedy": GreedySampler,
    "random": RandomSampler,
    "top_k": TopKSampler,
    "top_p": TopPSampler,
    "beam": BeamSampler,
}


def get(identifier):
    """A sampler from a name (`"greedy"`, `"random"`, `"top_k"`, `"top_p"`,
    `"beam"`, with default arguments), a config dict from :func:`serialize`, or a
    `Sampler` instance (returned as is).

    Example:
    >>> get("top_p")
    TopPSampler(p=0.9, k=None, temperature=1.0)
    """
    if isinstance(identifier, Sampler):
        return identifier
    if isinstance(identifier, str) and identifier in _BY_NAME:
        return _BY_NAME[identifier]()
    if isinstance(identifier, dict):
        sampler = keras.saving.deserialize_keras_object(identifier)
        if isinstance(sampler, Sampler):
            return sampler
    raise ValueError(
        f"`sampler` must be one of {sorted(_BY_NAME)}, a Sampler instance or a "
        f"serialized sampler. Received: sampler={identifier!r}"
    )


def serialize(sampler):
    """The config dict of a sampler (`keras.saving.serialize_keras_object`)."""
    return keras.saving.serialize_keras_object(sampler)

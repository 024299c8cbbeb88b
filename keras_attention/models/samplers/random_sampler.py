"""`RandomSampler`: a draw from the whole (temperature-scaled) distribution."""

import keras

from keras_attention.models.samplers.sampler import Sampler


@keras.saving.register_keras_serializable(package="keras_attention")
class RandomSampler(Sampler):
    """Sampling from `softmax(logits / temperature)` over the whole vocabulary.

    Args:
        temperature: positive float.

    Example:
    >>> import numpy as np
    >>> sampler = RandomSampler(temperature=0.7)
    >>> token = sampler.next_token(np.zeros((1, 5), "float32"),
    ...                            np.random.rand(1, 5).astype("float32"))
    >>> 0 <= int(token[0]) < 5
    True
    """

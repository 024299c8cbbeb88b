"""`GreedySampler`: always the most likely next token."""

import keras
from keras import ops

from keras_attention.models.samplers.sampler import Sampler


@keras.saving.register_keras_serializable(package="keras_attention")
class GreedySampler(Sampler):
    """Greedy decoding: the next token is `argmax(logits)` (ties: the lowest id).

    Example:
    >>> int(GreedySampler().next_token([[0.1, 3.0, 2.0]], None)[0])
    1
    """

    is_random = False

    def __init__(self):
        super().__init__(temperature=1.0)

    def next_token(self, logits, uniform_noise=None):
        return ops.cast(ops.argmax(logits, axis=-1), "int32")

    def get_config(self):
        return {}

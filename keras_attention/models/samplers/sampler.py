"""`Sampler`: the base class that turns next-token logits into the next token."""

import numbers

import keras
from keras import ops

from keras_attention.models._configurable import Configurable


def check_positive_float(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"`{name}` must be a positive float. Received: {name}={value!r}")


def gumbel_argmax(logits, uniform_noise):
    """One draw from `softmax(logits)` per row: `argmax(logits + Gumbel noise)`.

    The Gumbel-max trick samples exactly from the categorical distribution and,
    unlike `keras.random.categorical`, takes its noise as an argument, so the
    generation loop can derive it from the user's seed and the step index.
    """
    tiny = ops.cast(1e-20, uniform_noise.dtype)
    gumbel = -ops.log(-ops.log(ops.maximum(uniform_noise, tiny)))
    return ops.cast(ops.argmax(logits + gumbel, axis=-1), "int32")


@keras.saving.register_keras_serializable(package="keras_attention")
class Sampler(Configurable):
    """Base class of the samplers: logits `(batch, vocabulary)` -> tokens `(batch,)`.

    A sampler draws from `softmax(logits / temperature)`, restricted by
    :meth:`filter_logits` (top-k, top-p). Subclasses override `filter_logits` or
    `next_token`; `get_config()` returns the constructor arguments, so a sampler
    can be serialized with `keras.saving.serialize_keras_object`.

    Args:
        temperature: positive float; `< 1` sharpens, `> 1` flattens the distribution.

    Example:
    >>> import numpy as np
    >>> logits = np.log(np.array([[0.1, 0.2, 0.7]], "float32"))
    >>> noise = np.full((1, 3), 0.5, "float32")
    >>> int(Sampler().next_token(logits, noise)[0])
    2
    """

    #: whether `next_token` needs uniform noise (greedy and beam search do not)
    is_random = True

    def __init__(self, temperature=1.0):
        check_positive_float(temperature, "temperature")
        self.temperature = float(temperature)

    def filter_logits(self, logits):
        """Logits with the tokens this sampler never emits set to `-inf`."""
        return logits

    def sampling_logits(self, logits):
        """The logits of the distribution `next_token` draws from: scaled by the
        temperature and filtered (tokens never emitted at `-inf`). Speculative
        sampling compares these distributions of the target and the draft."""
        logits = ops.convert_to_tensor(logits)
        return self.filter_logits(logits / ops.cast(self.temperature, logits.dtype))

    def next_token(self, logits, uniform_noise):
        """The next tokens `(batch,)` int32 for float `logits (batch, vocabulary)`,
        using `uniform_noise` (same shape, uniform in `[0, 1)`)."""
        logits = ops.convert_to_tensor(logits)
        logits = self.filter_logits(logits / ops.cast(self.temperature, logits.dtype))
        return gumbel_argmax(logits, ops.convert_to_tensor(uniform_noise))

    def get_config(self):
        return {"temperature": self.temperature}

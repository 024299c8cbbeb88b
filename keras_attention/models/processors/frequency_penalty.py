"""`FrequencyPenalty`: OpenAI's frequency penalty, growing with each repetition."""

import keras

from keras_attention.models.processors.presence_penalty import OpenAIPenalty


@keras.saving.register_keras_serializable(package="keras_attention")
class FrequencyPenalty(OpenAIPenalty):
    """The frequency penalty of OpenAI's API: `logit[j] - penalty * count[j]`.

    `count[j]` is how often token `j` was generated so far in the row (the prompt is
    not counted, as in OpenAI's definition), so every repetition lowers the logit
    again. Combine with :class:`PresencePenalty` for OpenAI's full formula
    `logit[j] - count[j] * frequency - (count[j] > 0) * presence`.

    Args:
        penalty: float in `[-2, 2]` (OpenAI's range).

    Example:
    >>> import numpy as np
    >>> from keras_attention.models.processors import ProcessorContext
    >>> context = ProcessorContext(np.array([[1, 2, 2, 0]]), np.array([1]), 3, np.array([2]))
    >>> logits = np.zeros((1, 4), "float32")
    >>> out = keras.ops.convert_to_numpy(FrequencyPenalty(0.5)(logits, context))
    >>> out.tolist()
    [[0.0, 0.0, -1.0, 0.0]]
    """

    def weight(self, counts):
        return counts

"""`PresencePenalty`: OpenAI's presence penalty on tokens already generated."""

import keras
from keras import ops

from keras_attention.models.processors.processor import (
    LogitsProcessor,
    check_number,
    token_counts,
)


class OpenAIPenalty(LogitsProcessor):
    """The shared body of OpenAI's presence and frequency penalties:
    `logit[j] - penalty * weight(count[j])`, `count[j]` being how often token `j` was
    generated so far in the row (the prompt is not counted)."""

    def __init__(self, penalty):
        self.penalty = check_number(
            penalty, "penalty", lambda v: -2 <= v <= 2, "a number in [-2, 2]"
        )

    def weight(self, counts):
        """What the penalty multiplies (bool or float), from the float32 counts."""
        raise NotImplementedError(f"{type(self).__name__} must implement weight")

    def __call__(self, logits, context):
        logits = ops.convert_to_tensor(logits)
        counts = token_counts(context.tokens, context.generated_mask(), ops.shape(logits)[-1])
        return logits - self.penalty * ops.cast(self.weight(counts), logits.dtype)

    def get_config(self):
        return {"penalty": self.penalty}


@keras.saving.register_keras_serializable(package="keras_attention")
class PresencePenalty(OpenAIPenalty):
    """The presence penalty of OpenAI's API: `logit[j] - penalty * (count[j] > 0)`.

    `count[j]` is how often token `j` was generated so far in the row (the prompt is
    not counted, as in OpenAI's definition: "how often the token was sampled prior
    to the current position"). A positive penalty pushes the model towards tokens it
    has not used yet; a negative one towards repeating.

    Args:
        penalty: float in `[-2, 2]` (OpenAI's range).

    Example:
    >>> import numpy as np
    >>> from keras_attention.models.processors import ProcessorContext
    >>> context = ProcessorContext(np.array([[1, 2, 2, 0]]), np.array([1]), 3, np.array([2]))
    >>> logits = np.zeros((1, 4), "float32")
    >>> out = keras.ops.convert_to_numpy(PresencePenalty(0.5)(logits, context))
    >>> out.tolist()
    [[0.0, 0.0, -0.5, 0.0]]
    """

    def weight(self, counts):
        return counts > 0

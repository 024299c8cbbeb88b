"""`RepetitionPenalty`: the CTRL repetition penalty on tokens already in the text."""

import keras
from keras import ops

from keras_attention.models.processors.processor import (
    LogitsProcessor,
    check_number,
    token_counts,
)


@keras.saving.register_keras_serializable(package="keras_attention")
class RepetitionPenalty(LogitsProcessor):
    """The repetition penalty of CTRL (Keskar et al., 2019), as Hugging Face's
    `repetition_penalty`.

    For every token that occurs in the text so far (prompt and generated tokens):
    `logit / penalty` if the logit is positive, `logit * penalty` otherwise, so
    `penalty > 1` makes repeating less likely and `penalty < 1` more likely.

    Args:
        penalty: positive float; `1` changes nothing.

    Example:
    >>> import numpy as np
    >>> from keras_attention.models.processors import ProcessorContext
    >>> context = ProcessorContext(np.array([[2, 0]]), np.array([1]), 1, np.array([0]))
    >>> logits = np.array([[1.0, -1.0, 1.0, -1.0]], "float32")
    >>> keras.ops.convert_to_numpy(RepetitionPenalty(2.0)(logits, context)).tolist()
    [[1.0, -1.0, 0.5, -1.0]]
    """

    def __init__(self, penalty):
        self.penalty = check_number(penalty, "penalty", lambda v: v > 0, "a number > 0")

    def __call__(self, logits, context):
        logits = ops.convert_to_tensor(logits)
        seen = token_counts(context.tokens, context.text_mask(), ops.shape(logits)[-1]) > 0
        penalized = ops.where(logits < 0, logits * self.penalty, logits / self.penalty)
        return ops.where(seen, penalized, logits)

    def get_config(self):
        return {"penalty": self.penalty}

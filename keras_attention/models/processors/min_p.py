"""`MinP`: keep the tokens at least `min_p` times as likely as the most likely one."""

import math

import keras
from keras import ops

from keras_attention.models.processors.processor import LogitsProcessor, ban, check_number


@keras.saving.register_keras_serializable(package="keras_attention")
class MinP(LogitsProcessor):
    """Min-p filtering (Nguyen et al., 2024; Hugging Face's `min_p`): keep the tokens
    with `softmax(logits)[j] >= min_p * max(softmax(logits))`, the others get `-inf`.

    The threshold scales with the model's confidence: a sure model keeps few tokens,
    an unsure one many. The probabilities are those of the logits the processor
    receives, before the sampler's temperature (llama.cpp's default order; Hugging
    Face applies the temperature first). It is computed in log space,
    `logit[j] - max(logit) >= log(min_p)`, which is the same test without `exp`.

    Args:
        min_p: float in `[0, 1]`; `0` keeps every token, `1` only the most likely.

    Example:
    >>> import numpy as np
    >>> logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], "float32"))
    >>> np.isinf(keras.ops.convert_to_numpy(MinP(0.2)(logits, None))).tolist()
    [[False, False, False, True]]
    """

    def __init__(self, min_p):
        self.min_p = check_number(min_p, "min_p", lambda v: 0 <= v <= 1, "a number in [0, 1]")

    def __call__(self, logits, context):
        logits = ops.convert_to_tensor(logits)
        if self.min_p == 0:
            return logits
        gap = logits - ops.max(logits, axis=-1, keepdims=True)
        return ban(logits, gap < math.log(self.min_p))

    def get_config(self):
        return {"min_p": self.min_p}

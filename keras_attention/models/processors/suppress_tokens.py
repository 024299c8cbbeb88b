"""`SuppressTokens`: tokens that are never generated."""

import keras
from keras import ops

from keras_attention.models.processors.processor import (
    LogitsProcessor,
    ban,
    check_ids,
    check_ids_in_vocabulary,
    token_mask,
)


@keras.saving.register_keras_serializable(package="keras_attention")
class SuppressTokens(LogitsProcessor):
    """Give `token_ids` the logit `-inf` at every step (Hugging Face's
    `suppress_tokens`): they are never generated (a prompt may still hold them).

    Args:
        token_ids: a token id or a non-empty list of them.

    Example:
    >>> import numpy as np
    >>> keras.ops.convert_to_numpy(SuppressTokens([1])(np.zeros((1, 3), "float32"), None)).tolist()
    [[0.0, -inf, 0.0]]
    """

    def __init__(self, token_ids):
        self.token_ids = check_ids(token_ids, "token_ids")

    def check_vocabulary(self, vocabulary_size):
        check_ids_in_vocabulary(self.token_ids, "token_ids", vocabulary_size)

    def __call__(self, logits, context):
        logits = ops.convert_to_tensor(logits)
        return ban(logits, token_mask(self.token_ids, logits.shape[-1])[None, :])

    def get_config(self):
        return {"token_ids": list(self.token_ids)}

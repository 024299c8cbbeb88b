"""`MinNewTokens`: no stop token before a row has generated `min_new_tokens` tokens."""

import keras
from keras import ops

from keras_attention.models.processors.processor import (
    LogitsProcessor,
    ban,
    check_count,
    check_ids,
    check_ids_in_vocabulary,
    token_mask,
)


@keras.saving.register_keras_serializable(package="keras_attention")
class MinNewTokens(LogitsProcessor):
    """Hugging Face's `min_new_tokens`: the stop tokens get `-inf` while a row has
    generated fewer than `min_new_tokens` tokens, so its first
    `min_new_tokens` new tokens are never a stop token.

    Args:
        min_new_tokens: int `>= 0`.
        stop_token_ids: a token id or a non-empty list of them (usually the
            `stop_token_ids` given to `generate`).

    Example:
    >>> import numpy as np
    >>> from keras_attention.models.processors import ProcessorContext
    >>> context = ProcessorContext(np.array([[1, 0]]), np.array([1]), 1, np.array([0]))
    >>> logits = np.zeros((1, 3), "float32")
    >>> out = keras.ops.convert_to_numpy(MinNewTokens(1, stop_token_ids=[2])(logits, context))
    >>> out.tolist()
    [[0.0, 0.0, -inf]]
    """

    def __init__(self, min_new_tokens, stop_token_ids):
        self.min_new_tokens = check_count(min_new_tokens, "min_new_tokens", 0)
        self.stop_token_ids = check_ids(stop_token_ids, "stop_token_ids")

    def check_vocabulary(self, vocabulary_size):
        check_ids_in_vocabulary(self.stop_token_ids, "stop_token_ids", vocabulary_size)

    def __call__(self, logits, context):
        logits = ops.convert_to_tensor(logits)
        early = ops.convert_to_tensor(context.new_token_counts) < self.min_new_tokens
        stop = token_mask(self.stop_token_ids, logits.shape[-1])[None, :]
        return ban(logits, ops.logical_and(early[:, None], stop))

    def get_config(self):
        return {"min_new_tokens": self.min_new_tokens, "stop_token_ids": list(self.stop_token_ids)}

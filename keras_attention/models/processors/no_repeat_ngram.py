"""`NoRepeatNGram`: no n-gram occurs twice in the text."""

import keras
from keras import ops

from keras_attention.models.processors.processor import (
    LogitsProcessor,
    ban,
    check_count,
    token_counts,
)


@keras.saving.register_keras_serializable(package="keras_attention")
class NoRepeatNGram(LogitsProcessor):
    """Hugging Face's `no_repeat_ngram_size`: ban every token that would complete an
    n-gram already present in the text (prompt and generated tokens).

    At position `index` the last `ngram_size - 1` tokens are compared with every
    window of the buffer at once (one shifted copy of the buffer per n-gram
    position, a static loop over `ngram_size`); where a window matches and its
    n-gram lies inside the text, the n-gram's last token is banned.
    `ngram_size=1` bans every token already in the text.

    Args:
        ngram_size: positive int.

    Example:
    >>> import numpy as np
    >>> from keras_attention.models.processors import ProcessorContext
    >>> tokens = np.array([[1, 2, 3, 1, 0]])  # the text ends in 1; "1 2" occurred
    >>> context = ProcessorContext(tokens, np.array([4]), 4, np.array([0]))
    >>> logits = np.zeros((1, 4), "float32")
    >>> out = keras.ops.convert_to_numpy(NoRepeatNGram(2)(logits, context))
    >>> np.isinf(out).tolist()
    [[False, False, True, False]]
    """

    def __init__(self, ngram_size):
        self.ngram_size = check_count(ngram_size, "ngram_size", 1)

    def __call__(self, logits, context):
        logits = ops.convert_to_tensor(logits)
        n = self.ngram_size
        tokens = ops.cast(context.tokens, "int32")
        previous, valid = context.previous_tokens(n - 1)
        # Column s starts the n-gram tokens[s : s + n]; rolled copies put its j-th
        # token in column s (a column that wraps around lies past the text).
        index = ops.convert_to_tensor(context.index, "int32")
        match = context.positions() + (n - 1) < index
        match = ops.logical_and(match, ops.all(valid))
        for j in range(n - 1):
            shifted = ops.roll(tokens, -j, axis=1)
            match = ops.logical_and(match, shifted == previous[:, j : j + 1])
        completions = ops.roll(tokens, -(n - 1), axis=1)
        match = ops.broadcast_to(match, ops.shape(tokens))
        return ban(logits, token_counts(completions, match, ops.shape(logits)[-1]) > 0)

    def get_config(self):
        return {"ngram_size": self.ngram_size}

"""`BannedSequences`: token sequences that never appear in the generated text."""

import numbers

import keras
import numpy as np
from keras import ops

from keras_attention.models.processors.processor import (
    LogitsProcessor,
    ban,
    check_ids_in_vocabulary,
    token_counts,
    token_mask,
)


def _check_sequences(sequences):
    def is_id(i):
        return isinstance(i, (numbers.Integral, np.integer)) and not isinstance(i, bool) and i >= 0

    ok = isinstance(sequences, (list, tuple)) and len(sequences) > 0
    ok = ok and all(
        isinstance(s, (list, tuple, np.ndarray)) and len(s) > 0 and all(is_id(i) for i in s)
        for s in sequences
    )
    if not ok:
        raise ValueError(
            "`sequences` must be a non-empty list of non-empty token id lists "
            f"(integers >= 0), e.g. [[5], [7, 8]]. Received: sequences={sequences!r}"
        )
    return tuple(tuple(int(i) for i in s) for s in sequences)


@keras.saving.register_keras_serializable(package="keras_attention")
class BannedSequences(LogitsProcessor):
    """Hugging Face's `bad_words_ids`: a sequence's last token is banned wherever the
    text ends with the rest of the sequence; a one-token sequence is always banned.

    All sequences are matched at once: their prefixes, right-aligned in a constant
    `(num_sequences, longest - 1)` table, are compared with the text's last tokens.

    Args:
        sequences: a non-empty list of non-empty token id lists.

    Example:
    >>> import numpy as np
    >>> from keras_attention.models.processors import ProcessorContext
    >>> context = ProcessorContext(np.array([[3, 1, 0]]), np.array([2]), 2, np.array([0]))
    >>> banned = BannedSequences([[0], [1, 2], [3, 3]])
    >>> np.isinf(keras.ops.convert_to_numpy(banned(np.zeros((1, 4), "float32"), context))).tolist()
    [[True, False, True, False]]
    """

    def __init__(self, sequences):
        self.sequences = _check_sequences(sequences)

    def check_vocabulary(self, vocabulary_size):
        ids = sorted({i for s in self.sequences for i in s})
        check_ids_in_vocabulary(ids, "sequences", vocabulary_size)

    def __call__(self, logits, context):
        logits = ops.convert_to_tensor(logits)
        vocabulary = logits.shape[-1]
        singles = [s[0] for s in self.sequences if len(s) == 1]
        banned = ops.convert_to_tensor(token_mask(singles, vocabulary)[None, :])
        longer = [s for s in self.sequences if len(s) > 1]
        if longer:
            width = max(len(s) for s in longer) - 1
            # -1 marks the columns left of a shorter prefix: they match anything.
            prefixes = np.full((len(longer), width), -1, "int32")
            for k, s in enumerate(longer):
                prefixes[k, width - len(s) + 1 :] = s[:-1]
            previous, valid = context.previous_tokens(width)
            equal = ops.logical_and(
                ops.cast(previous, "int32")[:, None, :] == prefixes[None], valid[None, None, :]
            )
            match = ops.all(ops.logical_or(prefixes[None] < 0, equal), axis=-1)
            last = np.array([s[-1] for s in longer], "int32")[None, :]
            last = ops.broadcast_to(last, ops.shape(match))
            banned = ops.logical_or(banned, token_counts(last, match, vocabulary) > 0)
        return ban(logits, banned)

    def get_config(self):
        return {"sequences": [list(s) for s in self.sequences]}

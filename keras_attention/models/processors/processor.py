"""`LogitsProcessor`, the base class of the logits processors, the `ProcessorContext`
they read, and the shared pieces: token counts over the buffer, banning, checks.

A processor is a pure function of `(logits, context)` in `keras.ops`, traced into the
compiled generation loop: every shape is static (the buffer keeps its full width,
the positions not written yet are masked out by `index`), and there is no Python
loop over data.
"""

import collections
import numbers

import keras
import numpy as np
from keras import ops

from keras_attention.models._configurable import Configurable

NEGATIVE_INFINITY = float("-inf")


class ProcessorContext(
    collections.namedtuple(
        "ProcessorContext", ["tokens", "prompt_lengths", "index", "new_token_counts"]
    )
):
    """What a processor may read besides the logits, at one decoding step.

    Attributes:
        tokens: int32 `(batch, width)`, the generation buffer: each row's prompt
            (left-aligned), then its new tokens. Only positions `< index` are the text
            so far; the positions after hold padding (or a longer row's prompt).
        prompt_lengths: int32 `(batch,)`, each row's prompt length.
        index: int32 scalar, the position of the token being chosen.
        new_token_counts: int32 `(batch,)`, the tokens each row has generated.

    A row still inside its prompt (`index < prompt_lengths`) keeps its prompt token
    whatever the logits say.
    """

    __slots__ = ()

    def positions(self):
        """int32 `(1, width)`: the position of each buffer column."""
        return ops.arange(ops.shape(self.tokens)[1], dtype="int32")[None, :]

    def text_mask(self):
        """bool `(batch, width)`: `True` for the prompt and the generated tokens."""
        text = ops.less(self.positions(), ops.convert_to_tensor(self.index, "int32"))
        return ops.broadcast_to(text, ops.shape(self.tokens))

    def generated_mask(self):
        """bool `(batch, width)`: `True` for the generated tokens only."""
        lengths = ops.convert_to_tensor(self.prompt_lengths, "int32")
        return ops.logical_and(self.text_mask(), self.positions() >= lengths[:, None])

    def previous_tokens(self, n):
        """The last `n` tokens of the text, `(tokens (batch, n), valid (n,))`:
        `valid[j]` is `False` where `index - n + j` is before the buffer's start."""
        index = ops.convert_to_tensor(self.index, "int32")
        wanted = index - n + ops.arange(n, dtype="int32")
        tokens = ops.take(ops.cast(self.tokens, "int32"), ops.maximum(wanted, 0), axis=1)
        return tokens, wanted >= 0


def token_counts(tokens, weights, vocabulary_size):
    """float32 `(batch, vocabulary_size)`: for each row, the sum of `weights` over the
    positions holding each token id (`weights` `(batch, n)`, bool or float)."""
    batch, width = ops.shape(tokens)[0], ops.shape(tokens)[1]
    rows = ops.broadcast_to(ops.arange(batch, dtype="int32")[:, None], (batch, width))
    indices = ops.reshape(ops.stack([rows, ops.cast(tokens, "int32")], axis=-1), (-1, 2))
    values = ops.reshape(ops.cast(weights, "float32"), (-1,))
    zeros = ops.zeros((batch, vocabulary_size), "float32")
    return ops.scatter_update(zeros, indices, values, reduction="add")


def ban(logits, banned):
    """`logits` with `-inf` where `banned` (bool, broadcast to `logits`) is `True`."""
    return ops.where(banned, NEGATIVE_INFINITY, logits)


def token_mask(token_ids, vocabulary_size):
    """A constant bool `(vocabulary_size,)`, `True` at `token_ids`."""
    mask = np.zeros((vocabulary_size,), bool)
    mask[list(token_ids)] = True
    return mask


def check_number(value, name, accept, expected):
    """`value` as a float, or a `ValueError` naming `name` unless it is a finite real
    number for which `accept(value)` holds (`expected` says which)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not np.isfinite(value)
        or not accept(value)
    ):
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")
    return float(value)


def check_count(value, name, minimum):
    """`value` as an int, or a `ValueError` naming `name` if it is not an int `>= minimum`."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        bad = True
    else:
        bad = value < minimum
    if bad:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def check_ids(ids, name, allow_empty=False):
    """`ids` (one id or several) as a tuple of ints `>= 0`, or a `ValueError`."""
    if isinstance(ids, (numbers.Integral, np.integer)) and not isinstance(ids, bool):
        ids = [ids]
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (list, tuple, np.ndarray)):
        bad = True
    else:
        ids = list(ids)
        bad = (not ids and not allow_empty) or any(
            isinstance(i, bool) or not isinstance(i, (numbers.Integral, np.integer)) or i < 0
            for i in ids
        )
    if bad:
        raise ValueError(
            f"`{name}` must be a non-empty list of token ids (integers >= 0). "
            f"Received: {name}={ids!r}"
        )
    return tuple(int(i) for i in ids)


def check_ids_in_vocabulary(ids, name, vocabulary_size):
    """A `ValueError` naming `name` if an id is not below `vocabulary_size`."""
    outside = [i for i in ids if i >= vocabulary_size]
    if outside:
        raise ValueError(
            f"`{name}` must be token ids in [0, vocabulary_size={vocabulary_size}). "
            f"Received: {name} with {outside!r}"
        )


@keras.saving.register_keras_serializable(package="keras_attention")
class LogitsProcessor(Configurable):
    """Base class of the logits processors: `(logits, context)` -> logits.

    A processor changes the next-token logits `(batch, vocabulary)` before the
    sampler (every sampler, beam search included) turns them into tokens; a token
    it bans gets `-inf`. `context` is a :class:`ProcessorContext` (the token buffer,
    the prompt lengths, the position and the new-token counts). Processors are
    pure `keras.ops`, traced into the compiled loop; their settings are static, so
    `get_config()` returns the constructor arguments and two processors with the
    same config are equal (the compiled-function cache keys on them).

    Example:
    >>> import numpy as np
    >>> class Halve(LogitsProcessor):
    ...     def __call__(self, logits, context):
    ...         return logits / 2
    >>> keras.ops.convert_to_numpy(Halve()(np.ones((1, 3), "float32"), None)).tolist()
    [[0.5, 0.5, 0.5]]
    """

    def __call__(self, logits, context):
        raise NotImplementedError(f"{type(self).__name__} must implement __call__")

    def check_vocabulary(self, vocabulary_size):
        """Raise a `ValueError` if a token id of this processor is not below
        `vocabulary_size` (called by `generate` before compiling)."""

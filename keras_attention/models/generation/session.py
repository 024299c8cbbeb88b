"""Multi-turn generation: the `GenerationState` that `generate(..., return_state=True)`
returns, and the continuation that runs only a new turn's tokens through the model.

A state holds the key/value caches of `max_length` positions, each row's tokens so far
(its history) and how far the caches were written. A continuation lays out every row
as `history + new tokens`, as a fresh `generate()` of the whole history would, and
runs from the first position some row has not in the cache: the rows' histories may
end at different positions (prompts of different lengths, stop tokens), and the loop
of the previous turn wrote the positions after a row's end for the other rows. From
there it is the loop of `generate()`: the new tokens in one call (keeping the
positions every row has), then one token a step.

A sliding-window ring cache keeps only the last `window` positions, so it cannot go
back: a continuation must start where the previous turn's cache writes ended (or one
position before, which rewrites that key), which holds when every row's history ends
at the same position (always for one row).
"""

import functools
import weakref

import numpy as np
from keras import ops

from keras_attention import _validation
from keras_attention.models import samplers as samplers_lib
from keras_attention.models.generation import speculative
from keras_attention.models.generation.state import initial_loop_vars

# The default `max_length` of a new state: the first turn rounded up to a multiple of
# this, leaving room for a next turn.
_ROUND_MAX_LENGTH = 128


class GenerationState:
    """What a conversation carries from one `generate()` call to the next.

    Returned by `generate(..., return_state=True)` and continued by
    `generate(new_tokens, max_new_tokens, state=state)`, which prefills only the new
    tokens. A state is never changed by a continuation (each returns a new one), so
    one state can be continued more than once (branches of a conversation).

    Attributes:
        caches: the model's key/value caches, one tensor per decoder layer.
        tokens: numpy int32 `(batch, max_length)`; row `i`'s history is
            `tokens[i, :lengths[i]]`, padding after.
        lengths: numpy int32 `(batch,)`, the number of tokens of each row's history.
        written: int, the caches hold positions `[0, written)` (of every row's own
            tokens up to its history's end).
        max_length: int, the number of positions of the caches: a conversation
            (history, new tokens and new tokens generated) must fit it.
    """

    def __init__(self, model, caches, tokens, lengths, written):
        self._model = weakref.ref(model)
        self.caches = list(caches)
        self.tokens = tokens
        self.lengths = lengths
        self.written = int(written)

    @property
    def max_length(self):
        return self.tokens.shape[1]

    @property
    def batch_size(self):
        return self.tokens.shape[0]

    def history(self):
        """Each row's tokens so far: a list of numpy int32 arrays."""
        return [self.tokens[i, :length] for i, length in enumerate(self.lengths)]

    def __repr__(self):
        return (
            f"GenerationState(batch_size={self.batch_size}, max_length={self.max_length}, "
            f"lengths={self.lengths.tolist()})"
        )


def generate_with_state(model, generate_arguments, state, max_length, return_state):
    """`generate()` from a state (or a new one), returning `(tokens, new state)` or
    the tokens: laid out as `generate(history + new tokens)` returns them.

    `generate_arguments` are `generate()`'s `GenerateArguments`; `prompt` holds the
    new tokens."""
    settings, tokens, lengths, seed = model._check_generate_arguments(generate_arguments)
    if isinstance(settings.sampler, samplers_lib.BeamSampler):
        raise ValueError(
            "`return_state` and `state` work with the greedy and random samplers; beam "
            f"search keeps several rows a sequence. Received: sampler={settings.sampler!r}"
        )
    new = settings.max_new_tokens
    reach = max(speculative.extra_positions(settings.speculation) - 1, 0)
    if state is None:
        max_length = _check_max_length(model, max_length, int(lengths.max()) + new, reach)
        empty = np.full((len(tokens), max_length), settings.pad_token_id, "int32")
        caches = model.initial_cache(len(tokens), max_length)
        state = GenerationState(model, caches, empty, np.zeros_like(lengths), 0)
    else:
        _check_state(model, state, max_length, len(tokens))
    _check_speculation(settings, state, reach)
    total_lengths = state.lengths + lengths
    longest = int(total_lengths.max())
    if longest + new > state.max_length:
        raise ValueError(
            "The conversation does not fit the `state`'s cache (max_length="
            f"{state.max_length}; pass a larger `max_length` to the first "
            "`generate(..., return_state=True)`). Received: longest history plus new "
            f"tokens {longest}, max_new_tokens={new}"
        )
    buffer = np.full(state.tokens.shape, settings.pad_token_id, "int32")
    for i, (history, length) in enumerate(zip(state.lengths, lengths)):
        buffer[i, :history] = state.tokens[i, :history]
        buffer[i, history : history + length] = tokens[i, :length]
    start = _start(state)
    arguments = [buffer, total_lengths, buffer[:, start:longest], np.int32(start), seed]
    arguments = [ops.convert_to_tensor(x) for x in arguments]
    compile = generate_arguments.compile
    continuation = functools.partial(_continue, model)
    function = model._generation_function(("state", settings), continuation, settings, compile)
    index, buffer, caches, count = function(*arguments, state.caches)
    buffer, count = ops.convert_to_numpy(buffer), ops.convert_to_numpy(count)
    output = buffer[:, : longest + new].astype("int32")
    if not return_state:
        return output
    written = int(ops.convert_to_numpy(index)) - 1
    return output, GenerationState(model, caches, buffer, total_lengths + count, written)


def _check_max_length(model, max_length, needed, reach=0):
    """The `max_length` of a new state; `reach`: the positions past it that the
    speculative verifying calls reach (a learned position table must hold them)."""
    embedding = model.decoder_embedding
    learned = embedding.position == "learned"
    if max_length is None:
        rounded = -(-needed // _ROUND_MAX_LENGTH) * _ROUND_MAX_LENGTH
        if learned:
            rounded = min(rounded, embedding.sequence_length - reach)
        return max(rounded, needed)
    _validation.check_positive_int(max_length, "max_length")
    if max_length < needed:
        raise ValueError(
            "`max_length` (the cache positions of the conversation) must hold the "
            f"longest prompt plus `max_new_tokens` ({needed}). Received: max_length={max_length}"
        )
    if learned and max_length + reach > embedding.sequence_length:
        extra = f" with `num_draft_tokens` - 1 ({reach}) more" if reach else ""
        raise ValueError(
            f"`max_length`{extra} must fit the model's learned position table "
            f"(sequence_length={embedding.sequence_length}). Received: max_length={max_length}"
        )
    return max_length


def _check_speculation(settings, state, reach):
    """Speculative decoding continues a state unless its caches are sliding-window
    rings (a ring cannot make room for the rejected drafts of a turn); a draft
    model's learned positions must hold the verifying calls' reach too."""
    speculation = settings.speculation
    if speculation is None:
        return
    argument = "prompt_lookup" if speculation.draft_model is None else "draft_model"
    if any(cache.shape[1] < state.max_length for cache in state.caches):
        raise ValueError(
            f"`state` (a conversation) does not combine with `{argument}` on a model "
            "with a sliding-window (ring) cache: the ring has no room for the rejected "
            "drafts of a turn. Received: a state of a sliding-window model and "
            f"{argument}={getattr(speculation.draft_model, 'name', speculation.prompt_lookup)!r}"
        )
    if speculation.draft_model is not None:
        _check_max_length(speculation.draft_model, state.max_length, 0, reach)


def _check_state(model, state, max_length, batch_size):
    if not isinstance(state, GenerationState):
        raise ValueError(
            "`state` must be the GenerationState returned by `generate(..., "
            f"return_state=True)`. Received: state of type {type(state).__name__}"
        )
    if state._model() is not model:
        raise ValueError(
            f"`state` comes from another model; it can only continue the model that "
            f"made it. Received: a state of {state._model()!r}, model '{model.name}'"
        )
    if max_length is not None and max_length != state.max_length:
        raise ValueError(
            "`max_length` is fixed by the `state` (its caches have "
            f"{state.max_length} positions). Received: max_length={max_length}"
        )
    if batch_size != state.batch_size:
        raise ValueError(
            f"The new tokens must have the `state`'s batch size ({state.batch_size}). "
            f"Received: prompt batch={batch_size}"
        )


def _start(state):
    """The first position some row has not in the caches: the prefill starts there."""
    start = min(int(state.lengths.min()), state.written)
    # A ring (fewer slots than positions) holds only the newest positions.
    ring = any(cache.shape[1] < state.max_length for cache in state.caches)
    if ring and start < state.written - 1:
        raise ValueError(
            "With a sliding-window cache, a `state` can be continued only when every "
            "row's history ends at the same position (the ring has dropped the keys "
            "a shorter row would need again). Received: a state with history lengths "
            f"{state.lengths.tolist()}; continue its rows one at a time"
        )
    return start


def _continue(model, settings, mode, buffer, lengths, new_tokens, start, seed, caches):
    """The new tokens `buffer[:, start:longest]` into the caches at `start` (keeping
    the positions every row has), then the token loop to the end of the buffer:
    `(index, buffer, caches, count)`."""
    model._generation_functions().traces += 1
    lengths = ops.cast(lengths, "int32")
    if settings.speculation is not None:
        return speculative.continue_speculation(
            model, settings, mode, buffer, lengths, new_tokens, start, seed, caches
        )
    _, caches = model.call_with_cache(
        new_tokens,
        caches,
        start,
        model._key_mask(buffer),
        return_logits=False,
        cache_write_length=ops.min(lengths) - start,
    )
    loop_vars = initial_loop_vars(ops.min(lengths), buffer, caches)
    end = ops.shape(buffer)[1]
    index, buffer, caches, _, count = model._sampling_loop(
        settings, mode, loop_vars, lengths, seed, None, end
    )
    return index, buffer, caches, count

"""What one generation carries: its static settings, the encoder's output, the
compiled functions of a model, and the per-step stop bookkeeping."""

import collections

from keras import ops

# The static settings of one generation (a hashable key of the compiled functions).
# `max_new_tokens` is an int, or an int32 scalar tensor inside a traced export;
# `processors` a tuple of `LogitsProcessor`s (hashable by their config);
# `speculation` a `speculative.Speculation`, or None for the plain loop;
# `cache_dtype` None (the compute dtype) or "int8".
GenerationSettings = collections.namedtuple(
    "GenerationSettings",
    [
        "max_new_tokens",
        "sampler",
        "stop_token_ids",
        "pad_token_id",
        "processors",
        "speculation",
        "cache_dtype",
    ],
    defaults=((), None, None),
)
CACHE_DTYPES = (None, "int8")
# The encoder's output, its padding mask, and every decoder layer's cross-attention
# keys/values of it: computed once per generation.
EncoderState = collections.namedtuple("EncoderState", ["sequence", "padding_mask", "cross_caches"])


class CompiledFunctions:
    """The compiled generate functions of one model, by their static settings.

    A plain object (not a dict), so Keras and TensorFlow do not track the functions
    as part of the model when it is saved or exported.
    """

    def __init__(self):
        self.functions = {}
        self.traces = 0  # Python executions of the generate function (tests read it)
        # PyTorch's traced decoding steps by shapes, with "traces" (their count) and
        # "failures" (why a step runs eagerly): `backend.torch_step`.
        self.steps = {}


def initial_loop_vars(index, buffer, caches):
    """The token loop's variables `(index, buffer, caches, done, count)` before its
    first step at `index`: no row done, no token generated."""
    batch = ops.shape(buffer)[0]
    return (index, buffer, caches, ops.zeros((batch,), "bool"), ops.zeros((batch,), "int32"))


def advance(buffer, index, lengths, sampled, done, count, stop_ids, settings):
    """The token written at `index`: the prompt's while a row is in it, the sampled
    one after, `pad_token_id` once the row has stopped; and the new stop state."""
    batch = ops.shape(buffer)[0]
    prompt_token = ops.slice(buffer, [0, index], [batch, 1])[:, 0]
    in_prompt = index < lengths
    token = ops.where(in_prompt, prompt_token, ops.where(done, settings.pad_token_id, sampled))
    generated = ops.logical_not(ops.logical_or(in_prompt, done))
    count = count + ops.cast(generated, "int32")
    is_stop = ops.any(token[:, None] == stop_ids[None, :], axis=-1)
    done = ops.logical_or(done, ops.logical_and(generated, is_stop))
    done = ops.logical_or(done, count >= settings.max_new_tokens)
    return token, done, count


def advance_many(buffer, index, lengths, chosen, kept, done, count, stop_ids, settings):
    """`advance` at the positions `index...index + kept` at once (`chosen`
    `(batch, n)` the sampled tokens there, `kept` an int32 scalar `< n`): the buffer
    with those tokens written, and the stop state after them. Positions past `kept`
    keep their old tokens. One write of `n` tokens instead of `n` steps of `advance`
    (the speculative loop's commit)."""
    batch, n = ops.shape(chosen)[0], chosen.shape[1]
    old = ops.slice(buffer, [0, index], [batch, n])
    in_prompt = index + ops.arange(n, dtype="int32")[None, :] < lengths[:, None]
    # A row generates where it is past its prompt and not stopped yet; before it
    # stops its count after position j is `count + generating positions through j`.
    past_prompt = ops.cast(ops.logical_not(in_prompt), "int32")
    counts = count[:, None] + ops.cumsum(past_prompt, axis=1)
    is_stop = ops.any(chosen[:, :, None] == stop_ids[None, None, :], axis=-1)
    stops = ops.logical_and(
        past_prompt > 0, ops.logical_or(is_stop, counts >= settings.max_new_tokens)
    )
    active = ops.arange(n, dtype="int32")[None, :] <= kept
    stops = ops.logical_and(stops, active)
    stopped = ops.cumsum(ops.cast(stops, "int32"), axis=1) > 0  # through position j
    stopped_before = ops.concatenate([ops.zeros((batch, 1), "bool"), stopped[:, :-1]], axis=1)
    done_before = ops.logical_or(done[:, None], stopped_before)
    token = ops.where(in_prompt, old, ops.where(done_before, settings.pad_token_id, chosen))
    generated = ops.logical_and(past_prompt > 0, ops.logical_not(done_before))
    count = count + ops.sum(ops.cast(ops.logical_and(generated, active), "int32"), axis=1)
    done = ops.logical_or(done, ops.any(stops, axis=1))
    buffer = ops.slice_update(buffer, [0, index], ops.where(active, token, old))
    return buffer, done, count

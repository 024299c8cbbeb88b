"""Speculative decoding inside the compiled generation loop.

Each step drafts `k` tokens cheaply, runs them through the model in ONE call over
the key/value cache (the last known token and the `k` drafts: `k + 1` logits), and
keeps the drafts the model agrees with, plus one token of its own:

- drafts come from a smaller `draft_model` (its own cache, `k` greedy or sampled
  steps), or from *prompt lookup*: the last `n` tokens are matched against the text
  so far (prompt and generated), and the `k` tokens that followed the latest earlier
  match are the drafts (no second model; it pays off where the output repeats
  spans of the input, as in summaries, code edits or quotes). A step where no
  unfinished row has a match (nor prompt tokens of its own left to check) is a plain
  one-token step instead (a conditional in the compiled loop, as Hugging Face's
  prompt lookup skips verifying without candidates): a verifying call of `k + 1`
  tokens costs several one-token steps on a CPU, and copies of the last token are
  rarely right;
- greedy: a draft is kept while it equals the model's argmax, so the tokens are
  exactly plain greedy's (up to ties between logits that differ by rounding);
- sampling: the speculative sampling rule (Leviathan et al. 2023; Chen et al. 2023):
  draft `d` with draft probability `q(d)` is kept with probability
  `min(1, p(d) / q(d))`; at the first rejection the token is drawn from
  `normalize(max(0, p - q))`, and after `k` kept drafts from `p`. Every token is
  then distributed as the model's own sampler would draw it. Prompt lookup's drafts
  are deterministic (`q` one-hot).

Rows of a batch share one position (the loop of `loop.py`): a step keeps the
smallest number of drafts any unfinished row keeps. A row that would keep more
stops at that position with its kept draft, which is a token of its own process,
so each row's tokens keep their distribution (the stop depends only on other rows
and on its earlier acceptances).

The cache needs no rollback: a verifying call writes the `k + 1` positions from the
last known token on; positions past the kept ones hold rejected drafts that the
causal mask hides and the next call overwrites. A sliding-window ring gets `k + 1`
extra slots, so the writes of rejected drafts never evict a position the window
still sees (the ring reads its slots' positions relative to the call's index, and
a slot holding a rejected draft reads as a position older than the window). An int8
cache keeps a scale per position and head, so the same holds for it.

Logits processors see, at each verified position, the text up to that position
(the drafts before it included) and the new-token count it implies: where the drafts
are kept they are the text plain decoding would have had there, and what follows a
rejection is never used. A conversation state is continued with the caches extended
by `k + 1` positions for the turn (`continue_speculation`).
"""

import collections

import keras
from keras import ops

from keras_attention import _validation
from keras_attention.backend import generation as _backend
from keras_attention.models import samplers as samplers_lib
from keras_attention.models.generation.drafts import (
    MAX_DRAFT_TOKENS,
    STREAM,
    draft_steps,
    force_prompt,
    lookup_drafts,
    processed_logits,
)
from keras_attention.models.generation.state import advance_many
from keras_attention.models.samplers.sampler import gumbel_argmax

# The static speculation settings of a generation (part of its compile key).
Speculation = collections.namedtuple(
    "Speculation", ["num_draft_tokens", "prompt_lookup", "draft_model"]
)


def extra_positions(speculation):
    """How many positions past the last emitted one a verifying call reaches."""
    return 0 if speculation is None else speculation.num_draft_tokens


def speculative_sample(model, settings, mode, tokens, lengths, seed):
    """The generation loop with speculation: tokens `(batch, width)` (prompt rows
    left-aligned), lengths `(batch,)` -> tokens `(batch, width + max_new_tokens)`."""
    speculation = settings.speculation
    k = speculation.num_draft_tokens
    lengths = ops.cast(lengths, "int32")
    batch, width = ops.shape(tokens)[0], ops.shape(tokens)[1]
    total = width + settings.max_new_tokens
    room = total + k + 1  # the verifying call of the last step reaches past `total`
    buffer = _prompt_buffer(tokens, lengths, room, settings.pad_token_id)
    caches = [
        _ring_room(cache, room, k)
        for cache in model.initial_cache(batch, room, settings.cache_dtype)
    ]
    caches = _prefill(model, tokens, caches, 0, lengths, buffer)
    draft_caches = _draft_prefill(settings, tokens, lengths, buffer, room)
    loop_vars = (ops.min(lengths), buffer, caches, draft_caches)
    loop_vars += (ops.zeros((batch,), "bool"), ops.zeros((batch,), "int32"))
    buffer = speculative_loop(model, settings, mode, loop_vars, lengths, seed, total)[1]
    return ops.slice(buffer, [0, 0], [batch, total])


def continue_speculation(model, settings, mode, buffer, lengths, new_tokens, start, seed, caches):
    """A conversation's next turn with speculation (see `session._continue`): the
    new tokens `buffer[:, start:longest]` into the state's `caches` at `start`,
    then the speculative loop to the end of the buffer: `(index, buffer, caches,
    count)`, the buffer and caches of the state's `max_length` positions.

    The caches get `num_draft_tokens + 1` more positions for the turn (the
    verifying calls reach past `max_length`); a draft model's cache is not part of
    the state, so the draft model runs the whole history again (one call)."""
    k = settings.speculation.num_draft_tokens
    batch, end = ops.shape(buffer)[0], buffer.shape[1]
    padding = ops.full((batch, k + 1), settings.pad_token_id, "int32")
    buffer = ops.concatenate([ops.cast(buffer, "int32"), padding], axis=1)

    def extend(x):
        return ops.concatenate([x, ops.zeros((batch, k + 1, x.shape[2]), x.dtype)], axis=1)

    caches = keras.tree.map_structure(extend, list(caches))
    caches = _prefill(model, new_tokens, caches, start, lengths, buffer)
    history = ops.slice(buffer, [0, 0], [batch, end])
    draft_caches = _draft_prefill(settings, history, lengths, buffer, end + k + 1)
    loop_vars = (ops.min(lengths), buffer, caches, draft_caches)
    loop_vars += (ops.zeros((batch,), "bool"), ops.zeros((batch,), "int32"))
    index, buffer, caches, _, _, count = speculative_loop(
        model, settings, mode, loop_vars, lengths, seed, end
    )
    caches = keras.tree.map_structure(lambda x: x[:, :end], caches)
    return index, buffer[:, :end], caches, count


def speculative_loop(model, settings, mode, loop_vars, lengths, seed, end):
    """The speculative token loop from `loop_vars` `(index, buffer, caches,
    draft_caches, done, count)` until every row is done or `index` reaches `end`
    (the buffer holds `num_draft_tokens + 1` positions more); returns the loop vars."""
    speculation = settings.speculation
    k = speculation.num_draft_tokens
    batch = ops.shape(loop_vars[1])[0]
    stop_ids = ops.convert_to_tensor(list(settings.stop_token_ids) or [-1], "int32")

    def cond(index, buffer, caches, draft_caches, done, count):
        return ops.logical_and(index < end, ops.logical_not(ops.all(done)))

    def verify(drafts, draft_logits, buffer, index, caches, count):
        # the last known token and the drafts in one call: (chosen, kept, caches)
        verified = ops.concatenate([ops.slice(buffer, [0, index - 1], [batch, 1]), drafts], 1)
        key_buffer = ops.slice_update(buffer, [0, index], drafts)
        logits, caches = model.call_with_cache(
            verified, caches, index - 1, model._key_mask(key_buffer)
        )
        logits = processed_logits(settings.processors, logits, key_buffer, lengths, index, count)
        # a row inside its prompt keeps its prompt (its drafts)
        in_prompt = index + ops.arange(k, dtype="int32")[None, :] < lengths[:, None]
        chosen, kept = _verify(
            settings.sampler, logits, drafts, draft_logits, in_prompt, seed, index
        )
        return chosen, kept, caches

    def body(index, buffer, caches, draft_caches, done, count):
        if speculation.draft_model is None:
            drafts, found = lookup_drafts(buffer, index, speculation.prompt_lookup, k)
            drafts = force_prompt(drafts, buffer, lengths, index)
            # Verify where some unfinished row has drafts worth checking (a match, or
            # its prompt's own next tokens); else one plain step, at a plain step's cost.
            worth = ops.logical_and(ops.logical_or(found, index < lengths), ops.logical_not(done))
            chosen, kept, caches = _backend.cond(
                ops.any(worth),
                lambda: verify(drafts, None, buffer, index, caches, count),
                lambda: _plain_step(model, settings, buffer, caches, index, lengths, count, seed),
                mode,
            )
        else:
            drafts, draft_logits, draft_caches = draft_steps(
                speculation.draft_model,
                settings,
                buffer,
                lengths,
                index,
                count,
                draft_caches,
                seed,
                k,
            )
            drafts = force_prompt(drafts, buffer, lengths, index)
            chosen, kept, caches = verify(drafts, draft_logits, buffer, index, caches, count)
        # finished rows do not hold the others back
        kept = ops.min(ops.where(done, k, kept))
        kept = ops.minimum(kept, end - 1 - index)
        buffer, done, count = advance_many(
            buffer, index, lengths, chosen, kept, done, count, stop_ids, settings
        )
        return index + kept + 1, buffer, caches, draft_caches, done, count

    return _backend.while_loop(cond, body, tuple(loop_vars), mode)


def _plain_step(model, settings, buffer, caches, index, lengths, count, seed):
    """One token, as the loop without speculation makes it, in the speculative
    loop's form: `(chosen, kept, caches)` with `chosen` the token then
    `num_draft_tokens` zeros, and `kept` 0."""
    token, caches = model._next_token(
        model.call_with_cache,
        settings,
        buffer,
        caches,
        index,
        lengths,
        count,
        seed,
        index + STREAM,
    )
    batch, k = ops.shape(buffer)[0], settings.speculation.num_draft_tokens
    chosen = ops.concatenate([token[:, None], ops.zeros((batch, k), "int32")], axis=1)
    return chosen, ops.zeros((batch,), "int32"), caches


def _prompt_buffer(tokens, lengths, room, pad_token_id):
    """`(batch, room)`: the left-aligned prompts, then `pad_token_id`."""
    batch, width = ops.shape(tokens)[0], ops.shape(tokens)[1]
    padding = ops.full((batch, room - width), pad_token_id, "int32")
    buffer = ops.concatenate([ops.cast(tokens, "int32"), padding], axis=1)
    in_prompt = ops.arange(room, dtype="int32")[None, :] < lengths[:, None]
    return ops.where(in_prompt, buffer, pad_token_id)


def _ring_room(cache, room, k):
    """A zero cache of `room` positions; a sliding-window ring (fewer slots) gets
    `k + 1` extra slots, room for the rejected drafts (int8 values and scales
    alike)."""
    slots = _position_rows(cache).shape[1]
    if slots is None or slots >= room:
        return cache
    size = min(room, slots + k + 1)
    return keras.tree.map_structure(
        lambda x: ops.zeros((ops.shape(x)[0], size, x.shape[2]), x.dtype), cache
    )


def _position_rows(cache):
    # the tensor whose axis 1 is the positions (an int8 cache's values)
    return keras.tree.flatten(cache)[0]


def _prefill(model, tokens, caches, start, lengths, buffer):
    """`tokens` at positions `start...` into `caches`, keeping the positions every
    row has (up to the shortest `lengths`)."""
    _, caches = model.call_with_cache(
        tokens,
        caches,
        start,
        model._key_mask(buffer),
        return_logits=False,
        cache_write_length=ops.min(lengths) - start,
    )
    return caches


def _draft_prefill(settings, tokens, lengths, buffer, room):
    """The draft model's caches after `tokens` (none without a draft model)."""
    draft = settings.speculation.draft_model
    if draft is None:
        return []
    batch = ops.shape(tokens)[0]
    k = settings.speculation.num_draft_tokens
    caches = [
        _ring_room(cache, room, k)
        for cache in draft.initial_cache(batch, room, settings.cache_dtype)
    ]
    return _prefill(draft, tokens, caches, 0, lengths, buffer)


def _leading_true(flags):
    """The number of leading `True` of each row of boolean `(batch, n)`."""
    return ops.sum(ops.cumprod(ops.cast(flags, "int32"), axis=1), axis=1)


def _verify(sampler, logits, drafts, draft_logits, in_prompt, seed, index):
    """The model's logits `(batch, k + 1, vocabulary)` at the drafts' positions ->
    `(tokens (batch, k + 1), kept (batch,))`: a row keeps its first `kept` drafts
    (always those `in_prompt`), and `tokens[:, kept]` is the model's own next token."""
    batch, steps, vocabulary = ops.shape(logits)[0], logits.shape[1], logits.shape[2]
    k = steps - 1
    flat = ops.reshape(logits, (-1, vocabulary))
    if not sampler.is_random:
        chosen = ops.reshape(sampler.next_token(flat), (batch, steps))
        return chosen, _leading_true(ops.logical_or(chosen[:, :k] == drafts, in_prompt))
    target = ops.reshape(ops.softmax(sampler.sampling_logits(flat), axis=-1), (batch, steps, -1))
    one_hot = ops.one_hot(drafts, vocabulary, dtype="float32")
    if draft_logits is None:  # prompt lookup: a draft is certain
        proposal = one_hot
    else:
        proposal = ops.softmax(draft_logits, axis=-1)
    p_draft = ops.sum(target[:, :k] * one_hot, axis=-1)
    q_draft = ops.sum(proposal * one_hot, axis=-1)
    uniform = _backend.uniform((batch, k), seed, index)
    accepted = uniform * q_draft < p_draft  # u < p / q, without dividing by zero
    accepted = ops.logical_or(accepted, in_prompt)
    kept = _leading_true(accepted)
    residual = ops.maximum(target[:, :k] - proposal, 0.0)
    mass = ops.sum(residual, axis=-1, keepdims=True)
    residual = ops.where(mass > 0, residual / ops.maximum(mass, 1e-30), target[:, :k])
    fallback = ops.concatenate([residual, target[:, k:]], axis=1)
    at_kept = ops.take_along_axis(fallback, kept[:, None, None], axis=1)[:, 0]
    noise = _backend.uniform((batch, vocabulary), seed, index + STREAM)
    resampled = gumbel_argmax(ops.log(at_kept), noise)
    drafts_then_own = ops.concatenate([drafts, resampled[:, None]], axis=1)
    position = ops.arange(steps, dtype="int32")[None, :]
    chosen = ops.where(position == kept[:, None], resampled[:, None], drafts_then_own)
    return chosen, kept


def check_speculation(model, sampler, draft_model, num_draft_tokens, prompt_lookup):
    """The `Speculation` of `generate`'s arguments (None without one), checked."""
    if draft_model is None and prompt_lookup is None:
        if num_draft_tokens is not None:
            raise ValueError(
                "`num_draft_tokens` is used with `draft_model` or `prompt_lookup`. "
                f"Received: num_draft_tokens={num_draft_tokens!r} without either"
            )
        return None
    if draft_model is not None and prompt_lookup is not None:
        raise ValueError(
            "Pass `draft_model` or `prompt_lookup`, not both. Received: "
            f"draft_model={draft_model.name!r}, prompt_lookup={prompt_lookup!r}"
        )
    if num_draft_tokens is None:
        num_draft_tokens = 4 if draft_model is not None else 8
    _validation.check_positive_int(num_draft_tokens, "num_draft_tokens")
    if num_draft_tokens > MAX_DRAFT_TOKENS:
        raise ValueError(
            f"`num_draft_tokens` must be at most {MAX_DRAFT_TOKENS}. "
            f"Received: num_draft_tokens={num_draft_tokens}"
        )
    _validation.check_positive_int(prompt_lookup, "prompt_lookup", allow_none=True)
    if isinstance(sampler, samplers_lib.BeamSampler):
        raise ValueError(
            "Speculative decoding works with the greedy and sampling samplers, not "
            f"beam search. Received: sampler={sampler!r}"
        )
    if getattr(model, "encode", None) is not None:
        raise ValueError(
            "Speculative decoding is for decoder-only models (CausalLanguageModel). "
            f"Received: a {type(model).__name__}"
        )
    if draft_model is not None:
        _check_draft_model(model, draft_model)
    return Speculation(num_draft_tokens, prompt_lookup, draft_model)


def _check_draft_model(model, draft_model):
    if not hasattr(draft_model, "call_with_cache") or getattr(draft_model, "encode", None):
        raise ValueError(
            "`draft_model` must be a decoder-only model of this package "
            f"(CausalLanguageModel). Received: draft_model={draft_model!r}"
        )
    ours = model.decoder_embedding.vocabulary_size
    theirs = draft_model.decoder_embedding.vocabulary_size
    if ours != theirs:
        raise ValueError(
            "`draft_model` must have the model's vocabulary: vocabulary_size="
            f"{ours}. Received: draft_model with vocabulary_size={theirs}"
        )


def check_positions(model, total, max_new_tokens, speculation):
    """The positions a generation reaches (the speculative verifying calls reach
    `num_draft_tokens - 1` past the last token) must fit learned position tables."""
    models = [model]
    if speculation is not None and speculation.draft_model is not None:
        models.append(speculation.draft_model)
    reach = total + max(extra_positions(speculation) - 1, 0)
    for checked in models:
        embedding = checked.decoder_embedding
        if embedding.position == "learned" and reach > embedding.sequence_length:
            extra = (
                ""
                if speculation is None
                else (f" plus `num_draft_tokens` - 1 ({speculation.num_draft_tokens - 1})")
            )
            raise ValueError(
                f"The longest prompt plus `max_new_tokens`{extra} must fit the learned "
                f"position table of {checked.name!r} (sequence_length="
                f"{embedding.sequence_length}). Received: prompt length "
                f"{total - max_new_tokens}, max_new_tokens={max_new_tokens}"
            )

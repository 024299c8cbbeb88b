"""Speculative decoding inside the compiled generation loop.

Each step drafts `k` tokens cheaply, runs them through the model in ONE call over
the key/value cache (the last known token and the `k` drafts: `k + 1` logits), and
keeps the drafts the model agrees with, plus one token of its own:

- drafts come from a smaller `draft_model` (its own cache, `k` greedy or sampled
  steps), or from *prompt lookup*: the last `n` tokens are matched against the text
  so far (prompt and generated), and the `k` tokens that followed the latest earlier
  match are the drafts (no second model; it pays off where the output repeats
  spans of the input, as in summaries, code edits or quotes);
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
a slot holding a rejected draft reads as a position older than the window).
"""

import collections

from keras import ops

from keras_attention import _validation
from keras_attention.backend import generation as _backend
from keras_attention.models import samplers as samplers_lib
from keras_attention.models.generation.state import advance
from keras_attention.models.samplers.sampler import gumbel_argmax

# The static speculation settings of a generation (part of its compile key).
Speculation = collections.namedtuple(
    "Speculation", ["num_draft_tokens", "prompt_lookup", "draft_model"]
)


# Offsets of the random streams of a step (acceptance at `index`, the resampled
# token at `index + _STREAM`, draft `j` at `index + (j + 2) * _STREAM`): disjoint for
# sequences under 2**24 tokens and `num_draft_tokens <= MAX_DRAFT_TOKENS`.
_STREAM = 2**24
MAX_DRAFT_TOKENS = 64


def extra_positions(speculation):
    """How many positions past the last emitted one a verifying call reaches."""
    return 0 if speculation is None else speculation.num_draft_tokens


def speculative_sample(model, settings, mode, tokens, lengths, seed):
    """The generation loop with speculation: tokens `(batch, width)` (prompt rows
    left-aligned), lengths `(batch,)` -> tokens `(batch, width + max_new_tokens)`."""
    speculation = settings.speculation
    k = speculation.num_draft_tokens
    draft = speculation.draft_model
    lengths = ops.cast(lengths, "int32")
    batch, width = ops.shape(tokens)[0], ops.shape(tokens)[1]
    total = width + settings.max_new_tokens
    room = total + k + 1  # the verifying call of the last step reaches past `total`
    buffer = _prompt_buffer(tokens, lengths, room, settings.pad_token_id)
    caches = _prefill(model, tokens, lengths, buffer, room, k)
    draft_caches = [] if draft is None else _prefill(draft, tokens, lengths, buffer, room, k)
    stop_ids = ops.convert_to_tensor(list(settings.stop_token_ids) or [-1], "int32")

    def cond(index, buffer, caches, draft_caches, done, count):
        return ops.logical_and(index < total, ops.logical_not(ops.all(done)))

    def body(index, buffer, caches, draft_caches, done, count):
        if draft is None:
            drafts, draft_logits = lookup_drafts(buffer, index, speculation.prompt_lookup, k), None
        else:
            drafts, draft_logits, draft_caches = _draft_steps(
                draft, settings.sampler, buffer, lengths, index, draft_caches, seed, k
            )
        drafts = _force_prompt(drafts, buffer, lengths, index)
        verified = ops.concatenate([ops.slice(buffer, [0, index - 1], [batch, 1]), drafts], 1)
        key_buffer = ops.slice_update(buffer, [0, index], drafts)
        logits, caches = model.call_with_cache(
            verified, caches, index - 1, model._key_mask(key_buffer)
        )
        # a row inside its prompt keeps its prompt (its drafts)
        in_prompt = index + ops.arange(k, dtype="int32")[None, :] < lengths[:, None]
        chosen, kept = _verify(
            settings.sampler,
            ops.cast(logits, "float32"),
            drafts,
            draft_logits,
            in_prompt,
            seed,
            index,
        )
        # finished rows do not hold the others back
        kept = ops.min(ops.where(done, k, kept))
        kept = ops.minimum(kept, total - 1 - index)
        for j in range(k + 1):
            token, new_done, new_count = advance(
                buffer, index + j, lengths, chosen[:, j], done, count, stop_ids, settings
            )
            active = j <= kept
            buffer = ops.where(
                active, ops.slice_update(buffer, [0, index + j], token[:, None]), buffer
            )
            done = ops.where(active, new_done, done)
            count = ops.where(active, new_count, count)
        return index + kept + 1, buffer, caches, draft_caches, done, count

    loop_vars = (
        ops.min(lengths),
        buffer,
        caches,
        draft_caches,
        ops.zeros((batch,), "bool"),
        ops.zeros((batch,), "int32"),
    )
    buffer = _backend.while_loop(cond, body, loop_vars, mode)[1]
    return ops.slice(buffer, [0, 0], [batch, total])


def _prompt_buffer(tokens, lengths, room, pad_token_id):
    """`(batch, room)`: the left-aligned prompts, then `pad_token_id`."""
    batch, width = ops.shape(tokens)[0], ops.shape(tokens)[1]
    padding = ops.full((batch, room - width), pad_token_id, "int32")
    buffer = ops.concatenate([ops.cast(tokens, "int32"), padding], axis=1)
    in_prompt = ops.arange(room, dtype="int32")[None, :] < lengths[:, None]
    return ops.where(in_prompt, buffer, pad_token_id)


def _prefill(model, tokens, lengths, buffer, room, k):
    """The model's cache of `room` positions after the prompt (the positions every
    row has), with `k + 1` extra slots in sliding-window rings."""
    batch = ops.shape(tokens)[0]
    caches = []
    for cache in model.initial_cache(batch, room):
        slots = cache.shape[1]
        if slots is not None and slots < room:  # a ring: room for the rejected drafts
            size = (ops.shape(cache)[0], min(room, slots + k + 1), cache.shape[2])
            cache = ops.zeros(size, cache.dtype)
        caches.append(cache)
    _, caches = model.call_with_cache(
        tokens,
        caches,
        0,
        model._key_mask(buffer),
        return_logits=False,
        cache_write_length=ops.min(lengths),
    )
    return caches


def _force_prompt(drafted, buffer, lengths, index):
    """`drafted` `(batch, n)` for positions `index...`, with the prompt's tokens where
    a row is still inside its prompt."""
    batch, n = ops.shape(drafted)[0], drafted.shape[1]
    prompt = ops.slice(buffer, [0, index], [batch, n])
    in_prompt = index + ops.arange(n, dtype="int32")[None, :] < lengths[:, None]
    return ops.where(in_prompt, prompt, ops.cast(drafted, "int32"))


def _leading_true(flags):
    """The number of leading `True` of each row of boolean `(batch, n)`."""
    return ops.sum(ops.cumprod(ops.cast(flags, "int32"), axis=1), axis=1)


def lookup_drafts(buffer, index, ngram_size, k):
    """Prompt lookup: the `k` tokens after the latest earlier occurrence of each row's
    last `ngram_size` tokens (positions `< index` are known), `(batch, k)` int32.

    A row without a match drafts copies of its last token (verification rejects
    what is wrong; the step still makes one token)."""
    batch, room = ops.shape(buffer)[0], buffer.shape[1]
    starts = room - ngram_size + 1
    first = ops.maximum(index - ngram_size, 0)
    pattern = ops.slice(buffer, [0, first], [batch, ngram_size])
    match = ops.ones((batch, starts), "bool")
    for j in range(ngram_size):
        window = ops.slice(buffer, [0, j], [batch, starts])
        match = ops.logical_and(match, window == pattern[:, j : j + 1])
    start = ops.arange(starts, dtype="int32")[None, :]
    # an earlier occurrence with at least one known token after it
    valid = ops.logical_and(match, start + ngram_size <= index - 1)
    valid = ops.logical_and(valid, index >= ngram_size)
    best = ops.max(ops.where(valid, start, -1), axis=1)
    positions = best[:, None] + ngram_size + ops.arange(k, dtype="int32")[None, :]
    positions = ops.where(best[:, None] >= 0, ops.minimum(positions, index - 1), index - 1)
    return ops.cast(ops.take_along_axis(buffer, positions, axis=1), "int32")


def _draft_steps(draft, sampler, buffer, lengths, index, caches, seed, k):
    """`k` tokens of the draft model from position `index` (and one more step that
    writes the last draft in its cache): `(drafts, draft logits or None, caches)`."""
    batch = ops.shape(buffer)[0]
    token = ops.slice(buffer, [0, index - 1], [batch, 1])
    drafts, draft_logits = [], []
    for j in range(k + 1):
        logits, caches = draft.call_with_cache(
            token, caches, index - 1 + j, draft._key_mask(buffer), return_logits=j < k
        )
        if j == k:
            break
        logits = ops.cast(logits[:, 0, :], "float32")
        if sampler.is_random:
            logits = sampler.sampling_logits(logits)
            noise = _backend.uniform(ops.shape(logits), seed, index + (j + 2) * _STREAM)
            drafted = gumbel_argmax(logits, noise)
            draft_logits.append(logits)
        else:
            drafted = sampler.next_token(logits)
        drafted = _force_prompt(drafted[:, None], buffer, lengths, index + j)
        buffer = ops.slice_update(buffer, [0, index + j], drafted)
        drafts.append(drafted)
        token = drafted
    logits = ops.stack(draft_logits, axis=1) if draft_logits else None
    return ops.concatenate(drafts, axis=1), logits, caches


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
    noise = _backend.uniform((batch, vocabulary), seed, index + _STREAM)
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

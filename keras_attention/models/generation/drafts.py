"""The drafts of speculative decoding (see `speculative`): prompt lookup, and the
steps of a draft model with its own key/value cache."""

from keras import ops

from keras_attention.backend import generation as _backend
from keras_attention.models import processors as processors_lib
from keras_attention.models.samplers.sampler import gumbel_argmax

# Offsets of the random streams of a step (acceptance at `index`, the resampled
# token at `index + STREAM`, draft `j` at `index + (j + 2) * STREAM`): disjoint for
# sequences under 2**24 tokens and `num_draft_tokens <= MAX_DRAFT_TOKENS`.
STREAM = 2**24
MAX_DRAFT_TOKENS = 64


def force_prompt(drafted, buffer, lengths, index):
    """`drafted` `(batch, n)` for positions `index...`, with the prompt's tokens where
    a row is still inside its prompt."""
    batch, n = ops.shape(drafted)[0], drafted.shape[1]
    prompt = ops.slice(buffer, [0, index], [batch, n])
    in_prompt = index + ops.arange(n, dtype="int32")[None, :] < lengths[:, None]
    return ops.where(in_prompt, prompt, ops.cast(drafted, "int32"))


def lookup_drafts(buffer, index, ngram_size, k):
    """Prompt lookup: the `k` tokens after the latest earlier occurrence of each row's
    last `ngram_size` tokens (positions `< index` are known): `(drafts (batch, k)
    int32, found (batch,) bool)`.

    A row without a match (`found` False) drafts copies of its last token; the loop
    runs a plain one-token step instead of verifying where no row has a match."""
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
    found = best >= 0
    positions = ops.where(found[:, None], ops.minimum(positions, index - 1), index - 1)
    return ops.cast(ops.take_along_axis(buffer, positions, axis=1), "int32"), found


def processed_logits(processors, logits, buffer, lengths, index, count):
    """The logits `(batch, n, vocabulary)` of positions `index...` through the
    `processors`, each position's with the text up to it: `buffer` holds the drafts
    from `index` on, and `count` (the tokens each row has generated before `index`)
    grows by the drafts of a row past its prompt. float32."""
    if not processors:
        return ops.cast(logits, "float32")
    processed = []
    for j in range(logits.shape[1]):
        processed.append(
            processors_lib.apply(processors, logits[:, j], buffer, lengths, index + j, count)
        )
        count = count + ops.cast(index + j >= lengths, "int32")
    return ops.stack(processed, axis=1)


def draft_steps(draft, settings, buffer, lengths, index, count, caches, seed, k):
    """`k` tokens of the draft model from position `index`: `(drafts, draft logits
    or None, caches)`, in `k` calls of the draft model.

    The first call runs the last two known tokens (positions `index - 2` and
    `index - 1`): after a step that kept all its drafts, the draft's cache lacks the
    last one (the draft model never ran it), and two tokens cost about one call.
    The draft's logits go through the generation's processors too, so the drafts
    follow the processed distribution the model's tokens are verified on."""
    sampler = settings.sampler
    batch = ops.shape(buffer)[0]
    start = ops.maximum(index - 2, 0)
    tokens = ops.slice(buffer, [0, start], [batch, 2])
    drafts, draft_logits = [], []
    for j in range(k):
        position = start if j == 0 else index - 1 + j
        logits, caches = draft.call_with_cache(tokens, caches, position, draft._key_mask(buffer))
        # the logits at `index - 1 + j` (in the first call: at its second token, or
        # its first where `index` is 1)
        logits = ops.take(logits, index - 1 + j - position, axis=1)[:, None]
        logits = processed_logits(settings.processors, logits, buffer, lengths, index + j, count)
        logits = logits[:, 0, :]
        count = count + ops.cast(index + j >= lengths, "int32")
        if sampler.is_random:
            logits = sampler.sampling_logits(logits)
            noise = _backend.uniform(ops.shape(logits), seed, index + (j + 2) * STREAM)
            drafted = gumbel_argmax(logits, noise)
            draft_logits.append(logits)
        else:
            drafted = sampler.next_token(logits)
        drafted = force_prompt(drafted[:, None], buffer, lengths, index + j)
        buffer = ops.slice_update(buffer, [0, index + j], drafted)
        drafts.append(drafted)
        tokens = drafted
    logits = ops.stack(draft_logits, axis=1) if draft_logits else None
    return ops.concatenate(drafts, axis=1), logits, caches

"""Speculative decoding combined with logits processors, the int8 cache and a
multi-turn state: greedy speculation gives plain greedy's tokens with the same
processors / int8 cache / state (prompts of different lengths); sampled speculation
with a processor draws from the processed distribution (chi-square against numpy
probabilities of full forward passes with the penalty applied)."""

import numpy as np
import pytest
from scipy import stats

from keras_attention.models import processors as P
from tests.test_speculative import PROMPTS, _model, _softmax
from tests.utils import to_numpy

SPECULATIONS = [{"prompt_lookup": 2}, {"prompt_lookup": 1, "num_draft_tokens": 3}, {"draft": 3}]
IDS = ["lookup2", "lookup1_k3", "draft_k3"]


@pytest.fixture(scope="module")
def models():
    return _model(0), _model(1, num_layers=1, embedding_dim=16)


def _speculation(speculation, draft):
    if "draft" in speculation:
        return {"draft_model": draft, "num_draft_tokens": speculation["draft"]}
    return dict(speculation)


@pytest.mark.parametrize("speculation", SPECULATIONS, ids=IDS)
def test_greedy_speculation_with_processors(models, speculation):
    """Each verified position's processors see the text up to it (accepted drafts
    included): repetition penalty, n-gram ban and a minimum length as plain greedy."""
    model, draft = models
    stop = int(model.generate(PROMPTS, 14)[1, len(PROMPTS[1]) + 1])
    processors = [
        P.RepetitionPenalty(1.8),
        P.NoRepeatNGram(3),
        P.MinNewTokens(4, stop_token_ids=[stop]),
    ]
    kwargs = dict(processors=processors, stop_token_ids=[stop])
    expected = model.generate(PROMPTS, 14, **kwargs)
    assert not np.array_equal(expected, model.generate(PROMPTS, 14, stop_token_ids=[stop]))
    actual = model.generate(PROMPTS, 14, **kwargs, **_speculation(speculation, draft))
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("drafting", ["draft_model", "prompt_lookup"])
def test_speculative_sampling_with_a_processor(drafting):
    """The first two new tokens of 3000 sampled rows with a repetition penalty,
    against p(x1) p(x2 | x1) of the penalized logits (the penalty on the prompt's
    tokens, and on x1 for the second)."""
    vocabulary, penalty = 4, 3.0
    model = _model(4, vocabulary_size=vocabulary, mask_zero=False)
    draft = _model(5, vocabulary_size=vocabulary, num_layers=1, embedding_dim=16, mask_zero=False)
    prompt, rows = [2, 3, 2, 2], 3000
    speculation = (
        {"draft_model": draft, "num_draft_tokens": 2}
        if drafting == "draft_model"
        else {"prompt_lookup": 1, "num_draft_tokens": 2}
    )
    out = model.generate(
        [prompt] * rows,
        2,
        sampler="random",
        seed=3,
        processors=[P.RepetitionPenalty(penalty)],
        **speculation,
    )

    def penalized(logits, seen):
        seen = np.isin(np.arange(vocabulary), seen)
        changed = np.where(logits < 0, logits * penalty, logits / penalty)
        return np.where(seen, changed, logits)

    first = _softmax(penalized(to_numpy(model(np.array([prompt])))[0, -1], prompt))
    candidates = np.array([prompt + [x] for x in range(vocabulary)])
    logits = to_numpy(model(candidates))[:, -1]
    second = np.stack([_softmax(penalized(logits[x], prompt + [x])) for x in range(vocabulary)])
    expected = (first[:, None] * second).reshape(-1).astype("float64")
    pairs = out[:, len(prompt)] * vocabulary + out[:, len(prompt) + 1]
    observed = np.bincount(pairs, minlength=vocabulary**2)
    assert stats.chisquare(observed, expected * rows / expected.sum()).pvalue > 1e-3


@pytest.mark.parametrize("speculation", SPECULATIONS, ids=IDS)
def test_greedy_speculation_with_the_int8_cache(models, speculation):
    """The verifying call writes `k + 1` positions of int8 keys/values with their
    per-position scales; the rejected ones are overwritten later (no rollback)."""
    model, draft = models
    expected = model.generate(PROMPTS, 14, cache_dtype="int8")
    actual = model.generate(PROMPTS, 14, cache_dtype="int8", **_speculation(speculation, draft))
    np.testing.assert_array_equal(actual, expected)


def test_greedy_speculation_with_the_int8_ring_cache():
    model = _model(2, style="llama", sliding_window=3, num_key_value_heads=2)
    draft = _model(3, style="llama", sliding_window=2, num_layers=1, embedding_dim=16)
    expected = model.generate(PROMPTS, 12, cache_dtype="int8")
    for speculation in ({"prompt_lookup": 2, "num_draft_tokens": 4}, {"draft_model": draft}):
        actual = model.generate(PROMPTS, 12, cache_dtype="int8", **speculation)
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("speculation", SPECULATIONS, ids=IDS)
def test_speculation_continues_a_conversation(models, speculation):
    """Two turns with speculation, of prompts of different lengths: each equals
    plain greedy on the whole history; a plain state continues with speculation."""
    model, draft = models
    speculation = _speculation(speculation, draft)
    output, state = model.generate(PROMPTS, 6, return_state=True, max_length=40, **speculation)
    np.testing.assert_array_equal(output, model.generate(PROMPTS, 6))
    new_tokens = [[3, 4], [1], [5, 6, 7]]
    history = [list(h) + n for h, n in zip(state.history(), new_tokens)]
    output, state = model.generate(new_tokens, 7, state=state, return_state=True, **speculation)
    np.testing.assert_array_equal(output, model.generate(history, 7))
    _, plain_state = model.generate(PROMPTS, 6, return_state=True, max_length=40)
    output = model.generate(new_tokens, 7, state=plain_state, **speculation)
    np.testing.assert_array_equal(output, model.generate(history, 7))
    history = [list(h) + [2] for h in state.history()]
    output = model.generate([[2]] * 3, 5, state=state, **speculation)
    np.testing.assert_array_equal(output, model.generate(history, 5))


def test_refused_combinations(models):
    model, _ = models
    ring = _model(2, style="llama", sliding_window=3, num_key_value_heads=2)
    _, state = ring.generate([[1, 2, 3]], 3, return_state=True, max_length=32)
    with pytest.raises(ValueError, match="`state`.*`prompt_lookup`"):
        ring.generate([[4]], 3, state=state, prompt_lookup=2)
    with pytest.raises(ValueError, match="`max_length`.*num_draft_tokens"):
        model.generate(PROMPTS, 4, return_state=True, max_length=64, prompt_lookup=2)

"""Speculative decoding in `generate()`: a draft model or prompt lookup drafts tokens
that the model verifies in one call.

Greedy speculation must give plain greedy's tokens exactly; sampled speculation must
draw from the model's own distribution, checked with a chi-square test against the
probabilities computed by full forward passes of the model (numpy softmax here).
"""

import contextlib

import keras
import numpy as np
import pytest
from scipy import stats

from keras_attention.models import CausalLanguageModel
from keras_attention.models.generation import speculative
from tests.utils import to_numpy

PROMPTS = [[1, 2, 3, 4, 5, 1, 2, 3], [4, 5, 6, 4, 5], [7, 3]]


def _model(seed, num_layers=2, embedding_dim=32, vocabulary_size=24, **kwargs):
    keras.utils.set_random_seed(seed)
    return CausalLanguageModel(
        vocabulary_size=vocabulary_size,
        sequence_length=64,
        num_layers=num_layers,
        embedding_dim=embedding_dim,
        num_heads=4,
        intermediate_dim=2 * embedding_dim,
        dropout=0.0,
        **kwargs,
    )


@pytest.fixture(scope="module")
def models():
    return _model(0), _model(1, num_layers=1, embedding_dim=16)


@pytest.mark.parametrize("compile", [True, False])
@pytest.mark.parametrize(
    "speculation",
    [{"prompt_lookup": 2}, {"prompt_lookup": 1, "num_draft_tokens": 3}, {"draft": 3}],
    ids=["lookup2", "lookup1_k3", "draft_k3"],
)
def test_greedy_speculation_gives_plain_greedy_tokens(models, speculation, compile):
    model, draft = models
    speculation = dict(speculation)
    if "draft" in speculation:
        speculation = {"draft_model": draft, "num_draft_tokens": speculation["draft"]}
    expected = model.generate(PROMPTS, 14, compile=compile)
    actual = model.generate(PROMPTS, 14, compile=compile, **speculation)
    np.testing.assert_array_equal(actual, expected)


def test_greedy_speculation_with_stop_tokens(models):
    model, draft = models
    plain = model.generate(PROMPTS, 14)
    stop = int(plain[0, len(PROMPTS[0]) + 3])  # a token the first row makes
    expected = model.generate(PROMPTS, 14, stop_token_ids=[stop], pad_token_id=0)
    for speculation in ({"prompt_lookup": 2}, {"draft_model": draft}):
        actual = model.generate(PROMPTS, 14, stop_token_ids=[stop], **speculation)
        np.testing.assert_array_equal(actual, expected)


def test_greedy_speculation_with_a_sliding_window():
    """The ring cache gets room for the rejected drafts: a window shorter than the
    prompts and the new tokens still gives plain greedy's tokens."""
    model = _model(2, style="llama", sliding_window=3, num_key_value_heads=2)
    draft = _model(3, style="llama", sliding_window=2, num_layers=1, embedding_dim=16)
    expected = model.generate(PROMPTS, 12)
    for speculation in ({"prompt_lookup": 2, "num_draft_tokens": 4}, {"draft_model": draft}):
        np.testing.assert_array_equal(model.generate(PROMPTS, 12, **speculation), expected)


@contextlib.contextmanager
def _counted_calls(model):
    """The token count of each `model.call_with_cache` call made inside the block."""
    calls, original = [], model.call_with_cache

    def counting(tokens, *args, **kwargs):
        calls.append(tokens.shape[1])
        return original(tokens, *args, **kwargs)

    model.call_with_cache = counting
    try:
        yield calls
    finally:
        del model.call_with_cache


def test_drafts_the_model_agrees_with_are_kept(models):
    """The model as its own draft agrees with every draft: each verifying call (the
    calls of `num_draft_tokens + 1` tokens) keeps all drafts plus one token."""
    model, _ = models
    prompt = [[5, 6, 7, 8, 9]]  # (the prefills are calls of 5 tokens)
    plain = model.generate(prompt, 12, compile=False)
    with _counted_calls(model) as calls:
        speculated = model.generate(
            prompt, 12, draft_model=model, num_draft_tokens=3, compile=False
        )
    np.testing.assert_array_equal(speculated, plain)
    assert calls.count(4) == 3  # 12 tokens, 4 a verifying call


@pytest.mark.parametrize(
    "prompt, first_step",
    [
        ([[5, 6, 7, 8, 9, 10]], 1),  # no bigram repeats: a plain one-token step
        ([[5, 6, 7, 5, 6, 7, 5, 6]], 4),  # the last bigram (5, 6) occurs earlier
    ],
)
def test_prompt_lookup_verifies_only_where_a_match_exists(models, prompt, first_step):
    """Where the text so far has no earlier match of its last n-gram, a step is a
    plain one-token call, not a verifying call of `num_draft_tokens + 1` tokens; a
    match is verified. The tokens are plain greedy's either way."""
    model, _ = models
    plain = model.generate(prompt, 6, compile=False)
    with _counted_calls(model) as calls:
        speculated = model.generate(prompt, 6, prompt_lookup=2, num_draft_tokens=3, compile=False)
    np.testing.assert_array_equal(speculated, plain)
    assert calls[0] == len(prompt[0])  # the prefill
    assert calls[1] == first_step


def test_lookup_drafts_follow_the_latest_match():
    buffer = np.array([[1, 2, 3, 9, 1, 2, 4, 8, 1, 2, 0, 0, 0]], "int32")
    # last two known tokens (index 10): [1, 2]; latest earlier match at 4 -> 4, 8, 1
    drafts, found = speculative.lookup_drafts(buffer, 10, 2, 3)
    np.testing.assert_array_equal(to_numpy(drafts), [[4, 8, 1]])
    np.testing.assert_array_equal(to_numpy(found), [True])
    # only three tokens after the match are known: the rest repeat the last known one
    drafts, _ = speculative.lookup_drafts(buffer, 10, 2, 6)
    np.testing.assert_array_equal(to_numpy(drafts), [[4, 8, 1, 2, 2, 2]])
    # no earlier match: copies of the last token, and not found
    drafts, found = speculative.lookup_drafts(buffer, 4, 3, 2)
    np.testing.assert_array_equal(to_numpy(drafts), [[9, 9]])
    np.testing.assert_array_equal(to_numpy(found), [False])


def _softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("drafting", ["draft_model", "prompt_lookup"])
def test_speculative_sampling_draws_from_the_model(drafting):
    """The first two new tokens of 3000 sampled rows, against the model's own
    probabilities p(x1) p(x2 | x1) from full forward passes (chi-square)."""
    vocabulary = 4
    model = _model(4, vocabulary_size=vocabulary, mask_zero=False)
    draft = _model(5, vocabulary_size=vocabulary, num_layers=1, embedding_dim=16, mask_zero=False)
    prompt = [2, 3, 1, 2]
    rows = 3000
    speculation = (
        {"draft_model": draft, "num_draft_tokens": 2}
        if drafting == "draft_model"
        else {"prompt_lookup": 1, "num_draft_tokens": 2}
    )
    out = model.generate([prompt] * rows, 2, sampler="random", seed=7, **speculation)
    pairs = out[:, len(prompt)] * vocabulary + out[:, len(prompt) + 1]
    observed = np.bincount(pairs, minlength=vocabulary**2)
    first = _softmax(to_numpy(model(np.array([prompt])))[0, -1])
    candidates = np.array([prompt + [x] for x in range(vocabulary)])
    second = _softmax(to_numpy(model(candidates))[:, -1])
    expected = (first[:, None] * second).reshape(-1).astype("float64")
    expected *= rows / expected.sum()
    assert stats.chisquare(observed, expected).pvalue > 1e-3


@pytest.mark.skipif(
    keras.backend.backend() == "torch", reason="PyTorch runs the loop eagerly (no trace)"
)
def test_speculative_compiles_once_per_signature(models):
    model, draft = models
    functions = model._generation_functions()
    model.generate(PROMPTS, 6, draft_model=draft)
    traces = functions.traces
    model.generate(PROMPTS, 6, draft_model=draft)
    assert functions.traces == traces


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"prompt_lookup": 2, "num_draft_tokens": 0}, "num_draft_tokens=0"),
        ({"prompt_lookup": 0}, "prompt_lookup=0"),
        ({"num_draft_tokens": 3}, "num_draft_tokens=3"),
        ({"prompt_lookup": 2, "num_draft_tokens": 65}, "num_draft_tokens=65"),
        ({"prompt_lookup": 2, "sampler": "beam"}, "beam"),
    ],
)
def test_bad_speculation_arguments(models, arguments, message):
    model, _ = models
    with pytest.raises(ValueError, match=message):
        model.generate(PROMPTS, 4, **arguments)


def test_a_draft_model_with_another_vocabulary_is_refused(models):
    model, draft = models
    other = _model(6, num_layers=1, embedding_dim=16, vocabulary_size=30)
    with pytest.raises(ValueError, match="vocabulary_size=30"):
        model.generate(PROMPTS, 4, draft_model=other)
    with pytest.raises(ValueError, match="not both"):
        model.generate(PROMPTS, 4, draft_model=draft, prompt_lookup=2)


def test_the_drafts_must_fit_learned_positions(models):
    model, _ = models
    with pytest.raises(ValueError, match="num_draft_tokens"):
        model.generate([[1] * 50], 10, prompt_lookup=2, num_draft_tokens=8)

"""PyTorch: `generate()`'s traced decoding step (`keras_attention.backend.torch_step`)
against the eager loop (`compile=False`, every step through the Keras layers).

Greedy and seeded sampling give the same tokens (mixed-length prompts, stop tokens,
beam search, the ring cache of a sliding window, seq2seq, the int8 cache); a step is
traced once per shapes and reused by later calls; the weights are read at every call;
the caller's caches are never written; a step that cannot be traced runs eagerly.
(The loop against an independent full-recompute reference: `tests/test_generation.py`.)
"""

import keras
import numpy as np
import pytest

from keras_attention import models
from keras_attention.models import samplers
from tests.utils import TINY_LM

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="the traced decoding step is PyTorch's"
)

VOCAB = TINY_LM["vocabulary_size"]
TINY = dict(TINY_LM, sequence_length=40)


def _model(seed=7, **options):
    keras.utils.set_random_seed(seed)
    return models.causal_language_model(**{**TINY, **options})


def _steps(model):
    return model._generation_functions().steps


def _prompts(lengths, width, seed=0):
    rng = np.random.default_rng(seed)
    prompt = rng.integers(1, VOCAB, (len(lengths), width)).astype("int32")
    return prompt, np.arange(width)[None, :] < np.array(lengths)[:, None]


def _assert_traced_equals_eager(model, *args, **kwargs):
    traced = model.generate(*args, **kwargs)
    eager = model.generate(*args, **kwargs, compile=False)
    np.testing.assert_array_equal(traced, eager)
    assert _steps(model).get("traces", 0) >= 1
    return traced


def test_greedy_mixed_lengths_and_stop_tokens_equal_eager():
    model = _model()
    prompt, mask = _prompts((3, 7, 5), 9)
    free = _assert_traced_equals_eager(model, prompt, 8, prompt_mask=mask)
    stop = int(free[0, 3 + 2])
    stopped = _assert_traced_equals_eager(
        model, prompt, 8, prompt_mask=mask, stop_token_ids=[stop], pad_token_id=VOCAB - 1
    )
    assert (stopped[0, 3 + 3 :] == VOCAB - 1).all()
    assert "failures" not in _steps(model)


@pytest.mark.parametrize("sampler", ["random", "top_k", "top_p"])
def test_seeded_sampling_equals_eager(sampler):
    model = _model(seed=3)
    prompt, mask = _prompts((2, 4), 4, seed=1)
    _assert_traced_equals_eager(model, prompt, 10, prompt_mask=mask, sampler=sampler, seed=5)


def test_beam_search_equals_eager():
    model = _model(seed=4)
    prompt, mask = _prompts((2, 4, 3), 4, seed=2)
    beams = samplers.BeamSampler(3, length_penalty=0.0)
    _assert_traced_equals_eager(model, prompt, 6, prompt_mask=mask, sampler=beams)


def test_sliding_window_seq2seq_and_int8_cache_equal_eager():
    keras.utils.set_random_seed(5)
    windowed = models.CausalLanguageModel(**TINY, style="llama", sliding_window=3)
    prompt, mask = _prompts((3, 7), 7, seed=3)
    _assert_traced_equals_eager(windowed, prompt, 6, prompt_mask=mask)
    _assert_traced_equals_eager(_model(seed=6), prompt, 6, prompt_mask=mask, cache_dtype="int8")
    keras.utils.set_random_seed(8)
    s2s = models.transformer_seq2seq(**TINY)
    source = np.random.default_rng(4).integers(1, VOCAB, (2, 5))
    _assert_traced_equals_eager(s2s, source, prompt[:, :2], 5)


def test_traced_once_per_shape_and_reused():
    model = _model()
    prompt, _ = _prompts((3, 3), 3)
    for _ in range(3):
        model.generate(prompt, 4)
    assert _steps(model)["traces"] == 1
    model.generate(prompt, 6)  # a longer cache: another step
    assert _steps(model)["traces"] == 2
    model.generate(prompt, 4)
    assert _steps(model)["traces"] == 2


def test_weights_changed_after_tracing_are_used():
    model = _model()
    prompt, _ = _prompts((4, 4), 4)
    before = model.generate(prompt, 6)
    other = _model(seed=11)
    model.set_weights(other.get_weights())
    after = model.generate(prompt, 6)
    assert _steps(model)["traces"] == 1
    np.testing.assert_array_equal(after, other.generate(prompt, 6, compile=False))
    assert not np.array_equal(before, after)


def test_callers_caches_are_not_written():
    import torch

    with torch.no_grad():  # as in generate()
        _check_caches_not_written()


def _check_caches_not_written():
    from keras_attention.backend import torch_step

    model = _model()
    store = {}
    step = torch_step.TracedStep(model.call_with_cache, model.variables, store)
    tokens = keras.ops.convert_to_tensor(np.array([[1], [2]], "int32"))
    index = keras.ops.convert_to_tensor(0, "int32")
    caches = model.initial_cache(2, 8)
    kept = [keras.ops.convert_to_numpy(c).copy() for c in caches]
    logits, first = step(tokens, caches, index)
    for cache, values in zip(caches, kept):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(cache), values)
    eager_logits, eager = model.call_with_cache(tokens, caches, index)
    np.testing.assert_allclose(*map(keras.ops.convert_to_numpy, (logits, eager_logits)))
    for a, b in zip(first, eager):
        np.testing.assert_array_equal(*map(keras.ops.convert_to_numpy, (a, b)))
    # Its own caches, handed back by the loop, are written in place.
    _, second = step(tokens, first, index + 1)
    assert all(a is b for a, b in zip(first, second))
    assert store["traces"] == 1


def test_untraceable_step_runs_eagerly(monkeypatch):
    from keras_attention.backend import torch_step

    def fail(*args, **kwargs):
        raise RuntimeError("cannot trace this step")

    monkeypatch.setattr(torch_step, "make_fx", fail)
    model = _model()
    prompt, mask = _prompts((2, 5), 5)
    _assert_traced_equals_eager(model, prompt, 5, prompt_mask=mask)
    model.generate(prompt, 5, prompt_mask=mask)  # not retried
    steps = _steps(model)
    assert steps["traces"] == 1 and "cannot trace this step" in steps["failures"][0]

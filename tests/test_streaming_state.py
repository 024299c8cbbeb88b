"""Streaming and multi-turn generation: `stream()`'s chunks put together equal
`generate()`'s new tokens (greedy, seeded sampling, prompts of different lengths, stop
tokens, the sliding-window ring cache, encoder-decoders), each chunk function is
compiled once; a `GenerationState` continuation equals a fresh `generate()` of the
whole history (and a full-recompute reference); bad arguments are refused.
"""

import keras
import numpy as np
import pytest

from keras_attention import models
from keras_attention.models.generation import GenerationState
from tests.utils import TINY_LM

BACKEND = keras.backend.backend()
VOCAB = TINY_LM["vocabulary_size"]
TINY = dict(TINY_LM, sequence_length=48)


@pytest.fixture(scope="module")
def lm():
    keras.utils.set_random_seed(7)
    return models.causal_language_model(**TINY)


@pytest.fixture(scope="module")
def windowed():
    """RoPE (no position table), three layers, a window of 3: the ring cache wraps."""
    keras.utils.set_random_seed(23)
    return models.CausalLanguageModel(**{**TINY, "num_layers": 3}, style="llama", sliding_window=3)


def _prompts(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, VOCAB, length).tolist() for length in lengths]


def _new_tokens(output, prompts, new):
    """Each row's `new` tokens after its prompt in `generate()`'s output."""
    return np.stack([output[i, len(p) : len(p) + new] for i, p in enumerate(prompts)])


def _reference(model, tokens, new):
    """Greedy by full recomputation of one sequence: numpy argmax, no cache."""
    tokens = list(tokens)
    for _ in range(new):
        logits = keras.ops.convert_to_numpy(model(np.array([tokens], "int32"), training=False))
        tokens.append(int(np.argmax(logits[0, -1])))
    return tokens


# -- streaming ------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["greedy", "random"])
def test_stream_equals_generate_mixed_length_prompts(lm, sampler):
    prompts, new = _prompts((3, 7, 5)), 11
    expected = _new_tokens(lm.generate(prompts, new, sampler=sampler, seed=5), prompts, new)
    chunks = list(lm.stream(prompts, new, chunk_size=4, sampler=sampler, seed=5))
    assert [c.shape for c in chunks] == [(3, 4), (3, 4), (3, 3)]
    assert all(c.dtype == np.int32 for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks, axis=1), expected)


def test_stream_on_the_ring_cache_and_eagerly(windowed):
    prompts, new = _prompts((2, 6), seed=1), 9
    expected = np.stack([_reference(windowed, p, new)[len(p) :] for p in prompts])
    for compile in (True, False):
        chunks = list(windowed.stream(prompts, new, chunk_size=2, compile=compile))
        assert [c.shape[1] for c in chunks] == [2, 2, 2, 2, 1]
        np.testing.assert_array_equal(np.concatenate(chunks, axis=1), expected)


def test_stream_ends_once_every_row_has_stopped(lm):
    prompts, new = _prompts((4, 2), seed=2), 12
    plain = np.stack([_reference(lm, p, new)[len(p) :] for p in prompts])
    # Each row stops at its third new token at the latest.
    stop_ids = sorted({int(plain[0, 2]), int(plain[1, 2])})
    stopped_at = [min(list(row).index(t) for t in stop_ids if t in row) for row in plain]
    output = lm.generate(prompts, new, stop_token_ids=stop_ids, pad_token_id=0)
    expected = _new_tokens(output, prompts, new)
    chunks = list(lm.stream(prompts, new, chunk_size=2, stop_token_ids=stop_ids))
    streamed = np.concatenate(chunks, axis=1)
    assert streamed.shape[1] == max(stopped_at) + 1 <= 3  # stopped early
    np.testing.assert_array_equal(streamed, expected[:, : streamed.shape[1]])
    assert (expected[:, streamed.shape[1] :] == 0).all()


def test_seq2seq_stream_equals_generate():
    keras.utils.set_random_seed(8)
    s2s = models.transformer_seq2seq(**TINY)
    source = np.random.default_rng(3).integers(1, VOCAB, (2, 6))
    prompts, new = [[1], [2, 3]], 7
    output = s2s.generate(source, prompts, new, sampler="random", seed=9)
    chunks = list(s2s.stream(source, prompts, new, chunk_size=3, sampler="random", seed=9))
    assert [c.shape for c in chunks] == [(2, 3), (2, 3), (2, 1)]
    np.testing.assert_array_equal(np.concatenate(chunks, axis=1), _new_tokens(output, prompts, new))


@pytest.mark.skipif(
    BACKEND == "torch",
    reason="PyTorch runs the loop in Python (its traced step: test_torch_generation.py)",
)
def test_stream_compiles_once_per_signature():
    keras.utils.set_random_seed(1)
    model = models.causal_language_model(**TINY)
    functions = model._generation_functions()
    assert len(list(model.stream([[1, 2, 3]], 10, chunk_size=2))) == 5
    assert functions.traces == 2  # the first chunk's function and the resuming one
    list(model.stream([[4, 5, 6]], 10, chunk_size=2, seed=3))
    list(model.stream([[4, 5, 6]], 10, chunk_size=5))
    assert functions.traces == 2


# -- multi-turn state -----------------------------------------------------------------


def test_state_continuation_equals_fresh_generate(lm):
    prompts = _prompts((3, 6, 4), seed=4)
    output, state = lm.generate(prompts, 5, return_state=True, max_length=44)
    np.testing.assert_array_equal(output, lm.generate(prompts, 5))
    assert isinstance(state, GenerationState) and state.max_length == 44
    assert state.lengths.tolist() == [8, 11, 9]
    new_tokens = _prompts((1, 3, 2), seed=10)
    history = [list(h) + n for h, n in zip(state.history(), new_tokens)]
    output, next_state = lm.generate(new_tokens, 6, state=state, return_state=True)
    np.testing.assert_array_equal(output, lm.generate(history, 6))
    # A state is not changed by a continuation: continuing it again is the same.
    np.testing.assert_array_equal(lm.generate(new_tokens, 6, state=state), output)
    # A third turn, against the full-recompute reference.
    new_tokens = _prompts((2, 2, 1), seed=11)
    history = [list(h) + n for h, n in zip(next_state.history(), new_tokens)]
    output = lm.generate(new_tokens, 4, state=next_state)
    for i, row in enumerate(history):
        assert output[i, : len(row) + 4].tolist() == _reference(lm, row, 4)


def test_state_with_stop_tokens_and_sampling(lm):
    prompts = _prompts((5, 3), seed=5)
    plain = lm.generate(prompts, 8)
    stop_ids = [int(plain[0, 6])]  # row 0 stops early, row 1 maybe not
    kwargs = dict(stop_token_ids=stop_ids, sampler="random", seed=11)
    output, state = lm.generate(prompts, 8, return_state=True, **kwargs)
    np.testing.assert_array_equal(output, lm.generate(prompts, 8, **kwargs))
    history = [list(h) + [1, 2] for h in state.history()]
    continued = lm.generate([[1, 2], [1, 2]], 5, state=state, **kwargs)
    np.testing.assert_array_equal(continued, lm.generate(history, 5, **kwargs))


def test_state_on_the_ring_cache(windowed):
    _, state = windowed.generate(_prompts((5, 5), seed=6), 6, return_state=True, max_length=40)
    assert state.caches[0].shape[1] == 3  # a ring of the window
    for turn in range(2):  # the ring wraps around many times
        new_tokens = _prompts((2, 2), seed=20 + turn)
        history = [list(h) + n for h, n in zip(state.history(), new_tokens)]
        output, state = windowed.generate(new_tokens, 4, state=state, return_state=True)
        for i, row in enumerate(history):
            assert output[i].tolist() == _reference(windowed, row, 4)
    # One row always continues.
    _, single = windowed.generate([[1, 2, 3]], 4, return_state=True, compile=False)
    history = list(single.history()[0]) + [7, 8]
    continued = windowed.generate([[7, 8]], 3, state=single, compile=False)
    assert continued[0].tolist() == _reference(windowed, history, 3)
    # Rows ending at different positions: the ring has dropped what the shorter needs.
    _, ragged = windowed.generate([[1], [3, 4, 5, 6, 7]], 3, return_state=True, compile=False)
    with pytest.raises(ValueError, match="`state`.*same position"):
        windowed.generate([[1], [2]], 2, state=ragged)


@pytest.mark.skipif(
    BACKEND == "torch",
    reason="PyTorch runs the loop in Python (its traced step: test_torch_generation.py)",
)
def test_state_compiles_once_per_signature():
    keras.utils.set_random_seed(2)
    model = models.causal_language_model(**TINY)
    functions = model._generation_functions()
    _, state = model.generate([[1, 2]], 3, return_state=True, max_length=40)
    _, state = model.generate([[3, 4]], 3, state=state, return_state=True)
    traces = functions.traces
    # The same new-token width from another position: the same compiled function.
    model.generate([[5, 6]], 3, state=state)
    assert functions.traces == traces


# -- bad arguments --------------------------------------------------------------------


def test_bad_arguments(lm, windowed):
    with pytest.raises(ValueError, match="chunk_size"):
        lm.stream([[1, 2]], 4, chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size"):
        lm.stream([[1, 2]], 4, chunk_size=2.5)
    with pytest.raises(ValueError, match="sampler"):
        lm.stream([[1, 2]], 4, sampler="beam")
    with pytest.raises(ValueError, match="sampler"):
        lm.generate([[1, 2]], 4, sampler="beam", return_state=True)
    with pytest.raises(ValueError, match="max_length.*return_state"):
        lm.generate([[1, 2]], 4, max_length=20)
    with pytest.raises(ValueError, match="max_length=5"):
        lm.generate([[1, 2, 3]], 4, return_state=True, max_length=5)
    with pytest.raises(ValueError, match="max_length=49"):  # learned table of 48
        lm.generate([[1, 2]], 4, return_state=True, max_length=49)
    _, state = lm.generate([[1, 2]], 4, return_state=True, max_length=12)
    with pytest.raises(ValueError, match="`state` comes from another model"):
        windowed.generate([[1]], 2, state=state)
    with pytest.raises(ValueError, match="does not fit the `state`.*max_length=12"):
        lm.generate([[1, 2, 3]], 4, state=state)  # 6 + 3 + 4 > 12
    with pytest.raises(ValueError, match="max_length.*fixed by the `state`"):
        lm.generate([[1]], 2, state=state, max_length=30)
    with pytest.raises(ValueError, match="batch size"):
        lm.generate([[1], [2]], 2, state=state)
    with pytest.raises(ValueError, match="`state` must be the GenerationState"):
        lm.generate([[1]], 2, state={"caches": []})
    with pytest.raises(TypeError, match="return_state"):
        lm.generate([[1]], 2, return_state="yes")

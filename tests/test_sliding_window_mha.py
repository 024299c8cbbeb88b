"""`MultiHeadAttention(sliding_window=w)` against full attention with a numpy band mask.

The reference is the same layer without a window, given the band (written here in
numpy) as an explicit `attention_mask`: outputs and gradients must agree, with
padding and with fully masked rows, on every path and through the decoding cache.
"""

import keras
import numpy as np
import pytest

from keras_attention.layers.multi_head_attention import MultiHeadAttention
from tests.utils import value_and_gradients

_np = keras.ops.convert_to_numpy


def _band(q_len, kv_len, window, causal, offset=0):
    i = np.arange(q_len)[:, None] + offset
    j = np.arange(kv_len)[None, :]
    band = np.abs(i - j) < window
    return band & (j <= i) if causal else band


def _pair(window, **kwargs):
    keras.utils.set_random_seed(3)
    windowed = MultiHeadAttention(num_heads=2, key_dim=4, sliding_window=window, **kwargs)
    full = MultiHeadAttention(num_heads=2, key_dim=4, **kwargs)
    x = np.random.default_rng(0).standard_normal((2, 9, 8)).astype("float32")
    windowed(x, x)
    full(x, x)
    full.set_weights(windowed.get_weights())
    return windowed, full, x


@pytest.mark.parametrize("implementation", ["plain", "chunked", "fused"])
@pytest.mark.parametrize("causal", [True, False])
def test_window_equals_band_mask(implementation, causal):
    windowed, full, x = _pair(3, implementation=implementation)
    keep = np.ones((2, 9), bool)
    keep[1, 4:] = False  # padding; with the window, query 8 of row 1 sees no key
    padding = keep[:, None, :] & np.ones((2, 9, 1), bool)
    padding[0, 2] = False  # a fully masked row
    band = _band(9, 9, 3, causal)[None] & padding

    def windowed_loss(x):
        out = windowed(x, x, attention_mask=padding, use_causal_mask=causal)
        return keras.ops.sum(
            out * keras.ops.convert_to_tensor(np.linspace(-1, 1, 8, dtype="float32"))
        ), out

    def full_loss(x):
        out = full(x, x, attention_mask=band)
        return keras.ops.sum(
            out * keras.ops.convert_to_tensor(np.linspace(-1, 1, 8, dtype="float32"))
        ), out

    out, expected = _np(windowed_loss(x)[1]), _np(full_loss(x)[1])
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, expected, atol=1e-5)
    _, grads = value_and_gradients(lambda x: windowed_loss(x)[0], [x], windowed.trainable_weights)
    _, expected_grads = value_and_gradients(lambda x: full_loss(x)[0], [x], full.trainable_weights)
    for g, e in zip(grads, expected_grads):
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g, e, atol=1e-5)


def test_cached_steps_equal_full_pass():
    windowed, _, x = _pair(3)
    full_out = _np(windowed(x, x, use_causal_mask=True))
    cache = windowed.get_initial_cache(2, 9)
    out, cache = windowed(x[:, :4], x[:, :4], cache=cache, cache_index=0)  # prefill
    steps = [_np(out)]
    for t in range(4, 9):
        out, cache = windowed(x[:, t : t + 1], x[:, t : t + 1], cache=cache, cache_index=t)
        steps.append(_np(out))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full_out, atol=1e-5)


@pytest.mark.parametrize("window", [None, 3, 5])
def test_prefill_of_different_length_rows_then_steps_equal_recompute(window):
    # Rows of 3 and 7 tokens prefilled together (junk after the short one), keeping
    # the 3 positions both have (`cache_write_length`); then one token a step from
    # position 3 on, each row its own sequence, as `generate` does. Every output
    # equals the layer's full recompute of that row with the band mask.
    windowed, full, _ = _pair(window or 3)
    layer = windowed if window else full
    total, lengths = 12, (3, 7)
    rng = np.random.default_rng(1)
    sequence = rng.standard_normal((2, total, 8)).astype("float32")
    prompt = sequence[:, : max(lengths)].copy()
    prompt[0, lengths[0] :] = rng.standard_normal((max(lengths) - lengths[0], 8))
    band = _band(total, total, window or total, causal=True)
    expected = _np(
        full(sequence, sequence, attention_mask=np.broadcast_to(band, (2,) + band.shape))
    )

    cache = layer.get_initial_cache(2, total)
    if window:
        assert cache.shape[1] == window < max(lengths)  # the ring wraps in the prefill
    out, cache = layer(prompt, prompt, cache=cache, cache_index=0, cache_write_length=3)
    for row, length in enumerate(lengths):
        np.testing.assert_allclose(_np(out)[row, :length], expected[row, :length], atol=1e-5)
    for t in range(min(lengths), total):
        step = sequence[:, t : t + 1]
        out, cache = layer(step, step, cache=cache, cache_index=t)
        np.testing.assert_allclose(_np(out)[:, 0], expected[:, t], atol=1e-5)


def test_cache_write_length_needs_a_cache():
    layer, _, x = _pair(3)
    with pytest.raises(ValueError, match="`cache_write_length` is only used with `cache`"):
        layer(x, x, cache_write_length=2)
    cache = layer.get_initial_cache(2, 9)
    with pytest.raises(ValueError, match=r"at most the number of new tokens \(4\)"):
        layer(x[:, :4], x[:, :4], cache=cache, cache_index=0, cache_write_length=5)


def test_window_in_config_and_validated():
    layer = MultiHeadAttention(num_heads=2, key_dim=4, sliding_window=5)
    assert layer.get_config()["sliding_window"] == 5
    assert MultiHeadAttention.from_config(layer.get_config()).sliding_window == 5
    with pytest.raises(ValueError, match="sliding_window=0"):
        MultiHeadAttention(num_heads=2, key_dim=4, sliding_window=0)


def test_ring_cache_size_and_overflow():
    windowed, _, x = _pair(5)
    assert tuple(windowed.get_initial_cache(2, 20).shape) == (2, 5, 16)  # the ring
    short = windowed.get_initial_cache(2, 3)  # shorter than the window: no wrap-around
    assert tuple(short.shape) == (2, 3, 16)
    with pytest.raises(ValueError, match="max_length=3"):
        windowed(x[:, :2], x[:, :2], cache=short, cache_index=2)

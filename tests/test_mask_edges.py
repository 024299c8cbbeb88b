"""Mask and attention edge cases found by mutation testing (`.ci/mutation_test.py`):
each test kills mutants of `masks.py`/`ops.py` that the other tests let through."""

import keras
import numpy as np
import pytest

import keras_attention as ka
from keras_attention import masks
from tests import reference
from tests.utils import to_numpy


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_mask_bias_is_negative_finite_with_headroom_and_exp_zero(dtype):
    """The bias must be negative, finite, leave room for adding a score of the same
    size (float16 overflows past 65504) and make exp() exactly 0."""
    bias = to_numpy(keras.ops.cast(masks.mask_to_bias(np.array([False, True]), dtype), "float64"))
    assert bias[1] == 0.0
    assert bias[0] < 0 and np.isfinite(bias[0])
    doubled = keras.ops.convert_to_numpy(
        keras.ops.cast(
            keras.ops.multiply(masks.mask_to_bias(np.array([False]), dtype), 2.0), "float64"
        )
    )
    assert np.all(np.isfinite(doubled)), f"no headroom in {dtype}"
    assert float(np.exp(np.float64(bias[0]))) == 0.0


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="float64 numpy inputs become float32 on JAX (without jax_enable_x64) and PyTorch",
)
def test_float64_attention_with_a_mask_matches_numpy():
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 5, 2))
    keep = rng.random((2, 3, 5)) > 0.4
    keep[:, :, 0] = True
    out, w = ka.ops.scaled_dot_product_attention(q, k, v, mask=keep, return_attention_scores=True)
    ref_out, ref_w = reference.attention(q, k, v, mask=keep)
    assert keras.backend.standardize_dtype(out.dtype) == "float64"
    np.testing.assert_allclose(to_numpy(w), ref_w, atol=1e-12)
    np.testing.assert_allclose(to_numpy(out), ref_out, atol=1e-12)


@pytest.mark.parametrize("window", [1, 2, 3])
def test_sliding_window_mask_values(window):
    got = to_numpy(masks.sliding_window_mask(4, 6, window))
    i, j = np.arange(4)[:, None], np.arange(6)[None, :]
    np.testing.assert_array_equal(got, np.abs(i - j) < window)


def test_causal_mask_needs_both_lengths():
    with pytest.raises(ValueError, match="kv_len"):
        masks.merge_attention_masks(use_causal_mask=True, q_len=3, kv_len=None)
    with pytest.raises(ValueError, match="q_len"):
        masks.merge_attention_masks(use_causal_mask=True, q_len=None, kv_len=3)


def test_head_axis_attention_mask_combines_with_padding_and_causal():
    """A (batch, heads, q, kv) attention mask AND a value padding mask AND causal."""
    rng = np.random.default_rng(1)
    attention_mask = rng.random((2, 3, 4, 4)) > 0.3
    value_keep = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
    query_keep = np.array([[1, 1, 1, 1], [1, 0, 1, 1]], bool)
    got = to_numpy(
        masks.merge_attention_masks(
            query_mask=query_keep,
            value_mask=value_keep,
            attention_mask=attention_mask,
            use_causal_mask=True,
            q_len=4,
            kv_len=4,
        )
    )
    causal = np.tril(np.ones((4, 4), bool))
    expected = attention_mask & value_keep[:, None, None, :] & query_keep[:, None, :, None] & causal
    np.testing.assert_array_equal(np.broadcast_to(got, expected.shape), expected)


def test_split_and_merge_heads_values_and_rank_errors():
    x = np.arange(2 * 3 * 8, dtype="float32").reshape(2, 3, 8)
    heads = to_numpy(ka.ops.split_heads(x, 4))
    np.testing.assert_array_equal(heads, x.reshape(2, 3, 4, 2).transpose(0, 2, 1, 3))
    np.testing.assert_array_equal(to_numpy(ka.ops.merge_heads(heads)), x)
    with pytest.raises(ValueError, match="`x` must be rank 4"):
        ka.ops.merge_heads(x)
    with pytest.raises(ValueError, match="`x` must be rank 3"):
        ka.ops.split_heads(heads, 4)


def test_dropout_rate_zero_in_training_is_the_identity():
    rng = np.random.default_rng(2)
    q, k, v = rng.normal(size=(1, 3, 4)), rng.normal(size=(1, 5, 4)), rng.normal(size=(1, 5, 2))
    q, k, v = (t.astype("float32") for t in (q, k, v))
    trained = ka.ops.scaled_dot_product_attention(q, k, v, dropout_rate=0.0, training=True)
    np.testing.assert_allclose(to_numpy(trained), reference.attention(q, k, v)[0], atol=1e-5)

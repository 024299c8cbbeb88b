"""Score bias, soft-capping and sliding windows in `ops.scaled_dot_product_attention`.

Every path (plain, chunked, fused) against the numpy reference in `tests/reference.py`.
"""

import keras
import numpy as np
import pytest

from keras_attention import backend as backend_lib
from keras_attention import ops as attention_ops
from tests import reference
from tests.utils import normal_sampler, value_and_gradients

_np = keras.ops.convert_to_numpy
RNG = np.random.default_rng(7)
PATHS = ["plain", "chunked", "flash", "fused"]


_rand = normal_sampler(RNG)


def _qkv(q_len=11, kv_len=11, d=8):
    return (
        _rand(2, 3, q_len, d, scale=2.0),
        _rand(2, 3, kv_len, d, scale=2.0),
        _rand(2, 3, kv_len, d),
    )


def _attend(q, k, v, implementation, **kwargs):
    if implementation == "chunked":
        kwargs["chunk_size"] = 4  # 11 queries: three chunks, the last one padded
    return _np(
        attention_ops.scaled_dot_product_attention(q, k, v, implementation=implementation, **kwargs)
    )


def _relative_bias(q_positions, k_positions):
    """A callable bias: a per-head slope times the signed distance (ALiBi-like)."""
    slopes = keras.ops.convert_to_tensor(np.array([0.5, 0.25, 0.125], "float32"))
    distance = keras.ops.cast(k_positions[None, :] - q_positions[:, None], "float32")
    return slopes[:, None, None] * distance[None]


def _relative_bias_numpy(q_len, kv_len):
    slopes = np.array([0.5, 0.25, 0.125])
    return slopes[:, None, None] * (np.arange(kv_len)[None, :] - np.arange(q_len)[:, None])


@pytest.mark.parametrize("implementation", PATHS)
@pytest.mark.parametrize("bias_shape", [(3, 11, 11), (2, 1, 11, 11), (1, 11), (2, 3, 1, 11)])
def test_tensor_bias(implementation, bias_shape):
    q, k, v = _qkv()
    bias = _rand(*bias_shape)
    mask = RNG.random((2, 1, 11, 11)) > 0.3
    out = _attend(q, k, v, implementation, bias=bias, mask=mask, causal=True)
    expected, _ = reference.attention(q, k, v, bias=bias, mask=mask, causal=True)
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("implementation", PATHS)
def test_callable_bias_sees_absolute_positions(implementation):
    q, k, v = _qkv(q_len=11, kv_len=13)
    out = _attend(q, k, v, implementation, bias=_relative_bias)
    expected, _ = reference.attention(q, k, v, bias=_relative_bias_numpy(11, 13))
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("implementation", ["plain", "chunked", "flash"])
def test_soft_cap(implementation):
    q, k, v = _qkv()
    out = _attend(q, k, v, implementation, soft_cap=2.0, causal=True)
    expected, _ = reference.attention(q, k, v, soft_cap=2.0, causal=True)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    uncapped, _ = reference.attention(q, k, v, causal=True)
    assert np.abs(expected - uncapped).max() > 1e-2  # the cap is active at this scale


def test_soft_cap_gradient_matches_finite_differences():
    q, k, v = (x[:1, :1, :5] for x in _qkv())

    def loss(query):
        out = attention_ops.scaled_dot_product_attention(query, k, v, soft_cap=1.5)
        return keras.ops.sum(out * keras.ops.convert_to_tensor(v))

    _, (grad,) = value_and_gradients(loss, [q])
    eps = 1e-3
    for index in [(0, 0, 0, 0), (0, 0, 2, 5), (0, 0, 4, 7)]:
        plus, minus = q.copy(), q.copy()
        plus[index] += eps
        minus[index] -= eps
        numeric = (float(_np(loss(plus))) - float(_np(loss(minus)))) / (2 * eps)
        assert abs(grad[index] - numeric) < 2e-2 * max(1.0, abs(numeric))


@pytest.mark.parametrize("implementation", PATHS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [1, 3, 20])
def test_sliding_window(implementation, causal, window):
    q, k, v = _qkv()
    mask = np.ones((2, 1, 1, 11), bool)
    mask[1, ..., 4:] = False  # padding on the second sequence: some rows fully masked
    out = _attend(q, k, v, implementation, sliding_window=window, causal=causal, mask=mask)
    expected, _ = reference.attention(q, k, v, window=window, causal=causal, mask=mask)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert np.all(np.isfinite(out))


def test_fused_refuses_soft_cap_and_default_avoids_it():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="soft_cap"):
        attention_ops.scaled_dot_product_attention(q, k, v, soft_cap=5.0, implementation="fused")
    if backend_lib.default_implementation() == "fused":
        out = _np(attention_ops.scaled_dot_product_attention(q, k, v, soft_cap=5.0))
        np.testing.assert_allclose(out, reference.attention(q, k, v, soft_cap=5.0)[0], atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"soft_cap": 0.0}, "soft_cap"),
        ({"soft_cap": -1.0}, "soft_cap"),
        ({"sliding_window": 0}, "sliding_window"),
        ({"sliding_window": 2.5}, "sliding_window"),
        ({"bias": np.zeros((4, 11, 11), "float32")}, "bias"),
        ({"bias": np.zeros((2, 3, 11, 12), "float32")}, "bias"),
        ({"bias": np.zeros((5, 2, 3, 11, 11), "float32")}, "bias"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    q, k, v = _qkv()
    with pytest.raises((ValueError, TypeError), match=match):
        attention_ops.scaled_dot_product_attention(q, k, v, **kwargs)


def test_integer_bias_is_refused():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="bias"):
        attention_ops.scaled_dot_product_attention(q, k, v, bias=np.zeros((11, 11), "int32"))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bias_kind", ["rows", "keys", "callable"])
def test_chunked_window_scores_only_the_keys_in_reach(causal, bias_kind):
    # 23 queries in chunks of 4 against 23 keys, window 3: each chunk scores a slice
    # of 6 (causal) or 8 keys; with full masks and biases sliced the same way.
    q, k, v = _qkv(q_len=23, kv_len=23)
    mask = RNG.random((2, 1, 23, 23)) > 0.2
    if bias_kind == "callable":
        bias, numpy_bias = _relative_bias, _relative_bias_numpy(23, 23)
    else:
        numpy_bias = bias = _rand(3, 23, 23) if bias_kind == "rows" else _rand(2, 3, 1, 23)
    out = _np(
        attention_ops.scaled_dot_product_attention(
            q,
            k,
            v,
            mask=mask,
            causal=causal,
            bias=bias,
            sliding_window=3,
            implementation="chunked",
            chunk_size=4,
        )
    )
    expected, _ = reference.attention(q, k, v, mask=mask, causal=causal, bias=numpy_bias, window=3)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_chunked_window_never_reads_keys_out_of_reach():
    # Causal, window 3, 8 queries in chunks of 4: no query reaches key 8 or later,
    # so NaN there must not matter (scoring every key would spread the NaN).
    q, k, v = _qkv(q_len=8, kv_len=23)
    k[..., 12:, :] = np.nan
    v[..., 12:, :] = np.nan
    out = _np(
        attention_ops.scaled_dot_product_attention(
            q, k, v, causal=True, sliding_window=3, implementation="chunked", chunk_size=4
        )
    )
    expected, _ = reference.attention(q, k[..., :8, :], v[..., :8, :], causal=True, window=3)
    np.testing.assert_allclose(out, expected, atol=1e-5)

"""RoPE, ALiBi, T5 relative bias, RMSNorm and the gated feed-forward against numpy
transcriptions of the papers (written here, not taken from the package)."""

import math

import keras
import numpy as np
import pytest

import keras_attention as ka
from keras_attention import ops as attention_ops
from tests.utils import normal_sampler, run_layer_test

_np = keras.ops.convert_to_numpy
RNG = np.random.default_rng(11)


_rand = normal_sampler(RNG)


# --- numpy references -------------------------------------------------------------


def rope_numpy(x, positions, base=10000.0, scaling=1.0, fraction=1.0, layout="rotate_half"):
    """RoPE of x (..., seq, d) by explicit 2x2 rotations of each feature pair."""
    d = x.shape[-1]
    r = int(round(d * fraction))
    out = x.astype("float64").copy()
    for k in range(r // 2):
        theta = (np.asarray(positions, "float64") / scaling) * base ** (-2.0 * k / r)
        a, b = (k, k + r // 2) if layout == "rotate_half" else (2 * k, 2 * k + 1)
        xa, xb = x[..., a].astype("float64"), x[..., b].astype("float64")
        out[..., a] = xa * np.cos(theta) - xb * np.sin(theta)
        out[..., b] = xb * np.cos(theta) + xa * np.sin(theta)
    return out


def t5_bucket_numpy(relative_position, bidirectional, num_buckets, max_distance):
    """Transcription of T5's `_relative_position_bucket` (mesh_tensorflow / HF T5)."""
    ret = 0
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        ret += int(n < 0) * num_buckets
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    val = max_exact + int(
        math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    )
    return ret + min(val, num_buckets - 1)


# --- rotary ----------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["rotate_half", "interleaved"])
@pytest.mark.parametrize(
    "settings",
    [{}, {"scaling_factor": 4.0, "max_wavelength": 500.0}, {"rotary_fraction": 0.5}],
)
def test_rotary_matches_numpy(layout, settings):
    x = _rand(2, 3, 7, 8)
    out = attention_ops.apply_rotary_embedding(x, start_index=5, layout=layout, **settings)
    expected = rope_numpy(
        x,
        np.arange(5, 12),
        base=settings.get("max_wavelength", 10000.0),
        scaling=settings.get("scaling_factor", 1.0),
        fraction=settings.get("rotary_fraction", 1.0),
        layout=layout,
    )
    np.testing.assert_allclose(_np(out), expected, atol=1e-5)
    # The layer on keras-hub's (batch, seq, heads, dim) layout gives the same.
    layer = ka.RotaryEmbedding(layout=layout, **settings)
    out = layer(np.transpose(x, (0, 2, 1, 3)), start_index=5)
    np.testing.assert_allclose(_np(out), np.transpose(expected, (0, 2, 1, 3)), atol=1e-5)


def test_rotary_scores_depend_on_relative_position_only():
    q, k = _rand(1, 1, 1, 8), _rand(1, 1, 1, 8)

    def score(p, s):
        rq = attention_ops.apply_rotary_embedding(q, start_index=p)
        rk = attention_ops.apply_rotary_embedding(k, start_index=s)
        return float(np.sum(_np(rq) * _np(rk)))

    assert abs(score(3, 1) - score(10, 8)) < 1e-4
    assert abs(score(3, 1) - score(3, 2)) > 1e-3


def test_rotary_layer_contract(tmp_path):
    run_layer_test(
        ka.RotaryEmbedding,
        {"rotary_fraction": 0.5, "layout": "interleaved"},
        {"inputs": _rand(2, 5, 2, 8)},
        tmp_path=tmp_path,
        expected_output_shape=(2, 5, 2, 8),
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rotary_fraction": 0.75}, "rotated dim 3"),
        ({"layout": "sideways"}, "layout='sideways'"),
        ({"max_wavelength": 0}, "max_wavelength=0"),
        ({"rotary_fraction": 1.5}, "rotary_fraction=1.5"),
    ],
)
def test_rotary_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        attention_ops.apply_rotary_embedding(np.ones((1, 3, 4), "float32"), **kwargs)


def test_rotary_odd_head_dim():
    with pytest.raises(ValueError, match="head dim=5"):
        ka.RotaryEmbedding()(np.ones((1, 3, 2, 5), "float32"))
    with pytest.raises(ValueError, match="head dim=5"):
        ka.MultiHeadAttention(num_heads=2, key_dim=5, position_embedding="rotary")


# --- ALiBi -----------------------------------------------------------------------


def test_alibi_slopes_paper_table():
    # Press et al. 2022, section 3: 8 heads -> 1/2, 1/4, ..., 1/256; 12 heads (the
    # authors' code) -> the 8-head slopes, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
    eight = [2.0**-i for i in range(1, 9)]
    twelve = eight + [2.0**-0.5, 2.0**-1.5, 2.0**-2.5, 2.0**-3.5]
    np.testing.assert_allclose(attention_ops.alibi_slopes(8), eight, rtol=1e-12)
    np.testing.assert_allclose(attention_ops.alibi_slopes(12), twelve, rtol=1e-12)


def test_alibi_bias_matches_numpy():
    bias = _np(ka.ALiBiBias(num_heads=12)(np.arange(3, 7), np.arange(9)))
    slopes = np.array(attention_ops.alibi_slopes(12))
    distance = np.abs(np.arange(9)[None, :] - np.arange(3, 7)[:, None])
    np.testing.assert_allclose(bias, -slopes[:, None, None] * distance[None], atol=1e-6)


def test_alibi_layer_contract(tmp_path):
    # Float positions, so that the weightless layer has something to differentiate.
    run_layer_test(
        ka.ALiBiBias,
        {"num_heads": 3},
        {
            "query_positions": np.arange(8, dtype="float32").reshape(2, 4),
            "key_positions": np.arange(10, dtype="float32").reshape(2, 5),
        },
        tmp_path=tmp_path,
        expected_output_shape=(2, 3, 4, 5),
    )


# --- T5 relative position bias ----------------------------------------------------


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (8, 20)])
def test_t5_buckets_match_transcription(bidirectional, num_buckets, max_distance):
    relative = np.arange(-300, 301)
    buckets = _np(
        attention_ops.relative_position_buckets(relative, bidirectional, num_buckets, max_distance)
    )
    # The published function takes memory_position - query_position, as we do.
    expected = [t5_bucket_numpy(int(r), bidirectional, num_buckets, max_distance) for r in relative]
    np.testing.assert_array_equal(buckets, expected)


def test_relative_position_bias_looks_up_buckets(tmp_path):
    layer, _ = run_layer_test(
        ka.RelativePositionBias,
        {"num_buckets": 8, "max_distance": 16, "bidirectional": False, "num_heads": 2},
        {
            "query_positions": np.arange(6, dtype="int32").reshape(2, 3),
            "key_positions": np.arange(8, dtype="int32").reshape(2, 4),
        },
        tmp_path=tmp_path,
        expected_output_shape=(2, 2, 3, 4),
        expected_num_trainable_weights=1,
    )
    table = _np(layer.embeddings)
    q, k = np.arange(5), np.arange(7)
    expected = np.zeros((2, 5, 7))
    for i in q:
        for j in k:
            expected[:, i, j] = table[t5_bucket_numpy(j - i, False, 8, 16)]
    np.testing.assert_allclose(_np(layer(q, k)), expected, atol=1e-6)


def test_position_bias_bad_arguments():
    with pytest.raises(ValueError, match="num_heads=0"):
        ka.ALiBiBias(num_heads=0)
    with pytest.raises(ValueError, match="num_buckets=2"):
        ka.RelativePositionBias(num_buckets=2, num_heads=2)
    with pytest.raises(ValueError, match="score_bias.num_heads=3"):
        ka.MultiHeadAttention(num_heads=2, key_dim=4, score_bias=ka.ALiBiBias(3))


# --- RMSNorm and gated feed-forward ----------------------------------------------


def test_rms_norm_matches_numpy(tmp_path):
    x = _rand(2, 5, 6)
    layer, (out,) = run_layer_test(
        ka.RMSNorm,
        {"epsilon": 1e-5},
        {"inputs": x},
        tmp_path=tmp_path,
        expected_output_shape=(2, 5, 6),
        expected_num_trainable_weights=1,
        masked_inputs=("inputs",),
    )
    scale = _np(layer.scale)
    expected = x / np.sqrt(np.mean(x.astype("float64") ** 2, -1, keepdims=True) + 1e-5) * scale
    np.testing.assert_allclose(_np(out), expected, atol=1e-5)
    with pytest.raises(ValueError, match="epsilon=0"):
        ka.RMSNorm(epsilon=0)


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


@pytest.mark.parametrize("activation", ["swiglu", "geglu", "geglu_tanh"])
def test_gated_feed_forward_matches_numpy(activation, tmp_path):
    x = _rand(2, 5, 6)
    layer, (out,) = run_layer_test(
        ka.FeedForward,
        {"intermediate_dim": 7, "activation": activation, "use_bias": False},
        {"inputs": x},
        tmp_path=tmp_path,
        expected_output_shape=(2, 5, 6),
        expected_num_trainable_weights=3,
        masked_inputs=("inputs",),
    )
    w_gate = _np(layer.gate_dense.kernel).astype("float64")
    w_up = _np(layer.intermediate_dense.kernel).astype("float64")
    w_down = _np(layer.output_dense.kernel).astype("float64")
    g = x @ w_gate
    if activation == "swiglu":
        act = g / (1 + np.exp(-g))
    elif activation == "geglu_tanh":
        act = _gelu_tanh(g)
    else:
        act = 0.5 * g * (1 + np.vectorize(math.erf)(g / math.sqrt(2)))
    np.testing.assert_allclose(_np(out), (act * (x @ w_up)) @ w_down, atol=1e-5)
    assert layer.get_config()["activation"] == activation


def test_gelu_tanh_feed_forward_matches_numpy(tmp_path):
    """`"gelu_tanh"`: the tanh-approximate GELU (GPT-2), not Keras' exact `"gelu"`."""
    x = _rand(2, 5, 6, scale=3.0)
    layer, (out,) = run_layer_test(
        ka.FeedForward,
        {"intermediate_dim": 7, "activation": "gelu_tanh"},
        {"inputs": x},
        tmp_path=tmp_path,
        expected_output_shape=(2, 5, 6),
        expected_num_trainable_weights=4,
        masked_inputs=("inputs",),
    )
    w_1, b_1 = (_np(w).astype("float64") for w in layer.intermediate_dense.weights)
    w_2, b_2 = (_np(w).astype("float64") for w in layer.output_dense.weights)
    hidden = x @ w_1 + b_1
    np.testing.assert_allclose(_np(out), _gelu_tanh(hidden) @ w_2 + b_2, atol=1e-5)
    exact = 0.5 * hidden * (1 + np.vectorize(math.erf)(hidden / math.sqrt(2)))
    assert np.abs(_np(out) - (exact @ w_2 + b_2)).max() > 1e-5  # not the exact GELU
    assert layer.get_config()["activation"] == "gelu_tanh"

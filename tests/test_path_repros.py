"""The eight path bugs of issue 35, one test each, against a float64 numpy reference.

Each ran on the backend(s) named in its docstring before its fix; where the inputs
make sense on every backend the test runs on all three, so the fix is kept there too.
The reference, the backend-neutral gradient helper and the threshold patching are the
fuzzer's (`tests/test_paths_fuzz.py`), so one definition of each is tested.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_attention import MultiHeadAttention, RelativePositionBias
from keras_attention.backend import concrete_value
from keras_attention.ops import scaled_dot_product_attention
from tests.test_paths_fuzz import (
    EPS,
    LOGIT_ULPS,
    RTOL,
    _patch_thresholds,
    allowed_keys,
    outputs_and_grads,
    reference,
)


def _tensor(x, dtype="float32"):
    return ops.cast(ops.convert_to_tensor(np.asarray(x, "float32")), dtype)


def _reference(q, k, v, cotangent, mask=None, causal=False, bias=None, scale=None, dtype="float32"):
    """`(values, bounds)` of the fuzzer's float64 reference for 4-D numpy inputs."""
    q, k, v, cotangent = (np.asarray(x, "float64") for x in (q, k, v, cotangent))
    scale = scale or 1.0 / np.sqrt(q.shape[-1])
    allowed = allowed_keys(
        q.shape[-2], k.shape[-2], mask, causal, None, q.shape[:-1] + k.shape[-2:-1]
    )
    return reference(q, k, v, cotangent, scale, allowed, bias=bias, eps=LOGIT_ULPS * EPS[dtype])


def _assert_close(got, name, values, bounds, dtype="float32"):
    """`got` within the fuzzer's tolerance of the reference's `name`."""
    magnitude = bounds["magnitude"][name]
    bound = RTOL[dtype] * (magnitude + 1e-2 * magnitude.max()) + bounds["pert"][name]
    assert got is not None, f"no gradient for {name}"
    assert np.all(np.isfinite(got)), f"{name} is not finite: {got}"
    error = np.abs(got - values[name])
    assert np.all(error <= bound), (
        f"{name}: max error {error.max():.3g} (bound {bound.max():.3g}), got max|.| "
        f"{np.abs(got).max():.3g}, expected max|.| {np.abs(values[name]).max():.3g}"
    )


def _rng():
    return np.random.default_rng(35)


# 1 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "traced"])
@pytest.mark.parametrize("implementation", ["chunked", "flash"])
def test_1_bias_without_query_axis_gets_its_gradient(implementation, traced):
    """TensorFlow: chunked and flash returned no gradient for a `(kv_len,)` bias (it
    reached `keras.remat` by closure, and TensorFlow differentiates only arguments)."""
    rng = _rng()
    q = rng.standard_normal((1, 1, 4, 2))
    k, v = rng.standard_normal((2, 1, 1, 3, 2))
    cotangent = rng.standard_normal((1, 1, 4, 2))
    bias = np.array([0.5, -1.0, 2.0])
    values, bounds = _reference(q, k, v, cotangent, bias=bias)
    values["dbias"] = values["dlogits"].sum(axis=(0, 1, 2))
    for b in bounds.values():
        b["dbias"] = b["dlogits"].sum(axis=(0, 1, 2))

    def attend(q, k, v, bias):
        return (scaled_dot_product_attention(q, k, v, bias=bias, implementation=implementation),)

    inputs = [_tensor(x) for x in (q, k, v, bias)]
    outs, grads = outputs_and_grads(attend, inputs, _tensor(cotangent), traced=traced)
    _assert_close(outs[0], "out", values, bounds)
    for name, grad in zip(("dq", "dk", "dv", "dbias"), grads):
        _assert_close(grad, name, values, bounds)


# 2 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", ["chunked", "flash"])
def test_2_callable_bias_sees_only_real_positions(implementation, monkeypatch):
    """Every backend: chunked and flash called a callable bias with the positions of
    padded query rows and key tiles, so a lookup in a learned `(q_len, kv_len)` table
    raised (TensorFlow, PyTorch) or gave NaN key gradients (JAX)."""
    _patch_thresholds(monkeypatch, {"FLASH_BLOCK_Q": 8, "FLASH_BLOCK_K": 5})
    q_len, kv_len = 20, 7
    rng = _rng()
    q, k, v = rng.standard_normal((3, 1, 2, q_len, 4))
    k, v = k[..., :kv_len, :], v[..., :kv_len, :]
    cotangent = rng.standard_normal((1, 2, q_len, 4))
    table = rng.standard_normal((q_len, kv_len))
    seen = []

    def lookup(query_positions, key_positions):
        # Positions known now (eager loops: TensorFlow, PyTorch); JAX's scan traces
        # them, and there the key gradients were NaN.
        seen.append(tuple(map(concrete_value, (query_positions, key_positions))))
        rows = ops.take(_tensor(table), query_positions, axis=0)
        return ops.take(rows, key_positions, axis=1)

    def attend(q, k, v):
        return (
            scaled_dot_product_attention(
                q, k, v, bias=lookup, implementation=implementation, chunk_size=8
            ),
        )

    values, bounds = _reference(q, k, v, cotangent, bias=table)
    outs, grads = outputs_and_grads(attend, [_tensor(x) for x in (q, k, v)], _tensor(cotangent))
    _assert_close(outs[0], "out", values, bounds)
    for name, grad in zip(("dq", "dk", "dv"), grads):
        _assert_close(grad, name, values, bounds)
    for query_positions, key_positions in seen:
        if query_positions is not None:
            assert 0 <= query_positions.min() and query_positions.max() < q_len
        if key_positions is not None:
            assert 0 <= key_positions.min() and key_positions.max() < kv_len


# 3 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_buckets, max_distance, bidirectional, minimum",
    [(16, 5, False, 9), (16, 8, False, 9), (16, 4, True, 5), (32, 2, True, 9)],
)
def test_3_relative_position_bias_refuses_a_max_distance_inside_the_exact_buckets(
    num_buckets, max_distance, bidirectional, minimum
):
    """Every backend: `max_distance <= num_buckets // 2` (`// 4` bidirectional) made
    T5's log formula divide by `log(max_distance / max_exact) <= 0`."""
    with pytest.raises(
        ValueError, match=rf"`max_distance`.*at least {minimum}.*max_distance={max_distance}"
    ):
        RelativePositionBias(
            num_buckets=num_buckets, max_distance=max_distance, bidirectional=bidirectional
        )


@pytest.mark.parametrize("bidirectional", [False, True])
def test_3_smallest_max_distance_gives_buckets_in_order(bidirectional):
    """The smallest accepted `max_distance`: distances map to T5's buckets (numpy:
    the published `_relative_position_bucket`), never negative or out of range."""
    num_buckets = 16
    exact = num_buckets // (4 if bidirectional else 2)
    layer = RelativePositionBias(
        num_buckets=num_buckets, max_distance=exact + 1, bidirectional=bidirectional, num_heads=1
    )
    relative = np.arange(-40, 41)
    n = num_buckets // 2 if bidirectional else num_buckets
    distance = np.abs(relative) if bidirectional else -np.minimum(relative, 0)
    large = exact + (
        np.log(np.maximum(distance, 1) / exact) / np.log((exact + 1) / exact) * (n - exact)
    ).astype(int)
    expected = np.where(distance < exact, distance, np.minimum(large, n - 1))
    if bidirectional:
        expected = expected + (relative > 0) * n
    layer.build()
    table = np.arange(num_buckets, dtype="float32")[:, None]
    layer.embeddings.assign(table)
    got = ops.convert_to_numpy(layer(np.zeros(1, "int32"), relative.astype("int32")))[0, 0]
    np.testing.assert_array_equal(got, expected)


# 4 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("logit_size", [1e4, 20.0])
def test_4_float16_flash_gradients_at_large_logits(logit_size):
    """TensorFlow: the float16 flash backward recomputed the logits in float16 with
    another rounding than the forward pass's, and at a logit of 1e4 (a float16 unit
    of 8) `exp(logits - lse)` was off by up to e^8 (max|dv| 4.8e3 instead of 3.78)."""
    rng = _rng()
    q, k = rng.standard_normal((2, 1, 3, 22, 64))
    v, cotangent = rng.standard_normal((1, 3, 22, 5)), rng.standard_normal((1, 3, 22, 5))
    largest = np.abs(q @ np.swapaxes(k, -1, -2)).max() / 8.0
    q, k = (_tensor(x * np.sqrt(logit_size / largest), "float16") for x in (q, k))
    v, cotangent = _tensor(v, "float16"), _tensor(cotangent, "float16")
    as64 = lambda x: ops.convert_to_numpy(ops.cast(x, "float32")).astype("float64")  # noqa: E731
    values, bounds = _reference(*map(as64, (q, k, v, cotangent)), dtype="float16")

    def attend(q, k, v):
        return (scaled_dot_product_attention(q, k, v, implementation="flash"),)

    outs, grads = outputs_and_grads(attend, [q, k, v], cotangent)
    _assert_close(outs[0], "out", values, bounds, "float16")
    for name, grad in zip(("dq", "dk", "dv"), grads):
        _assert_close(grad, name, values, bounds, "float16")


# 5 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", ["plain", "chunked", "flash", "fused"])
def test_5_float16_logits_that_fit_only_after_scaling(implementation):
    """TensorFlow: the fused path computed `q . k` (102400, over float16's 65504)
    before scaling and returned NaN; the other paths scale the queries first."""
    q = np.full((1, 1, 3, 64), 40.0)
    v = np.arange(12.0).reshape(1, 1, 3, 4)
    out = scaled_dot_product_attention(
        _tensor(q, "float16"),
        _tensor(q, "float16"),
        _tensor(v, "float16"),
        implementation=implementation,
    )
    values, _ = _reference(q, q, v, np.zeros((1, 1, 3, 4)), dtype="float16")
    got = ops.convert_to_numpy(ops.cast(out, "float32"))
    np.testing.assert_allclose(values["out"][0, 0], [[4, 5, 6, 7]] * 3)
    np.testing.assert_allclose(got, values["out"], rtol=RTOL["float16"])


# 6 ------------------------------------------------------------------------------------


def test_6_flash_traced_with_value_head_dim_1():
    """TensorFlow: inside `tf.function` the flash loops' zeros of a value head size 1
    lost that size (`(None, 1, 1, 8, None)` after one iteration) and tracing failed."""
    rng = _rng()
    q, k = rng.standard_normal((2, 1, 1, 8, 4))
    v, cotangent = rng.standard_normal((2, 1, 1, 8, 1))

    def attend(q, k, v):
        return (scaled_dot_product_attention(q, k, v, implementation="flash"),)

    values, bounds = _reference(q, k, v, cotangent)
    inputs = [_tensor(x) for x in (q, k, v)]
    outs, grads = outputs_and_grads(attend, inputs, _tensor(cotangent), traced=True)
    _assert_close(outs[0], "out", values, bounds)
    for name, grad in zip(("dq", "dk", "dv"), grads):
        _assert_close(grad, name, values, bounds)


# 7 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", ["chunked", "flash"])
def test_7_traced_gradient_of_a_callable_bias_reading_a_variable(implementation):
    """TensorFlow: inside `tf.function`, the chunked path (where flash sends such a
    bias) could not differentiate a callable bias reading a trainable variable (a
    `ValueError` about a captured resource in the scan's gradient)."""
    rng = _rng()
    q, k, v = rng.standard_normal((3, 1, 2, 9, 4))
    cotangent = rng.standard_normal((1, 2, 9, 4))
    slope = keras.Variable(np.array([0.5], "float32"))

    def bias(query_positions, key_positions):
        distance = ops.expand_dims(key_positions, 0) - ops.expand_dims(query_positions, 1)
        return -slope * ops.cast(ops.abs(distance), "float32")

    def attend(q, k, v):
        return (scaled_dot_product_attention(q, k, v, bias=bias, implementation=implementation),)

    distance = np.abs(np.arange(9)[None, :] - np.arange(9)[:, None])
    values, bounds = _reference(q, k, v, cotangent, bias=-0.5 * distance)
    values["dslope"] = -(values["dlogits"] * distance).sum(keepdims=True).reshape(1)
    for b in bounds.values():
        b["dslope"] = (b["dlogits"] * distance).sum(keepdims=True).reshape(1)
    inputs = [_tensor(x) for x in (q, k, v)]
    outs, grads = outputs_and_grads(attend, inputs, _tensor(cotangent), [slope], traced=True)
    _assert_close(outs[0], "out", values, bounds)
    for name, grad in zip(("dq", "dk", "dv", "dslope"), grads):
        _assert_close(grad, name, values, bounds)


def test_7_traced_gradients_with_a_callable_bias_reading_an_outside_tensor():
    """TensorFlow (found by the fuzzer beside bug 7): the same failure for a constant
    tensor created outside the `tf.function` that the callable reads ("... is in list
    of internal_captures but not in internal_capture_to_output")."""
    rng = _rng()
    q, k, v = rng.standard_normal((3, 1, 2, 9, 4))
    cotangent = rng.standard_normal((1, 2, 9, 4))
    slopes = _tensor([0.5, 0.25])

    def bias(query_positions, key_positions):
        distance = ops.expand_dims(key_positions, 0) - ops.expand_dims(query_positions, 1)
        return -ops.reshape(slopes, (2, 1, 1)) * ops.cast(ops.abs(distance), "float32")

    def attend(q, k, v):
        return (scaled_dot_product_attention(q, k, v, bias=bias, implementation="chunked"),)

    distance = np.abs(np.arange(9)[None, :] - np.arange(9)[:, None])
    expected_bias = -np.array([0.5, 0.25])[:, None, None] * distance
    values, bounds = _reference(q, k, v, cotangent, bias=expected_bias)
    inputs = [_tensor(x) for x in (q, k, v)]
    outs, grads = outputs_and_grads(attend, inputs, _tensor(cotangent), traced=True)
    _assert_close(outs[0], "out", values, bounds)
    for name, grad in zip(("dq", "dk", "dv"), grads):
        _assert_close(grad, name, values, bounds)


@pytest.mark.parametrize("implementation", ["chunked", "flash"])
def test_7_t5_attention_trains_on_every_path(implementation):
    """`MultiHeadAttention(score_bias=RelativePositionBias(...))` on the chunked and
    flash paths: traced gradients of every weight equal the plain path's."""
    x = _rng().standard_normal((2, 12, 8)).astype("float32")

    def gradients(implementation):
        keras.utils.set_random_seed(7)
        layer = MultiHeadAttention(
            num_heads=2,
            key_dim=4,
            score_bias=RelativePositionBias(num_buckets=8, max_distance=16, num_heads=2),
            implementation=implementation,
        )
        layer(x, x)
        cotangent = _tensor(np.ones((2, 12, 8)))
        _, grads = outputs_and_grads(
            lambda x: (layer(x, x, use_causal_mask=True),),
            [_tensor(x)],
            cotangent,
            layer.trainable_weights,
            traced=True,
        )
        return [(w.name, g) for w, g in zip(layer.trainable_weights, grads[1:])]

    expected, got = gradients("plain"), gradients(implementation)
    assert "embeddings" in [name for name, _ in expected]
    for (name, grad), (_, result) in zip(expected, got):
        assert result is not None, f"no gradient for {name}"
        np.testing.assert_allclose(result, grad, atol=1e-5, err_msg=name)


# 8 ------------------------------------------------------------------------------------


def test_8_fused_float16_traced():
    """JAX: under `jax.jit` on CPU the fused path's float16 `dot_general` raised
    "The precision 'F16_F16_F32' is not supported"; the package now picks a path that
    works there (see `keras_attention.backend.fused_supports`)."""
    rng = _rng()
    q, k, v, cotangent = rng.standard_normal((4, 1, 2, 6, 8))
    as16 = [_tensor(x, "float16") for x in (q, k, v, cotangent)]
    as64 = [ops.convert_to_numpy(ops.cast(x, "float32")).astype("float64") for x in as16]
    values, bounds = _reference(*as64, dtype="float16")

    def attend(q, k, v):
        return (scaled_dot_product_attention(q, k, v, implementation="fused"),)

    outs, grads = outputs_and_grads(attend, as16[:3], as16[3], traced=True)
    _assert_close(outs[0], "out", values, bounds, "float16")
    for name, grad in zip(("dq", "dk", "dv"), grads):
        _assert_close(grad, name, values, bounds, "float16")

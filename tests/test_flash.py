"""The flash path (`implementation="flash"`) equals the plain path and the numpy reference.

Tiles of 4 queries by 3 keys (set by the `small_tiles` fixture), so every case has
several blocks and lengths that are not a multiple of the block size. On backends
without a flash kernel (JAX, PyTorch) `"flash"` runs the chunked path, and the same
comparisons hold.
"""

import logging
import warnings

import keras
import numpy as np
import pytest

import keras_attention as ka
from keras_attention import ops as attention_ops
from keras_attention.ops import flash
from tests import reference
from tests.utils import value_and_gradients

_np = keras.ops.convert_to_numpy
RNG = np.random.default_rng(18)


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    monkeypatch.setattr(flash, "FLASH_BLOCK_Q", 4)
    monkeypatch.setattr(flash, "FLASH_BLOCK_K", 3)


def _rand(*shape, scale=1.0):
    return (scale * RNG.standard_normal(shape)).astype("float32")


def _projection(q, v):
    """A fixed random projection of the output, the same for every implementation."""
    projection = np.random.default_rng(0).standard_normal((*q.shape[:-1], v.shape[-1]))
    return projection.astype("float32")


def _outputs_and_grads(implementation, q, k, v, **kwargs):
    def attend(q, k, v):
        return attention_ops.scaled_dot_product_attention(
            q, k, v, implementation=implementation, **kwargs
        )

    projection = keras.ops.convert_to_tensor(_projection(q, v))
    _, grads = value_and_gradients(
        lambda q, k, v: keras.ops.sum(attend(q, k, v) * projection), [q, k, v]
    )
    return [_np(attend(q, k, v))] + grads


def _alibi_like(q_positions, k_positions):
    slopes = keras.ops.convert_to_tensor(np.array([0.5, 0.25, 0.125, 0.0625], "float32"))
    distance = keras.ops.cast(k_positions[None, :] - q_positions[:, None], "float32")
    return slopes[:, None, None] * distance[None]


def _alibi_like_numpy(q_len, kv_len):
    slopes = np.array([0.5, 0.25, 0.125, 0.0625])
    return slopes[:, None, None] * (np.arange(kv_len)[None, :] - np.arange(q_len)[:, None])


def _mask(shape, fully_masked_row=True):
    mask = RNG.random(shape) > 0.3
    if fully_masked_row and shape[-2] > 1:
        mask[..., 1, :] = False
    return mask


Q_LEN, KV_LEN = 11, 13
CASES = {
    "none": {},
    "causal": {"causal": True},
    "key padding": {"mask": "key"},
    "query padding": {"mask": "query"},
    "full mask": {"mask": "full"},
    "full mask, causal": {"mask": "full", "causal": True},
    "every key masked": {"mask": "none allowed"},
    "window": {"sliding_window": 3},
    "window, causal, key padding": {"sliding_window": 4, "causal": True, "mask": "key"},
    "soft cap": {"soft_cap": 1.5},
    "soft cap, causal, bias": {"soft_cap": 2.0, "causal": True, "bias": True},
    "bias, window": {"bias": True, "sliding_window": 5},
}


def _case_kwargs(case, q_len, kv_len):
    kwargs = dict(CASES[case])
    forms = {
        "key": (2, 1, 1, kv_len),
        "query": (2, 1, q_len, 1),
        "full": (2, 1, q_len, kv_len),
    }
    if kwargs.get("mask") == "none allowed":
        kwargs["mask"] = np.zeros((2, 1, 1, kv_len), bool)
    elif "mask" in kwargs:
        kwargs["mask"] = _mask(forms[kwargs["mask"]], kwargs["mask"] != "key")
    reference_kwargs = {k: v for k, v in kwargs.items() if k != "bias"}
    if "sliding_window" in reference_kwargs:
        reference_kwargs["window"] = reference_kwargs.pop("sliding_window")
    if kwargs.pop("bias", False):
        kwargs["bias"] = _alibi_like
        reference_kwargs["bias"] = _alibi_like_numpy(q_len, kv_len)
    return kwargs, reference_kwargs


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("q_len, kv_len", [(Q_LEN, KV_LEN), (KV_LEN, 7)])
def test_flash_equals_plain(case, q_len, kv_len):
    q, k, v = (
        _rand(2, 4, q_len, 8, scale=2.0),
        _rand(2, 4, kv_len, 8, scale=2.0),
        _rand(2, 4, kv_len, 5),
    )
    kwargs, reference_kwargs = _case_kwargs(case, q_len, kv_len)
    plain = _outputs_and_grads("plain", q, k, v, **kwargs)
    flash = _outputs_and_grads("flash", q, k, v, **kwargs)
    expected, _ = reference.attention(q, k, v, **reference_kwargs)
    np.testing.assert_allclose(flash[0], expected, atol=1e-5)
    for name, a, b in zip(("output", "dq", "dk", "dv"), plain, flash):
        assert np.all(np.isfinite(b)), name
        np.testing.assert_allclose(b, a, atol=1e-5, err_msg=name)
    if case == "every key masked":
        assert np.all(flash[0] == 0) and all(np.all(g == 0) for g in flash[1:])


@pytest.mark.tensorflow_only("the TensorFlow kernel's compiled passes and head groups")
@pytest.mark.parametrize(
    "case", ["none", "full mask, causal", "window, causal, key padding", "soft cap, causal, bias"]
)
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_compiled_head_groups_equal_plain(case, kv_heads, monkeypatch):
    # Tiny shapes run uncompiled in one group; here every shape is compiled (XLA) and
    # split into two groups of key/value heads, as long sequences are.
    from keras_attention.backend import flash_tensorflow

    monkeypatch.setattr(flash_tensorflow, "COMPILE_MIN_SCORES", 0)
    monkeypatch.setattr(flash_tensorflow, "_threads", lambda: 2)
    q_len, kv_len = Q_LEN, KV_LEN
    q, k, v = (
        _rand(2, 4, q_len, 8, scale=2.0),
        _rand(2, kv_heads, kv_len, 8, scale=2.0),
        _rand(2, kv_heads, kv_len, 5),
    )
    kwargs, _ = _case_kwargs(case, q_len, kv_len)
    if case == "full mask, causal":
        kwargs["mask"] = _mask((2, 4, q_len, kv_len))  # one mask per head
    plain = _outputs_and_grads("plain", q, k, v, **kwargs)
    flash = _traced_outputs_and_grads("flash", q, k, v, **kwargs)
    for name, a, b in zip(("output", "dq", "dk", "dv"), plain, flash):
        np.testing.assert_allclose(b, a, atol=1e-5, err_msg=name)


def _traced_outputs_and_grads(implementation, q, k, v, **kwargs):
    """`_outputs_and_grads` inside one `tf.function` (where the kernel compiles)."""
    import tensorflow as tf

    from keras_attention.backend import flash_tensorflow

    projection = tf.constant(_projection(q, v))
    compiled = []

    @tf.function
    def run(q, k, v):
        compiled.append(flash_tensorflow._compiles(q, k))
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            outputs = attention_ops.scaled_dot_product_attention(
                q, k, v, implementation=implementation, **kwargs
            )
            loss = tf.reduce_sum(outputs * projection)
        return [outputs] + tape.gradient(loss, [q, k, v])

    results = [np.asarray(x) for x in run(*map(tf.constant, (q, k, v)))]
    assert compiled == [True]
    return results


@pytest.mark.tensorflow_only("the TensorFlow kernel's compiled passes and head groups")
def test_head_groups_share_one_compiled_pass(monkeypatch):
    # Each group passes its first head as an argument: one trace (one XLA compile)
    # of each pass for all the groups, not one per group.
    from keras_attention.backend import flash_tensorflow

    monkeypatch.setattr(flash_tensorflow, "COMPILE_MIN_SCORES", 0)
    monkeypatch.setattr(flash_tensorflow, "_threads", lambda: 2)
    made = []
    passes = flash_tensorflow._FlashPasses
    monkeypatch.setattr(
        flash_tensorflow, "_FlashPasses", lambda *args: made.append(passes(*args)) or made[-1]
    )
    q, k, v = _rand(2, 4, Q_LEN, 8), _rand(2, 4, KV_LEN, 8), _rand(2, 4, KV_LEN, 5)
    expected = _outputs_and_grads("plain", q, k, v, causal=True)
    results = _traced_outputs_and_grads("flash", q, k, v, causal=True)
    for a, b in zip(expected, results):
        np.testing.assert_allclose(b, a, atol=1e-5)
    [passes] = made
    assert passes.forward.experimental_get_tracing_count() == 1
    assert passes.backward.experimental_get_tracing_count() == 1


@pytest.mark.tensorflow_only("the TensorFlow kernel's compiled passes")
def test_eager_calls_run_uncompiled(monkeypatch):
    # An eager call would trace and compile its passes again at every call.
    import tensorflow as tf

    from keras_attention.backend import flash_tensorflow

    monkeypatch.setattr(flash_tensorflow, "COMPILE_MIN_SCORES", 0)
    q, k = tf.constant(_rand(1, 2, 4, 8)), tf.constant(_rand(1, 2, 4, 8))
    assert not flash_tensorflow._compiles(q, k)
    traced = []
    tf.function(lambda q, k: traced.append(flash_tensorflow._compiles(q, k)))(q, k)
    assert traced == [True]


@pytest.mark.parametrize("rank", [2, 3])
def test_flash_on_lower_rank_inputs(rank):
    shape = (2,) * (rank - 2)
    q, k, v = _rand(*shape, 9, 4), _rand(*shape, 10, 4), _rand(*shape, 10, 3)
    plain = _outputs_and_grads("plain", q, k, v, causal=True)
    flash = _outputs_and_grads("flash", q, k, v, causal=True)
    for a, b in zip(plain, flash):
        np.testing.assert_allclose(b, a, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_grouped_query_heads_share_keys(causal):
    # 4 query heads, 2 key/value heads: query head h uses key/value head h // 2.
    q, k, v = _rand(2, 4, 10, 8), _rand(2, 2, 10, 8), _rand(2, 2, 10, 6)
    mask = _mask((2, 4, 10, 10))
    flash = _outputs_and_grads("flash", q, k, v, causal=causal, mask=mask)
    repeated = [np.repeat(x, 2, axis=1) for x in (k, v)]
    expected, _ = reference.attention(q, *repeated, causal=causal, mask=mask)
    np.testing.assert_allclose(flash[0], expected, atol=1e-5)
    plain = _outputs_and_grads("plain", q, k, v, causal=causal, mask=mask)
    for a, b in zip(plain, flash):
        np.testing.assert_allclose(b, a, atol=1e-5)


def _layer_outputs_and_grads(implementation, weights, query, value, dtype=None, **call_kwargs):
    layer = ka.MultiHeadAttention(
        num_heads=4, key_dim=8, num_key_value_heads=2, implementation=implementation, dtype=dtype
    )
    layer(query, value)
    layer.set_weights(weights)

    def loss(query, value):
        out = keras.ops.cast(layer(query, value, **call_kwargs), "float32")
        return keras.ops.sum(keras.ops.sin(out))

    out = _np(keras.ops.cast(layer(query, value, **call_kwargs), "float32"))
    _, grads = value_and_gradients(loss, [query, value], layer.trainable_variables)
    return [out] + grads


@pytest.mark.parametrize(
    "call_kwargs",
    [
        {"use_causal_mask": True},
        {"attention_mask": "full"},
        {"query_mask": True, "value_mask": True, "use_causal_mask": True},
    ],
    ids=["causal", "attention_mask", "padding"],
)
def test_layer_weights_gradients_match_plain(call_kwargs):
    query, value = _rand(2, 10, 16), _rand(2, 9, 12)
    call_kwargs = dict(call_kwargs)
    if call_kwargs.get("attention_mask") == "full":
        call_kwargs["attention_mask"] = _mask((2, 10, 9))
    if call_kwargs.pop("query_mask", False):
        call_kwargs["query_mask"] = np.arange(10)[None] < np.array([[10], [6]])
    if call_kwargs.pop("value_mask", False):
        call_kwargs["value_mask"] = np.arange(9)[None] < np.array([[7], [9]])
    reference_layer = ka.MultiHeadAttention(num_heads=4, key_dim=8, num_key_value_heads=2)
    reference_layer(query, value)
    weights = reference_layer.get_weights()
    plain = _layer_outputs_and_grads("plain", weights, query, value, **call_kwargs)
    flash = _layer_outputs_and_grads("flash", weights, query, value, **call_kwargs)
    assert len(flash) == 2 + 1 + 8  # output, query and value, 8 weights
    for a, b in zip(plain, flash):
        assert np.all(np.isfinite(b))
        np.testing.assert_allclose(b, a, atol=1e-5)


@pytest.mark.parametrize("policy, atol", [("mixed_float16", 1e-2), ("mixed_bfloat16", 5e-2)])
def test_mixed_precision_policies(policy, atol):
    # Both low-precision paths against float32: two low-precision results can differ
    # by twice their own error, and an element near zero has no relative precision,
    # so each tensor's error is measured against its float32 value, in units of its
    # largest magnitude (at least 1). Over 12 seeds flash's worst error was 0.003
    # (float16) and 0.032 (bfloat16), plain's 0.007 and 0.035. Inputs from their own
    # generator: the result does not depend on which tests ran before.
    rng = np.random.default_rng(7)
    query, value = (rng.standard_normal(s).astype("float32") for s in ((2, 10, 16), (2, 9, 12)))
    reference_layer = ka.MultiHeadAttention(num_heads=4, key_dim=8, num_key_value_heads=2)
    reference_layer(query, value)
    weights = reference_layer.get_weights()
    kwargs = {"use_causal_mask": True}
    exact = _layer_outputs_and_grads("plain", weights, query, value, **kwargs)
    for implementation in ("plain", "flash"):
        low = _layer_outputs_and_grads(
            implementation, weights, query, value, dtype=policy, **kwargs
        )
        assert len(low) == len(exact) == 2 + 1 + 8  # output, query and value, 8 weights
        for index, (a, b) in enumerate(zip(exact, low)):
            assert np.all(np.isfinite(b))
            scale = max(float(np.abs(a).max()), 1.0)
            error = float(np.abs(b - a).max()) / scale
            assert error <= atol, (implementation, index, error)


@pytest.mark.tensorflow_only("XLA through tf.function(jit_compile=True)")
def test_flash_gradients_under_xla():
    import tensorflow as tf

    q, k, v = (tf.constant(_rand(2, 4, 10, 4)) for _ in range(3))

    def grads(implementation):
        def fn(q, k, v):
            with tf.GradientTape() as tape:
                tape.watch([q, k, v])
                out = attention_ops.scaled_dot_product_attention(
                    q,
                    k[:, :2],
                    v[:, :2],
                    causal=True,
                    sliding_window=6,
                    soft_cap=3.0,
                    bias=_alibi_like,
                    implementation=implementation,
                )
                loss = tf.reduce_sum(tf.sin(out))
            return [out] + tape.gradient(loss, [q, k, v])

        return tf.function(fn, jit_compile=implementation == "flash")(q, k, v)

    for a, b in zip(grads("plain"), grads("flash")):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)


@pytest.mark.tensorflow_only("SavedModel export")
def test_flash_in_saved_model_with_dynamic_length(tmp_path):
    # A padding mask (Embedding(mask_zero=True)) and the causal mask, any length.
    tokens = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(20, 8, mask_zero=True)(tokens)
    outputs = ka.MultiHeadAttention(2, 4, implementation="flash")(x, x, use_causal_mask=True)
    model = keras.Model(tokens, outputs)
    serve = ka.export.load_saved_model(ka.export.export_saved_model(model, tmp_path / "flash"))
    for length in (3, 14):
        ids = RNG.integers(1, 20, (2, length))
        ids[0, length // 2 :] = 0
        np.testing.assert_allclose(np.asarray(serve(ids)), model.predict(ids, verbose=0), atol=1e-5)


@pytest.mark.tensorflow_only("TensorFlow's logger and the recompute_grad warning")
@pytest.mark.parametrize("implementation", ["plain", "chunked", "flash", "fused", "compiled"])
def test_no_warnings_on_any_path(implementation, caplog, capfd, monkeypatch):
    import tensorflow as tf

    if implementation == "compiled":  # the flash kernel's XLA-compiled passes
        from keras_attention.backend import flash_tensorflow

        monkeypatch.setattr(flash_tensorflow, "COMPILE_MIN_SCORES", 0)
        implementation = "flash"

    q, k, v = (tf.constant(_rand(2, 2, 9, 4)) for _ in range(3))
    mask = tf.constant(_mask((2, 1, 9, 9)))

    @tf.function
    def step(q, k, v):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            out = attention_ops.scaled_dot_product_attention(
                q, k, v, mask=mask, causal=True, implementation=implementation
            )
            loss = tf.reduce_sum(out * out)
        return tape.gradient(loss, [q, k, v])

    # TensorFlow's and absl's Python loggers (caplog), Python warnings (recorded) and
    # whatever the C++ runtime prints to the process's stderr (capfd).
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step(q, k, v)
        step.python_function(q, k, v)  # eagerly
    # (TensorFlow warns about its own retracing when the parametrizations of this
    # test share a process: each traces a `step` of the same code.)
    records = [r for r in caplog.records if "triggered tf.function retracing" not in r.getMessage()]
    assert not [r for r in records if r.levelno >= logging.WARNING], caplog.text
    assert not caught, [str(w.message) for w in caught]
    err = capfd.readouterr().err
    assert "WARNING" not in err and "must be floating" not in err, err
    # The C++ runtime's warnings are lines `W<date> ...` (XLA's compile prints INFO
    # lines, `I<date> ...`, as for any `jit_compile=True` function).
    assert not [line for line in err.splitlines() if line[:2] in ("W0", "W1")], err

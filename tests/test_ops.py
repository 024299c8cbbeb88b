"""`keras_attention.ops.scaled_dot_product_attention` against a numpy reference."""

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_attention import backend as backend_lib
from keras_attention import ops as attention_ops
from keras_attention.ops import attention, chunked, flash, positions
from tests import reference
from tests.utils import normal_sampler, value_and_gradients

_np = keras.ops.convert_to_numpy

RNG = np.random.default_rng(0)


_rand = normal_sampler(RNG)


def _run(q, k, v, **kwargs):
    out, weights = attention_ops.scaled_dot_product_attention(
        q, k, v, return_attention_scores=True, **kwargs
    )
    return _np(out), _np(weights)


@pytest.mark.parametrize(
    "batch_dims, q_len, kv_len, d_k, d_v",
    [((), 4, 4, 8, 8), ((2,), 3, 7, 8, 5), ((2, 3), 5, 2, 16, 4), ((1, 2, 2), 1, 6, 4, 3)],
)
def test_matches_numpy_reference(batch_dims, q_len, kv_len, d_k, d_v):
    q = _rand(*batch_dims, q_len, d_k)
    k = _rand(*batch_dims, kv_len, d_k)
    v = _rand(*batch_dims, kv_len, d_v)
    out, weights = _run(q, k, v)
    ref_out, ref_weights = reference.attention(q, k, v)
    assert out.shape == (*batch_dims, q_len, d_v)
    assert weights.shape == (*batch_dims, q_len, kv_len)
    np.testing.assert_allclose(out, ref_out, atol=1e-5)
    np.testing.assert_allclose(weights, ref_weights, atol=1e-5)


@pytest.mark.parametrize(
    "mask_shape",
    [(5, 6), (1, 6), (5, 1), (2, 1, 5, 6), (2, 3, 5, 6), (3, 1, 6), (1, 1, 1, 6)],
)
def test_mask_broadcast_forms(mask_shape):
    q, k, v = _rand(2, 3, 5, 8), _rand(2, 3, 6, 8), _rand(2, 3, 6, 4)
    mask = RNG.random(mask_shape) > 0.4
    out, weights = _run(q, k, v, mask=mask)
    ref_out, ref_weights = reference.attention(q, k, v, mask=mask)
    np.testing.assert_allclose(out, ref_out, atol=1e-5)
    np.testing.assert_allclose(weights, ref_weights, atol=1e-5)


def test_integer_mask_is_accepted():
    q, k, v = _rand(2, 4, 8), _rand(2, 4, 8), _rand(2, 4, 8)
    mask = (RNG.random((2, 4, 4)) > 0.5).astype("int32")
    np.testing.assert_allclose(
        _run(q, k, v, mask=mask)[0], reference.attention(q, k, v, mask=mask)[0], atol=1e-5
    )


@pytest.mark.parametrize("q_len, kv_len", [(4, 4), (3, 6), (6, 3)])
def test_causal_is_top_left_aligned(q_len, kv_len):
    q, k, v = _rand(2, q_len, 8), _rand(2, kv_len, 8), _rand(2, kv_len, 8)
    out, weights = _run(q, k, v, causal=True)
    ref_out, ref_weights = reference.attention(q, k, v, causal=True)
    np.testing.assert_allclose(out, ref_out, atol=1e-5)
    np.testing.assert_allclose(weights, ref_weights, atol=1e-5)
    # Query 0 sees exactly key 0.
    np.testing.assert_allclose(weights[:, 0, 0], 1.0, atol=1e-6)


def test_causal_combines_with_mask():
    q, k, v = _rand(2, 5, 8), _rand(2, 5, 8), _rand(2, 5, 8)
    mask = RNG.random((2, 1, 5)) > 0.3
    out, _ = _run(q, k, v, mask=mask, causal=True)
    ref_out, _ = reference.attention(q, k, v, mask=mask, causal=True)
    np.testing.assert_allclose(out, ref_out, atol=1e-5)


def test_custom_scale():
    q, k, v = _rand(2, 4, 8), _rand(2, 6, 8), _rand(2, 6, 3)
    out, weights = _run(q, k, v, scale=0.37)
    ref_out, ref_weights = reference.attention(q, k, v, scale=0.37)
    np.testing.assert_allclose(out, ref_out, atol=1e-5)
    np.testing.assert_allclose(weights, ref_weights, atol=1e-5)


def test_fully_masked_rows_give_zeros_and_finite_gradients():
    q, k, v = _rand(2, 3, 8), _rand(2, 4, 8), _rand(2, 4, 5)
    mask = np.ones((2, 3, 4), dtype=bool)
    mask[0, 1] = False
    mask[1] = False
    out, weights = attention_ops.scaled_dot_product_attention(
        q, k, v, mask=mask, return_attention_scores=True
    )
    out, weights = _np(out), _np(weights)
    assert np.all(out[0, 1] == 0) and np.all(out[1] == 0)
    assert np.all(weights[0, 1] == 0) and np.all(weights[1] == 0)

    def loss(q, k, v):
        out = attention_ops.scaled_dot_product_attention(q, k, v, mask=mask)
        return keras.ops.sum(out * out)

    _, grads = value_and_gradients(loss, [q, k, v])
    for grad in grads:
        assert np.all(np.isfinite(grad))
    assert np.all(grads[0][1] == 0)


def test_large_logits_stay_finite():
    q, k, v = _rand(2, 4, 8) * 1e4, _rand(2, 4, 8) * 1e4, _rand(2, 4, 8)
    out, weights = _run(q, k, v, mask=np.tril(np.ones((4, 4), bool)))
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(weights))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_masks_hold(dtype):
    q = keras.ops.cast(_rand(2, 4, 8) * 30, dtype)
    k = keras.ops.cast(_rand(2, 6, 8) * 30, dtype)
    v = keras.ops.cast(_rand(2, 6, 8), dtype)
    mask = np.ones((2, 4, 6), dtype=bool)
    mask[:, :, -2:] = False
    out, weights = attention_ops.scaled_dot_product_attention(
        q, k, v, mask=mask, return_attention_scores=True
    )
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    weights = _np(keras.ops.cast(weights, "float32"))
    assert np.all(np.isfinite(weights))
    assert np.all(weights[..., -2:] < 1e-6)


def test_dropout_only_in_training():
    q, k, v = _rand(2, 4, 8), _rand(2, 4, 8), _rand(2, 4, 8)
    plain = _run(q, k, v)[0]
    np.testing.assert_allclose(_run(q, k, v, dropout_rate=0.5, seed=1)[0], plain, atol=1e-6)
    dropped = _run(q, k, v, dropout_rate=0.5, seed=1, training=True)[0]
    assert not np.allclose(dropped, plain)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(query=_rand(2, 4, 8), key=_rand(4, 8), value=_rand(4, 8)), "same rank"),
        (dict(query=_rand(2, 4, 8), key=_rand(2, 4, 6), value=_rand(2, 4, 8)), "d_k"),
        (dict(query=_rand(2, 4, 8), key=_rand(2, 4, 8), value=_rand(2, 5, 8)), "kv_len"),
        (dict(query=_rand(2, 4, 8), key=_rand(3, 4, 8), value=_rand(3, 4, 8)), "leading"),
        (dict(mask=np.ones((4, 3), bool)), r"\(4, 3\).*not broadcastable.*\(2, 4, 5\)"),
        (dict(mask=np.ones((1, 1, 4, 5), bool)), "more dimensions"),
        (dict(dropout_rate=1.0), "dropout_rate"),
        (dict(dropout_rate=-0.1), "dropout_rate"),
        (dict(scale=0.0), "scale"),
        (dict(scale=-1.0), "scale"),
    ],
)
def test_bad_inputs_raise_value_error(kwargs, match):
    args = dict(query=_rand(2, 4, 8), key=_rand(2, 5, 8), value=_rand(2, 5, 8))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        attention_ops.scaled_dot_product_attention(**args)


def test_float_mask_holds_only_zeros_and_ones():
    """A 0/1 float mask is read as Keras reads it (`mask != 0`); any other value
    (e.g. an additive bias) is refused rather than read inverted."""
    q, k, v = _rand(1, 2, 4), _rand(1, 2, 4), _rand(1, 2, 4)
    keep = np.array([[True, False], [True, True]])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(
            attention_ops.scaled_dot_product_attention(q, k, v, mask=keep.astype("float32"))
        ),
        keras.ops.convert_to_numpy(attention_ops.scaled_dot_product_attention(q, k, v, mask=keep)),
        atol=0,
    )
    with pytest.raises(ValueError, match="mask.*-1000000000.0"):
        attention_ops.scaled_dot_product_attention(
            q, k, v, mask=np.where(keep, 0.0, -1e9).astype("float32")
        )


@pytest.mark.tensorflow_only("tf.function with a dynamic input signature")
def test_dynamic_shapes_in_tf_function():
    import tensorflow as tf

    fn = tf.function(
        lambda x: attention_ops.scaled_dot_product_attention(x, x, x, causal=True),
        input_signature=[tf.TensorSpec([None, None, 8], tf.float32)],
    )
    for length in (3, 7):
        x = _rand(2, length, 8)
        np.testing.assert_allclose(fn(x), reference.attention(x, x, x, causal=True)[0], atol=1e-5)


# Property tests ---------------------------------------------------------------

# (batch, query length, key length, dim): the edges (length 1, dim 1, one key, more
# queries than keys and fewer) from a fixed list rather than drawn, while the data, masks
# and permutations stay random. On JAX each new shape compiles every op again: drawn
# shapes made `test_fully_masked_rows_property` alone take 291 s of a JAX run.
SHAPES = [(1, 1, 1, 1), (1, 1, 6, 8), (2, 6, 1, 3), (3, 4, 5, 8), (2, 6, 6, 1), (1, 5, 3, 2)]
shapes = st.sampled_from(SHAPES)


def _arrays(seed, batch, q_len, kv_len, dim):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((batch, q_len, dim)).astype("float32"),
        rng.standard_normal((batch, kv_len, dim)).astype("float32"),
        rng.standard_normal((batch, kv_len, dim)).astype("float32"),
        rng.random((batch, q_len, kv_len)) > 0.3,
    )


@settings(max_examples=25, deadline=None)
@given(shapes, st.integers(0, 2**31 - 1))
def test_weights_sum_to_one_over_unmasked_keys(shape, seed):
    q, k, v, mask = _arrays(seed, *shape)
    _, weights = _run(q, k, v, mask=mask)
    assert np.all(weights[~mask] == 0)
    sums = weights.sum(-1)
    has_key = mask.any(-1)
    np.testing.assert_allclose(sums[has_key], 1.0, atol=1e-5)
    assert np.all(sums[~has_key] == 0)


@settings(max_examples=25, deadline=None)
@given(shapes, st.integers(0, 2**31 - 1))
def test_self_attention_is_permutation_equivariant(shape, seed):
    batch, length, _, dim = shape
    x, _, _, _ = _arrays(seed, batch, length, length, dim)
    perm = np.random.default_rng(seed).permutation(length)
    out = _run(x, x, x)[0]
    out_perm = _run(x[:, perm], x[:, perm], x[:, perm])[0]
    np.testing.assert_allclose(out_perm, out[:, perm], atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(shapes, st.integers(0, 2**31 - 1), st.data())
def test_causal_output_ignores_the_future(shape, seed, data):
    batch, length, _, dim = shape
    x, _, _, _ = _arrays(seed, batch, length, length, dim)
    i = data.draw(st.integers(0, length - 1))
    changed = x.copy()
    changed[:, i + 1 :] = np.random.default_rng(seed + 1).standard_normal(changed[:, i + 1 :].shape)
    a = _run(x, x, x, causal=True)[0]
    b = _run(changed, changed, changed, causal=True)[0]
    np.testing.assert_allclose(a[:, : i + 1], b[:, : i + 1], atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(shapes, st.integers(0, 2**31 - 1))
def test_fully_masked_rows_property(shape, seed):
    q, k, v, mask = _arrays(seed, *shape)
    mask[:, 0, :] = False
    out = attention_ops.scaled_dot_product_attention(q, k, v, mask=mask)
    assert np.all(_np(out)[:, 0] == 0)

    def loss(q, k, v):
        out = attention_ops.scaled_dot_product_attention(q, k, v, mask=mask)
        return keras.ops.sum(keras.ops.sin(out))

    _, grads = value_and_gradients(loss, [q, k, v])
    for grad in grads:  # None: one key, the weight is constant 1
        assert grad is None or np.all(np.isfinite(grad))


# Implementations: chunked (memory-efficient) and fused equal the plain path -------


def _grads(implementation, q, k, v, **kwargs):
    def attend(q, k, v):
        return attention_ops.scaled_dot_product_attention(
            q, k, v, implementation=implementation, **kwargs
        )

    _, grads = value_and_gradients(
        lambda q, k, v: keras.ops.sum(keras.ops.sin(attend(q, k, v))), [q, k, v]
    )
    return [_np(attend(q, k, v))] + grads


@pytest.mark.parametrize(
    "implementation, extra",
    [("chunked", {"chunk_size": 4}), ("chunked", {}), ("flash", {}), ("fused", {})],
)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask_shape", [None, (2, 1, 1, 9), (2, 1, 11, 9), (11, 9)])
def test_implementations_match_plain(implementation, extra, causal, mask_shape):
    q, k, v = _rand(2, 3, 11, 8), _rand(2, 3, 9, 8), _rand(2, 3, 9, 5)
    mask = None
    if mask_shape is not None:
        mask = RNG.random(mask_shape) > 0.3
        mask[..., 0, :] = False  # a fully masked row
    plain = _grads("plain", q, k, v, mask=mask, causal=causal)
    other = _grads(implementation, q, k, v, mask=mask, causal=causal, **extra)
    ref_out, _ = reference.attention(q, k, v, mask=mask, causal=causal)
    np.testing.assert_allclose(plain[0], ref_out, atol=1e-5)
    for a, b in zip(plain, other):
        assert np.all(np.isfinite(b))
        np.testing.assert_allclose(b, a, atol=1e-5)


@pytest.mark.tensorflow_only("tf.function with a dynamic input signature")
def test_chunked_with_dynamic_length_in_tf_function():
    import tensorflow as tf

    fn = tf.function(
        lambda x: attention_ops.scaled_dot_product_attention(
            x, x, x, causal=True, implementation="chunked"
        ),
        input_signature=[tf.TensorSpec([None, None, 8], tf.float32)],
    )
    for length in (5, 70):
        x = _rand(2, length, 8)
        np.testing.assert_allclose(fn(x), reference.attention(x, x, x, causal=True)[0], atol=1e-5)


def test_default_switches_to_a_memory_efficient_path_for_large_scores(monkeypatch):
    # The flash path where the backend has a kernel for it (TensorFlow), else chunked.
    path = flash if backend_lib.has_flash_attention() else chunked
    calls = []
    original = path.attend
    monkeypatch.setattr(path, "attend", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setattr(attention, "CHUNKED_THRESHOLD", 100)
    q = _rand(1, 16, 8)
    out = attention_ops.scaled_dot_product_attention(q, q, q)
    assert calls, "large scores should use a memory-efficient path"
    np.testing.assert_allclose(out, reference.attention(q, q, q)[0], atol=1e-5)
    attention_ops.scaled_dot_product_attention(q, q, q, return_attention_scores=True)
    assert len(calls) == 1, "weights need the plain path"


def test_constants_are_set_where_the_code_reads_them(monkeypatch):
    # The package's constants are copies of its modules' (which the code reads): set on
    # the package, one would be ignored, so that is refused, naming the module to set.
    names = [n for n in vars(attention_ops) if n.isupper() and not n.startswith("_")]
    assert {"CHUNKED_THRESHOLD", "FLASH_THRESHOLD", "FLASH_BLOCK_Q", "CHUNK_ELEMENTS"} <= set(names)
    for name in names:
        [home] = [m for m in (attention, chunked, flash, positions) if name in vars(m)]
        assert getattr(attention_ops, name) == getattr(home, name)
        with pytest.raises(AttributeError, match=rf"set `{home.__name__}\.{name}` instead"):
            monkeypatch.setattr(attention_ops, name, None)
        monkeypatch.setattr(home, name, getattr(home, name))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(implementation="flashy"), "implementation"),
        (dict(implementation="flash", return_attention_scores=True), "weights"),
        (dict(implementation="chunked", return_attention_scores=True), "weights"),
        (dict(implementation="fused", dropout_rate=0.1, training=True), "dropout"),
        (dict(implementation="chunked", chunk_size=0), "chunk_size"),
    ],
)
def test_bad_implementation_arguments(kwargs, match):
    q = _rand(1, 3, 2, 4)
    with pytest.raises(ValueError, match=match):
        attention_ops.scaled_dot_product_attention(q, q, q, **kwargs)


@pytest.mark.tensorflow_only("XLA through tf.function(jit_compile=True)")
def test_chunked_gradients_under_xla():
    import tensorflow as tf

    q, k, v = (tf.constant(_rand(2, 2, 10, 4)) for _ in range(3))

    def grads(implementation, **kwargs):
        def fn(q, k, v):
            with tf.GradientTape() as tape:
                tape.watch([q, k, v])
                out = attention_ops.scaled_dot_product_attention(
                    q, k, v, causal=True, implementation=implementation, **kwargs
                )
                loss = tf.reduce_sum(tf.sin(out))
            return [out] + tape.gradient(loss, [q, k, v])

        return tf.function(fn, jit_compile=True)(q, k, v)

    for a, b in zip(grads("plain"), grads("chunked", chunk_size=3)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)


def test_default_picks_flash_above_flash_threshold_where_the_kernel_runs(monkeypatch):
    # Below CHUNKED_THRESHOLD: flash on TensorFlow (it has the kernel) when the kernel
    # covers the call; the plain path elsewhere and for a tensor bias.
    calls = []
    for path in (flash, chunked):
        original = path.attend
        monkeypatch.setattr(
            path,
            "attend",
            lambda *a, _name=path.__name__, _original=original, **k: (
                calls.append(_name) or _original(*a, **k)
            ),
        )
    monkeypatch.setattr(attention, "FLASH_THRESHOLD", 100)
    q = _rand(1, 2, 16, 8)
    out = attention_ops.scaled_dot_product_attention(q, q, q, causal=True)
    np.testing.assert_allclose(out, reference.attention(q, q, q, causal=True)[0], atol=1e-5)
    expected = [flash.__name__] if backend_lib.has_flash_attention() else []
    assert calls == expected
    bias = _rand(1, 2, 16, 16)
    out = attention_ops.scaled_dot_product_attention(q, q, q, bias=bias)
    np.testing.assert_allclose(out, reference.attention(q, q, q, bias=bias)[0], atol=1e-5)
    assert calls == expected, "a tensor bias has no flash kernel: plain below CHUNKED_THRESHOLD"
    small = _rand(1, 2, 7, 8)  # 98 scores, not above the threshold
    attention_ops.scaled_dot_product_attention(small, small, small)
    assert calls == expected

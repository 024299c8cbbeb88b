"""`MultiHeadAttention`: parity with Keras, numpy reference, GQA, cache, masks, saving."""

import os

import keras
import numpy as np
import pytest

import keras_attention as ka
from tests import reference
from tests.utils import normal_sampler, run_layer_test, to_numpy

RNG = np.random.default_rng(4)


_rand = normal_sampler(RNG)


def _transplant(keras_mha, ours):
    """Copy `keras.layers.MultiHeadAttention` weights into ours (same math)."""
    pairs = (
        (keras_mha._query_dense, ours.query_dense),
        (keras_mha._key_dense, ours.key_dense),
        (keras_mha._value_dense, ours.value_dense),
    )
    for src, dst in pairs:
        kernel = to_numpy(src.kernel)  # (features, heads, dim)
        dst.kernel.assign(kernel.reshape(kernel.shape[0], -1))
        dst.bias.assign(to_numpy(src.bias).reshape(-1))  # (heads, dim)
    kernel = to_numpy(keras_mha._output_dense.kernel)  # (heads, dim, out)
    ours.output_dense.kernel.assign(kernel.reshape(-1, kernel.shape[-1]))
    ours.output_dense.bias.assign(to_numpy(keras_mha._output_dense.bias))


PARITY_CASES = {
    "self": dict(q=(2, 5, 8), v=None, k=None, value_dim=None, output_dim=None),
    "cross": dict(q=(2, 4, 8), v=(2, 7, 6), k=(2, 7, 5), value_dim=None, output_dim=None),
    "value_dim": dict(q=(2, 4, 8), v=(2, 6, 8), k=None, value_dim=3, output_dim=5),
}


def _parity_pair(q_shape, value_dim, output_dim):
    kwargs = dict(num_heads=2, key_dim=4, value_dim=value_dim, bias_initializer="random_normal")
    theirs = keras.layers.MultiHeadAttention(output_shape=output_dim, **kwargs)
    ours = ka.MultiHeadAttention(output_dim=output_dim, **kwargs)
    return theirs, ours


@pytest.mark.parametrize("case", sorted(PARITY_CASES))
@pytest.mark.parametrize("causal", [False, True])
def test_parity_with_keras(case, causal):
    spec = PARITY_CASES[case]
    query = _rand(*spec["q"])
    value = query if spec["v"] is None else _rand(*spec["v"])
    key = None if spec["k"] is None else _rand(*spec["k"])
    theirs, ours = _parity_pair(spec["q"], spec["value_dim"], spec["output_dim"])
    call = dict(key=key, use_causal_mask=causal, return_attention_scores=True)
    ref_out, ref_scores = theirs(query, value, **call)
    ours(query, value, key=key)  # build
    _transplant(theirs, ours)
    out, scores = ours(query, value, **call)
    assert out.shape == ref_out.shape and scores.shape == ref_scores.shape
    np.testing.assert_allclose(to_numpy(out), ref_out, atol=1e-5)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_parity_with_keras_explicit_padding_masks():
    query, value = _rand(2, 5, 8), _rand(2, 6, 8)
    query_mask = np.ones((2, 5), bool)
    query_mask[0, 3:] = False
    value_mask = np.ones((2, 6), bool)
    value_mask[1, 4:] = False
    theirs, ours = _parity_pair(query.shape, None, None)
    call = dict(
        query_mask=query_mask,
        value_mask=value_mask,
        use_causal_mask=True,
        return_attention_scores=True,
    )
    ref_out, ref_scores = theirs(query, value, **call)
    ours(query, value)
    _transplant(theirs, ours)
    out, scores = ours(query, value, **call)
    # Keras gives padded query rows a uniform average; ours gives them no attention
    # (zero heads, so the output projection's bias). Compare the real rows.
    np.testing.assert_allclose(to_numpy(out)[query_mask], to_numpy(ref_out)[query_mask], atol=1e-5)
    rows = np.broadcast_to(query_mask[:, None, :], scores.shape[:3])
    np.testing.assert_allclose(to_numpy(scores)[rows], to_numpy(ref_scores)[rows], atol=1e-5)
    assert np.all(to_numpy(scores)[~rows] == 0)
    bias = to_numpy(ours.output_dense.bias)
    np.testing.assert_allclose(to_numpy(out)[~query_mask], np.tile(bias, (2, 1)), atol=1e-6)


def test_parity_with_keras_through_embedding_masks():
    tokens = np.array([[3, 5, 2, 0, 0], [4, 1, 6, 7, 2]], dtype="int32")
    inputs = keras.Input((None,), dtype="int32")
    embedded = keras.layers.Embedding(10, 8, mask_zero=True)(inputs)
    theirs, ours = _parity_pair((None, None, 8), None, None)
    model = keras.Model(inputs, [theirs(embedded, embedded), ours(embedded, embedded)])
    _transplant(theirs, ours)
    ref_out, out = model.predict(tokens, verbose=0)
    real = tokens != 0
    np.testing.assert_allclose(out[real], ref_out[real], atol=1e-5)
    bias = to_numpy(ours.output_dense.bias)
    np.testing.assert_allclose(out[~real], np.tile(bias, (2, 1)), atol=1e-6)
    # The output carries the query's Keras mask on to the next layer.
    symbolic = ours(embedded, embedded)
    assert symbolic._keras_mask is not None


def _numpy_mha(layer, query, value, mask=None):
    """Multi-head attention in numpy from the layer's own weights (GQA included)."""

    def project(dense, x):
        return x @ to_numpy(dense.kernel) + to_numpy(dense.bias)

    def heads(x, n):
        b, s, _ = x.shape
        return x.reshape(b, s, n, -1).transpose(0, 2, 1, 3)

    kv_heads = layer.num_key_value_heads or layer.num_heads
    q = heads(project(layer.query_dense, query), layer.num_heads)
    k = heads(project(layer.key_dense, value), kv_heads)
    v = heads(project(layer.value_dense, value), kv_heads)
    group = layer.num_heads // kv_heads
    if mask is not None:  # (batch, heads or 1, q_len, kv_len)
        mask = np.broadcast_to(mask, q.shape[:3] + (k.shape[2],))
    outs, weights = [], []
    for h in range(layer.num_heads):
        head_mask = None if mask is None else mask[:, h]
        o, w = reference.attention(q[:, h], k[:, h // group], v[:, h // group], mask=head_mask)
        outs.append(o)
        weights.append(w)
    merged = np.concatenate(outs, axis=-1)
    return project(layer.output_dense, merged), np.stack(weights, axis=1)


def test_matches_numpy_reference_from_own_weights():
    layer = ka.MultiHeadAttention(
        4, 3, value_dim=5, num_key_value_heads=2, output_dim=7, bias_initializer="random_normal"
    )
    query, value = _rand(2, 4, 6), _rand(2, 5, 9)
    attention_mask = RNG.random((2, 4, 5)) > 0.3
    attention_mask[0, 1] = False  # a fully masked row
    out, scores = layer(query, value, attention_mask=attention_mask, return_attention_scores=True)
    ref_out, ref_scores = _numpy_mha(layer, query, value, mask=attention_mask[:, None])
    assert out.shape == (2, 4, 7) and scores.shape == (2, 4, 4, 5)
    np.testing.assert_allclose(to_numpy(out), ref_out, atol=1e-5)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_attention_mask_with_head_axis():
    layer = ka.MultiHeadAttention(2, 4)
    x = _rand(2, 5, 8)
    mask = RNG.random((2, 2, 5, 5)) > 0.4
    out, scores = layer(x, x, attention_mask=mask, return_attention_scores=True)
    _, ref_scores = _numpy_mha(layer, x, x, mask=mask)
    np.testing.assert_allclose(to_numpy(scores), ref_scores, atol=1e-5)
    assert np.all(to_numpy(scores)[~mask] == 0)


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_gqa_equals_mha_with_repeated_kv_heads(kv_heads):
    num_heads, key_dim, value_dim = 4, 3, 2
    gqa = ka.MultiHeadAttention(
        num_heads,
        key_dim,
        value_dim=value_dim,
        num_key_value_heads=kv_heads,
        bias_initializer="random_normal",
    )
    mha = ka.MultiHeadAttention(num_heads, key_dim, value_dim=value_dim)
    query, value = _rand(2, 4, 6), _rand(2, 5, 6)
    gqa(query, value)
    mha(query, value)
    group = num_heads // kv_heads
    for src, dst, dim in (
        (gqa.key_dense, mha.key_dense, key_dim),
        (gqa.value_dense, mha.value_dense, value_dim),
    ):
        kernel = to_numpy(src.kernel).reshape(6, kv_heads, dim)
        dst.kernel.assign(np.repeat(kernel, group, axis=1).reshape(6, -1))
        bias = to_numpy(src.bias).reshape(kv_heads, dim)
        dst.bias.assign(np.repeat(bias, group, axis=0).reshape(-1))
    for src, dst in ((gqa.query_dense, mha.query_dense), (gqa.output_dense, mha.output_dense)):
        dst.kernel.assign(src.kernel)
        dst.bias.assign(src.bias)
    assert tuple(gqa.key_dense.kernel.shape) == (6, kv_heads * key_dim)
    a, sa = gqa(query, value, use_causal_mask=True, return_attention_scores=True)
    b, sb = mha(query, value, use_causal_mask=True, return_attention_scores=True)
    np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=1e-5)
    np.testing.assert_allclose(sa, sb, atol=1e-5)


def _full_and_layer(kv_heads=2):
    layer = ka.MultiHeadAttention(
        4, 3, value_dim=2, num_key_value_heads=kv_heads, bias_initializer="random_normal"
    )
    x = _rand(2, 6, 8)
    full, full_scores = layer(x, x, use_causal_mask=True, return_attention_scores=True)
    return layer, x, to_numpy(full), to_numpy(full_scores)


def test_cache_decoding_equals_full_causal_call():
    layer, x, full, full_scores = _full_and_layer()
    cache = layer.get_initial_cache(batch_size=2, max_length=6)
    assert tuple(cache.shape) == (2, 6, 2 * 3 + 2 * 2)
    assert keras.backend.standardize_dtype(cache.dtype) == "float32"
    steps = []
    for i in range(6):
        token = x[:, i : i + 1]
        out, scores, cache = layer(
            token, token, cache=cache, cache_index=i, return_attention_scores=True
        )
        assert out.shape == (2, 1, 8) and scores.shape == (2, 4, 1, 6)
        np.testing.assert_allclose(
            to_numpy(scores)[:, :, 0], to_numpy(full_scores)[:, :, i], atol=1e-5
        )
        steps.append(to_numpy(out))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)
    # The cache holds the projected keys then values of every position.
    keys = to_numpy(layer.key_dense(x))
    values = to_numpy(layer.value_dense(x))
    np.testing.assert_allclose(cache, np.concatenate([keys, values], -1), atol=1e-6)


def test_cache_chunked_prefill_then_steps():
    layer, x, full, _ = _full_and_layer(kv_heads=1)
    cache = layer.get_initial_cache(2, 6)
    first, cache = layer(x[:, :4], x[:, :4], cache=cache, cache_index=0)
    rest, cache = layer(x[:, 4:], x[:, 4:], cache=cache, cache_index=4)
    np.testing.assert_allclose(
        np.concatenate([to_numpy(first), to_numpy(rest)], 1), to_numpy(full), atol=1e-5
    )


@pytest.mark.tensorflow_only("tf.function retracing count")
def test_cache_in_tf_function_with_tensor_index():
    import tensorflow as tf

    layer, x, full, _ = _full_and_layer()

    @tf.function
    def step(cache, index, token):
        return layer(token, token, cache=cache, cache_index=index)

    cache = layer.get_initial_cache(2, 6)
    steps = []
    for i in range(6):
        out, cache = step(cache, tf.constant(i), x[:, i : i + 1])
        steps.append(to_numpy(out))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)
    assert step.experimental_get_tracing_count() == 1


def test_cache_in_functional_model_symbolic_shapes():
    layer = ka.MultiHeadAttention(2, 4)
    token = keras.Input((1, 8))
    layer.build(token.shape, token.shape)
    cache = keras.Input((5, layer.get_initial_cache(1, 5).shape[-1]))
    out, scores, new_cache = layer(
        token, token, cache=cache, cache_index=2, return_attention_scores=True
    )
    assert out.shape == (None, 1, 8)
    assert scores.shape == (None, 2, 1, 5)
    assert new_cache.shape == (None, 5, 16)


def test_cache_padding_mask_covers_new_positions():
    layer, x, full, _ = _full_and_layer()
    cache = layer.get_initial_cache(2, 6)
    _, cache = layer(x[:, :3], x[:, :3], cache=cache, cache_index=0)
    keep = np.array([[True], [False]])
    out, scores, _ = layer(
        x[:, 3:4],
        x[:, 3:4],
        cache=cache,
        cache_index=3,
        value_mask=keep,
        return_attention_scores=True,
    )
    scores = to_numpy(scores)
    assert np.all(scores[1, :, 0, 3:] == 0) and np.all(scores[0, :, 0, 4:] == 0)
    assert np.all(scores[0, :, 0, 3] > 0)
    np.testing.assert_allclose(to_numpy(out)[0], to_numpy(full)[0, 3:4], atol=1e-5)


def test_dropout_only_in_training():
    layer = ka.MultiHeadAttention(2, 4, dropout=0.5, seed=1)
    plain = ka.MultiHeadAttention(2, 4)
    x = _rand(2, 5, 8)
    plain(x, x)
    layer(x, x)
    plain.set_weights(layer.get_weights())
    expected = to_numpy(plain(x, x))
    np.testing.assert_allclose(to_numpy(layer(x, x)), expected, atol=1e-6)
    np.testing.assert_allclose(layer(x, x, training=False), expected, atol=1e-6)
    assert np.max(np.abs(to_numpy(layer(x, x, training=True)) - expected)) > 1e-3


RUN_CASES = {
    "self": (
        {"num_heads": 2, "key_dim": 4},
        {"query": (2, 5, 8), "value": (2, 5, 8)},
        {},
        (2, 5, 8),
    ),
    "cross": (
        {"num_heads": 2, "key_dim": 3, "value_dim": 5, "output_dim": 6},
        {"query": (2, 4, 7), "value": (2, 6, 5), "key": (2, 6, 3)},
        {"use_causal_mask": True},
        (2, 4, 6),
    ),
    "gqa": (
        {"num_heads": 4, "key_dim": 2, "num_key_value_heads": 2},
        {"query": (2, 5, 8), "value": (2, 5, 8)},
        {"use_causal_mask": True},
        (2, 5, 8),
    ),
    "scores": (
        {"num_heads": 2, "key_dim": 4, "dropout": 0.1, "seed": 3},
        {"query": (2, 4, 8), "value": (2, 6, 8)},
        {"return_attention_scores": True},
        (2, 4, 8),
    ),
}


@pytest.mark.parametrize("case", sorted(RUN_CASES))
def test_layer_helper(tmp_path, case):
    init_kwargs, shapes, call_kwargs, expected = RUN_CASES[case]
    run_layer_test(
        ka.MultiHeadAttention,
        init_kwargs,
        {name: _rand(*shape) for name, shape in shapes.items()},
        call_kwargs,
        tmp_path=tmp_path,
        expected_output_shape=expected,
        expected_num_trainable_weights=8,
        masked_inputs=("query", "value"),
        atol=1e-5,
    )


def test_symbolic_scores_shape_equals_eager_for_different_lengths():
    layer = ka.MultiHeadAttention(2, 4)
    q, v = keras.Input((5, 8)), keras.Input((7, 8))
    _, scores = layer(q, v, return_attention_scores=True)
    _, eager = layer(_rand(1, 5, 8), _rand(1, 7, 8), return_attention_scores=True)
    assert scores.shape == (None, 2, 5, 7) and tuple(eager.shape) == (1, 2, 5, 7)
    assert layer.compute_output_shape((1, 5, 8), (1, 7, 6)) == (1, 5, 8)
    assert ka.MultiHeadAttention(2, 4, output_dim=3).compute_output_shape((1, 5, 8), (1, 7, 6)) == (
        1,
        5,
        3,
    )


def test_functional_model_trains_saves_and_reloads(tmp_path):
    inputs = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(20, 8, mask_zero=True)(inputs)
    x = ka.MultiHeadAttention(2, 4, num_key_value_heads=1, dropout=0.1, seed=0)(
        x, x, use_causal_mask=True
    )
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    tokens = RNG.integers(1, 20, size=(16, 6)).astype("int32")
    tokens[:8, 4:] = 0
    labels = (tokens[:, 0] > 10).astype("float32")[:, None]
    history = model.fit(tokens, labels, epochs=3, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    path = os.path.join(str(tmp_path), "mha.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(
        reloaded.predict(tokens, verbose=0), model.predict(tokens, verbose=0), atol=1e-6
    )


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    keras.config.set_dtype_policy(policy)
    layer = ka.MultiHeadAttention(2, 4, num_key_value_heads=1)
    x = (_rand(2, 5, 8) * 30).astype("float32")
    out, scores = layer(x, x, use_causal_mask=True, return_attention_scores=True)
    compute = policy.split("_")[1]
    assert keras.backend.standardize_dtype(out.dtype) == compute
    assert np.all(np.isfinite(to_numpy(keras.ops.cast(out, "float32"))))
    assert np.all(np.isfinite(to_numpy(keras.ops.cast(scores, "float32"))))
    assert keras.backend.standardize_dtype(layer.query_dense.kernel.dtype) == "float32"
    cache = layer.get_initial_cache(2, 5)
    assert keras.backend.standardize_dtype(cache.dtype) == compute
    step, _ = layer(x[:, :1], x[:, :1], cache=cache, cache_index=0)
    assert keras.backend.standardize_dtype(step.dtype) == compute


def test_config_round_trip():
    layer = ka.MultiHeadAttention(
        4,
        3,
        value_dim=2,
        num_key_value_heads=2,
        dropout=0.2,
        use_bias=False,
        output_dim=5,
        kernel_regularizer="l2",
        activity_regularizer="l1",
        seed=7,
        name="mha",
    )
    config = layer.get_config()
    clone = ka.MultiHeadAttention.from_config(config)
    assert clone.get_config() == config
    assert config["num_key_value_heads"] == 2 and config["output_dim"] == 5
    clone(_rand(1, 3, 6), _rand(1, 4, 6))
    assert len(clone.trainable_weights) == 4
    assert tuple(clone.key_dense.kernel.shape) == (6, 6)
    assert tuple(clone.output_dense.kernel.shape) == (8, 5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_heads": 0, "key_dim": 4}, "num_heads=0"),
        ({"num_heads": 2.0, "key_dim": 4}, "num_heads=2.0"),
        ({"num_heads": 2, "key_dim": -1}, "key_dim=-1"),
        ({"num_heads": 2, "key_dim": 4, "value_dim": 0}, "value_dim=0"),
        ({"num_heads": 2, "key_dim": 4, "num_key_value_heads": 0}, "num_key_value_heads=0"),
        ({"num_heads": 4, "key_dim": 4, "num_key_value_heads": 3}, "num_key_value_heads=3"),
        ({"num_heads": 2, "key_dim": 4, "dropout": 1.0}, "dropout=1.0"),
        ({"num_heads": 2, "key_dim": 4, "dropout": -0.1}, "dropout=-0.1"),
        ({"num_heads": 2, "key_dim": 4, "output_dim": 0}, "output_dim=0"),
        ({"num_heads": 2, "key_dim": 4, "seed": "a"}, "seed='a'"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ka.MultiHeadAttention(**kwargs)


def test_bad_call_arguments():
    layer = ka.MultiHeadAttention(2, 4)
    x = _rand(2, 5, 8)
    with pytest.raises(ValueError, match=r"`query` must be rank 3"):
        layer(_rand(2, 8), x)
    layer(x, x)
    with pytest.raises(ValueError, match=r"`value` must be rank 3"):
        layer(x, _rand(2, 5, 8, 1))
    with pytest.raises(ValueError, match=r"`key` and `value` must have the same length"):
        layer(x, x, key=_rand(2, 4, 8))
    with pytest.raises(ValueError, match=r"`value` must be 8.*value.shape=\(2, 5, 3\)"):
        layer(x, _rand(2, 5, 3))
    with pytest.raises(ValueError, match="must be given together"):
        layer(x, x, cache_index=0)
    cache = layer.get_initial_cache(2, 5)
    with pytest.raises(ValueError, match="must be given together"):
        layer(x, x, cache=cache)
    with pytest.raises(ValueError, match=r"cache_index=4"):
        layer(x[:, :2], x[:, :2], cache=cache, cache_index=4)
    with pytest.raises(ValueError, match=r"cache_index=-1"):
        layer(x[:, :1], x[:, :1], cache=cache, cache_index=-1)
    with pytest.raises(ValueError, match=r"cache.shape=\(2, 5, 7\)"):
        layer(x[:, :1], x[:, :1], cache=_rand(2, 5, 7), cache_index=0)
    with pytest.raises(ValueError, match="attention_mask"):
        layer(x, x, attention_mask=np.ones((2, 5, 4), bool))
    # Float masks are read as in Keras (`!= 0`), but only 0 and 1 are taken.
    with pytest.raises(ValueError, match="attention_mask.*0.5"):
        layer(x, x, attention_mask=np.full((2, 5, 5), 0.5, "float32"))
    with pytest.raises(ValueError, match="attention_mask"):
        layer(x, x, attention_mask=np.full((2, 5, 5), -np.inf, "float32"))


def test_initial_cache_requires_built_layer():
    layer = ka.MultiHeadAttention(2, 4)
    with pytest.raises(ValueError, match="not built"):
        layer.get_initial_cache(1, 4)
    layer.build((1, 3, 8), (1, 3, 8))
    with pytest.raises(ValueError, match="max_length=0"):
        layer.get_initial_cache(1, 0)
    cache = layer.get_initial_cache(1, 4, dtype="float16")
    assert keras.backend.standardize_dtype(cache.dtype) == "float16"


def test_cache_with_attention_mask_over_cached_positions():
    layer, x, _, _ = _full_and_layer()
    allowed = RNG.random((2, 6, 6)) > 0.3
    allowed[:, :, 0] = True  # every row keeps one key
    full = to_numpy(layer(x, x, attention_mask=allowed, use_causal_mask=True))
    cache = layer.get_initial_cache(2, 6)
    steps = []
    for i in range(6):
        token = x[:, i : i + 1]
        out, cache = layer(
            token, token, cache=cache, cache_index=i, attention_mask=allowed[:, i : i + 1]
        )
        steps.append(to_numpy(out))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)

"""`AdditiveAttention`, `LuongAttention` and `AttentionPooling`."""

import os

import keras
import numpy as np
import pytest

import keras_attention as ka
from tests import reference
from tests.utils import normal_sampler, run_layer_test, to_numpy

RNG = np.random.default_rng(5)


_rand = normal_sampler(RNG)


def _dense(layer, x):
    """A Dense sublayer applied in numpy, from its own weights."""
    out = np.asarray(x, np.float64) @ to_numpy(layer.kernel)
    return out + to_numpy(layer.bias) if layer.use_bias else out


def _masked_attention(scores, value, allowed):
    """numpy: masked softmax of raw scores over the last axis, then weights @ value.

    Masked keys get weight 0; a row with no allowed key gets zeros."""
    scores = np.where(allowed, scores, -np.inf)
    row_max = np.max(scores, axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    e = np.where(allowed, np.exp(scores - row_max), 0.0)
    total = e.sum(-1, keepdims=True)
    weights = np.divide(e, total, out=np.zeros_like(e), where=total > 0)
    return weights @ np.asarray(value, np.float64), weights


def _keep(batch, length, masked):
    """Boolean (batch, length) Keras mask with `masked` = {row: [positions]} off."""
    keep = np.ones((batch, length), bool)
    for row, positions in masked.items():
        keep[row, positions] = False
    return keep


# --------------------------------------------------------------------------
# numpy references for every score function, from the layers' own weights.


@pytest.mark.parametrize("single_step", [False, True])
def test_additive_matches_numpy(single_step):
    layer = ka.AdditiveAttention(5, bias_initializer="random_normal")
    q = _rand(3, 7) if single_step else _rand(3, 4, 7)
    v, k = _rand(3, 6, 2), _rand(3, 6, 8)
    value_keep = _keep(3, 6, {1: [4, 5], 2: [0]})
    out, weights = layer(q, v, key=k, value_mask=value_keep, return_attention_scores=True)

    q3 = q[:, None] if single_step else q
    hidden = np.tanh(
        _dense(layer.query_dense, q3)[:, :, None] + _dense(layer.key_dense, k)[:, None]
    )
    scores = (hidden @ to_numpy(layer.score_dense.kernel))[..., 0]
    ref_out, ref_w = _masked_attention(scores, v, value_keep[:, None, :])
    if single_step:
        ref_out, ref_w = ref_out[:, 0], ref_w[:, 0]
    assert out.shape == ref_out.shape and weights.shape == ref_w.shape
    np.testing.assert_allclose(to_numpy(out), ref_out, atol=1e-5)
    np.testing.assert_allclose(weights, ref_w, atol=1e-5)


def test_additive_matches_keras_additive_attention():
    """Keras' AdditiveAttention scores `sum(scale * tanh(q + k))`: ours is that on the
    projected queries and keys, with `scale` = the score_dense kernel."""
    layer = ka.AdditiveAttention(6, bias_initializer="random_normal")
    q, v, k = _rand(2, 3, 5), _rand(2, 4, 3), _rand(2, 4, 7)
    q_keep, v_keep = _keep(2, 3, {0: [2]}), _keep(2, 4, {1: [0, 3]})
    out = layer(q, v, key=k, query_mask=q_keep, value_mask=v_keep)

    keras_layer = keras.layers.AdditiveAttention(use_scale=True)
    pq, pk = layer.query_dense(q), layer.key_dense(k)
    keras_layer([pq, v, pk])
    keras_layer.scale.assign(to_numpy(layer.score_dense.kernel)[:, 0])
    expected = keras_layer([pq, v, pk], mask=[q_keep, v_keep])
    np.testing.assert_allclose(to_numpy(out), expected, atol=1e-5)


def _luong_scores(layer, q, k):
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    if layer.score == "dot":
        scores = q @ np.swapaxes(k, -1, -2)
    elif layer.score == "general":
        scores = q @ np.swapaxes(_dense(layer.key_dense, k), -1, -2)
    else:
        pairs = np.concatenate(
            [np.repeat(q[:, :, None], k.shape[1], 2), np.repeat(k[:, None], q.shape[1], 1)],
            axis=-1,
        )
        hidden = np.tanh(_dense(layer.concat_dense, pairs))
        scores = (hidden @ to_numpy(layer.score_dense.kernel))[..., 0]
    if layer.scale_by_sqrt_dim:
        scores = scores / np.sqrt(q.shape[-1])
    return scores


LUONG_CASES = [
    {"score": "dot"},
    {"score": "dot", "scale": True},
    {"score": "general"},
    {"score": "general", "scale": True},
    {"score": "concat", "units": 5},
    {"score": "concat", "units": 5, "use_bias": False},
]


@pytest.mark.parametrize("kwargs", LUONG_CASES)
@pytest.mark.parametrize("single_step", [False, True])
def test_luong_matches_numpy(kwargs, single_step):
    layer = ka.LuongAttention(**kwargs, bias_initializer="random_normal")
    key_features = 4 if kwargs["score"] == "dot" else 6
    q = _rand(3, 4) if single_step else _rand(3, 5, 4)
    v, k = _rand(3, 6, 2), _rand(3, 6, key_features)
    value_keep = _keep(3, 6, {0: [5], 2: [1, 2, 3]})
    out, weights = layer(q, v, key=k, value_mask=value_keep, return_attention_scores=True)

    q3 = q[:, None] if single_step else q
    ref_out, ref_w = _masked_attention(_luong_scores(layer, q3, k), v, value_keep[:, None])
    if single_step:
        ref_out, ref_w = ref_out[:, 0], ref_w[:, 0]
    assert out.shape == ref_out.shape and weights.shape == ref_w.shape
    np.testing.assert_allclose(to_numpy(out), ref_out, atol=1e-5)
    np.testing.assert_allclose(weights, ref_w, atol=1e-5)


def test_pooling_matches_numpy():
    x = _rand(3, 6, 4)
    keep = _keep(3, 6, {0: [4, 5], 1: [0]})
    for kwargs in ({}, {"units": 5}, {"units": 5, "num_queries": 2, "scale": True}):
        layer = ka.AttentionPooling(**kwargs, bias_initializer="random_normal")
        out, weights = layer(x, mask=keep, return_attention_scores=True)
        keys = np.tanh(_dense(layer.key_dense, x)) if layer.key_dense is not None else x
        scores = np.einsum("bsd,nd->bns", keys, to_numpy(layer.query))
        if layer.scale:
            scores = scores / np.sqrt(keys.shape[-1])
        ref_out, ref_w = _masked_attention(scores, x, keep[:, None, :])
        if layer.num_queries == 1:
            ref_out, ref_w = ref_out[:, 0], ref_w[:, 0]
        assert out.shape == ref_out.shape and weights.shape == ref_w.shape, kwargs
        np.testing.assert_allclose(to_numpy(out), ref_out, atol=1e-5)
        np.testing.assert_allclose(weights, ref_w, atol=1e-5)


# --------------------------------------------------------------------------
# Relations with other layers.


@pytest.mark.parametrize("masked", [False, True])
def test_luong_dot_matches_keras_attention(masked):
    q, v, k = _rand(2, 4, 6), _rand(2, 5, 3), _rand(2, 5, 6)
    masks = {}
    if masked:
        masks = {"query_mask": _keep(2, 4, {1: [3]}), "value_mask": _keep(2, 5, {0: [1, 4]})}
    out, weights = ka.LuongAttention("dot")(q, v, key=k, return_attention_scores=True, **masks)
    keras_mask = [masks["query_mask"], masks["value_mask"]] if masked else None
    expected, expected_w = keras.layers.Attention()(
        [q, v, k], mask=keras_mask, return_attention_scores=True
    )
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # Keras leaves the weights of padded queries as they are; ours are zeros.
    rows = masks["query_mask"] if masked else np.ones((2, 4), bool)
    np.testing.assert_allclose(to_numpy(weights)[rows], to_numpy(expected_w)[rows], atol=1e-5)
    assert np.all(to_numpy(weights)[~rows] == 0)


def test_luong_dot_scaled_is_scaled_dot_product_attention():
    q, v = _rand(2, 4, 8), _rand(2, 6, 8)
    keep = _keep(2, 6, {1: [0, 5]})
    out = ka.LuongAttention("dot", scale=True)(q, v, value_mask=keep)
    expected = ka.ops.scaled_dot_product_attention(q, v, v, mask=keep[:, None, :])
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_pooling_invariant_to_masked_content_and_fully_masked_is_zero():
    layer = ka.AttentionPooling(units=4, num_queries=2)
    x = _rand(3, 5, 6)
    keep = _keep(3, 5, {0: [1, 3], 1: [0, 1, 2, 3, 4]})
    other = x.copy()
    other[~keep] = 1e3 * _rand(int((~keep).sum()), 6)
    a, wa = layer(x, mask=keep, return_attention_scores=True)
    b, wb = layer(other, mask=keep, return_attention_scores=True)
    np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=1e-6)
    np.testing.assert_allclose(wa, wb, atol=1e-6)
    assert np.all(to_numpy(a)[1] == 0) and np.all(to_numpy(wa)[1] == 0)
    assert np.all(to_numpy(wa)[0][:, [1, 3]] == 0)


@pytest.mark.parametrize(
    "layer",
    [
        lambda: ka.AdditiveAttention(4),
        lambda: ka.LuongAttention("dot"),
        lambda: ka.LuongAttention("general"),
        lambda: ka.LuongAttention("concat", units=3),
    ],
)
def test_fully_masked_rows_give_zeros(layer):
    q, v = _rand(2, 3, 4), _rand(2, 5, 4)
    value_keep = _keep(2, 5, {1: [0, 1, 2, 3, 4]})
    query_keep = _keep(2, 3, {0: [2]})
    out, weights = layer()(
        q, v, query_mask=query_keep, value_mask=value_keep, return_attention_scores=True
    )
    out, weights = to_numpy(out), to_numpy(weights)
    assert np.all(np.isfinite(out))
    assert np.all(out[1] == 0) and np.all(weights[1] == 0)
    assert np.all(out[0, 2] == 0) and np.all(weights[0, 2] == 0)
    assert np.any(out[0, :2] != 0)


def test_keras_masks_propagate_from_embedding():
    tokens = np.array([[3, 4, 5, 0], [6, 0, 0, 0]])
    inputs = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(10, 8, mask_zero=True)(inputs)
    context, weights = ka.AdditiveAttention(4)(x, x, return_attention_scores=True)
    assert context._keras_mask is not None
    pooled, pool_weights = ka.AttentionPooling(4)(x, return_attention_scores=True)
    model = keras.Model(inputs, [context, weights, pooled, pool_weights])
    context, weights, pooled, pool_weights = (to_numpy(t) for t in model(tokens))
    padded = tokens == 0
    assert np.all(weights[np.broadcast_to(padded[:, None, :], weights.shape)] == 0)
    assert np.all(context[padded] == 0)
    assert np.all(pool_weights[padded] == 0)
    np.testing.assert_allclose(pool_weights.sum(-1), 1.0, atol=1e-6)


# --------------------------------------------------------------------------
# The shared layer-test helper, for every layer and score type.


@pytest.mark.parametrize(
    "call_kwargs",
    [{}, {"use_causal_mask": True}, {"return_attention_scores": True}],
)
def test_additive_helper(tmp_path, call_kwargs):
    run_layer_test(
        ka.AdditiveAttention,
        {"units": 5},
        {"query": _rand(2, 4, 7), "value": _rand(2, 6, 3), "key": _rand(2, 6, 8)},
        call_kwargs,
        tmp_path=tmp_path,
        expected_output_shape=(2, 4, 3),
        expected_num_trainable_weights=5,
        masked_inputs=("query", "value"),
    )


@pytest.mark.parametrize(
    "layer_cls, init_kwargs",
    [
        (ka.AdditiveAttention, {"units": 5}),
        (ka.LuongAttention, {"score": "general"}),
        (ka.LuongAttention, {"score": "concat", "units": 3}),
    ],
)
def test_single_step_query_helper(tmp_path, layer_cls, init_kwargs):
    run_layer_test(
        layer_cls,
        init_kwargs,
        {"query": _rand(2, 7), "value": _rand(2, 6, 3)},
        {"return_attention_scores": True},
        tmp_path=tmp_path,
        expected_output_shape=(2, 3),
        masked_inputs=("value",),
        expect_output_mask=False,
    )


@pytest.mark.parametrize(
    "init_kwargs, num_weights",
    [
        ({"score": "dot"}, 0),
        ({"score": "dot", "scale": True}, 0),
        ({"score": "general"}, 1),
        ({"score": "concat", "units": 3}, 3),
    ],
)
def test_luong_helper(tmp_path, init_kwargs, num_weights):
    key_features = 7 if init_kwargs["score"] == "dot" else 5
    run_layer_test(
        ka.LuongAttention,
        init_kwargs,
        {"query": _rand(2, 4, 7), "value": _rand(2, 6, 3), "key": _rand(2, 6, key_features)},
        {"return_attention_scores": True},
        tmp_path=tmp_path,
        expected_num_trainable_weights=num_weights,
        masked_inputs=("query", "value"),
    )


@pytest.mark.parametrize(
    "init_kwargs, call_kwargs, shape, num_weights",
    [
        ({}, {}, (2, 6), 1),
        ({"units": 4}, {"return_attention_scores": True}, (2, 6), 3),
        ({"units": 4, "num_queries": 3, "use_bias": False}, {}, (2, 3, 6), 2),
    ],
)
def test_pooling_helper(tmp_path, init_kwargs, call_kwargs, shape, num_weights):
    run_layer_test(
        ka.AttentionPooling,
        init_kwargs,
        {"inputs": _rand(2, 5, 6)},
        call_kwargs,
        tmp_path=tmp_path,
        expected_output_shape=shape,
        expected_num_trainable_weights=num_weights,
        masked_inputs=("inputs",),
        expect_output_mask=False,
    )


# --------------------------------------------------------------------------
# In models.


def test_gru_encoder_decoder_trains_saves_and_reloads(tmp_path):
    vocab, src_len, tgt_len = 12, 6, 4
    source = keras.Input((src_len,), dtype="int32", name="source")
    target = keras.Input((tgt_len,), dtype="int32", name="target")
    enc = keras.layers.Embedding(vocab, 8, mask_zero=True)(source)
    enc_seq, enc_state = keras.layers.GRU(8, return_sequences=True, return_state=True)(enc)
    dec = keras.layers.Embedding(vocab, 8)(target)
    dec_seq = keras.layers.GRU(8, return_sequences=True)(dec, initial_state=enc_state)
    context = ka.AdditiveAttention(8)(dec_seq, enc_seq)
    x = keras.layers.Concatenate()([dec_seq, context])
    probs = keras.layers.Dense(vocab, activation="softmax")(x)
    model = keras.Model([source, target], probs)
    model.compile("adam", "sparse_categorical_crossentropy")

    rng = np.random.default_rng(0)
    src = rng.integers(1, vocab, (16, src_len))
    src[::2, -2:] = 0  # padding, seen by the attention through the GRU's mask
    tgt = rng.integers(1, vocab, (16, tgt_len))
    history = model.fit([src, tgt], np.roll(tgt, -1, axis=1), epochs=3, batch_size=8, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]

    path = os.path.join(str(tmp_path), "seq2seq.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        model.predict([src, tgt], verbose=0), reloaded.predict([src, tgt], verbose=0), atol=1e-6
    )


def test_single_step_decoder_state_in_a_model():
    source = keras.Input((None, 5))
    enc_seq, state = keras.layers.GRU(6, return_sequences=True, return_state=True)(source)
    context = ka.LuongAttention("general")(state, enc_seq)
    assert context.shape == (None, 6)
    model = keras.Model(source, context)
    assert model(_rand(2, 4, 5)).shape == (2, 6)


def test_pooling_classifier_replaces_global_average_pooling():
    inputs = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(20, 8, mask_zero=True)(inputs)
    x = ka.AttentionPooling(units=8)(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    model.compile("adam", "sparse_categorical_crossentropy")
    tokens = np.random.default_rng(1).integers(0, 20, (8, 5))
    model.fit(tokens, np.arange(8) % 2, epochs=1, verbose=0)
    assert model.predict(tokens, verbose=0).shape == (8, 2)


def test_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    q, v = _rand(2, 3, 4), _rand(2, 5, 4)
    for layer in (
        ka.AdditiveAttention(4),
        ka.LuongAttention("concat", units=4),
        ka.LuongAttention("general"),
    ):
        out, weights = layer(q, v, return_attention_scores=True)
        assert keras.backend.standardize_dtype(out.dtype) == "float16"
        assert np.all(np.isfinite(to_numpy(out)))
        assert keras.backend.standardize_dtype(layer.weights[0].dtype) == "float32"
    out = ka.AttentionPooling(4)(v)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    assert np.all(np.isfinite(to_numpy(out)))


def test_dropout_only_in_training():
    layer = ka.AdditiveAttention(4, dropout=0.5, seed=2)
    q, v = _rand(2, 3, 4), _rand(2, 6, 4)
    a = to_numpy(layer(q, v))
    np.testing.assert_allclose(a, to_numpy(layer(q, v, training=False)))
    assert not np.allclose(to_numpy(layer(q, v, training=True)), a)


def test_reference_helper_agrees_with_shared_reference():
    """The local masked-softmax reference equals tests/reference.py on dot scores."""
    q, k, v = _rand(2, 3, 4), _rand(2, 5, 4), _rand(2, 5, 2)
    keep = _keep(2, 5, {0: [1], 1: [0, 1, 2, 3, 4]})[:, None, :]
    scores = np.einsum("bqd,bkd->bqk", q.astype(np.float64), k) * 0.5
    ours = _masked_attention(scores, v, keep)
    theirs = reference.attention(q, k, v, mask=keep, scale=0.5)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=1e-12)


# --------------------------------------------------------------------------
# Bad arguments.


@pytest.mark.parametrize(
    "cls, kwargs, error, match",
    [
        (ka.AdditiveAttention, {"units": 0}, ValueError, r"units.*Received: units=0"),
        (ka.AdditiveAttention, {"units": -3}, ValueError, "units"),
        (ka.AdditiveAttention, {"units": 4, "dropout": 1.0}, ValueError, "dropout"),
        (ka.AdditiveAttention, {"units": 4, "use_bias": 1}, TypeError, "use_bias"),
        (
            ka.LuongAttention,
            {"score": "cosine"},
            ValueError,
            r"'dot', 'general', 'concat'.*Received: score='cosine'",
        ),
        (ka.LuongAttention, {"score": "concat"}, ValueError, "units"),
        (ka.LuongAttention, {"score": "concat", "units": 0}, ValueError, "units"),
        (ka.LuongAttention, {"score": "dot", "units": 4}, ValueError, "units"),
        (ka.LuongAttention, {"score": "concat", "units": 4, "scale": True}, ValueError, "scale"),
        (ka.LuongAttention, {"dropout": -0.1}, ValueError, "dropout"),
        (ka.AttentionPooling, {"units": 0}, ValueError, "units"),
        (ka.AttentionPooling, {"num_queries": 0}, ValueError, "num_queries"),
        (ka.AttentionPooling, {"dropout": 1.5}, ValueError, "dropout"),
    ],
)
def test_bad_constructor_arguments(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(**kwargs)


def test_bad_input_shapes():
    v = _rand(2, 5, 4)
    with pytest.raises(ValueError, match=r"query.*Received: query.shape=\(2, 3, 4, 4\)"):
        ka.AdditiveAttention(4)(_rand(2, 3, 4, 4), v)
    with pytest.raises(ValueError, match=r"value.*Received: value.shape=\(2, 4\)"):
        ka.LuongAttention("general")(_rand(2, 3, 4), _rand(2, 4))
    with pytest.raises(ValueError, match=r"same length.*key.shape=\(2, 6, 4\)"):
        ka.AdditiveAttention(4)(_rand(2, 3, 4), v, key=_rand(2, 6, 4))
    with pytest.raises(ValueError, match=r"query.shape=\(2, 3, 6\).*key.shape=\(2, 5, 4\)"):
        ka.LuongAttention("dot")(_rand(2, 3, 6), v)
    with pytest.raises(ValueError, match=r"inputs.*Received: inputs.shape=\(2, 5\)"):
        ka.AttentionPooling()(_rand(2, 5))

"""`ScaledDotProductAttention` and `SelfAttention`."""

import keras
import numpy as np
import pytest

import keras_attention as ka
from tests import reference
from tests.utils import normal_sampler, run_layer_test, to_numpy

RNG = np.random.default_rng(1)


_rand = normal_sampler(RNG)


@pytest.mark.parametrize(
    "call_kwargs", [{}, {"use_causal_mask": True}, {"return_attention_scores": True}]
)
def test_scaled_dot_product_layer(tmp_path, call_kwargs):
    q, v = _rand(2, 4, 8), _rand(2, 6, 8)
    layer = ka.ScaledDotProductAttention()
    out = layer(q, v, **call_kwargs)
    out = out[0] if isinstance(out, tuple) else out
    ref, _ = reference.attention(q, v, v, causal=call_kwargs.get("use_causal_mask", False))
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize(
    "call_kwargs",
    [{}, {"use_causal_mask": True}, {"return_attention_scores": True}],
)
def test_scaled_dot_product_layer_helper(tmp_path, call_kwargs):
    run_layer_test(
        ka.ScaledDotProductAttention,
        {"scale": 0.5},
        {"query": _rand(2, 4, 8), "value": _rand(2, 6, 3), "key": _rand(2, 6, 8)},
        call_kwargs,
        tmp_path=tmp_path,
        expected_output_shape=(2, 4, 3),
        masked_inputs=("query", "value"),
        check_compute_output_shape=True,
    )


def test_scaled_dot_product_layer_plain_config_and_shapes():
    layer = ka.ScaledDotProductAttention(dropout=0.1, scale=0.25, seed=3)
    clone = ka.ScaledDotProductAttention.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    q, v = keras.Input((5, 8)), keras.Input((7, 4))
    out, scores = layer(q, v, return_attention_scores=True)
    assert out.shape == (None, 5, 4) and scores.shape == (None, 5, 7)
    assert layer.compute_output_shape((1, 5, 8), (1, 7, 4)) == (1, 5, 4)


@pytest.mark.parametrize(
    "call_kwargs",
    [{}, {"use_causal_mask": True}, {"return_attention_scores": True}],
)
def test_self_attention_helper(tmp_path, call_kwargs):
    run_layer_test(
        ka.SelfAttention,
        {"units": 6},
        {"inputs": _rand(2, 5, 8)},
        call_kwargs,
        tmp_path=tmp_path,
        expected_output_shape=(2, 5, 6),
        expected_num_trainable_weights=6,
        masked_inputs=("inputs",),
    )


def test_self_attention_matches_numpy_from_its_weights():
    layer = ka.SelfAttention(4, use_bias=True, bias_initializer="random_normal")
    x = _rand(3, 6, 5)
    keep = np.ones((3, 6), bool)
    keep[1, 4:] = False
    out, weights = layer(x, attention_mask=keep[:, None, :], return_attention_scores=True)

    def project(dense):
        kernel, bias = (np.asarray(w) for w in dense.weights)
        return x @ kernel + bias

    q, k, v = (project(d) for d in (layer.query_dense, layer.key_dense, layer.value_dense))
    ref_out, ref_weights = reference.attention(q, k, v, mask=keep[:, None, :])
    np.testing.assert_allclose(to_numpy(out), ref_out, atol=1e-5)
    np.testing.assert_allclose(to_numpy(weights), ref_weights, atol=1e-5)


def test_self_attention_keras_mask_from_embedding():
    tokens = np.array([[3, 4, 5, 0, 0], [6, 7, 0, 0, 0]])
    inputs = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(10, 8, mask_zero=True)(inputs)
    out, scores = ka.SelfAttention(8)(x, return_attention_scores=True)
    model = keras.Model(inputs, [out, scores])
    out, scores = (keras.ops.convert_to_numpy(t) for t in model(tokens))
    padded = tokens == 0
    # Padded keys get no weight; padded queries output zeros.
    assert np.all(scores[np.broadcast_to(padded[:, None, :], scores.shape)] == 0)
    assert np.all(out[padded] == 0)


def test_dropout_only_in_training():
    layer = ka.SelfAttention(8, dropout=0.5, seed=1)
    x = _rand(2, 6, 8)
    a, b = to_numpy(layer(x)), to_numpy(layer(x, training=False))
    np.testing.assert_allclose(a, b)
    assert not np.allclose(np.asarray(layer(x, training=True)), a)


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (ka.SelfAttention, {"units": 0}, "units"),
        (ka.SelfAttention, {"units": 2.5}, "units"),
        (ka.SelfAttention, {"units": 4, "dropout": 1.0}, "dropout"),
        (ka.ScaledDotProductAttention, {"dropout": -0.5}, "dropout"),
        (ka.ScaledDotProductAttention, {"scale": 0}, "scale"),
    ],
)
def test_bad_constructor_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_bad_input_rank():
    with pytest.raises(ValueError, match=r"inputs.*rank 3.*Received: inputs.shape=\(2, 8\)"):
        ka.SelfAttention(4)(_rand(2, 8))
    with pytest.raises(ValueError, match="query"):
        ka.ScaledDotProductAttention()(_rand(2, 1, 4, 8), _rand(2, 3, 8))


def test_scaled_dot_product_single_query_step():
    q, v = _rand(2, 8), _rand(2, 5, 8)
    out, weights = ka.ScaledDotProductAttention()(q, v, return_attention_scores=True)
    ref_out, ref_weights = reference.attention(q[:, None], v, v)
    np.testing.assert_allclose(out, ref_out[:, 0], atol=1e-5)
    np.testing.assert_allclose(weights, ref_weights[:, 0], atol=1e-5)

"""numpy value tests for every layer argument that changes the math.

The references are written here in numpy and take the argument's value from the
test's own keyword arguments (never from the layer's attributes), so a layer that
stores an argument but ignores it fails. Weights are read from the layers; `bias`
weights are only used when the test passed `use_bias=True`.
"""

import functools

import numpy as np
import pytest

import keras_attention as ka
from tests import reference
from tests.utils import normal_sampler, to_numpy

_np64 = functools.partial(to_numpy, dtype="float64")

RNG = np.random.default_rng(2101)
ATOL = 1e-5  # float32 against a float64 reference


_rand = normal_sampler(RNG)


def _dense(dense, x, use_bias):
    out = np.asarray(x, np.float64) @ _np64(dense.kernel)
    if use_bias:
        return out + _np64(dense.bias)
    assert dense.bias is None, "use_bias=False but the projection has a bias"
    return out


def _layer_norm(x, gamma, beta, epsilon):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon) * gamma + beta


@pytest.mark.parametrize("scale", [None, 0.3, 2.0])  # default: 1/sqrt(4) = 0.5
def test_scaled_dot_product_attention_scale(scale):
    q, k, v = _rand(2, 3, 4), _rand(2, 5, 4), _rand(2, 5, 6)
    out, w = ka.ScaledDotProductAttention(scale=scale)(q, v, key=k, return_attention_scores=True)
    expected_scale = 1 / np.sqrt(4) if scale is None else scale
    ref_out, ref_w = reference.attention(q, k, v, scale=expected_scale)
    np.testing.assert_allclose(_np64(out), ref_out, atol=ATOL)
    np.testing.assert_allclose(_np64(w), ref_w, atol=ATOL)


@pytest.mark.parametrize("use_bias", [True, False])
def test_self_attention_use_bias(use_bias):
    layer = ka.SelfAttention(4, use_bias=use_bias, bias_initializer="ones")
    x = _rand(2, 5, 3)
    out = _np64(layer(x))
    q, k, v = (
        _dense(d, x, use_bias) for d in (layer.query_dense, layer.key_dense, layer.value_dense)
    )
    np.testing.assert_allclose(out, reference.attention(q, k, v)[0], atol=ATOL)


@pytest.mark.parametrize("use_bias", [True, False])
def test_additive_attention_use_bias(use_bias):
    layer = ka.AdditiveAttention(5, use_bias=use_bias, bias_initializer="ones")
    q, v, k = _rand(2, 3, 4), _rand(2, 6, 2), _rand(2, 6, 3)
    out = _np64(layer(q, v, key=k))
    hidden = np.tanh(
        _dense(layer.query_dense, q, use_bias)[:, :, None]
        + _dense(layer.key_dense, k, use_bias)[:, None]
    )
    scores = (hidden @ _np64(layer.score_dense.kernel))[..., 0]
    weights = reference.softmax(scores)
    np.testing.assert_allclose(out, weights @ v, atol=ATOL)


@pytest.mark.parametrize("score", ["dot", "general"])
@pytest.mark.parametrize("scale", [False, True])
def test_luong_scale(score, scale):
    layer = ka.LuongAttention(score=score, scale=scale)
    q, v, k = _rand(2, 3, 4), _rand(2, 6, 2), _rand(2, 6, 4)
    out = _np64(layer(q, v, key=k))
    keys = k if score == "dot" else _dense(layer.key_dense, k, False)
    scores = q @ np.swapaxes(keys, -1, -2)
    if scale:
        scores = scores / np.sqrt(4)
    np.testing.assert_allclose(out, reference.softmax(scores) @ v, atol=ATOL)


@pytest.mark.parametrize("use_bias", [True, False])
def test_luong_concat_use_bias(use_bias):
    layer = ka.LuongAttention(score="concat", units=5, use_bias=use_bias, bias_initializer="ones")
    q, v, k = _rand(2, 3, 4), _rand(2, 6, 2), _rand(2, 6, 3)
    out = _np64(layer(q, v, key=k))
    pairs = np.concatenate([np.repeat(q[:, :, None], 6, 2), np.repeat(k[:, None], 3, 1)], axis=-1)
    hidden = np.tanh(_dense(layer.concat_dense, pairs, use_bias))
    scores = (hidden @ _np64(layer.score_dense.kernel))[..., 0]
    np.testing.assert_allclose(out, reference.softmax(scores) @ v, atol=ATOL)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"scale": True},
        {"units": 5},
        {"units": 5, "use_bias": False},
        {"units": 5, "scale": True, "num_queries": 3},
    ],
)
def test_attention_pooling_arguments(kwargs):
    layer = ka.AttentionPooling(**kwargs, bias_initializer="ones")
    x = _rand(2, 6, 4)
    out, w = layer(x, return_attention_scores=True)
    units = kwargs.get("units")
    use_bias = kwargs.get("use_bias", True)
    keys = x if units is None else np.tanh(_dense(layer.key_dense, x, use_bias))
    scores = np.einsum("bsd,nd->bns", keys, _np64(layer.query))
    if kwargs.get("scale", False):
        scores = scores / np.sqrt(keys.shape[-1])
    ref_w = reference.softmax(scores)
    ref_out = ref_w @ x
    if kwargs.get("num_queries", 1) == 1:
        ref_out, ref_w = ref_out[:, 0], ref_w[:, 0]
    np.testing.assert_allclose(_np64(out), ref_out, atol=ATOL)
    np.testing.assert_allclose(_np64(w), ref_w, atol=ATOL)


def _numpy_mha(layer, query, value, num_heads, kv_heads, use_bias, query_keep=None):
    def heads(x, n):
        b, s, _ = x.shape
        return x.reshape(b, s, n, -1).transpose(0, 2, 1, 3)

    q = heads(_dense(layer.query_dense, query, use_bias), num_heads)
    k = heads(_dense(layer.key_dense, value, use_bias), kv_heads)
    v = heads(_dense(layer.value_dense, value, use_bias), kv_heads)
    group = num_heads // kv_heads
    mask = None if query_keep is None else query_keep[:, :, None]
    outs = [
        reference.attention(q[:, h], k[:, h // group], v[:, h // group], mask=mask)[0]
        for h in range(num_heads)
    ]
    return _dense(layer.output_dense, np.concatenate(outs, axis=-1), use_bias)


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("kv_heads", [None, 1])
def test_multi_head_attention_use_bias_and_kv_heads(use_bias, kv_heads):
    layer = ka.MultiHeadAttention(
        num_heads=2,
        key_dim=3,
        value_dim=4,
        output_dim=5,
        num_key_value_heads=kv_heads,
        use_bias=use_bias,
        bias_initializer="random_normal",
    )
    query, value = _rand(2, 3, 6), _rand(2, 4, 7)
    out = _np64(layer(query, value))
    ref = _numpy_mha(layer, query, value, 2, kv_heads or 2, use_bias)
    np.testing.assert_allclose(out, ref, atol=ATOL)


def test_multi_head_attention_padded_query_rows_hold_the_output_bias():
    """Padded queries attend nothing: their attention part is zero, so their output
    row is the output projection's bias (zeros only with use_bias=False)."""
    layer = ka.MultiHeadAttention(num_heads=2, key_dim=3, bias_initializer="ones")
    query, value = _rand(2, 4, 6), _rand(2, 5, 6)
    query_keep = np.ones((2, 4), bool)
    query_keep[0, 2:] = False
    out = _np64(layer(query, value, query_mask=query_keep))
    ref = _numpy_mha(layer, query, value, 2, 2, True, query_keep)
    np.testing.assert_allclose(out, ref, atol=ATOL)
    np.testing.assert_allclose(out[0, 2:], np.ones((2, 6)), atol=ATOL)

    no_bias = ka.MultiHeadAttention(num_heads=2, key_dim=3, use_bias=False)
    np.testing.assert_array_equal(_np64(no_bias(query, value, query_mask=query_keep))[0, 2:], 0.0)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_feedforward_activation_and_use_bias(activation, use_bias):
    layer = ka.FeedForward(
        7, activation=activation, use_bias=use_bias, bias_initializer="random_normal"
    )
    x = _rand(2, 3, 4)
    out = _np64(layer(x))
    act = {"tanh": np.tanh, "sigmoid": lambda z: 1 / (1 + np.exp(-z))}[activation]
    hidden = act(_dense(layer.intermediate_dense, x, use_bias))
    np.testing.assert_allclose(out, _dense(layer.output_dense, hidden, use_bias), atol=ATOL)


@pytest.mark.parametrize("normalize_first", [False, True])
def test_transformer_encoder_epsilon_activation_and_norm_order(normalize_first):
    epsilon = 0.5  # large, so an ignored epsilon changes the output visibly
    layer = ka.TransformerEncoder(
        num_heads=2,
        intermediate_dim=5,
        activation="tanh",
        layer_norm_epsilon=epsilon,
        normalize_first=normalize_first,
        dropout=0.0,
        bias_initializer="random_normal",
    )
    x = _rand(2, 4, 6)
    out = _np64(layer(x))

    def norm(sublayer, y):
        return _layer_norm(y, _np64(sublayer.gamma), _np64(sublayer.beta), epsilon)

    def attention(y):
        return _numpy_mha(layer.self_attention, y, y, 2, 2, True)

    def feedforward(y):
        ffn = layer.feedforward
        return _dense(ffn.output_dense, np.tanh(_dense(ffn.intermediate_dense, y, True)), True)

    def block(y, fn, norm_layer):
        if normalize_first:
            return y + fn(norm(norm_layer, y))
        return norm(norm_layer, y + fn(y))

    h = block(x.astype("float64"), attention, layer.self_attention_layer_norm)
    ref = block(h, feedforward, layer.feedforward_layer_norm)
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_token_and_position_embedding_scale_and_sinusoid():
    layer = ka.TokenAndPositionEmbedding(
        vocabulary_size=9,
        sequence_length=None,
        embedding_dim=4,
        position="sinusoidal",
        scale_by_sqrt_dim=True,
        max_wavelength=50,
    )
    tokens = np.array([[1, 2, 3, 4, 5], [8, 7, 6, 5, 4]])
    out = _np64(layer(tokens))
    table = _np64(layer.embeddings)
    positions = np.arange(5)[:, None]
    dims = np.arange(4)
    angles = positions / 50.0 ** (2 * (dims // 2) / 4)
    sinusoid = np.where(dims % 2 == 0, np.sin(angles), np.cos(angles))
    np.testing.assert_allclose(out, table[tokens] * 2.0 + sinusoid, atol=ATOL)


# --- large inputs: saturated softmax, checked by value (not only finiteness) --------

BIG = 1e3  # scores up to ~1e6-1e8: the softmax is (nearly) one-hot


def _big(*shape):
    return _rand(*shape) * BIG


def _assert_close_large(out, ref):
    # float32 keeps ~7 digits: compare relative to the output's magnitude.
    scale = max(1.0, float(np.max(np.abs(ref))))
    np.testing.assert_allclose(out, ref, atol=1e-5 * scale, rtol=1e-4)
    assert np.max(np.abs(ref)) > 1.0, "the reference should not be ~zero"


def test_large_inputs_scaled_dot_product_attention():
    q, k, v = _big(2, 4, 8), _big(2, 5, 8), _big(2, 5, 3)
    keep = RNG.random((2, 4, 5)) > 0.3
    keep[0, 1] = False
    out = _np64(ka.ScaledDotProductAttention()(q, v, key=k, attention_mask=keep))
    _assert_close_large(out, reference.attention(q, k, v, mask=keep)[0])


def test_large_inputs_self_attention():
    layer = ka.SelfAttention(8, bias_initializer="random_normal")
    x = _big(2, 5, 6)
    out = _np64(layer(x, use_causal_mask=True))
    q, k, v = (_dense(d, x, True) for d in (layer.query_dense, layer.key_dense, layer.value_dense))
    _assert_close_large(out, reference.attention(q, k, v, causal=True)[0])


def test_large_inputs_multi_head_attention():
    layer = ka.MultiHeadAttention(
        num_heads=4, key_dim=2, num_key_value_heads=2, bias_initializer="random_normal"
    )
    query, value = _big(2, 4, 8), _big(2, 5, 8)
    out = _np64(layer(query, value))
    _assert_close_large(out, _numpy_mha(layer, query, value, 4, 2, True))


def test_large_inputs_additive_attention():
    layer = ka.AdditiveAttention(6)
    q, v, k = _big(2, 3, 4), _big(2, 5, 2), _big(2, 5, 3)
    out = _np64(layer(q, v, key=k))
    hidden = np.tanh(
        _dense(layer.query_dense, q, True)[:, :, None] + _dense(layer.key_dense, k, True)[:, None]
    )
    scores = (hidden @ _np64(layer.score_dense.kernel))[..., 0]
    _assert_close_large(out, reference.softmax(scores) @ v)


@pytest.mark.parametrize("score", ["dot", "general"])
def test_large_inputs_luong(score):
    layer = ka.LuongAttention(score=score)
    q, v, k = _big(2, 3, 4), _big(2, 5, 2), _big(2, 5, 4)
    out = _np64(layer(q, v, key=k))
    keys = k if score == "dot" else _dense(layer.key_dense, k, False)
    _assert_close_large(out, reference.softmax(q @ np.swapaxes(keys, -1, -2)) @ v)


def test_large_inputs_attention_pooling():
    layer = ka.AttentionPooling()
    x = _big(2, 6, 4)
    out = _np64(layer(x))
    scores = np.einsum("bsd,nd->bns", x.astype("float64"), _np64(layer.query))
    _assert_close_large(out, (reference.softmax(scores) @ x)[:, 0])

"""`MultiHeadAttention` with RoPE, score biases, soft-capping, QK-norm, windows, an
explicit scale and per-projection biases.

A numpy transcription of the whole layer (projections, per-head norm, rotation,
soft cap, bias, masks) is the reference; every option must agree with it on the
plain, chunked and fused paths, and step by step through the decoding cache.
"""

import keras
import numpy as np
import pytest

import keras_attention as ka
from tests import reference
from tests.test_modern_layers import rope_numpy, t5_bucket_numpy
from tests.utils import value_and_gradients

_np = keras.ops.convert_to_numpy
HEADS, KEY_DIM, FEATURES, LENGTH = 4, 4, 8, 7


def _options():
    return {
        "rotary": {"position_embedding": "rotary"},
        "rotary-partial": {
            "position_embedding": ka.RotaryEmbedding(rotary_fraction=0.5, layout="interleaved")
        },
        "alibi": {"score_bias": ka.ALiBiBias(HEADS)},
        "t5": {
            "score_bias": ka.RelativePositionBias(
                num_buckets=8, max_distance=16, bidirectional=False, num_heads=HEADS
            )
        },
        "soft_cap": {"soft_cap": 0.5},
        "qk_norm": {"query_norm": "rms_norm", "key_norm": "layer_norm"},
        "window": {"sliding_window": 3},
        "scale": {"attention_scale": 0.9},
        "qk_norm_epsilon": {
            "query_norm": "rms_norm",
            "key_norm": "layer_norm",
            "qk_norm_epsilon": 0.5,
        },
        "bias_parts": {"use_bias": ("query", "value")},
        "all": {
            "position_embedding": "rotary",
            "score_bias": ka.ALiBiBias(HEADS),
            "soft_cap": 2.0,
            "query_norm": "rms_norm",
            "key_norm": "rms_norm",
            "sliding_window": 4,
            "num_key_value_heads": 2,
            "attention_scale": 1.0,
            "qk_norm_epsilon": 1e-3,
            "use_bias": ["key", "output"],
        },
    }


OPTIONS = list(_options())


def _x(seed=0):
    return (2.0 * np.random.default_rng(seed).standard_normal((2, LENGTH, FEATURES))).astype(
        "float32"
    )


def _layer(option, **kwargs):
    keras.utils.set_random_seed(5)
    layer = ka.MultiHeadAttention(HEADS, KEY_DIM, **{**_options()[option], **kwargs})
    layer(_x(), _x())
    if option == "t5":  # a non-zero table, so a wrong bucket shows
        table = layer.score_bias.embeddings
        table.assign(np.random.default_rng(1).standard_normal(table.shape).astype("float32"))
    for norm in (layer.query_norm_layer, layer.key_norm_layer):
        if norm is not None:  # scales other than ones
            w = norm.trainable_weights[0]
            w.assign(1.0 + 0.3 * np.random.default_rng(2).standard_normal(w.shape))
    for dense in (layer.query_dense, layer.key_dense, layer.value_dense, layer.output_dense):
        if dense.bias is not None:  # biases other than zeros, so a missing one shows
            dense.bias.assign(0.5 * np.random.default_rng(3).standard_normal(dense.bias.shape))
    return layer


def _norm_numpy(x, kind, scale, epsilon=1e-6):
    if kind is None:
        return x
    if kind == "layer_norm":
        x = x - x.mean(-1, keepdims=True)
        return x / np.sqrt(x.var(-1, keepdims=True) + epsilon) * scale
    return x / np.sqrt(np.mean(x**2, -1, keepdims=True) + epsilon) * scale


def mha_numpy(layer, x, causal=True):
    """The layer's forward pass in float64 numpy from its weights and settings."""
    x = x.astype("float64")
    w = {
        d: [_np(v).astype("float64") for v in getattr(layer, d).weights]
        for d in ("query_dense", "key_dense", "value_dense", "output_dense")
    }
    kv_heads = layer.num_key_value_heads or layer.num_heads

    def heads(t, n):
        return t.reshape(t.shape[0], t.shape[1], n, -1).transpose(0, 2, 1, 3)

    def dense(t, name):  # `use_bias` may leave some projections without a bias
        parts = {"query_dense": "query", "key_dense": "key", "value_dense": "value"}
        with_bias = layer.use_bias
        if not isinstance(with_bias, bool):
            with_bias = parts.get(name, "output") in with_bias
        assert len(w[name]) == 1 + with_bias, (name, layer.use_bias)
        return t @ w[name][0] + (w[name][1] if with_bias else 0.0)

    q = heads(dense(x, "query_dense"), HEADS)
    k = heads(dense(x, "key_dense"), kv_heads)
    v = heads(dense(x, "value_dense"), kv_heads)
    eps = layer.qk_norm_epsilon
    if layer.query_norm:
        q = _norm_numpy(q, layer.query_norm, _np(layer.query_norm_layer.weights[0]), eps)
    if layer.key_norm:
        k = _norm_numpy(k, layer.key_norm, _np(layer.key_norm_layer.weights[0]), eps)
    if layer.rotary_embedding is not None:
        rope = layer.rotary_embedding
        settings = dict(fraction=rope.rotary_fraction, layout=rope.layout)
        q = rope_numpy(q, np.arange(LENGTH), **settings)
        k = rope_numpy(k, np.arange(LENGTH), **settings)
    k = np.repeat(k, HEADS // kv_heads, axis=1)
    v = np.repeat(v, HEADS // kv_heads, axis=1)
    bias = None
    distance = np.arange(LENGTH)[None, :] - np.arange(LENGTH)[:, None]  # key - query
    if isinstance(layer.score_bias, ka.ALiBiBias):
        slopes = 2.0 ** (-8.0 / HEADS * np.arange(1, HEADS + 1))  # power-of-two heads
        bias = -slopes[:, None, None] * np.abs(distance)[None]
    elif isinstance(layer.score_bias, ka.RelativePositionBias):
        table = _np(layer.score_bias.embeddings)
        buckets = np.vectorize(lambda r: t5_bucket_numpy(r, False, 8, 16))(distance)
        bias = table[buckets].transpose(2, 0, 1)
    out, _ = reference.attention(
        q,
        k,
        v,
        causal=causal,
        scale=layer.attention_scale,
        bias=bias,
        soft_cap=layer.soft_cap,
        window=layer.sliding_window,
    )
    merged = out.transpose(0, 2, 1, 3).reshape(x.shape[0], LENGTH, -1)
    return dense(merged, "output_dense")


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("implementation", ["plain", "chunked", "flash", "fused"])
def test_option_matches_numpy_on_every_path(option, implementation):
    layer = _layer(option)
    if implementation == "fused" and layer.soft_cap is not None:
        with pytest.raises(ValueError, match="soft_cap"):
            ka.MultiHeadAttention(HEADS, KEY_DIM, soft_cap=1.0, implementation="fused")(_x(), _x())
        return
    layer.implementation = implementation
    x = _x(1)
    out = _np(layer(x, x, use_causal_mask=True))
    np.testing.assert_allclose(out, mha_numpy(layer, x), atol=1e-5)


@pytest.mark.parametrize("option", OPTIONS)
def test_cached_decoding_equals_full_pass(option):
    layer = _layer(option)
    x = _x(2)
    full = _np(layer(x, x, use_causal_mask=True))
    cache = layer.get_initial_cache(2, LENGTH)
    if layer.sliding_window is not None:
        assert cache.shape[1] == layer.sliding_window  # a ring of w positions
    out, cache = layer(x[:, :4], x[:, :4], cache=cache, cache_index=0)  # prefill 4
    outs = [_np(out)]
    for t in range(4, LENGTH):
        out, cache = layer(x[:, t : t + 1], x[:, t : t + 1], cache=cache, cache_index=t)
        outs.append(_np(out))
    np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=1e-5)


@pytest.mark.parametrize("implementation", ["plain", "chunked", "fused"])
def test_cached_decoding_on_every_path(implementation):
    """RoPE, ALiBi, QK-norm, grouped-query heads and a window (ring cache) together,
    each path with and without the cache, against the numpy reference."""
    keras.utils.set_random_seed(6)
    layer = ka.MultiHeadAttention(
        HEADS,
        KEY_DIM,
        num_key_value_heads=2,
        position_embedding="rotary",
        score_bias=ka.ALiBiBias(HEADS),
        query_norm="rms_norm",
        key_norm="layer_norm",
        sliding_window=3,
        implementation=implementation,
    )
    x = _x(10)
    full = _np(layer(x, x, use_causal_mask=True))
    np.testing.assert_allclose(full, mha_numpy(layer, x), atol=1e-5)
    cache = layer.get_initial_cache(2, LENGTH)
    out, cache = layer(x[:, :5], x[:, :5], cache=cache, cache_index=0)
    outs = [_np(out)]
    for t in range(5, LENGTH):
        out, cache = layer(x[:, t : t + 1], x[:, t : t + 1], cache=cache, cache_index=t)
        outs.append(_np(out))
    np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=1e-5)


def test_rotary_cached_step_at_position_p_equals_row_p():
    layer = _layer("rotary")
    x = _x(3)
    full = _np(layer(x, x, use_causal_mask=True))
    cache = layer.get_initial_cache(2, LENGTH)
    _, cache = layer(x[:, :5], x[:, :5], cache=cache, cache_index=0)
    step, _ = layer(x[:, 5:6], x[:, 5:6], cache=cache, cache_index=5)
    np.testing.assert_allclose(_np(step)[:, 0], full[:, 5], atol=1e-5)


@pytest.mark.parametrize("option", ["soft_cap", "qk_norm", "all"])
def test_gradients_match_finite_differences(option):
    """Gradients of the layer against central differences of the float64 numpy
    reference, for a random direction in the input."""
    layer = _layer(option)
    x = _x(4)
    projection = np.random.default_rng(5).standard_normal((2, LENGTH, FEATURES))

    def loss(t):
        return keras.ops.sum(
            layer(t, t, use_causal_mask=True)
            * keras.ops.convert_to_tensor(projection.astype("float32"))
        )

    _, (grad,) = value_and_gradients(loss, [x])
    direction = np.random.default_rng(6).standard_normal(x.shape)
    eps = 1e-4
    plus = np.sum(mha_numpy(layer, x + eps * direction) * projection)
    minus = np.sum(mha_numpy(layer, x - eps * direction) * projection)
    numeric = (plus - minus) / (2 * eps)
    np.testing.assert_allclose(np.sum(grad * direction), numeric, rtol=2e-4)


def test_window_padding_and_fully_masked_rows_give_zeros_not_nan():
    layer = _layer("all", use_bias=False)
    x = _x(7)
    keep = np.ones((2, LENGTH), bool)
    keep[1, :3] = False  # queries 0..2 of row 1 see no key at all
    out = _np(layer(x, x, use_causal_mask=True, attention_mask=np.repeat(keep[:, None], LENGTH, 1)))
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[1, :3], 0.0)


def test_shared_relative_bias_is_one_set_of_weights():
    bias = ka.RelativePositionBias(num_buckets=8, max_distance=16, num_heads=HEADS)
    first = ka.MultiHeadAttention(HEADS, KEY_DIM, score_bias=bias)
    second = ka.MultiHeadAttention(HEADS, KEY_DIM, score_bias=bias)
    inputs = keras.Input((None, FEATURES))
    model = keras.Model(inputs, second(first(inputs, inputs), first(inputs, inputs)))
    tables = [w for w in model.weights if "embeddings" in w.path]
    assert len(tables) == 1


def test_shared_relative_bias_survives_a_keras_file(tmp_path):
    bias = ka.RelativePositionBias(num_buckets=8, max_distance=16, num_heads=HEADS)
    first = ka.MultiHeadAttention(HEADS, KEY_DIM, score_bias=bias)
    second = ka.MultiHeadAttention(HEADS, KEY_DIM, score_bias=bias)
    inputs = keras.Input((None, FEATURES))
    model = keras.Model(inputs, second(first(inputs, inputs), inputs))
    bias.embeddings.assign(np.random.default_rng(4).standard_normal(bias.embeddings.shape))
    x = _x(12)
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "shared.keras")
    reloaded = keras.saving.load_model(tmp_path / "shared.keras")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), expected, atol=1e-6)
    attentions = [lay for lay in reloaded.layers if isinstance(lay, ka.MultiHeadAttention)]
    assert attentions[0].score_bias is attentions[1].score_bias


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"soft_cap": 0.0}, "soft_cap=0.0"),
        ({"soft_cap": -1}, "soft_cap=-1"),
        ({"sliding_window": 0}, "sliding_window=0"),
        ({"query_norm": "batch_norm"}, "query_norm='batch_norm'"),
        ({"position_embedding": "alibi"}, "position_embedding='alibi'"),
        ({"score_bias": "alibi"}, "score_bias='alibi'"),
        ({"attention_scale": 0.0}, "attention_scale=0.0"),
        ({"attention_scale": -0.5}, "attention_scale=-0.5"),
        ({"qk_norm_epsilon": 0}, "qk_norm_epsilon=0"),
        ({"use_bias": ("query", "gate")}, r"\['gate'\].*use_bias=\('query', 'gate'\)"),
        ({"use_bias": ("feedforward",)}, "use_bias=\\('feedforward',\\)"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ka.MultiHeadAttention(HEADS, KEY_DIM, **kwargs)


def test_use_bias_must_be_a_bool_or_part_names():
    with pytest.raises(TypeError, match="use_bias='query'"):
        ka.MultiHeadAttention(HEADS, KEY_DIM, use_bias="query")


@pytest.mark.parametrize(
    "use_bias, expected",
    [
        (True, (True, True, True, True)),
        (False, (False, False, False, False)),
        ((), (False, False, False, False)),
        (("query", "key", "value"), (True, True, True, False)),  # Qwen2
        (["output"], (False, False, False, True)),
    ],
)
def test_use_bias_parts_pick_the_projections(use_bias, expected):
    layer = ka.MultiHeadAttention(HEADS, KEY_DIM, use_bias=use_bias, use_gate=True)
    layer(_x(), _x())
    denses = (layer.query_dense, layer.key_dense, layer.value_dense, layer.output_dense)
    assert tuple(dense.bias is not None for dense in denses) == expected
    assert (layer.gate_dense.bias is not None) == expected[0]  # the gate follows "query"
    config = layer.get_config()
    assert config["use_bias"] == (use_bias if isinstance(use_bias, bool) else tuple(use_bias))
    clone = ka.MultiHeadAttention.from_config(config)
    clone(_x(), _x())
    assert len(clone.weights) == len(layer.weights)


def test_new_options_round_trip_through_get_config():
    kwargs = {"attention_scale": 0.25, "qk_norm_epsilon": 1e-3, "query_norm": "rms_norm"}
    layer = ka.MultiHeadAttention(HEADS, KEY_DIM, **kwargs)
    config = layer.get_config()
    assert {key: config[key] for key in kwargs} == kwargs
    clone = ka.MultiHeadAttention.from_config(config)
    assert (clone.attention_scale, clone.qk_norm_epsilon) == (0.25, 1e-3)
    assert clone.query_norm_layer.epsilon == 1e-3
    defaults = ka.MultiHeadAttention(HEADS, KEY_DIM).get_config()
    assert (defaults["attention_scale"], defaults["qk_norm_epsilon"]) == (None, 1e-6)


def test_grouped_query_attention_forwards_the_new_options():
    layer = ka.GroupedQueryAttention(
        head_dim=KEY_DIM,
        num_query_heads=HEADS,
        num_key_value_heads=2,
        attention_scale=0.8,
        qk_norm_epsilon=0.1,
        query_norm="rms_norm",
        use_bias=("query", "key", "value"),
        bias_initializer="random_normal",
    )
    x = _x(11)
    out = _np(layer(x, x, use_causal_mask=True))
    assert layer.output_dense.bias is None and layer.query_dense.bias is not None
    np.testing.assert_allclose(out, mha_numpy(layer, x), atol=1e-5)
    clone = ka.GroupedQueryAttention.from_config(layer.get_config())
    assert (clone.attention_scale, clone.qk_norm_epsilon, clone.use_bias) == (
        0.8,
        0.1,
        ("query", "key", "value"),
    )


def test_bias_that_cannot_broadcast():
    q = np.zeros((1, 2, 3, 4), "float32")
    with pytest.raises(ValueError, match=r"bias.shape=\(5, 3, 3\)"):
        ka.ops.scaled_dot_product_attention(q, q, q, bias=np.zeros((5, 3, 3), "float32"))


@pytest.mark.parametrize("option", OPTIONS)
def test_keras_file_round_trip(option, tmp_path):
    layer = _layer(option)
    inputs = keras.Input((None, FEATURES))
    model = keras.Model(inputs, layer(inputs, inputs, use_causal_mask=True))
    x = _x(8)
    before = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    after = keras.saving.load_model(tmp_path / "m.keras").predict(x, verbose=0)
    np.testing.assert_allclose(after, before, atol=1e-6)


@pytest.mark.tensorflow_only("exports and loads a SavedModel")
def test_saved_model_export_with_every_option(tmp_path):
    options = _options()
    inputs = keras.Input((None, FEATURES))
    x, outputs = inputs, []
    for option in OPTIONS:
        outputs.append(
            ka.MultiHeadAttention(HEADS, KEY_DIM, **options[option])(x, x, use_causal_mask=True)
        )
    model = keras.Model(inputs, keras.layers.Add()(outputs))
    data = _x(9)
    expected = model.predict(data, verbose=0)
    path = ka.export.export_saved_model(model, tmp_path / "export")
    served = ka.export.load_saved_model(path)
    np.testing.assert_allclose(np.asarray(served(data)), expected, atol=1e-5)

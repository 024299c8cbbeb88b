"""Reliability (issue 9): numerics at the edges, mixed precision, determinism, XLA,
MirroredStrategy over two logical CPUs, and saved models that survive faults."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_attention as ka
from tests.utils import value_and_gradients

B, T, S, D = 2, 4, 5, 8
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rng(seed=0):
    return np.random.default_rng(seed)


def _child_env(backend=None):
    env = dict(os.environ)
    env.update(
        TF_CPP_MIN_LOG_LEVEL="3",
        KERAS_BACKEND=backend or keras.backend.backend(),
        PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def _run_child(script, timeout=240, backend=None):
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=REPO,
        env=_child_env(backend),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


# ---------------------------------------------------------------------------------
# Numerics: fully masked query rows, large logits
# ---------------------------------------------------------------------------------


def _query_value_mask():
    """(B, T, S) attention mask: batch 0, query 1 may attend nothing."""
    mask = np.ones((B, T, S), bool)
    mask[0, 1] = False
    return mask


def _self_mask():
    mask = np.ones((B, T, T), bool)
    mask[0, 1] = False
    return mask


def _qv_call(layer, scale=1.0):
    q = _rng(1).normal(size=(B, T, D)).astype("float32") * scale
    v = _rng(2).normal(size=(B, S, D)).astype("float32") * scale
    inputs = [q, v]
    return inputs, lambda q, v: layer(q, v, attention_mask=_query_value_mask())


def _self_call(layer, scale=1.0):
    x = _rng(1).normal(size=(B, T, D)).astype("float32") * scale
    return [x], lambda x: layer(x, attention_mask=_self_mask())


def _pool_call(layer, scale=1.0):
    x = _rng(1).normal(size=(B, S, D)).astype("float32") * scale
    mask = np.ones((B, S), bool)
    mask[0] = False  # batch 0 has no valid position: its pooled row is the masked row
    return [x], lambda x: layer(x, mask=mask)


# (id, layer factory, call builder, index of the fully masked output row)
NUMERIC_CASES = [
    ("scaled_dot_product", lambda: ka.ScaledDotProductAttention(), _qv_call, (0, 1)),
    ("self_attention", lambda: ka.SelfAttention(units=D), _self_call, (0, 1)),
    (
        "multi_head",
        lambda: ka.MultiHeadAttention(num_heads=2, key_dim=4, bias_initializer="ones"),
        _qv_call,
        (0, 1),
    ),
    (
        "multi_head_gqa",
        lambda: ka.MultiHeadAttention(
            num_heads=4, key_dim=2, num_key_value_heads=2, bias_initializer="ones"
        ),
        _qv_call,
        (0, 1),
    ),
    ("additive", lambda: ka.AdditiveAttention(units=6), _qv_call, (0, 1)),
    ("luong_dot", lambda: ka.LuongAttention(score="dot"), _qv_call, (0, 1)),
    ("luong_general", lambda: ka.LuongAttention(score="general"), _qv_call, (0, 1)),
    ("luong_concat", lambda: ka.LuongAttention(score="concat", units=6), _qv_call, (0, 1)),
    ("pooling", lambda: ka.AttentionPooling(units=6), _pool_call, (0,)),
]
NUMERIC_IDS = [c[0] for c in NUMERIC_CASES]
NUMERIC_PARAMS = [c[1:] for c in NUMERIC_CASES]


@pytest.mark.parametrize("factory, make_call, row", NUMERIC_PARAMS, ids=NUMERIC_IDS)
def test_fully_masked_row_is_zero_with_finite_gradients(factory, make_call, row):
    layer = factory()
    inputs, call = make_call(layer)
    output = keras.ops.convert_to_numpy(call(*inputs))
    projection = keras.ops.convert_to_tensor(_rng(3).normal(size=output.shape).astype("float32"))
    expected = np.zeros(output[row].shape, "float32")
    if isinstance(layer, ka.MultiHeadAttention):
        # The attended heads are zeros; output_dense then adds its bias.
        expected = expected + keras.ops.convert_to_numpy(layer.output_dense.bias)
        assert np.abs(expected).min() > 0.5  # the bias really is there
    np.testing.assert_allclose(output[row], expected, atol=1e-6)
    assert np.isfinite(output).all()
    _, grads = value_and_gradients(
        lambda *x: keras.ops.sum(call(*x) * projection), inputs, layer.trainable_weights
    )
    for grad in grads:
        if grad is not None:
            assert np.isfinite(grad).all()


@pytest.mark.parametrize("factory, make_call, row", NUMERIC_PARAMS, ids=NUMERIC_IDS)
def test_large_inputs_give_finite_outputs(factory, make_call, row):
    layer = factory()
    inputs, call = make_call(layer, scale=1e4)
    assert np.isfinite(keras.ops.convert_to_numpy(call(*inputs))).all()
    _, grads = value_and_gradients(lambda *x: keras.ops.sum(call(*x)), inputs)
    for grad in grads:
        assert np.isfinite(grad).all()


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_outputs_finite_and_masks_hold(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        q = _rng(1).normal(size=(B, T, D)).astype("float32") * 30
        v = _rng(2).normal(size=(B, S, D)).astype("float32") * 30
        value_mask = np.ones((B, S), bool)
        value_mask[:, -2:] = False
        mha = ka.MultiHeadAttention(num_heads=2, key_dim=4)
        out, scores = mha(q, v, value_mask=value_mask, return_attention_scores=True)
        assert keras.backend.standardize_dtype(out.dtype) == policy.split("_")[1]
        out, scores = _float32(out), _float32(scores)
        assert np.isfinite(out).all() and np.isfinite(scores).all()
        assert scores[..., -2:].max() < 1e-6
        np.testing.assert_allclose(scores.sum(-1), 1.0, atol=2e-2)

        attention_mask = np.tril(np.ones((T, T), bool))[None].repeat(B, 0)
        self_attention = ka.SelfAttention(units=D)
        out, scores = self_attention(q, use_causal_mask=True, return_attention_scores=True)
        out, scores = _float32(out), _float32(scores)
        assert np.isfinite(out).all() and np.isfinite(scores).all()
        assert scores[~attention_mask].max() < 1e-6
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _float32(x):
    return keras.ops.convert_to_numpy(keras.ops.cast(x, "float32"))


# ---------------------------------------------------------------------------------
# Determinism and XLA
# ---------------------------------------------------------------------------------


def _mha_model(seq_len=T, dropout=0.1):
    inputs = keras.Input((seq_len, D))
    x = ka.MultiHeadAttention(num_heads=2, key_dim=4, dropout=dropout)(
        inputs, inputs, use_causal_mask=True
    )
    outputs = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(x))
    return keras.Model(inputs, outputs)


def _data(n=16, seq_len=T):
    x = _rng(5).normal(size=(n, seq_len, D)).astype("float32")
    y = _rng(6).normal(size=(n, 1)).astype("float32")
    return x, y


def test_seeded_training_is_deterministic():
    x, y = _data()
    weights = []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        model = _mha_model(dropout=0.2)
        model.compile(optimizer="adam", loss="mse")
        model.fit(x, y, batch_size=8, epochs=2, verbose=0)
        weights.append(model.get_weights())
        keras.backend.clear_session()
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("which", ["multi_head", "self_attention"])
def test_jit_compiled_fit_with_dynamic_length(which):
    if keras.backend.backend() == "torch":
        pytest.skip("jit_compile=True is torch.compile on PyTorch, not XLA")
    inputs = keras.Input((None, D))
    if which == "multi_head":
        x = ka.MultiHeadAttention(num_heads=2, key_dim=4, dropout=0.1)(
            inputs, inputs, use_causal_mask=True
        )
    else:
        x = ka.SelfAttention(units=D, dropout=0.1)(inputs, use_causal_mask=True)
    outputs = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(x))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="mse", jit_compile=True)
    for seq_len in (T, T + 2):
        x_data, y_data = _data(seq_len=seq_len)
        history = model.fit(x_data, y_data, batch_size=8, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
    eager = keras.Model(inputs, outputs)  # same layers, no XLA
    x_data, _ = _data(seq_len=T + 2)
    np.testing.assert_allclose(
        model.predict(x_data, verbose=0),
        keras.ops.convert_to_numpy(eager(x_data, training=False)),
        atol=1e-5,
    )


# ---------------------------------------------------------------------------------
# Distributed: MirroredStrategy over two logical CPU devices (in a subprocess, since
# logical devices must be configured before TensorFlow initialises)
# ---------------------------------------------------------------------------------

_DISTRIBUTED_SCRIPT = """
import json
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import keras_attention as ka

def build():
    inputs = keras.Input((4, 8))
    x = ka.MultiHeadAttention(num_heads=2, key_dim=4)(inputs, inputs,
                                                        use_causal_mask=True)
    x = ka.SelfAttention(units=8)(x)
    outputs = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(x))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model

rng = np.random.default_rng(0)
x = rng.normal(size=(24, 4, 8)).astype("float32")
y = rng.normal(size=(24, 1)).astype("float32")
keras.utils.set_random_seed(0)
single = build()
initial = single.get_weights()
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    mirrored = build()
mirrored.set_weights(initial)
losses = {}
for name, model in (("single", single), ("mirrored", mirrored)):
    history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    losses[name] = [float(v) for v in history.history["loss"]]
losses["replicas"] = strategy.num_replicas_in_sync
print("RESULT " + json.dumps(losses))
"""


@pytest.mark.tensorflow_only("tf.distribute.MirroredStrategy")
def test_mirrored_strategy_matches_single_device():
    out = _run_child(_DISTRIBUTED_SCRIPT, backend="tensorflow")
    line = [l for l in out.splitlines() if l.startswith("RESULT ")][-1]
    losses = json.loads(line[len("RESULT ") :])
    assert losses["replicas"] == 2
    np.testing.assert_allclose(losses["mirrored"], losses["single"], rtol=1e-4)


# ---------------------------------------------------------------------------------
# Saved models survive faults
# ---------------------------------------------------------------------------------


def _all_layers_model():
    query = keras.Input((T, D), name="query")
    value = keras.Input((S, D), name="value")
    x = ka.MultiHeadAttention(num_heads=2, key_dim=4, num_key_value_heads=1)(query, value)
    x = ka.ScaledDotProductAttention()(x, value)
    x = ka.SelfAttention(units=D)(x, use_causal_mask=True)
    x = x + ka.AdditiveAttention(units=6)(x, value)
    x = x + ka.LuongAttention(score="general")(x, value)
    x = ka.AttentionPooling(units=6)(x)
    return keras.Model([query, value], keras.layers.Dense(3)(x))


def _model_inputs():
    return [
        _rng(7).normal(size=(B, T, D)).astype("float32"),
        _rng(8).normal(size=(B, S, D)).astype("float32"),
    ]


def test_truncated_and_garbage_keras_files_give_clear_errors(tmp_path):
    model = _all_layers_model()
    good = tmp_path / "good.keras"
    model.save(str(good))
    data = good.read_bytes()
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"\x00garbage" * 100)
    for path in (truncated, garbage):
        with pytest.raises((ValueError, OSError)) as info:
            keras.saving.load_model(str(path))
        message = str(info.value)
        assert path.name in message or "zip" in message.lower(), message
    # The intact file still loads.
    keras.saving.load_model(str(good))


CONFIG_LAYERS = [
    lambda: ka.ScaledDotProductAttention(dropout=0.1, scale=0.5, seed=3),
    lambda: ka.SelfAttention(units=4, kernel_regularizer="l2", bias_constraint="non_neg"),
    lambda: ka.MultiHeadAttention(
        num_heads=4, key_dim=2, num_key_value_heads=2, output_dim=6, kernel_initializer="he_normal"
    ),
    lambda: ka.AdditiveAttention(units=4, dropout=0.2, seed=1),
    lambda: ka.LuongAttention(score="general", scale=True),
    lambda: ka.LuongAttention(score="concat", units=4),
    lambda: ka.AttentionPooling(units=4, num_queries=2, scale=True),
    lambda: ka.SinusoidalPositionEncoding(max_wavelength=500),
    lambda: ka.PositionEmbedding(sequence_length=6),
    lambda: ka.TokenAndPositionEmbedding(20, 6, 8, mask_zero=True),
    lambda: ka.FeedForward(intermediate_dim=8, activation="gelu"),
    lambda: ka.TransformerEncoder(intermediate_dim=8, num_heads=2),
    lambda: ka.TransformerDecoder(intermediate_dim=8, num_heads=2),
]


@pytest.mark.parametrize(
    "factory",
    CONFIG_LAYERS,
    ids=[
        "sdpa",
        "self",
        "mha",
        "additive",
        "luong_general",
        "luong_concat",
        "pooling",
        "sinusoidal",
        "position",
        "token_position",
        "feedforward",
        "encoder",
        "decoder",
    ],
)
def test_get_config_is_json(factory):
    layer = factory()
    config = layer.get_config()
    assert json.loads(json.dumps(config)) == config
    clone = type(layer).from_config(json.loads(json.dumps(config)))
    assert clone.get_config() == config


def test_saved_model_reloads_in_fresh_process_with_safe_mode(tmp_path):
    model = _all_layers_model()
    inputs = _model_inputs()
    expected = model.predict(inputs, verbose=0)
    path = tmp_path / "model.keras"
    model.save(str(path))
    np.save(tmp_path / "query.npy", inputs[0])
    np.save(tmp_path / "value.npy", inputs[1])
    np.save(tmp_path / "expected.npy", expected)
    out = _run_child(f"""
        import numpy as np, keras
        import keras_attention
        d = {str(tmp_path)!r}
        model = keras.saving.load_model(d + "/model.keras", safe_mode=True)
        got = model.predict([np.load(d + "/query.npy"), np.load(d + "/value.npy")],
                            verbose=0)
        print("MAXDIFF", float(np.abs(got - np.load(d + "/expected.npy")).max()))
    """)
    diff = float(out.split("MAXDIFF")[-1].split()[0])
    assert diff == 0.0


# (id, layer factory, call taking (layer, x, y) where x is (B, L, D) and y (B, L+1, D))
XLA_CASES = [
    ("sdpa", lambda: ka.ScaledDotProductAttention(), lambda l, x, y: l(x, y)),
    (
        "self_attention",
        lambda: ka.SelfAttention(units=D),
        lambda l, x, y: l(x, use_causal_mask=True),
    ),
    ("multi_head", lambda: ka.MultiHeadAttention(num_heads=2, key_dim=4), lambda l, x, y: l(x, y)),
    ("additive", lambda: ka.AdditiveAttention(units=6), lambda l, x, y: l(x, y)),
    ("luong_concat", lambda: ka.LuongAttention(score="concat", units=6), lambda l, x, y: l(x, y)),
    ("pooling", lambda: ka.AttentionPooling(units=6), lambda l, x, y: l(y)),
    ("sinusoidal", lambda: ka.SinusoidalPositionEncoding(), lambda l, x, y: x + l(x)),
    ("feedforward", lambda: ka.FeedForward(intermediate_dim=16), lambda l, x, y: l(x)),
    (
        "encoder",
        lambda: ka.TransformerEncoder(intermediate_dim=16, num_heads=2),
        lambda l, x, y: l(x),
    ),
    (
        "decoder",
        lambda: ka.TransformerDecoder(intermediate_dim=16, num_heads=2),
        lambda l, x, y: l(x, y),
    ),
]


@pytest.mark.parametrize("factory, call", [c[1:] for c in XLA_CASES], ids=[c[0] for c in XLA_CASES])
@pytest.mark.tensorflow_only("XLA through tf.function(jit_compile=True)")
def test_every_layer_under_xla_with_two_lengths(factory, call):
    import tensorflow as tf

    layer = factory()
    compiled = tf.function(lambda x, y: call(layer, x, y), jit_compile=True)
    for length in (3, 6):
        x = tf.constant(_rng(length).normal(size=(B, length, D)).astype("float32"))
        y = tf.constant(_rng(length + 1).normal(size=(B, length + 1, D)).astype("float32"))
        eager = call(layer, x, y)
        np.testing.assert_allclose(compiled(x, y).numpy(), eager.numpy(), atol=1e-5)


def test_transformer_and_positional_layers_reload_in_safe_mode(tmp_path):
    tokens = keras.Input((None,), dtype="int32")
    x = ka.TokenAndPositionEmbedding(20, 8, D, mask_zero=True)(tokens)
    x = ka.TransformerEncoder(intermediate_dim=16, num_heads=2)(x)
    x = ka.TransformerDecoder(intermediate_dim=16, num_heads=2)(x, x)
    x = x + ka.PositionEmbedding(sequence_length=8)(x)
    x = x + ka.SinusoidalPositionEncoding()(x)
    x = ka.FeedForward(intermediate_dim=16)(x)
    model = keras.Model(tokens, x)
    data = np.array([[3, 4, 5, 0], [1, 2, 0, 0]], "int32")
    path = str(tmp_path / "m.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(
        reloaded.predict(data, verbose=0), model.predict(data, verbose=0), atol=1e-6
    )


MIXED_LAYERS = [
    ("sdpa", lambda: ka.ScaledDotProductAttention()),
    ("additive", lambda: ka.AdditiveAttention(units=6)),
    ("luong_general", lambda: ka.LuongAttention(score="general", scale=True)),
    ("luong_concat", lambda: ka.LuongAttention(score="concat", units=6)),
    ("pooling", lambda: ka.AttentionPooling(units=6)),
]


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("factory", [c[1] for c in MIXED_LAYERS], ids=[c[0] for c in MIXED_LAYERS])
def test_other_layers_mixed_precision_finite_and_masked(factory, policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        layer = factory()
        q = _rng(1).normal(size=(B, T, D)).astype("float32") * 30
        v = _rng(2).normal(size=(B, S, D)).astype("float32") * 30
        value_mask = np.ones((B, S), bool)
        value_mask[:, -2:] = False
        if isinstance(layer, ka.AttentionPooling):
            out, scores = layer(v, mask=value_mask, return_attention_scores=True)
        else:
            out, scores = layer(q, v, value_mask=value_mask, return_attention_scores=True)
        out, scores = _float32(out), _float32(scores)
        assert np.isfinite(out).all() and np.isfinite(scores).all()
        assert scores[..., -2:].max() < 1e-6
    finally:
        keras.mixed_precision.set_global_policy("float32")

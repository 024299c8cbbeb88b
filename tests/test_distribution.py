"""keras.distribution on JAX: DataParallel and ModelParallel (with
`keras_attention.distribution.layout_map`) train a small Transformer exactly like one
device, and the weights are sharded as the map says.

The four devices are virtual CPUs (`XLA_FLAGS=--xla_force_host_platform_device_count=4`),
which must be set before JAX starts, so the training runs in a child process.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_attention as ka
from keras_attention.distribution import layout_map

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# keras.distribution (DeviceMesh, LayoutMap, ModelParallel) is implemented for JAX.
pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="keras.distribution runs on JAX"
)

_CHILD = textwrap.dedent(
    """
    import json
    import numpy as np
    import jax
    import keras
    import keras_attention as ka
    from keras_attention.distribution import layout_map

    assert len(jax.devices()) == 4, jax.devices()

    def build():
        tokens = keras.Input((8,), dtype="int32", name="tokens")
        x = ka.TokenAndPositionEmbedding(32, 8, 16, name="embedding")(tokens)
        x = ka.TransformerEncoder(intermediate_dim=32, num_heads=4, dropout=0.0,
                                  name="encoder")(x)
        x = ka.MultiHeadAttention(4, 4, num_key_value_heads=2, name="gqa")(x, x)
        x = ka.AttentionPooling(units=8, name="pool")(x)
        return keras.Model(tokens, keras.layers.Dense(3, name="head")(x))

    rng = np.random.default_rng(0)
    x = rng.integers(0, 32, (32, 8)).astype("int32")
    y = x[:, 0] % 3  # learnable: the class of the first token

    def train(model):
        model.compile(optimizer=keras.optimizers.SGD(0.03),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        # One loss per step (fit's epoch loss is a running mean of these).
        return [float(model.train_on_batch(x[i:i + 8], y[i:i + 8]))
                for _ in range(2) for i in range(0, len(x), 8)]

    keras.utils.set_random_seed(0)
    template = build()
    initial = template.get_weights()
    results = {"single": train(template)}

    devices = keras.distribution.list_devices()
    mesh = keras.distribution.DeviceMesh((2, 2), ("batch", "model"), devices)
    layouts = layout_map(template, mesh)
    distributions = {
        "data_parallel": keras.distribution.DataParallel(devices=devices),
        "model_parallel": keras.distribution.ModelParallel(
            layout_map=layouts, batch_dim_name="batch"),
    }
    for name, distribution in distributions.items():
        with distribution.scope():
            model = keras.models.clone_model(template)
            model.set_weights(initial)
            results[name] = train(model)
        if name == "model_parallel":
            results["specs"] = {
                v.path: [None if a is None else str(a) for a in v.value.sharding.spec]
                for v in model.weights}
            results["shard_shapes"] = {
                v.path: list(v.value.sharding.shard_shape(v.value.shape))
                for v in model.weights}
            results["map"] = {
                v.path: list(layouts[v.path].axes)
                for v in model.weights if layouts[v.path] is not None}
    three_heads = keras.Sequential([keras.Input((4, 12)), ka.TransformerEncoder(8, 3)])
    try:
        layout_map(three_heads, mesh)
    except ValueError as error:
        results["indivisible_error"] = str(error)
    print("RESULT " + json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def child_results():
    env = dict(os.environ)
    env.update(
        KERAS_BACKEND="jax",
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
    )
    result = subprocess.run(
        [sys.executable, "-c", _CHILD],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    line = [l for l in result.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


@pytest.mark.parametrize("name", ["data_parallel", "model_parallel"])
def test_distributed_training_matches_one_device(child_results, name):
    single = child_results["single"]
    # The same batch one epoch later: the weights did change.
    assert len(single) == 8 and abs(single[4] - single[0]) > 1e-2
    np.testing.assert_allclose(child_results[name], single, atol=1e-5, rtol=0)


def test_weights_are_sharded_as_the_map_says(child_results):
    specs, shapes, mapped = (child_results[k] for k in ("specs", "shard_shapes", "map"))
    # Heads and feed-forward units split over "model" (2 devices); the rest replicated.
    expected = {
        "encoder/self_attention/query/kernel": ([None, "model"], [16, 8]),
        "encoder/self_attention/query/bias": (["model"], [8]),
        "encoder/self_attention/attention_output/kernel": (["model", None], [8, 16]),
        "encoder/self_attention/attention_output/bias": ([None], [16]),
        "encoder/feedforward/intermediate_dense/kernel": ([None, "model"], [16, 16]),
        "encoder/feedforward/output_dense/kernel": (["model", None], [16, 16]),
        "gqa/key/kernel": ([None, "model"], [16, 4]),
        "gqa/value/bias": (["model"], [4]),
    }
    for path, (axes, shard_shape) in expected.items():
        assert mapped[path] == axes, path
        assert specs[path][: len(axes)] == [a for a in axes], path
        assert shapes[path] == shard_shape, path
    for path in ("embedding/token_embedding/embeddings", "head/kernel", "pool/query"):
        assert path not in mapped
        assert all(a is None for a in specs[path]), (path, specs[path])
    # The encoder's attention (4 kernels + 4 biases), its feed-forward (2 + 2), gqa (4 + 4).
    assert len(mapped) == 20
    assert "3 is not divisible by 2" in child_results["indivisible_error"]


def _small_model():
    tokens = keras.Input((None,), dtype="int32")
    x = ka.TokenAndPositionEmbedding(20, 8, 12)(tokens)
    x = ka.TransformerDecoder(intermediate_dim=6, num_heads=3)(x, x)
    return keras.Model(tokens, x)


def _mesh(shape, names=("batch", "model")):
    devices = keras.distribution.list_devices()[:1]
    return keras.distribution.DeviceMesh(shape, names, devices)


def test_layout_map_keys_are_the_layers_weights():
    model = _small_model()
    layouts = layout_map(model, _mesh((1, 1)))
    paths = {v.path for v in model.weights}
    keys = [key.strip("^$").replace("\\\\", "") for key in layouts.keys()]
    assert keys and all(key in paths for key in keys), keys
    # self- and cross-attention (4 kernels, 4 biases each) and the feed-forward (2 + 2)
    assert len(keys) == 2 * 8 + 4


def test_layout_map_errors():
    model = _small_model()
    with pytest.raises(ValueError, match="`model_axis` must be one of.*Received: model_axis='mp'"):
        layout_map(model, _mesh((1, 1)), model_axis="mp")
    with pytest.raises(TypeError, match="`mesh` must be a `keras.distribution.DeviceMesh`"):
        layout_map(model, "mesh")
    unbuilt = ka.MultiHeadAttention(2, 4)
    with pytest.raises(ValueError, match="must be built"):
        layout_map(unbuilt, _mesh((1, 1)))


def test_layout_map_splits_the_gate_by_query_heads():
    inputs = keras.Input((5, 8))
    layer = ka.MultiHeadAttention(2, 4, use_gate=True, name="gated")
    model = keras.Model(inputs, layer(inputs, inputs))
    layouts = layout_map(model, _mesh((1, 1)))
    gate = {key.strip("^$").replace("\\", ""): value for key, value in layouts.items()}
    assert tuple(gate[layer.gate_dense.kernel.path].axes) == (None, "model")
    assert tuple(gate[layer.gate_dense.bias.path].axes) == ("model",)

"""`MixtureOfExperts` against a numpy reference written here and keras-hub's Mixtral
block with the same weights; both expert paths (every expert, chosen experts only);
the load-balancing loss; quantization and LoRA; argument checks.

Tolerances: float32 outputs against the float64 reference `atol=1e-5`; int8 within 5 %
of the float output's largest magnitude (as in tests/test_quantize_lora.py).
"""

import warnings

import keras
import numpy as np
import pytest

import keras_attention as ka
from keras_attention.layers.mixture_of_experts import load_balancing_loss
from tests.utils import MaskFrom, random_normal, run_layer_test, to_numpy, value_and_gradients

FEATURES, HIDDEN, EXPERTS, TOP_K = 8, 16, 4, 2
X = random_normal(2, 6, FEATURES, seed=1)  # 12 tokens: every expert runs
FEW = random_normal(1, 2, FEATURES, seed=2)  # 2 tokens * 2 chosen <= 4 experts: chosen only


def _layer(**kwargs):
    arguments = dict(num_experts=EXPERTS, num_experts_per_token=TOP_K, intermediate_dim=HIDDEN)
    arguments.update(kwargs)
    return ka.MixtureOfExperts(**arguments)


def _built(inputs=X, seed=3, **kwargs):
    """A built layer whose weights are random normals (scaled so activations vary)."""
    layer = _layer(**kwargs)
    layer.build(inputs.shape)
    rng = np.random.default_rng(seed)
    for variable in layer.weights:
        variable.assign(0.5 * rng.standard_normal(tuple(variable.shape)).astype("float32"))
    return layer


def _weights(layer):
    """The layer's weights by name, as float64 numpy arrays."""
    gate = None if layer.gate_dense is None else to_numpy(layer.gate_dense.kernel, "float64")
    return dict(
        router=to_numpy(layer.router.kernel, "float64"),
        gate=gate,
        up=to_numpy(layer.intermediate_dense.kernel, "float64"),
        down=to_numpy(layer.output_dense.kernel, "float64"),
    )


ACTIVATIONS = {
    "swiglu": lambda x: x / (1 + np.exp(-x)),
    "geglu": lambda x: 0.5 * x * (1 + np.vectorize(__import__("math").erf)(x / np.sqrt(2))),
    "relu": lambda x: np.maximum(x, 0),
}


def _softmax(logits):
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


def _reference(x, router, gate, up, down, k, activation="swiglu"):
    """Mixtral's MoE, one token at a time, in float64."""
    act = ACTIVATIONS[activation]
    tokens = x.reshape(-1, x.shape[-1]).astype("float64")
    out = np.zeros_like(tokens)
    for t, token in enumerate(tokens):
        p = _softmax(token @ router)
        chosen = np.argsort(-p)[:k]
        for e in chosen:
            hidden = act(token @ up[e]) if gate is None else act(token @ gate[e]) * (token @ up[e])
            out[t] += p[e] / p[chosen].sum() * (hidden @ down[e])
    return out.reshape(x.shape)


def _reference_loss(x, router, k, keep=None):
    """`num_experts * sum_i f_i P_i` over the kept tokens, in float64."""
    tokens = x.reshape(-1, x.shape[-1]).astype("float64")
    keep = np.ones(len(tokens), bool) if keep is None else keep.reshape(-1)
    p = _softmax(tokens @ router)[keep]
    counts = np.zeros(router.shape[1])
    for row in p:
        counts[np.argsort(-row)[:k]] += 1
    fractions = counts / (k * len(p))
    return router.shape[1] * np.sum(fractions * p.mean(0))


# --- the shared layer checks -------------------------------------------------------


@pytest.mark.parametrize("inputs", [X, FEW], ids=["all_experts", "chosen_experts"])
def test_layer_contract(inputs, tmp_path):
    run_layer_test(
        ka.MixtureOfExperts,
        dict(num_experts=EXPERTS, num_experts_per_token=TOP_K, intermediate_dim=HIDDEN),
        {"inputs": inputs},
        tmp_path=tmp_path,
        expected_output_shape=inputs.shape,
        expected_num_trainable_weights=4,
        masked_inputs=("inputs",),
        atol=1e-5,
    )


def test_every_argument_survives_config_and_keras_file(tmp_path):
    kwargs = dict(
        num_experts=3,
        num_experts_per_token=3,
        intermediate_dim=5,
        activation="relu",
        router_aux_loss_coefficient=0.01,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.4, seed=1),
        kernel_regularizer=keras.regularizers.L2(0.01),
        kernel_constraint=keras.constraints.MaxNorm(3.0),
    )
    layer, _ = run_layer_test(
        ka.MixtureOfExperts,
        kwargs,
        {"inputs": X},
        tmp_path=tmp_path,
        expected_num_trainable_weights=3,  # a plain activation: no gate kernels
        atol=1e-5,
    )
    config = layer.get_config()
    for name in ("num_experts", "num_experts_per_token", "intermediate_dim"):
        assert config[name] == kwargs[name]
    assert config["activation"] == "relu" and config["router_aux_loss_coefficient"] == 0.01
    assert config["kernel_initializer"]["config"]["stddev"] == 0.4
    assert config["kernel_regularizer"]["config"]["l2"] == pytest.approx(0.01)
    assert config["kernel_constraint"]["config"]["max_value"] == 3.0
    layer(X)  # not training: the L2 penalties of the router and the two parts, no aux loss
    assert len(layer.losses) == 3
    layer(X, training=True)
    assert len(layer.losses) == 4


def test_weight_layout_and_names():
    layer = _built()
    shapes = {v.path.split("/", 1)[1]: tuple(v.shape) for v in layer.weights}
    assert shapes == {
        "router/kernel": (FEATURES, EXPERTS),
        "gate_dense/kernel": (EXPERTS, FEATURES, HIDDEN),
        "intermediate_dense/kernel": (EXPERTS, FEATURES, HIDDEN),
        "output_dense/kernel": (EXPERTS, HIDDEN, FEATURES),
    }


# --- the math ----------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["swiglu", "geglu", "relu"])
@pytest.mark.parametrize("inputs", [X, FEW, X[0]], ids=["all", "chosen", "rank2"])
def test_matches_numpy_reference(activation, inputs):
    layer = _built(inputs, activation=activation)
    expected = _reference(inputs, **_weights(layer), k=TOP_K, activation=activation)
    np.testing.assert_allclose(to_numpy(layer(inputs)), expected, atol=1e-5, rtol=1e-5)


def test_the_two_expert_paths_are_chosen_as_documented_and_agree():
    layer = _built()
    assert not layer._runs_chosen_experts_only(X.shape)
    assert layer._runs_chosen_experts_only(FEW.shape)
    assert not layer._runs_chosen_experts_only((None, 2, FEATURES))  # unknown token count
    tokens = keras.ops.reshape(X, (-1, FEATURES))
    probabilities = keras.ops.softmax(layer.router(tokens))
    weights, experts = keras.ops.top_k(probabilities, TOP_K)
    weights = weights / keras.ops.sum(weights, axis=-1, keepdims=True)
    np.testing.assert_allclose(
        to_numpy(layer._chosen_experts(tokens, weights, experts)),
        to_numpy(layer._all_experts(tokens, weights, experts)),
        atol=1e-5,
    )


def test_all_experts_per_token_is_a_softmax_weighted_dense_mixture():
    layer = _built(num_experts_per_token=EXPERTS)
    expected = _reference(X, **_weights(layer), k=EXPERTS)
    np.testing.assert_allclose(to_numpy(layer(X)), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("inputs", [X, FEW], ids=["all", "chosen"])
def test_mixed_precision_computes_in_half_and_stays_close(policy, inputs):
    layer = _built(inputs, dtype=policy)
    outputs = layer(inputs)
    assert keras.backend.standardize_dtype(outputs.dtype) == policy.split("_")[1]
    expected = _reference(inputs, **_weights(layer), k=TOP_K)
    assert np.abs(to_numpy(outputs, "float64") - expected).max() <= 0.03 * np.abs(expected).max()


def test_compiled_predict_on_a_static_decoding_shape():
    # Batch 1, 2 tokens: traced with static shapes, the chosen-experts path compiles.
    inputs = keras.Input((2, FEATURES), batch_size=1)
    layer = _built(FEW)
    model = keras.Model(inputs, layer(inputs))
    model.compile(jit_compile=keras.backend.backend() != "torch")
    expected = _reference(FEW, **_weights(layer), k=TOP_K)
    np.testing.assert_allclose(model.predict(FEW, verbose=0), expected, atol=1e-5, rtol=1e-5)


def test_matches_keras_hub_mixtral_block():
    mixtral = pytest.importorskip("keras_hub.src.models.mixtral.mixtral_decoder")
    layer = _built()
    hub = mixtral.MixtralSparseMoeBlock(
        hidden_dim=FEATURES, intermediate_dim=HIDDEN, num_experts=EXPERTS, top_k=TOP_K
    )
    hub.build(X.shape)
    # keras-hub's variables, in its layout: the same arrays, no transposes.
    hub._sparse_feedforward_gate_dense.kernel.assign(layer.router.kernel)
    bank = hub.expert_bank
    bank._expert_feedforward_gate_dense.assign(layer.gate_dense.kernel)
    bank._expert_feedforward_intermediate_dense.assign(layer.intermediate_dense.kernel)
    bank._expert_feedforward_output_dense.assign(layer.output_dense.kernel)
    expected, logits = hub(X)
    for inputs, hub_output in [(X, expected), (X[:1, :2], hub(X[:1, :2])[0])]:
        np.testing.assert_allclose(to_numpy(layer(inputs)), to_numpy(hub_output), atol=1e-5)
    keep = np.ones(X.shape[:2], bool)
    keep[0, -2:] = False
    tokens = keras.ops.reshape(X, (-1, FEATURES))
    probabilities = keras.ops.softmax(layer.router(tokens))
    _, experts = keras.ops.top_k(probabilities, TOP_K)
    for mask in (None, keep):
        ours = load_balancing_loss(probabilities, experts, EXPERTS, mask)
        theirs = mixtral.compute_load_balancing_loss(logits, EXPERTS, TOP_K, mask)
        np.testing.assert_allclose(to_numpy(ours), to_numpy(theirs), rtol=1e-5)


# --- the load-balancing loss -------------------------------------------------------


def test_aux_loss_added_only_when_training_with_a_coefficient():
    layer = _built(router_aux_loss_coefficient=0.02)
    router = _weights(layer)["router"]
    layer(X)
    assert layer.losses == []
    layer(X, training=True)
    (loss,) = layer.losses
    expected = 0.02 * _reference_loss(X, router, TOP_K)
    np.testing.assert_allclose(to_numpy(loss), expected, rtol=1e-5)
    without = _built()
    without(X, training=True)
    assert without.losses == []


def test_aux_loss_counts_only_the_tokens_the_keras_mask_keeps():
    layer = _built(router_aux_loss_coefficient=1.0)
    keep = np.ones(X.shape[:2], bool)
    keep[0, -2:] = False
    keep[1, 3:] = False
    outputs = layer(MaskFrom()([X, keep]), training=True)
    np.testing.assert_array_equal(to_numpy(outputs._keras_mask), keep)
    expected = _reference_loss(X, _weights(layer)["router"], TOP_K, keep)
    np.testing.assert_allclose(to_numpy(layer.losses[0]), expected, rtol=1e-5)


def test_aux_loss_is_one_for_uniform_routing_and_reaches_the_router():
    probabilities = np.full((4, EXPERTS), 1 / EXPERTS, "float32")
    experts = np.array([[0, 1], [2, 3], [0, 1], [2, 3]], "int32")
    assert to_numpy(load_balancing_loss(probabilities, experts, EXPERTS)) == pytest.approx(1.0)
    layer = _built()

    def loss(x):
        probabilities = keras.ops.softmax(layer.router(keras.ops.reshape(x, (-1, FEATURES))))
        _, chosen = keras.ops.top_k(probabilities, TOP_K)
        return load_balancing_loss(probabilities, chosen, EXPERTS)

    _, (_, router_grad) = value_and_gradients(loss, [X], [layer.router.kernel])
    assert np.all(np.isfinite(router_grad)) and np.any(router_grad != 0)


def test_fit_adds_the_aux_loss_to_the_training_loss():
    inputs = keras.Input((6, FEATURES))
    layer = _layer(router_aux_loss_coefficient=0.5)
    model = keras.Model(inputs, layer(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    target = random_normal(*X.shape, seed=9)
    loss = model.train_on_batch(X, target)
    mse = np.mean((to_numpy(model(X)) - target) ** 2)
    aux = _reference_loss(X, _weights(layer)["router"], TOP_K)
    np.testing.assert_allclose(loss, mse + 0.5 * aux, rtol=1e-4)


# --- quantization and LoRA ---------------------------------------------------------


@pytest.mark.parametrize("mode, tolerance", [("int8", 0.05), ("int4", 0.5), ("float8", 0.25)])
def test_quantize_keeps_the_router_float_and_stays_close(mode, tolerance):
    inputs = keras.Input((6, FEATURES))
    layer = _layer()
    model = keras.Model(inputs, layer(inputs))
    expected = to_numpy(model(X))
    router = to_numpy(layer.router.kernel)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.quantize(mode)
    messages = [str(w.message) for w in caught if "__array__" not in str(w.message)]
    assert [m for m in messages if "InputLayer" not in m] == []
    assert [part.quantization_mode for part in layer.expert_layers] == [mode] * 3
    assert layer.router.quantization_mode is None
    np.testing.assert_array_equal(to_numpy(layer.router.kernel), router)
    assert not layer._runs_chosen_experts_only(FEW.shape)
    outputs = to_numpy(model(X))
    assert np.abs(outputs - expected).max() <= tolerance * np.abs(expected).max()


def test_enable_lora_trains_only_the_factors_and_reaches_both_paths():
    layer = _built()
    names = sorted(target.name for target in layer.enable_lora(2))
    assert names == ["gate_dense", "intermediate_dense", "output_dense", "router"]
    assert len(layer.trainable_weights) == 8
    assert all("lora_kernel" in v.path for v in layer.trainable_weights)
    rng = np.random.default_rng(5)
    for variable in layer.trainable_weights:  # move the zero-initialized factors
        variable.assign(0.3 * rng.standard_normal(tuple(variable.shape)).astype("float32"))
    weights = {
        "router": layer.router.kernel,
        "gate": layer.gate_dense.kernel,
        "up": layer.intermediate_dense.kernel,
        "down": layer.output_dense.kernel,
    }
    weights = {name: to_numpy(kernel, "float64") for name, kernel in weights.items()}
    for inputs in (X, FEW):
        expected = _reference(inputs, **weights, k=TOP_K)
        np.testing.assert_allclose(to_numpy(layer(inputs)), expected, atol=1e-4, rtol=1e-4)


# --- bad arguments and inputs ------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_experts=0), "`num_experts` must be a positive integer. Received: num_experts=0"),
        (
            dict(num_experts_per_token=0),
            "`num_experts_per_token` must be a positive integer. Received: num_experts_per_token=0",
        ),
        (
            dict(num_experts=2, num_experts_per_token=3),
            "`num_experts_per_token` must be at most `num_experts`. Received: "
            "num_experts_per_token=3, num_experts=2",
        ),
        (
            dict(intermediate_dim=-4),
            "`intermediate_dim` must be a positive integer. Received: intermediate_dim=-4",
        ),
        (
            dict(router_aux_loss_coefficient=-0.1),
            "`router_aux_loss_coefficient` must be a float >= 0. Received: "
            "router_aux_loss_coefficient=-0.1",
        ),
        (
            dict(router_aux_loss_coefficient="0.1"),
            "Received: router_aux_loss_coefficient='0.1'",
        ),
        (dict(router_aux_loss_coefficient=True), "Received: router_aux_loss_coefficient=True"),
        (
            dict(activation="swish_glu"),
            "`activation` must be one of 'swiglu', 'geglu'.* Received: activation='swish_glu'",
        ),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _layer(**kwargs)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((FEATURES,), r"`inputs` must be \(batch, ..., features\). Received: inputs.shape=\(8,\)"),
        ((1, 2, 3, 4, FEATURES), r"Received: inputs.shape=\(1, 2, 3, 4, 8\)"),
        ((2, 6, None), r"The last axis of `inputs` \(features\) must be known"),
    ],
)
def test_bad_input_shapes_are_rejected(shape, message):
    with pytest.raises(ValueError, match=message):
        _layer().build(shape)

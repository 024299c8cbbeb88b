"""Every constructor argument of every public layer survives `get_config`,
`from_config` and a `.keras` save and reload.

Each case builds a layer with a non-default value for its arguments (together, the
cases of a class cover every argument; `test_cases_cover_every_argument` checks
that), and the configs are compared with the keyword arguments *passed*, not with
themselves, so a key that `get_config` forgets fails even though `from_config`
would forget it too. Outputs of the clone (same weights) and of the reloaded model
must equal the original's: an argument that changes the math and is lost on the
way changes them.
"""

import inspect
import os

import keras
import numpy as np
import pytest

import keras_attention as ka
from tests.utils import random_normal

PUBLIC_LAYERS = [
    "ScaledDotProductAttention",
    "SelfAttention",
    "MultiHeadAttention",
    "GroupedQueryAttention",
    "AdditiveAttention",
    "LuongAttention",
    "AttentionPooling",
    "PositionEmbedding",
    "SinusoidalPositionEncoding",
    "TokenAndPositionEmbedding",
    "FeedForward",
    "MixtureOfExperts",
    "TransformerEncoder",
    "TransformerDecoder",
    "RMSNorm",
    "RotaryEmbedding",
    "ALiBiBias",
    "RelativePositionBias",
]


def _projection(seed):
    """Non-default kernel/bias initializers, regularizers and constraints."""
    return {
        "kernel_initializer": keras.initializers.RandomNormal(stddev=0.4, seed=seed),
        "bias_initializer": keras.initializers.RandomUniform(-0.3, 0.3, seed=seed + 1),
        "kernel_regularizer": keras.regularizers.L2(0.01),
        "bias_regularizer": keras.regularizers.L1(0.02),
        "kernel_constraint": keras.constraints.MaxNorm(3.0),
        "bias_constraint": keras.constraints.NonNeg(),
    }


Q = random_normal(2, 4, 5, seed=1)
V = random_normal(2, 6, 3, seed=2)
K = random_normal(2, 6, 5, seed=3)
X = random_normal(2, 6, 4, seed=4)
V5 = random_normal(2, 6, 5, seed=5)  # a value of the query's features (GroupedQueryAttention)
TOKENS = np.array([[3, 1, 4, 1, 5, 0], [2, 7, 1, 8, 0, 0]], dtype="int32")

HEADS4 = random_normal(2, 3, 6, 4, seed=6)
POSITIONS_Q = np.array([[0, 1, 2, 3], [4, 5, 6, 7]], dtype="float32")
POSITIONS_K = np.array([[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]], dtype="float32")

# name -> (class, constructor kwargs, positional input, keyword tensor inputs)
CASES = {
    "ScaledDotProductAttention": (
        "ScaledDotProductAttention",
        {"dropout": 0.25, "scale": 0.3, "seed": 3},
        Q,
        {"value": V, "key": K},
    ),
    "SelfAttention": (
        "SelfAttention",
        {"units": 6, "use_bias": False, "dropout": 0.2, "seed": 4, **_projection(10)},
        X,
        {},
    ),
    "MultiHeadAttention": (
        "MultiHeadAttention",
        {
            "num_heads": 2,
            "key_dim": 3,
            "value_dim": 5,
            "num_key_value_heads": 1,
            "dropout": 0.2,
            "use_bias": False,
            "output_dim": 7,
            "activity_regularizer": keras.regularizers.L2(0.001),
            "seed": 5,
            "implementation": "plain",
            **_projection(20),
        },
        Q,
        {"value": V, "key": K},
    ),
    "MultiHeadAttention-keras-names": (
        "MultiHeadAttention",
        {
            "num_heads": 2,
            "key_dim": 3,
            "output_shape": (2, 3),
            "attention_axes": (-2,),
            "use_gate": True,
            "flash_attention": False,
        },
        Q,
        {"value": V, "key": K},
    ),
    "GroupedQueryAttention": (
        "GroupedQueryAttention",
        {
            "head_dim": 3,
            "num_query_heads": 4,
            "num_key_value_heads": 2,
            "use_gate": True,
            "dropout": 0.2,
            "use_bias": False,
            "output_dim": 7,
            "activity_regularizer": keras.regularizers.L2(0.001),
            "seed": 5,
            "implementation": "plain",
            "attention_axes": (1,),
            **_projection(25),
        },
        Q,
        {"value": V5, "key": K},
    ),
    "GroupedQueryAttention-output_shape": (
        "GroupedQueryAttention",
        {
            "head_dim": 3,
            "num_query_heads": 2,
            "num_key_value_heads": 1,
            "output_shape": (3, 2),
            "flash_attention": False,
        },
        Q,
        {"value": V5, "key": K},
    ),
    "AdditiveAttention-keras": (
        "AdditiveAttention",
        {"use_scale": False},
        Q,
        {"value": V, "key": K},
    ),
    "LuongAttention-keras": (
        "LuongAttention",
        {"use_scale": True, "score_mode": "dot", "dropout": 0.2, "seed": 7},
        Q,
        {"value": V, "key": K},
    ),
    "MultiHeadAttention-modern": (
        "MultiHeadAttention",
        {
            "num_heads": 2,
            "key_dim": 4,
            "sliding_window": 3,
            "position_embedding": ka.RotaryEmbedding(rotary_fraction=0.5, layout="interleaved"),
            "score_bias": ka.RelativePositionBias(num_buckets=8, max_distance=16, num_heads=2),
            "soft_cap": 5.0,
            "query_norm": "rms_norm",
            "key_norm": "layer_norm",
            "attention_scale": 0.5,
            "qk_norm_epsilon": 1e-3,
            "use_bias": ("query", "key", "value"),
        },
        Q,
        {"value": V, "key": K},
    ),
    "GroupedQueryAttention-modern": (
        "GroupedQueryAttention",
        {
            "head_dim": 4,
            "num_query_heads": 4,
            "num_key_value_heads": 2,
            "sliding_window": 3,
            "position_embedding": "rotary",
            "score_bias": ka.ALiBiBias(4),
            "soft_cap": 5.0,
            "query_norm": "rms_norm",
            "key_norm": "layer_norm",
            "attention_scale": 1.0,
            "qk_norm_epsilon": 1e-5,
            "use_bias": ("output",),
        },
        Q,
        {"value": V5, "key": K},
    ),
    "MultiHeadAttention-alibi": (
        "MultiHeadAttention",
        {
            "num_heads": 2,
            "key_dim": 4,
            "position_embedding": "rotary",
            "score_bias": ka.ALiBiBias(2),
        },
        Q,
        {"value": V, "key": K},
    ),
    "RMSNorm": (
        "RMSNorm",
        {"epsilon": 1e-3, "scale_initializer": keras.initializers.RandomUniform(seed=120)},
        X,
        {},
    ),
    "RotaryEmbedding": (
        "RotaryEmbedding",
        {
            "max_wavelength": 500,
            "scaling_factor": 2.0,
            "rotary_fraction": 0.5,
            "layout": "interleaved",
            "sequence_axis": 2,
        },
        HEADS4,
        {},
    ),
    "RotaryEmbedding-longrope": (
        "RotaryEmbedding",
        {
            "rope_scaling": {
                "type": "longrope",
                "short_factor": [1.0, 1.5],
                "long_factor": [2.0, 4.0],
                "original_max_position_embeddings": 2,
                "max_position_embeddings": 8,
            },
        },
        HEADS4,
        {},
    ),
    "ALiBiBias": ("ALiBiBias", {"num_heads": 3}, POSITIONS_Q, {"key_positions": POSITIONS_K}),
    "RelativePositionBias": (
        "RelativePositionBias",
        {
            "num_buckets": 8,
            "max_distance": 16,
            "bidirectional": False,
            "num_heads": 2,
            "embeddings_initializer": keras.initializers.RandomUniform(seed=121),
        },
        POSITIONS_Q.astype("int32"),
        {"key_positions": POSITIONS_K.astype("int32")},
    ),
    "MixtureOfExperts": (
        "MixtureOfExperts",
        {
            "num_experts": 4,
            "num_experts_per_token": 2,
            "intermediate_dim": 5,
            "activation": "geglu",
            "router_aux_loss_coefficient": 0.01,
            "kernel_initializer": keras.initializers.RandomNormal(stddev=0.2, seed=131),
            "kernel_regularizer": keras.regularizers.L2(1e-3),
            "kernel_constraint": keras.constraints.MaxNorm(3.0),
        },
        X,
        {},
    ),
    "FeedForward-swiglu": (
        "FeedForward",
        {"intermediate_dim": 5, "activation": "swiglu"},
        X,
        {},
    ),
    "AdditiveAttention": (
        "AdditiveAttention",
        {"units": 5, "use_bias": False, "dropout": 0.2, "seed": 6, **_projection(30)},
        Q,
        {"value": V, "key": K},
    ),
    "LuongAttention-general": (
        "LuongAttention",
        {
            "score": "general",
            "scale": True,
            "use_bias": False,
            "dropout": 0.2,
            "seed": 7,
            **_projection(40),
        },
        Q,
        {"value": V, "key": K},
    ),
    "LuongAttention-concat": (
        "LuongAttention",
        {
            "score": "concat",
            "units": 5,
            "use_bias": False,
            "dropout": 0.2,
            "seed": 8,
            **_projection(50),
        },
        Q,
        {"value": V, "key": K},
    ),
    "AttentionPooling": (
        "AttentionPooling",
        {
            "units": 5,
            "num_queries": 2,
            "use_bias": False,
            "scale": True,
            "dropout": 0.2,
            "seed": 9,
            **_projection(60),
        },
        X,
        {},
    ),
    "PositionEmbedding": (
        "PositionEmbedding",
        {"sequence_length": 8, "initializer": keras.initializers.RandomNormal(stddev=0.5, seed=70)},
        X,
        {},
    ),
    "SinusoidalPositionEncoding": (
        "SinusoidalPositionEncoding",
        {"max_wavelength": 500},
        X,
        {},
    ),
    "TokenAndPositionEmbedding": (
        "TokenAndPositionEmbedding",
        {
            "vocabulary_size": 11,
            "sequence_length": 8,
            "embedding_dim": 6,
            "mask_zero": True,
            "position": "sinusoidal",
            "scale_by_sqrt_dim": True,
            "max_wavelength": 500,
            "embeddings_initializer": keras.initializers.RandomNormal(seed=80),
            "position_initializer": keras.initializers.RandomUniform(seed=81),
        },
        TOKENS,
        {},
    ),
    "FeedForward": (
        "FeedForward",
        {
            "intermediate_dim": 7,
            "activation": "gelu",
            "dropout": 0.2,
            "use_bias": False,
            "seed": 11,
            **_projection(90),
        },
        X,
        {},
    ),
    "TransformerEncoder": (
        "TransformerEncoder",
        {
            "num_heads": 2,
            "intermediate_dim": 7,
            "key_dim": 3,
            "dropout": 0.2,
            "activation": "gelu",
            "layer_norm_epsilon": 1e-3,
            "normalize_first": True,
            "kernel_initializer": keras.initializers.RandomNormal(stddev=0.3, seed=100),
            "bias_initializer": keras.initializers.RandomUniform(seed=101),
            "seed": 12,
        },
        X,
        {},
    ),
    "TransformerEncoder-modern": (
        "TransformerEncoder",
        {
            "num_heads": 2,
            "intermediate_dim": 7,
            "activation": "swiglu",
            "normalization": "rms_norm",
            "use_bias": False,
            "num_key_value_heads": 1,
            "position_embedding": ka.RotaryEmbedding(max_wavelength=100),
            "sliding_window": 2,
            "soft_cap": 4.0,
            "query_norm": "layer_norm",
            "key_norm": "rms_norm",
        },
        X,
        {},
    ),
    "TransformerEncoder-gemma2": (
        "TransformerEncoder",
        {
            "num_heads": 2,
            "intermediate_dim": 7,
            "activation": "geglu_tanh",
            "normalization": "rms_norm",
            "normalize_first": True,
            "post_norm": True,
            "parallel_residual": True,
            "attention_scale": 0.5,
            "qk_norm_epsilon": 1e-3,
            "query_norm": "rms_norm",
            "use_bias": ("query", "key", "value"),
            "score_bias": ka.ALiBiBias(2),
        },
        X,
        {},
    ),
    "TransformerEncoder-experts": (
        "TransformerEncoder",
        {
            "num_heads": 2,
            "intermediate_dim": 7,
            "use_bias": False,
            "num_experts": 3,
            "num_experts_per_token": 2,
        },
        X,
        {},
    ),
    "TransformerDecoder-mixtral": (
        "TransformerDecoder",
        {
            "num_heads": 2,
            "intermediate_dim": 7,
            "activation": "swiglu",
            "normalization": "rms_norm",
            "normalize_first": True,
            "use_bias": False,
            "num_experts": 4,
            "num_experts_per_token": 2,
        },
        X,
        {},
    ),
    "TransformerDecoder-neox": (
        "TransformerDecoder",
        {
            "num_heads": 2,
            "intermediate_dim": 7,
            "activation": "gelu_tanh",
            "normalize_first": True,
            "parallel_residual": True,
            "post_norm": True,
            "use_bias": ("output", "feedforward", "norm"),
            "score_bias": ka.RelativePositionBias(
                num_buckets=8, max_distance=16, bidirectional=False, num_heads=2
            ),
            "attention_scale": 1.0,
            "qk_norm_epsilon": 1e-5,
            "key_norm": "rms_norm",
        },
        X,
        {},
    ),
    "TransformerDecoder-modern": (
        "TransformerDecoder",
        {
            "num_heads": 2,
            "intermediate_dim": 7,
            "activation": "geglu",
            "normalization": "rms_norm",
            "use_bias": False,
            "num_key_value_heads": 1,
            "position_embedding": "rotary",
            "sliding_window": 3,
            "soft_cap": 4.0,
            "query_norm": "rms_norm",
            "key_norm": "layer_norm",
        },
        X,
        {},
    ),
    "TransformerDecoder": (
        "TransformerDecoder",
        {
            "num_heads": 2,
            "intermediate_dim": 7,
            "key_dim": 3,
            "dropout": 0.2,
            "activation": "gelu",
            "layer_norm_epsilon": 1e-3,
            "normalize_first": True,
            "kernel_initializer": keras.initializers.RandomNormal(stddev=0.3, seed=110),
            "bias_initializer": keras.initializers.RandomUniform(seed=111),
            "seed": 13,
        },
        X,
        {"encoder_sequence": random_normal(2, 5, 4, seed=5)},
    ),
}


def _constructor_arguments(cls):
    """Named constructor arguments of `cls` and of its package base classes
    (arguments a subclass passes on through `**kwargs`)."""
    names = {}
    for klass in cls.__mro__:
        if not klass.__module__.startswith("keras_attention"):
            continue
        for param in inspect.signature(klass.__init__).parameters.values():
            if param.name == "self" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                continue
            names.setdefault(param.name, param.default)
    # Base-class arguments a subclass takes under other names (GroupedQueryAttention).
    for name in getattr(cls, "_hidden_base_arguments", ()):
        names.pop(name, None)
    return names


def _serialize(value):
    """Compare objects (initializers, ...) by class and config."""
    if hasattr(value, "get_config") and not isinstance(value, (str, dict)):
        return (type(value).__name__, value.get_config())
    return value


def _deserialize(name, value):
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if name.endswith("initializer"):
        return _serialize(keras.initializers.get(value))
    if name.endswith("regularizer"):
        return _serialize(keras.regularizers.get(value))
    if name.endswith("constraint"):
        return _serialize(keras.constraints.get(value))
    if name == "activation":
        if value in ("swiglu", "geglu", "geglu_tanh", "gelu_tanh"):
            return value
        return keras.activations.serialize(keras.activations.get(value))
    if isinstance(value, dict):  # a serialized layer (position_embedding, score_bias)
        return _serialize(keras.saving.deserialize_keras_object(value))
    return value


def _assert_config_holds(config, kwargs, where):
    for name, passed in kwargs.items():
        assert name in config, f"{where}: get_config() has no key {name!r}"
        expected = _serialize(passed)
        if name == "activation" and passed not in ("swiglu", "geglu", "geglu_tanh", "gelu_tanh"):
            expected = keras.activations.serialize(keras.activations.get(passed))
        got = _deserialize(name, config[name])
        assert got == expected, f"{where}: {name}={got!r}, passed {expected!r}"
        if isinstance(passed, bool):
            assert isinstance(config[name], bool), (where, name, config[name])


def _call(layer, case):
    _, _, first, extra = case
    return layer(first, **extra)


def _outputs(x):
    return [keras.ops.convert_to_numpy(t) for t in (x if isinstance(x, (list, tuple)) else [x])]


@pytest.mark.parametrize("cls_name", PUBLIC_LAYERS)
def test_cases_cover_every_argument(cls_name):
    cls = getattr(ka, cls_name)
    arguments = _constructor_arguments(cls)
    covered = {}
    for name, kwargs, _, _ in CASES.values():
        if name == cls_name:
            for key, value in kwargs.items():
                covered.setdefault(key, []).append(value)
    assert set(covered) == set(arguments), (
        f"{cls_name}: not covered {sorted(set(arguments) - set(covered))}, "
        f"unknown {sorted(set(covered) - set(arguments))}"
    )
    for key, values in covered.items():
        default = arguments[key]
        assert any(
            default is inspect.Parameter.empty or _serialize(v) != _serialize(default)
            for v in values
        ), f"{cls_name}: {key} is only tested with its default {default!r}"


@pytest.mark.parametrize("case_name", list(CASES))
def test_every_argument_survives_config_and_keras_file(case_name, tmp_path):
    case = CASES[case_name]
    cls = getattr(ka, case[0])
    kwargs = case[1]
    layer = cls(**kwargs)
    before = _outputs(_call(layer, case))

    config = layer.get_config()
    _assert_config_holds(config, kwargs, "get_config")

    clone = cls.from_config(config)
    _assert_config_holds(clone.get_config(), kwargs, "from_config(...).get_config")
    _call(clone, case)
    clone.set_weights(layer.get_weights())
    for a, b in zip(before, _outputs(_call(clone, case))):
        np.testing.assert_allclose(b, a, atol=1e-6, rtol=0)

    # .keras: a functional model around the layer, saved and reloaded (safe mode).
    first, extra = case[2], case[3]
    inputs = {"first": keras.Input(first.shape[1:], dtype=str(first.dtype), name="first")}
    inputs.update(
        {k: keras.Input(v.shape[1:], dtype=str(v.dtype), name=k) for k, v in extra.items()}
    )
    model_layer = cls(**kwargs)
    outputs = model_layer(inputs["first"], **{k: inputs[k] for k in extra})
    model = keras.Model(inputs, outputs)
    feed = {"first": first, **extra}
    expected = _outputs(model.predict(feed, verbose=0))
    path = os.path.join(str(tmp_path), "layer.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    reloaded_layer = [lay for lay in reloaded.layers if isinstance(lay, cls)]
    assert len(reloaded_layer) == 1
    _assert_config_holds(reloaded_layer[0].get_config(), kwargs, ".keras reload")
    for a, b in zip(expected, _outputs(reloaded.predict(feed, verbose=0))):
        np.testing.assert_allclose(b, a, atol=1e-6, rtol=0)

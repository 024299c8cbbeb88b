"""The blocks' architecture options (issue 28): sandwich norms (`post_norm`, Gemma 2/3),
parallel residual (GPT-NeoX), per-part biases, a shared score bias (T5, ALiBi), the
attention scale and the QK-norm epsilon.

The references compose the block's math by hand: numpy norms with the block's norm
weights around its own attention and feed-forward sublayers (each tested elsewhere
against numpy), so only the wiring under test differs. keras-hub's blocks, with the
weights transplanted, are a second reference where keras-hub is installed.
"""

import keras
import numpy as np
import pytest

import keras_attention as ka
from tests.utils import run_layer_test

_np = keras.ops.convert_to_numpy
FEATURES, HEADS, LENGTH = 8, 2, 6
BLOCKS = {"encoder": ka.TransformerEncoder, "decoder": ka.TransformerDecoder}


def _x(seed=0, length=LENGTH):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((2, length, FEATURES)).astype("float32")


def _perturb(layer, seed=3):
    """Norm scales off 1 and biases off 0, so that every weight shows in the output."""
    rng = np.random.default_rng(seed)
    for weight in layer.weights:
        name = weight.path.split("/")[-1]
        if name in ("gamma", "scale"):
            weight.assign(1 + 0.3 * rng.standard_normal(weight.shape))
        elif name in ("beta", "bias"):
            weight.assign(0.3 * rng.standard_normal(weight.shape))
        elif name == "embeddings":
            weight.assign(rng.standard_normal(weight.shape))


def _norm(layer, x):
    """The numpy math of the block's `layer` (LayerNormalization or RMSNorm)."""
    x = np.asarray(x, "float64")
    if isinstance(layer, ka.RMSNorm):
        scale = _np(layer.scale)
        return x / np.sqrt(np.mean(x**2, -1, keepdims=True) + layer.epsilon) * scale
    centered = x - x.mean(-1, keepdims=True)
    out = centered / np.sqrt(centered.var(-1, keepdims=True) + layer.epsilon) * _np(layer.gamma)
    return out + (_np(layer.beta) if layer.beta is not None else 0.0)


def _sublayers(block, causal):
    def attention(y):
        y = y.astype("float32")
        return _np(block.self_attention(y, y, use_causal_mask=causal)).astype("float64")

    def feedforward(y):
        return _np(block.feedforward(y.astype("float32"))).astype("float64")

    return attention, feedforward


def block_reference(block, x, causal):
    """The block's forward pass written out for every residual form."""
    attention, feedforward = _sublayers(block, causal)
    x = x.astype("float64")
    if not block.normalize_first:
        x = _norm(block.self_attention_layer_norm, x + attention(x))
        return _norm(block.feedforward_layer_norm, x + feedforward(x))

    def post(name, y):
        norm = getattr(block, f"{name}_post_norm")
        return y if norm is None else _norm(norm, y)

    attention_branch = post("self_attention", attention(_norm(block.self_attention_layer_norm, x)))
    if block.parallel_residual:  # y = x + Attn(N1 x) + FFN(N2 x)
        return (
            x
            + attention_branch
            + post("feedforward", feedforward(_norm(block.feedforward_layer_norm, x)))
        )
    x = x + attention_branch
    return x + post("feedforward", feedforward(_norm(block.feedforward_layer_norm, x)))


CONFIGS = {
    "post_norm": {"normalize_first": True, "post_norm": True},
    "post_norm-rms": {
        "normalize_first": True,
        "post_norm": True,
        "normalization": "rms_norm",
        "activation": "geglu_tanh",
        "use_bias": False,
        "attention_scale": 0.3,
    },
    "parallel": {"normalize_first": True, "parallel_residual": True, "activation": "gelu"},
    "parallel-post": {"normalize_first": True, "parallel_residual": True, "post_norm": True},
    "bias-parts": {
        "normalize_first": True,
        "use_bias": ("query", "key", "value", "norm"),
        "activation": "swiglu",
    },
    "post-layer-norm": {"use_bias": ("output", "feedforward")},
    "alibi": {"normalize_first": True, "score_bias": ka.ALiBiBias(HEADS)},
    "qk-norm": {
        "normalize_first": True,
        "query_norm": "rms_norm",
        "key_norm": "rms_norm",
        "qk_norm_epsilon": 0.5,
        "attention_scale": 1.0,
    },
}


def _block(kind, config, seed=0):
    keras.utils.set_random_seed(seed)
    block = BLOCKS[kind](intermediate_dim=16, num_heads=HEADS, **config)
    block(_x())
    _perturb(block)
    return block


@pytest.mark.parametrize("kind", list(BLOCKS))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_block_matches_hand_written_residual_form(kind, config):
    block = _block(kind, CONFIGS[config])
    x = _x(1)
    out = _np(block(x))
    np.testing.assert_allclose(out, block_reference(block, x, kind == "decoder"), atol=2e-5)


@pytest.mark.parametrize(
    "config, parts",
    [
        ({"use_bias": ("query", "key", "value")}, ("query", "key", "value")),
        ({"use_bias": ("feedforward",)}, ("feedforward",)),
        ({"use_bias": ("norm", "output")}, ("norm", "output")),
        ({"use_bias": True}, ("query", "key", "value", "output", "feedforward", "norm")),
        ({"use_bias": False}, ()),
    ],
)
def test_use_bias_parts_reach_the_right_sublayers(config, parts):
    block = _block("decoder", {"activation": "swiglu", **config})
    attention = block.self_attention
    has = {
        "query": attention.query_dense.bias is not None,
        "key": attention.key_dense.bias is not None,
        "value": attention.value_dense.bias is not None,
        "output": attention.output_dense.bias is not None,
        "feedforward": all(
            dense.bias is not None
            for dense in (
                block.feedforward.gate_dense,
                block.feedforward.intermediate_dense,
                block.feedforward.output_dense,
            )
        ),
        "norm": block.feedforward_layer_norm.beta is not None,
    }
    assert {part for part, present in has.items() if present} == set(parts)
    assert all(
        dense.bias is None
        for dense in (block.feedforward.gate_dense, block.feedforward.output_dense)
    ) == ("feedforward" not in parts)


def test_options_reach_every_attention_and_score_bias_only_self_attention():
    keras.utils.set_random_seed(1)
    bias = ka.RelativePositionBias(num_buckets=8, max_distance=16, num_heads=HEADS)
    block = ka.TransformerDecoder(
        16,
        HEADS,
        attention_scale=0.5,
        qk_norm_epsilon=1e-3,
        query_norm="rms_norm",
        score_bias=bias,
        use_bias=("query", "output"),
    )
    block(_x(), _x(2, length=4))
    for attention in (block.self_attention, block.cross_attention):
        assert attention.attention_scale == 0.5 and attention.qk_norm_epsilon == 1e-3
        assert attention.query_norm_layer.epsilon == 1e-3
        assert attention.use_bias == ("query", "output")
    assert block.self_attention.score_bias is bias  # the instance, never a copy
    assert block.cross_attention.score_bias is None


def test_blocks_sharing_one_relative_bias_share_its_weights_and_reload(tmp_path):
    """T5: one relative-position table for every layer of a stack."""
    keras.utils.set_random_seed(2)
    bias = ka.RelativePositionBias(
        num_buckets=8, max_distance=16, bidirectional=False, num_heads=HEADS
    )
    first = ka.TransformerDecoder(16, HEADS, normalize_first=True, score_bias=bias)
    second = ka.TransformerDecoder(16, HEADS, normalize_first=True, score_bias=bias)
    inputs = keras.Input((None, FEATURES))
    model = keras.Model(inputs, second(first(inputs)))
    assert first.self_attention.score_bias is second.self_attention.score_bias is bias
    tables = [w for w in model.weights if w.path.endswith("embeddings")]
    assert len(tables) == 1
    bias.embeddings.assign(np.random.default_rng(0).standard_normal(bias.embeddings.shape))
    x = _x(3)
    # A change to the table changes both blocks: the second block's output through
    # the first block's output, and each block's own attention.
    expected = block_reference(second, block_reference(first, x, True).astype("float32"), True)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=2e-5)

    model.save(tmp_path / "shared.keras")
    reloaded = keras.saving.load_model(tmp_path / "shared.keras")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), expected, atol=2e-5)
    blocks = [layer for layer in reloaded.layers if isinstance(layer, ka.TransformerDecoder)]
    assert blocks[0].score_bias is blocks[1].score_bias
    assert blocks[0].self_attention.score_bias is blocks[1].self_attention.score_bias
    assert len([w for w in reloaded.weights if w.path.endswith("embeddings")]) == 1


CACHE_CONFIGS = {
    "post_norm": {"post_norm": True, "normalization": "rms_norm"},
    "parallel": {"parallel_residual": True, "position_embedding": "rotary"},
    "alibi": {"score_bias": ka.ALiBiBias(HEADS), "attention_scale": 0.4},
    "t5": {
        "score_bias": ka.RelativePositionBias(
            num_buckets=8, max_distance=16, bidirectional=False, num_heads=HEADS
        )
    },
    "alibi-window": {"score_bias": ka.ALiBiBias(HEADS), "sliding_window": 3},
    "all": {
        "post_norm": True,
        "parallel_residual": True,
        "score_bias": ka.ALiBiBias(HEADS),
        "use_bias": ("query", "key", "value"),
        "query_norm": "rms_norm",
        "key_norm": "rms_norm",
        "qk_norm_epsilon": 0.1,
    },
}


@pytest.mark.parametrize("config", list(CACHE_CONFIGS))
def test_cached_decoding_equals_full_call(config):
    """Prefill then one token at a time through the cache gives the full call's
    outputs: the score bias sees the absolute positions of the new tokens."""
    block = _block("decoder", {"normalize_first": True, **CACHE_CONFIGS[config]}, seed=4)
    length = 7
    x = _x(5, length=length)
    full = _np(block(x))
    np.testing.assert_allclose(full, block_reference(block, x, True), atol=2e-5)
    cache = block.get_initial_cache(2, length)
    out, cache = block(x[:, :3], self_attention_cache=cache, cache_index=0)
    outs = [_np(out)]
    for t in range(3, length):
        out, cache = block(x[:, t : t + 1], self_attention_cache=cache, cache_index=t)
        outs.append(_np(out))
    np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=2e-5)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"post_norm": True}, ValueError, r"post_norm=True, normalize_first=False"),
        ({"parallel_residual": True}, ValueError, r"parallel_residual=True, normalize_first"),
        ({"post_norm": 1, "normalize_first": True}, TypeError, "post_norm=1"),
        ({"use_bias": ("query", "ffn")}, ValueError, r"\['ffn'\].*use_bias=\('query', 'ffn'\)"),
        ({"use_bias": "norm"}, TypeError, "use_bias='norm'"),
        ({"attention_scale": 0}, ValueError, "attention_scale=0"),
        ({"attention_scale": -1.0}, ValueError, r"attention_scale=-1\.0"),
        ({"qk_norm_epsilon": 0.0}, ValueError, r"qk_norm_epsilon=0\.0"),
        ({"score_bias": "alibi"}, ValueError, "score_bias='alibi'"),
        ({"score_bias": ka.ALiBiBias(3)}, ValueError, "score_bias.num_heads=3"),
    ],
)
@pytest.mark.parametrize("kind", list(BLOCKS))
def test_bad_options_name_the_argument(kind, kwargs, error, match):
    with pytest.raises(error, match=match):
        BLOCKS[kind](16, HEADS, **kwargs)


def test_parallel_residual_refuses_cross_attention():
    block = ka.TransformerDecoder(16, HEADS, normalize_first=True, parallel_residual=True)
    with pytest.raises(ValueError, match="parallel_residual=True, encoder_sequence.shape"):
        block(_x(), _x(1, length=4))


def test_cross_attention_gets_a_post_norm():
    block = ka.TransformerDecoder(16, HEADS, normalize_first=True, post_norm=True)
    encoder = _x(1, length=4)
    block(_x(), encoder)
    assert block.cross_attention_post_norm is not None
    off = ka.TransformerDecoder(16, HEADS, normalize_first=True)
    off(_x(), encoder)
    assert off.cross_attention_post_norm is None and off.self_attention_post_norm is None
    # x + PostNorm(CrossAttn(Norm(x), enc)) between the self-attention and the FFN
    _perturb(block)
    x = _x(2)
    attention, feedforward = _sublayers(block, causal=True)
    h = x + _norm(
        block.self_attention_post_norm, attention(_norm(block.self_attention_layer_norm, x))
    )
    normed = _norm(block.cross_attention_layer_norm, h).astype("float32")
    cross = _np(block.cross_attention(normed, encoder))
    h = h + _norm(block.cross_attention_post_norm, cross)
    h = h + _norm(block.feedforward_post_norm, feedforward(_norm(block.feedforward_layer_norm, h)))
    np.testing.assert_allclose(_np(block(x, encoder)), h, atol=2e-5)


def test_make_feedforward_is_the_factory_of_the_feedforward_sublayer():
    class Doubling(keras.layers.Layer):
        def call(self, inputs, training=None):
            return 2.0 * inputs

    class Block(ka.TransformerEncoder):
        def _make_feedforward(self):
            return Doubling(name="feedforward")

    block = Block(16, HEADS, normalize_first=True)
    x = _x(4)
    out = _np(block(x))
    h = x + _sublayers(block, causal=False)[0](_norm(block.self_attention_layer_norm, x))
    np.testing.assert_allclose(out, h + 2 * _norm(block.feedforward_layer_norm, h), atol=2e-5)


NEW_OPTIONS = {
    "attention_scale": 0.25,
    "qk_norm_epsilon": 1e-4,
    "score_bias": ka.ALiBiBias(HEADS),
    "post_norm": True,
    "parallel_residual": True,
    "use_bias": ("key", "feedforward"),
    "activation": "gelu_tanh",
    "normalize_first": True,
}


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_new_options_round_trip_through_get_config(kind):
    block = BLOCKS[kind](16, HEADS, **NEW_OPTIONS)
    config = block.get_config()
    clone = BLOCKS[kind].from_config(config)
    for name, value in NEW_OPTIONS.items():
        if name == "score_bias":
            assert isinstance(clone.score_bias, ka.ALiBiBias)
            assert clone.score_bias.get_config() == value.get_config()
        else:
            assert config[name] == value, name
            assert clone.get_config()[name] == value, name
    assert clone.get_config() == config
    defaults = BLOCKS[kind](16, HEADS).get_config()
    assert {
        key: defaults[key]
        for key in (
            "attention_scale",
            "qk_norm_epsilon",
            "score_bias",
            "post_norm",
            "parallel_residual",
        )
    } == {
        "attention_scale": None,
        "qk_norm_epsilon": 1e-6,
        "score_bias": None,
        "post_norm": False,
        "parallel_residual": False,
    }


@pytest.mark.parametrize(
    "kind, config, weights",
    [
        ("decoder", "post_norm-rms", 11),
        ("encoder", "parallel", 16),
        ("decoder", "bias-parts", 14),
        ("encoder", "alibi", 16),
    ],
)
def test_layer_contract_for_the_new_configurations(kind, config, weights, tmp_path):
    run_layer_test(
        BLOCKS[kind],
        {"intermediate_dim": 16, "num_heads": HEADS, **CONFIGS[config]},
        {"inputs" if kind == "encoder" else "decoder_sequence": _x(6)},
        tmp_path=tmp_path,
        expected_output_shape=(2, LENGTH, FEATURES),
        expected_num_trainable_weights=weights,
        atol=1e-5,
    )

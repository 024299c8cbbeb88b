"""`RotaryEmbedding(rope_scaling=...)`: the linear, llama3, longrope, yarn and dynamic
frequency scalings against numpy transcriptions of the published formulas (Hugging
Face's `modeling_rope_utils`, written out here), against keras-hub's layers where it
has one, and through `MultiHeadAttention`'s cached decoding."""

import math

import keras
import numpy as np
import pytest

import keras_attention as ka
from keras_attention.ops.positions import apply_rotary_embedding, rotary_frequencies
from tests.utils import normal_sampler, run_layer_test

_np = keras.ops.convert_to_numpy
_rand = normal_sampler(28)

BASE = 10000.0
LLAMA3 = {
    "type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
DYNAMIC = {"type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 6}
LINEAR = {"type": "linear", "factor": 3.0}


def longrope(pairs=8, original=6, **extra):
    return {
        "type": "longrope",
        "short_factor": [1.0 + 0.05 * k for k in range(pairs)],
        "long_factor": [1.0 + 0.5 * k for k in range(pairs)],
        "original_max_position_embeddings": original,
        "max_position_embeddings": 4 * original,
        **extra,
    }


# --- numpy references (float64, from the published formulas) -------------------------


def default_inverse(dim, base=BASE):
    return 1.0 / base ** (np.arange(0, dim, 2) / dim)


def llama3_inverse(dim, config, base=BASE):
    """Meta's `apply_scaling` (Llama 3.1), as in HF's `_compute_llama3_parameters`."""
    inverse = default_inverse(dim, base)
    factor, old_context = config["factor"], config["original_max_position_embeddings"]
    low, high = config["low_freq_factor"], config["high_freq_factor"]
    low_wavelength, high_wavelength = old_context / low, old_context / high
    out = []
    for freq in inverse:
        wavelength = 2 * math.pi / freq
        if wavelength < high_wavelength:
            out.append(freq)
        elif wavelength > low_wavelength:
            out.append(freq / factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return np.array(out)


def yarn_inverse(dim, config, base=BASE):
    """HF's `_compute_yarn_parameters` (YaRN, Peng et al. 2023)."""
    factor, original = config["factor"], config["original_max_position_embeddings"]
    beta_fast, beta_slow = config.get("beta_fast", 32), config.get("beta_slow", 1)

    def correction_dim(rotations):
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if config.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2) - low) / (high - low), 0, 1)
    extrapolation_factor = 1 - ramp
    pos_freqs = base ** (np.arange(0, dim, 2) / dim)
    inverse = (1 / (factor * pos_freqs)) * (1 - extrapolation_factor) + (
        1 / pos_freqs
    ) * extrapolation_factor
    attention = config.get("attention_factor", 0.1 * math.log(factor) + 1.0)
    return inverse, attention


def longrope_inverse(dim, config, seq_len, base=BASE):
    """HF's `_compute_longrope_parameters` and its length switch (Phi-3 "su")."""
    original = config["original_max_position_embeddings"]
    factors = config["long_factor"] if seq_len > original else config["short_factor"]
    inverse = 1.0 / (np.array(factors) * base ** (np.arange(0, dim, 2) / dim))
    scale = config["max_position_embeddings"] / original
    attention = math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0
    return inverse, config.get("attention_factor", attention)


def dynamic_inverse(dim, config, seq_len, base=BASE):
    """HF's `_compute_dynamic_ntk_parameters` at the current length `seq_len`."""
    factor, original = config["factor"], config["original_max_position_embeddings"]
    if seq_len > original:
        base = base * ((factor * seq_len / original) - (factor - 1)) ** (dim / (dim - 2))
    return default_inverse(dim, base)


def reference_inverse(dim, config, seq_len):
    kind = config["type"]
    if kind == "linear":
        return default_inverse(dim) / config["factor"], 1.0
    if kind == "llama3":
        return llama3_inverse(dim, config), 1.0
    if kind == "yarn":
        return yarn_inverse(dim, config)
    if kind == "longrope":
        return longrope_inverse(dim, config, seq_len)
    return dynamic_inverse(dim, config, seq_len), 1.0


def rope_numpy(x, positions, inverse, attention=1.0, fraction=1.0, layout="rotate_half"):
    """RoPE of x (..., seq, d) by explicit 2x2 rotations, cos and sin times `attention`."""
    r = int(round(x.shape[-1] * fraction))
    out = x.astype("float64").copy()
    for k in range(r // 2):
        theta = np.asarray(positions, "float64") * inverse[k]
        cos, sin = attention * np.cos(theta), attention * np.sin(theta)
        a, b = (k, k + r // 2) if layout == "rotate_half" else (2 * k, 2 * k + 1)
        xa, xb = x[..., a].astype("float64"), x[..., b].astype("float64")
        out[..., a] = xa * cos - xb * sin
        out[..., b] = xb * cos + xa * sin
    return out


# --- frequencies and rotated outputs ---------------------------------------------


CONFIGS = {
    "linear": LINEAR,
    "llama3": LLAMA3,
    "yarn": YARN,
    "yarn_options": {
        **YARN,
        "beta_fast": 16.0,
        "beta_slow": 2.0,
        "attention_factor": 1.3,
        "truncate": False,
    },
    "longrope": longrope(),
    "longrope_given_attention": longrope(attention_factor=1.2),
    "dynamic": DYNAMIC,
}


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("seq_len", [4, 6, 7, 40])
def test_frequencies_match_numpy(name, seq_len):
    config = CONFIGS[name]
    inverse, attention = rotary_frequencies(16, BASE, config, np.arange(seq_len))
    expected, expected_attention = reference_inverse(16, config, seq_len)
    np.testing.assert_allclose(_np(inverse), expected, rtol=2e-6)
    assert attention == pytest.approx(expected_attention, rel=1e-12)


def test_llama3_bands_are_all_exercised():
    """The llama3 config above keeps, blends and divides (so the test covers all three)."""
    ratio = llama3_inverse(64, LLAMA3) / default_inverse(64)
    assert np.any(ratio == 1) and np.any(ratio == 1 / 8) and np.any((ratio > 1 / 8) & (ratio < 1))


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("layout", ["rotate_half", "interleaved"])
@pytest.mark.parametrize("start_index", [0, 5])
def test_rotated_outputs_match_numpy(name, layout, start_index):
    config = CONFIGS[name]
    x = _rand(2, 3, 4, 16)  # (batch, seq, heads, dim): the layer's default layout
    layer = ka.RotaryEmbedding(rope_scaling=config, layout=layout, rotary_fraction=1.0)
    out = _np(layer(x, start_index=start_index))
    positions = np.arange(start_index, start_index + 3)
    inverse, attention = reference_inverse(16, config, start_index + 3)
    expected = rope_numpy(np.swapaxes(x, 1, 2), positions, inverse, attention, layout=layout)
    np.testing.assert_allclose(out, np.swapaxes(expected, 1, 2), atol=1e-5)


@pytest.mark.parametrize("name", ["llama3", "longrope", "dynamic"])
def test_partial_rotary_and_explicit_positions(name):
    """rotary_fraction=0.5 rotates 8 of 16 features (longrope lists of 4); explicit
    positions: the length is the largest position + 1."""
    config = longrope(pairs=4) if name == "longrope" else CONFIGS[name]
    x = _rand(1, 2, 5, 16)  # (batch, heads, seq, dim) through the function
    positions = np.array([0, 3, 9, 2, 1])
    out = _np(
        apply_rotary_embedding(x, positions=positions, rotary_fraction=0.5, rope_scaling=config)
    )
    inverse, attention = reference_inverse(8, config, 10)
    expected = rope_numpy(x, positions, inverse, attention, fraction=0.5)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_array_equal(out[..., 8:], x[..., 8:])  # the pass-through half


def test_linear_equals_scaling_factor():
    x = _rand(2, 7, 2, 8)
    scaled = ka.RotaryEmbedding(rope_scaling={"rope_type": "linear", "factor": 4.0})
    np.testing.assert_allclose(
        _np(scaled(x, start_index=3)),
        _np(ka.RotaryEmbedding(scaling_factor=4.0)(x, start_index=3)),
        atol=1e-6,
    )


# --- keras-hub's layers on the same inputs -----------------------------------------


def _hub_rotary(kind, config):
    keras_hub = pytest.importorskip("keras_hub")
    if kind == "llama3":  # what Llama3Backbone's attention builds
        from keras_hub.src.models.llama.llama_rotary_embedding import LlamaRotaryEmbedding

        return LlamaRotaryEmbedding(
            max_wavelength=BASE,
            frequency_adjustment_factor=config["factor"],
            low_freq_factor=config["low_freq_factor"],
            high_freq_factor=config["high_freq_factor"],
            pretraining_sequence_length=config["original_max_position_embeddings"],
        )
    if kind == "longrope":  # Phi-3's "su" scaling
        from keras_hub.src.models.phi3.phi3_rotary_embedding import Phi3SuScaledRotaryEmbedding

        return Phi3SuScaledRotaryEmbedding(
            inverese_freq_short_factor=config["short_factor"],
            inverese_freq_long_factor=config["long_factor"],
            max_sequence_length=config["max_position_embeddings"],
            pretraining_sequence_length=config["original_max_position_embeddings"],
            max_wavelength=BASE,
        )
    if kind == "yarn":
        return keras_hub.layers.RotaryEmbedding(
            max_wavelength=BASE,
            scaling_factor=config["factor"],
            rope_type="yarn",
            original_max_position_embeddings=config["original_max_position_embeddings"],
        )
    return keras_hub.layers.RotaryEmbedding(max_wavelength=BASE, scaling_factor=config["factor"])


@pytest.mark.parametrize("name", ["llama3", "longrope", "yarn", "linear"])
@pytest.mark.parametrize("start_index", [0, 4])  # longrope: short factors, then long
def test_matches_keras_hub(name, start_index):
    config = CONFIGS[name]
    hub = _hub_rotary(name, config)
    x = _rand(2, 3, 4, 16)
    expected = _np(hub(x, start_index=start_index))
    out = _np(ka.RotaryEmbedding(rope_scaling=config)(x, start_index=start_index))
    np.testing.assert_allclose(out, expected, atol=2e-5)


# --- the layer contract, configs, bad input -----------------------------------------


@pytest.mark.parametrize("name", ["yarn", "longrope"])
def test_layer_contract(name, tmp_path):
    run_layer_test(
        ka.RotaryEmbedding,
        {"rope_scaling": CONFIGS[name], "max_wavelength": 500.0},
        {"inputs": _rand(2, 5, 2, 16)},
        tmp_path=tmp_path,
        expected_output_shape=(2, 5, 2, 16),
    )


def test_config_round_trip_and_copy():
    config = longrope()
    layer = ka.RotaryEmbedding(rope_scaling=config)
    config["factor"] = 99.0  # the layer keeps its own copy
    restored = ka.RotaryEmbedding.from_config(layer.get_config())
    assert restored.rope_scaling == longrope()
    assert ka.RotaryEmbedding().get_config()["rope_scaling"] is None


@pytest.mark.parametrize(
    "rope_scaling, match",
    [
        (
            {"factor": 2.0},
            r"'type' must be one of 'linear'.*Received: rope_scaling=\{'factor': 2.0\}",
        ),
        ({"type": "ntk", "factor": 2.0}, r"rope_scaling=\{'type': 'ntk'"),
        ({"type": "llama3", "factor": 8.0}, r"missing \['low_freq_factor'"),
        ({"type": "yarn", "factor": 2.0}, r"missing \['original_max_position_embeddings'\]"),
        ({"type": "linear", "factor": 2.0, "beta": 1}, r"unknown \['beta'\]"),
        ({"type": "linear", "factor": 0.0}, r"'factor' must be a positive float; it is 0.0"),
        ({"type": "linear", "factor": -2}, r"'factor' must be a positive float; it is -2"),
        ({**YARN, "factor": 0}, r"it is 0\. Received: rope_scaling=.*'yarn'"),
        ({**DYNAMIC, "original_max_position_embeddings": 6.5}, r"positive int; it is 6.5"),
        ({**LLAMA3, "high_freq_factor": 1.0}, "'high_freq_factor' must be greater"),
        ({**YARN, "beta_fast": 1.0}, "'beta_fast' must be greater than 'beta_slow'"),
        ({**YARN, "truncate": 1}, "'truncate' must be a bool"),
        ({**LINEAR, "rope_type": "yarn"}, "'type' and 'rope_type' differ"),
        (longrope(long_factor=[1.0, 2.0]), r"'long_factor' must have one entry per .* 8"),
        (longrope(short_factor=[1.0, -1.0] * 4), r"list of positive floats; it is \[1.0, -1.0"),
        ("yarn", r"must be None or a dict.*Received: rope_scaling='yarn'"),
    ],
)
def test_bad_rope_scaling(rope_scaling, match):
    with pytest.raises(ValueError, match="`rope_scaling`") as error:
        ka.RotaryEmbedding(rope_scaling=rope_scaling)
    assert error.match(match)


def test_longrope_lists_checked_against_the_rotated_dim():
    """8 pairs fit head dim 16; with rotary_fraction=0.5 (or head dim 8) they do not."""
    layer = ka.RotaryEmbedding(rope_scaling=longrope(), rotary_fraction=0.5)
    with pytest.raises(ValueError, match=r"rope_scaling.*'short_factor' must have .* 4 \("):
        layer(np.ones((1, 3, 2, 16), "float32"))
    with pytest.raises(ValueError, match=r"'short_factor' must have one entry .* 4 .* has 8"):
        ka.MultiHeadAttention(2, 8, position_embedding=ka.RotaryEmbedding(rope_scaling=longrope()))


def test_scaling_factor_and_rope_scaling_exclusive():
    with pytest.raises(ValueError, match=r"set one.*scaling_factor=2.0, rope_scaling="):
        ka.RotaryEmbedding(scaling_factor=2.0, rope_scaling=LINEAR)


# --- cached decoding through MultiHeadAttention -------------------------------------


def _attention(config, key_dim=16):
    keras.utils.set_random_seed(28)
    rope = ka.RotaryEmbedding(rope_scaling=config)
    return ka.MultiHeadAttention(2, key_dim, position_embedding=rope)


def _decode(layer, x, prefill):
    """Prefill `prefill` tokens, then one token per step at its cache index."""
    cache = layer.get_initial_cache(x.shape[0], x.shape[1])
    out, cache = layer(x[:, :prefill], x[:, :prefill], cache=cache, cache_index=0)
    outs = [_np(out)]
    for t in range(prefill, x.shape[1]):
        out, cache = layer(x[:, t : t + 1], x[:, t : t + 1], cache=cache, cache_index=t)
        outs.append(_np(out))
    return np.concatenate(outs, 1)


@pytest.mark.parametrize(
    "name, prefill, length",
    [
        ("linear", 3, 9),
        ("llama3", 3, 9),
        ("yarn", 3, 9),
        ("longrope", 2, 6),  # every call within the original 6: short factors
        ("longrope", 7, 11),  # every call past it: long factors
        ("dynamic", 2, 6),  # within the original 6: the unscaled base
    ],
)
def test_cached_decoding_equals_full_pass(name, prefill, length):
    layer = _attention(CONFIGS[name])
    x = _rand(2, length, 8)
    full = _np(layer(x, x, use_causal_mask=True))
    np.testing.assert_allclose(_decode(layer, x, prefill), full, atol=1e-5)
    # The MultiHeadAttention really uses the scaling: unscaled RoPE differs.
    plain = ka.MultiHeadAttention(2, 16, position_embedding="rotary")
    plain.build(x.shape, x.shape)
    plain.set_weights(layer.get_weights())
    if name not in ("dynamic",):
        assert not np.allclose(_np(plain(x, x, use_causal_mask=True)), full, atol=1e-4)


@pytest.mark.parametrize("name", ["longrope", "dynamic"])
def test_length_dependent_types_rotate_a_step_at_its_own_length(name):
    """Past original_max_position_embeddings, a token decoded at cache index `p` is
    rotated with the frequencies of length `p + 1` (Hugging Face's rule), while a
    full pass of length `L` rotates it with those of `L`: documented, not hidden."""
    config = CONFIGS[name]
    layer = ka.RotaryEmbedding(rope_scaling=config)
    x = _rand(1, 12, 2, 16)
    for p in (3, 8):
        step = _np(layer(x[:, p : p + 1], start_index=p))
        inverse, attention = reference_inverse(16, config, p + 1)
        expected = rope_numpy(np.swapaxes(x[:, p : p + 1], 1, 2), [p], inverse, attention)
        np.testing.assert_allclose(step, np.swapaxes(expected, 1, 2), atol=1e-5)
    full = _np(layer(x))  # length 12 > 6: token 3 gets the long-context frequencies
    step = _np(layer(x[:, 3:4], start_index=3))
    assert not np.allclose(full[:, 3:4], step, atol=1e-4)

"""Positional encodings: `SinusoidalPositionEncoding`, `PositionEmbedding`,
`TokenAndPositionEmbedding`."""

import keras
import numpy as np
import pytest

import keras_attention as ka
from tests.utils import normal_sampler, run_layer_test

RNG = np.random.default_rng(6)


_rand = normal_sampler(RNG)


def _numpy_sinusoid(length, depth, start=0, max_wavelength=10000.0):
    """The paper's formula, written loop by loop: PE(pos, 2i) = sin(pos / w^(2i/d)),
    PE(pos, 2i+1) = cos(pos / w^(2i/d))."""
    pe = np.zeros((length, depth))
    for pos in range(start, start + length):
        for dim in range(depth):
            angle = pos / max_wavelength ** ((dim - dim % 2) / depth)
            pe[pos - start, dim] = np.sin(angle) if dim % 2 == 0 else np.cos(angle)
    return pe


# --- SinusoidalPositionEncoding ----------------------------------------------------


@pytest.mark.parametrize("depth", [8, 7])
def test_sinusoidal_matches_paper_formula(depth):
    x = _rand(2, 6, depth)
    out = keras.ops.convert_to_numpy(ka.SinusoidalPositionEncoding()(x))
    np.testing.assert_allclose(
        out - x, np.broadcast_to(_numpy_sinusoid(6, depth), x.shape), atol=1e-5
    )


def test_sinusoidal_start_index_and_long_sequences():
    layer = ka.SinusoidalPositionEncoding(max_wavelength=100)
    zeros = np.zeros((1, 300, 4), "float32")
    full = keras.ops.convert_to_numpy(layer(zeros))
    np.testing.assert_allclose(full[0], _numpy_sinusoid(300, 4, max_wavelength=100), atol=1e-4)
    # One step at position 7 sees the same encoding as position 7 of the full sequence.
    step = keras.ops.convert_to_numpy(layer(zeros[:, :1], start_index=7))
    np.testing.assert_allclose(step[0, 0], full[0, 7], atol=1e-6)
    step = layer(zeros[:, :2], start_index=keras.ops.convert_to_tensor(5))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(step)[0], full[0, 5:7], atol=1e-6)


def test_sinusoidal_layer_helper(tmp_path):
    layer, _ = run_layer_test(
        ka.SinusoidalPositionEncoding,
        {"max_wavelength": 1000},
        {"inputs": _rand(2, 5, 6)},
        tmp_path=tmp_path,
        expected_output_shape=(2, 5, 6),
        expected_num_trainable_weights=0,
        masked_inputs=("inputs",),
    )
    assert layer.count_params() == 0


def test_sinusoidal_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    out = ka.SinusoidalPositionEncoding()(_rand(1, 4, 8).astype("float16"))
    assert keras.backend.standardize_dtype(out.dtype) == "float16"


@pytest.mark.parametrize("bad", [1, 0, -5, True, "10000"])
def test_sinusoidal_rejects_bad_wavelength(bad):
    with pytest.raises(ValueError, match="max_wavelength"):
        ka.SinusoidalPositionEncoding(max_wavelength=bad)


def test_sinusoidal_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"inputs.shape=\(2, 5\)"):
        ka.SinusoidalPositionEncoding()(np.zeros((2, 5), "float32"))
    with pytest.raises(ValueError, match="start_index=-1"):
        ka.SinusoidalPositionEncoding()(np.zeros((2, 5, 4), "float32"), start_index=-1)


# --- PositionEmbedding -------------------------------------------------------------


def test_position_embedding_adds_table_rows():
    layer = ka.PositionEmbedding(sequence_length=10, initializer="random_normal")
    x = _rand(2, 4, 3)
    out = keras.ops.convert_to_numpy(layer(x))
    table = keras.ops.convert_to_numpy(layer.position_embeddings)
    assert table.shape == (10, 3)
    np.testing.assert_allclose(out, x + table[None, :4], atol=1e-6)
    step = keras.ops.convert_to_numpy(layer(x[:, :2], start_index=6))
    np.testing.assert_allclose(step, x[:, :2] + table[None, 6:8], atol=1e-6)
    # Parameter count: one row per position.
    assert layer.count_params() == 10 * 3


def test_position_embedding_layer_helper(tmp_path):
    run_layer_test(
        ka.PositionEmbedding,
        {"sequence_length": 8},
        {"inputs": _rand(2, 5, 6)},
        tmp_path=tmp_path,
        expected_output_shape=(2, 5, 6),
        expected_num_trainable_weights=1,
        masked_inputs=("inputs",),
    )


def test_position_embedding_errors_name_the_argument():
    with pytest.raises(ValueError, match="sequence_length=0"):
        ka.PositionEmbedding(0)
    with pytest.raises(ValueError, match=r"inputs.shape=\(2, 9, 4\)"):
        ka.PositionEmbedding(8)(np.zeros((2, 9, 4), "float32"))
    layer = ka.PositionEmbedding(8)
    layer(np.zeros((1, 4, 4), "float32"))
    with pytest.raises(ValueError, match="start_index=6"):
        layer(np.zeros((1, 4, 4), "float32"), start_index=6)


# --- TokenAndPositionEmbedding -----------------------------------------------------


def test_token_and_position_embedding_matches_numpy():
    layer = ka.TokenAndPositionEmbedding(
        vocabulary_size=11,
        sequence_length=6,
        embedding_dim=4,
        mask_zero=True,
        scale_by_sqrt_dim=True,
        position_initializer="random_normal",
    )
    tokens = np.array([[3, 5, 1, 0, 0], [10, 2, 7, 4, 9]])
    out = layer(tokens)
    table = keras.ops.convert_to_numpy(layer.embeddings)
    positions = keras.ops.convert_to_numpy(layer.position_embedding.position_embeddings)
    expected = table[tokens] * 2.0 + positions[None, :5]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), expected, atol=1e-5)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out._keras_mask), tokens != 0)
    # Tied logits: the hidden states times the transposed token table.
    hidden = _rand(2, 5, 4)
    logits = keras.ops.convert_to_numpy(layer(hidden, reverse=True))
    np.testing.assert_allclose(logits, hidden @ table.T, atol=1e-5)
    # Parameters: the token table and one row per position, nothing for the logits.
    assert layer.count_params() == 11 * 4 + 6 * 4


def test_token_and_position_embedding_sinusoidal_any_length():
    layer = ka.TokenAndPositionEmbedding(20, None, 6, position="sinusoidal")
    tokens = RNG.integers(0, 20, (2, 50))
    out = keras.ops.convert_to_numpy(layer(tokens))
    table = keras.ops.convert_to_numpy(layer.embeddings)
    np.testing.assert_allclose(out, table[tokens] + _numpy_sinusoid(50, 6), atol=1e-4)
    assert layer.count_params() == 20 * 6
    assert getattr(layer(tokens), "_keras_mask", None) is None


@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
def test_token_and_position_embedding_layer_helper(tmp_path, position):
    run_layer_test(
        ka.TokenAndPositionEmbedding,
        {
            "vocabulary_size": 13,
            "sequence_length": 7,
            "embedding_dim": 4,
            "position": position,
            "mask_zero": True,
        },
        {"inputs": RNG.integers(1, 13, (2, 5)).astype("int32")},
        tmp_path=tmp_path,
        expected_output_shape=(2, 5, 4),
        expected_num_trainable_weights=2 if position == "learned" else 1,
    )


def test_token_and_position_embedding_tied_model_saves(tmp_path):
    """One layer used both ways in a functional model: the logits stay tied after a
    `.keras` round trip (one table in the file, not two)."""
    layer = ka.TokenAndPositionEmbedding(17, 8, 4, mask_zero=True)
    tokens = keras.Input((None,), dtype="int32")
    logits = layer(layer(tokens), reverse=True)
    assert logits._keras_mask is not None
    model = keras.Model(tokens, logits)
    assert model.count_params() == 17 * 4 + 8 * 4
    data = RNG.integers(0, 17, (3, 6))
    path = str(tmp_path / "tied.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        model.predict(data, verbose=0), reloaded.predict(data, verbose=0), atol=1e-6
    )
    assert reloaded.count_params() == model.count_params()


def test_token_and_position_embedding_errors():
    with pytest.raises(ValueError, match="position='rotary'"):
        ka.TokenAndPositionEmbedding(10, 5, 4, position="rotary")
    with pytest.raises(ValueError, match="sequence_length=None"):
        ka.TokenAndPositionEmbedding(10, None, 4)
    with pytest.raises(ValueError, match="vocabulary_size=0"):
        ka.TokenAndPositionEmbedding(0, 5, 4)
    with pytest.raises(TypeError, match="mask_zero"):
        ka.TokenAndPositionEmbedding(10, 5, 4, mask_zero=1)
    layer = ka.TokenAndPositionEmbedding(10, 5, 4)
    with pytest.raises(ValueError, match=r"inputs.shape=\(1, 2, 3\)"):
        layer(np.zeros((1, 2, 3), "float32"))
    with pytest.raises(ValueError, match=r"inputs.shape=\(1, 2, 3\)"):
        layer(np.zeros((1, 2, 3), "float32"), reverse=True)

"""The int8 decoding cache (`cache_dtype="int8"`, `get_initial_cache(..., dtype="int8")`):
quantization against numpy, `MultiHeadAttention` decoding close to the float cache,
`generate()` (full and ring caches, greedy and beam) giving the float cache's tokens,
its bytes, the exported generator, and the errors."""

import keras
import numpy as np
import pytest

from keras_attention import MultiHeadAttention, TransformerDecoder
from keras_attention.export import export_generator
from keras_attention.layers._decoding_cache import QuantizedCache, dequantize, quantize
from keras_attention.models import CausalLanguageModel, Seq2SeqTransformer
from tests.test_export_generator import MAX_LENGTH, _expected_rows, _run_app
from tests.utils import random_normal, to_numpy

VOCABULARY, SEQUENCE, MOTIF = 24, 24, 3


def _numpy_quantize(x, heads):
    """The reference: per head of each row, `s = max|x| / 127`, `q = round(x / s)`."""
    split = x.reshape(x.shape[:-1] + (heads, -1)).astype("float64")
    scales = np.abs(split).max(axis=-1) / 127.0
    safe = np.where(scales > 0, scales, 1.0)
    q = np.clip(np.round(split / safe[..., None]), -127, 127)
    return q.reshape(x.shape).astype("int8"), scales


def _bytes(structure):
    return sum(to_numpy(x).nbytes for x in keras.tree.flatten(structure))


def test_quantize_round_trip_against_numpy():
    heads, dim = 3, 8
    x = random_normal(2, 5, heads * dim, seed=1) * np.array([0.01, 1.0, 50.0]).repeat(dim)
    x[0, 1, :dim] = 0.0  # an all-zero head: scale 0, read back as zeros
    values, scales = quantize(x, heads)
    assert keras.backend.standardize_dtype(values.dtype) == "int8"
    assert keras.backend.standardize_dtype(scales.dtype) == "float32"
    expected_values, expected_scales = _numpy_quantize(x, heads)
    np.testing.assert_allclose(to_numpy(scales), expected_scales, rtol=1e-6)
    # float32 vs float64 division may round a value sitting on .5 the other way
    assert np.abs(to_numpy(values).astype(int) - expected_values).max() <= 1
    assert np.mean(to_numpy(values) == expected_values) > 0.99
    restored = to_numpy(dequantize(values, scales))
    error = np.abs(restored - x).reshape(2, 5, heads, dim).max(axis=-1)
    assert np.all(error <= expected_scales / 2 * (1 + 1e-5) + 1e-12)
    assert np.all(restored[0, 1, :dim] == 0.0) and to_numpy(scales)[0, 1, 0] == 0.0


def _decode(layer, x, dtype, prefill=3):
    """A prefill of `prefill` tokens then one token a step; all outputs and the cache."""
    cache = layer.get_initial_cache(x.shape[0], x.shape[1], dtype=dtype)
    output, cache = layer(x[:, :prefill], x[:, :prefill], cache=cache, cache_index=0)
    outputs = [to_numpy(output)]
    for i in range(prefill, x.shape[1]):
        output, cache = layer(x[:, i : i + 1], x[:, i : i + 1], cache=cache, cache_index=i)
        outputs.append(to_numpy(output))
    return np.concatenate(outputs, axis=1), cache


@pytest.mark.parametrize("sliding_window", [None, 3], ids=["full", "ring"])
def test_cached_attention_with_int8_cache_is_close_to_the_float_cache(sliding_window):
    keras.utils.set_random_seed(0)
    layer = MultiHeadAttention(
        num_heads=4,
        key_dim=8,
        num_key_value_heads=2,
        position_embedding="rotary",
        sliding_window=sliding_window,
    )
    x = random_normal(2, 8, 16, seed=2)
    layer(x, x, use_causal_mask=True)
    float_outputs, float_cache = _decode(layer, x, None)
    int8_outputs, int8_cache = _decode(layer, x, "int8")
    assert isinstance(int8_cache, QuantizedCache)
    assert keras.backend.standardize_dtype(int8_cache.values.dtype) == "int8"
    slots = 8 if sliding_window is None else 3
    assert tuple(int8_cache.values.shape) == (2, slots, 2 * (8 + 8))
    assert tuple(int8_cache.scales.shape) == (2, slots, 2 * 2)
    # The cache read back: every key/value head within half its scale of the float one.
    scales = to_numpy(int8_cache.scales)
    restored = to_numpy(dequantize(int8_cache.values, int8_cache.scales))
    error = np.abs(restored - to_numpy(float_cache)).reshape(2, slots, 4, 8).max(axis=-1)
    assert np.all(error <= scales / 2 * (1 + 1e-4) + 1e-6)
    # The outputs: quantization noise of about 1% of the values' size, not more.
    scale = np.abs(float_outputs).max()
    np.testing.assert_allclose(int8_outputs, float_outputs, atol=0.02 * scale)
    # The prefill attends to its exact keys: identical to the float cache.
    np.testing.assert_allclose(int8_outputs[:, :3], float_outputs[:, :3], atol=1e-5)


def _motifs(count, seed):
    """Rows of a random 3-token motif repeated: the next token is the one 3 back."""
    motif = np.random.default_rng(seed).integers(1, VOCABULARY, size=(count, MOTIF))
    return np.tile(motif, (1, SEQUENCE // MOTIF + 2))[:, : SEQUENCE + 1].astype("int32")


def _model(**kwargs):
    return CausalLanguageModel(
        vocabulary_size=VOCABULARY,
        sequence_length=SEQUENCE,
        num_layers=2,
        embedding_dim=64,
        num_heads=2,
        intermediate_dim=64,
        style="llama",
        **kwargs,
    )


@pytest.fixture(scope="module")
def trained():
    """A small model trained to copy the token 3 positions back (so it attends to the
    cache), and the same weights with a sliding window of 4 (a ring cache)."""
    keras.utils.set_random_seed(0)
    model = _model()
    model.compile(
        keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    data = _motifs(1024, seed=0)
    model.fit(data[:, :-1], data[:, 1:], batch_size=64, epochs=3, verbose=0)
    ring = _model(sliding_window=4)
    ring(data[:1, :-1])
    ring.set_weights(model.get_weights())
    return {"full": model, "ring": ring}


@pytest.mark.parametrize("sampler", ["greedy", "beam"])
@pytest.mark.parametrize("cache", ["full", "ring"])
def test_generate_with_int8_cache_gives_the_float_cache_tokens(trained, cache, sampler):
    model = trained[cache]
    prompt = [list(row) for row in _motifs(4, seed=1)[:, :5]]
    prompt[1] = prompt[1][:4]  # prompts of different lengths
    expected = model.generate(prompt, 12, sampler=sampler)
    generated = model.generate(prompt, 12, sampler=sampler, cache_dtype="int8")
    assert generated.shape == expected.shape
    assert np.mean(generated == expected) >= 0.95
    if cache == "full":  # trained without a window: the ring model copies less well
        # The model continues the motifs far above chance (1 in 23): it reads the cache.
        # (Measured 1.0 on TensorFlow; the training differs a little by backend.)
        copied = np.mean(expected[[0, 2, 3], 5:] == _motifs(4, seed=1)[[0, 2, 3], 5:17])
        assert copied >= 0.5, copied


def test_int8_cache_bytes_are_under_three_tenths_of_float32(trained):
    # head_dim 32: (2 * 32 + 8) / (8 * 32) = 0.28 per position and head
    model = trained["full"]
    float_bytes = _bytes(model.initial_cache(2, SEQUENCE))
    int8_bytes = _bytes(model.initial_cache(2, SEQUENCE, "int8"))
    assert float_bytes == 2 * SEQUENCE * 2 * 64 * 4 * 2  # batch, positions, K+V, layers
    assert int8_bytes <= 0.3 * float_bytes


def test_seq2seq_generate_with_int8_cache():
    keras.utils.set_random_seed(7)
    model = Seq2SeqTransformer(
        vocabulary_size=VOCABULARY,
        sequence_length=16,
        num_layers=1,
        embedding_dim=64,
        num_heads=2,
        intermediate_dim=32,
    )
    source = _motifs(2, seed=3)[:, :6]
    expected = model.generate(source, [[1], [1]], 8)
    generated = model.generate(source, [[1], [1]], 8, cache_dtype="int8")
    # A random model: a near tie may flip a token; most must agree.
    assert np.mean(generated == expected) >= 0.8


@pytest.mark.tensorflow_only("SavedModel export of TensorFlow graphs")
@pytest.mark.parametrize("format", ["tf_saved_model", "litert"])
def test_exported_generator_with_int8_cache_equals_generate(trained, tmp_path, format):
    if format == "litert":
        pytest.importorskip("ai_edge_litert")
    model = trained["ring"]
    path = tmp_path / ("lm.tflite" if format == "litert" else "lm")
    path = export_generator(model, path, format=format, max_length=MAX_LENGTH, cache_dtype="int8")
    tokens = np.zeros((2, 5), "int32")
    tokens[0], tokens[1, :4] = _motifs(1, seed=4)[0, :5], _motifs(1, seed=5)[0, :4]
    mask = tokens != 0
    lengths = mask.sum(axis=1)
    expected = model.generate(tokens, MAX_LENGTH - 5, prompt_mask=mask, cache_dtype="int8")
    served = _run_app(format, path, tmp_path, tokens=tokens, mask=mask)
    outputs = ("tokens",) if format == "litert" else ("tokens", "generate")
    for row, expected_row in enumerate(_expected_rows(expected, lengths)):
        for name in outputs:
            np.testing.assert_array_equal(served[name][row, : len(expected_row)], expected_row)
    import tensorflow as tf

    if format == "tf_saved_model":
        prefill = tf.saved_model.load(path).signatures["prefill"]
        state = prefill(tokens=tokens, mask=mask)["cache"]
        # int8 keys/values, the scales' float32 bytes, the key mask: 2 layers of a ring
        # of 4 slots, kept in the state's first rows.
        assert state.dtype == tf.int8
        assert tuple(state.shape) == (2, MAX_LENGTH, 2 * 128 + 4 * 2 * 4 + 1)


def test_bad_cache_dtypes_are_named(trained, tmp_path):
    model = trained["full"]
    with pytest.raises(ValueError, match="cache_dtype='int4'"):
        model.generate([[1, 2]], 2, cache_dtype="int4")
    with pytest.raises(ValueError, match="cache_dtype='float16'"):
        export_generator(model, tmp_path / "lm.tflite", cache_dtype="float16")
    layer = model.decoder_layers[0]
    with pytest.raises(ValueError, match="dtype='int32'"):
        layer.get_initial_cache(1, 4, dtype="int32")


def test_malformed_int8_caches_are_refused():
    keras.utils.set_random_seed(1)
    layer = MultiHeadAttention(num_heads=2, key_dim=4)
    x = random_normal(1, 3, 8)
    layer(x, x)
    cache = layer.get_initial_cache(1, 3, dtype="int8")
    bad_scales = QuantizedCache(cache.values, np.zeros((1, 3, 3), "float32"))
    with pytest.raises(ValueError, match="scales.shape=\\(1, 3, 3\\)"):
        layer(x[:, :1], x[:, :1], cache=bad_scales, cache_index=0)
    float_values = QuantizedCache(np.zeros((1, 3, 16), "float32"), cache.scales)
    with pytest.raises(ValueError, match="values.dtype=float32"):
        layer(x[:, :1], x[:, :1], cache=float_values, cache_index=0)


def test_keras_hub_cache_layout_refuses_int8():
    keras.utils.set_random_seed(2)
    decoder = TransformerDecoder(intermediate_dim=16, num_heads=2)
    x = random_normal(1, 3, 8)
    decoder(x)
    stacked = np.zeros((1, 2, 3, 2, 4), "int8")
    with pytest.raises(ValueError, match="int8 cache is this package's"):
        decoder(x[:, :1], self_attention_cache=stacked, self_attention_cache_update_index=0)
    # This package's layout takes an int8 cache.
    cache = decoder.get_initial_cache(1, 3, dtype="int8")
    output, cache = decoder(x[:, :1], self_attention_cache=cache, cache_index=0)
    assert isinstance(cache, QuantizedCache) and tuple(output.shape) == (1, 1, 8)


@pytest.mark.tensorflow_only("LiteRT export of TensorFlow graphs")
def test_int8_weights_and_int8_ring_cache_export_to_litert_and_equal_generate(trained, tmp_path):
    """`model.quantize("int8")` and `cache_dtype="int8"` together, through LiteRT (the
    int8 products run in float32 in the graph, exactly)."""
    pytest.importorskip("ai_edge_litert")
    source = trained["ring"]
    model = CausalLanguageModel.from_config(source.get_config())
    model.set_weights(source.get_weights())
    model.quantize("int8")
    path = export_generator(
        model, tmp_path / "lm.tflite", max_length=MAX_LENGTH, cache_dtype="int8"
    )
    tokens = _motifs(2, seed=6)[:, :5]
    mask = np.ones(tokens.shape, bool)
    expected = model.generate(tokens, MAX_LENGTH - 5, cache_dtype="int8")
    served = _run_app("litert", path, tmp_path, tokens=tokens, mask=mask)
    np.testing.assert_array_equal(served["tokens"], expected)

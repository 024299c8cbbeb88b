"""`quantize(mode)` and LoRA on the layers and model classes, through `generate()`,
`.keras` saving and export.

Tolerances of a quantized output against the float one, relative to the float
output's largest magnitude (random weights, small layers): int8 5 %, float8 25 %
(Keras' float8 `Dense` rounds inputs and kernel to e4m3), int4 50 % (per-channel
16 levels).
"""

import os
import warnings

import keras
import numpy as np
import pytest

import keras_attention as ka
from tests.utils import random_normal, to_numpy

BACKEND = keras.backend.backend()
MODES = ("int8", "int4", "float8")
TOLERANCE = {"int8": 0.05, "float8": 0.25, "int4": 0.5}
TOKENS = np.array([[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]], "int32")
X = random_normal(2, 6, 16, seed=1)
C = random_normal(2, 4, 16, seed=2)


def _attention(layer_class, **kwargs):
    return lambda: (layer_class(**kwargs), lambda layer, x, c: layer(x, c))


# Each public layer, in a functional model: (factory, inputs, its call on them).
LAYER_CASES = {
    "ScaledDotProductAttention": _attention(ka.ScaledDotProductAttention),
    "SelfAttention": lambda: (ka.SelfAttention(16), lambda layer, x, c: layer(x)),
    "MultiHeadAttention": _attention(ka.MultiHeadAttention, num_heads=2, key_dim=8),
    "MultiHeadAttention_rope_qk_norm": lambda: (
        ka.MultiHeadAttention(
            num_heads=2,
            key_dim=8,
            position_embedding="rotary",
            query_norm="rms_norm",
            key_norm="rms_norm",
        ),
        lambda layer, x, c: layer(x, x),
    ),
    "MultiHeadAttention_alibi": _attention(
        ka.MultiHeadAttention, num_heads=2, key_dim=8, score_bias=ka.ALiBiBias(num_heads=2)
    ),
    "MultiHeadAttention_t5": _attention(
        ka.MultiHeadAttention,
        num_heads=2,
        key_dim=8,
        score_bias=ka.RelativePositionBias(num_buckets=8, max_distance=16, num_heads=2),
    ),
    "GroupedQueryAttention": _attention(
        ka.GroupedQueryAttention, head_dim=8, num_query_heads=4, num_key_value_heads=2
    ),
    "AdditiveAttention": _attention(ka.AdditiveAttention, units=8),
    "LuongAttention": _attention(ka.LuongAttention, score="general"),
    "LuongAttention_dot": _attention(ka.LuongAttention),
    "AttentionPooling": lambda: (ka.AttentionPooling(units=8), lambda layer, x, c: layer(x)),
    "PositionEmbedding": lambda: (
        ka.PositionEmbedding(sequence_length=8),
        lambda layer, x, c: layer(x),
    ),
    "SinusoidalPositionEncoding": lambda: (
        ka.SinusoidalPositionEncoding(),
        lambda layer, x, c: layer(x),
    ),
    "TokenAndPositionEmbedding": None,  # a model class case below covers it
    "FeedForward": lambda: (ka.FeedForward(32, activation="swiglu"), lambda layer, x, c: layer(x)),
    "MixtureOfExperts": lambda: (
        ka.MixtureOfExperts(4, 2, 32),
        lambda layer, x, c: layer(x),
    ),
    "TransformerEncoder": lambda: (
        ka.TransformerEncoder(intermediate_dim=32, num_heads=2),
        lambda layer, x, c: layer(x),
    ),
    "TransformerDecoder": lambda: (
        ka.TransformerDecoder(intermediate_dim=32, num_heads=2),
        lambda layer, x, c: layer(x, c),
    ),
    "RMSNorm": lambda: (ka.RMSNorm(), lambda layer, x, c: layer(x)),
    "RotaryEmbedding": lambda: (
        ka.RotaryEmbedding(),
        lambda layer, x, c: layer(keras.layers.Reshape((6, 2, 8))(x)),
    ),
}
KERAS_WARNINGS = ("InputLayer", "Dropout", "Reshape")  # Keras' own layers warn in Keras


def _functional(case):
    layer, call = LAYER_CASES[case]()
    x, c = keras.Input((6, 16)), keras.Input((4, 16))
    return keras.Model([x, c], call(layer, x, c)), layer


def _quantize_quietly(model, mode):
    """`model.quantize(mode)`; the warnings about layers of this package."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.quantize(mode)
    messages = [str(w.message) for w in caught if "__array__" not in str(w.message)]
    return [m for m in messages if not any(f"Layer {k} " in m for k in KERAS_WARNINGS)]


def _close(actual, expected, mode):
    actual, expected = to_numpy(actual), to_numpy(expected)
    scale = np.abs(expected).max()
    assert np.abs(actual - expected).max() <= TOLERANCE[mode] * scale


# Every layer in int8; the other modes on the layers that hold different Dense uses.
LAYER_MODES = [
    (case, mode)
    for case, factory in LAYER_CASES.items()
    if factory is not None
    for mode in MODES
    if mode == "int8" or case in ("MultiHeadAttention_rope_qk_norm", "TransformerDecoder")
]


@pytest.mark.parametrize("case, mode", LAYER_MODES)
def test_every_public_layer_quantizes_without_warnings(case, mode):
    model, _ = _functional(case)
    expected = model([X, C])
    assert _quantize_quietly(model, mode) == []
    _close(model([X, C]), expected, mode)


def test_weightless_and_float_layers_are_left_alone():
    model, layer = _functional("MultiHeadAttention_rope_qk_norm")
    norm_weights = [to_numpy(w) for w in layer.query_norm_layer.weights]
    model.quantize("int8")
    assert layer.rotary_embedding.built
    assert layer.query_dense.quantization_mode == "int8"
    assert layer.query_norm_layer.quantization_mode is None
    for before, after in zip(norm_weights, layer.query_norm_layer.weights):
        np.testing.assert_array_equal(to_numpy(after), before)


def _causal_lm(style="llama", **kwargs):
    defaults = dict(
        vocabulary_size=40, sequence_length=24, num_layers=2, embedding_dim=32, num_heads=4
    )
    defaults.update(intermediate_dim=64, dropout=0.0, style=style)
    defaults.update(kwargs)
    return ka.models.CausalLanguageModel(**defaults)


def _seq2seq():
    return ka.models.Seq2SeqTransformer(
        vocabulary_size=40, sequence_length=24, num_layers=1, embedding_dim=32, dropout=0.0
    )


@pytest.mark.parametrize(
    "kind, mode",
    [("llama", mode) for mode in MODES]
    + [("gpt_tied", "int8"), ("seq2seq", "int8"), ("seq2seq", "int4")],
)
def test_model_classes_quantize(kind, mode):
    if kind == "seq2seq":
        model, inputs = _seq2seq(), [TOKENS, TOKENS[:, :5]]
    else:
        model = _causal_lm(kind[:3] if kind != "llama" else "llama", tie_embeddings="tied" in kind)
        inputs = TOKENS
    expected = model(inputs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.quantize(mode)
    assert [str(w.message) for w in caught] == []
    _close(model(inputs), expected, mode)
    dense = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.Dense)]
    assert dense and all(layer.quantization_mode == mode for layer in dense)
    if kind == "seq2seq":
        tokens = model.generate(TOKENS[:, :4], [[1], [1]], max_new_tokens=3)
    else:
        tokens = model.generate(TOKENS[:, :4], max_new_tokens=3)
    assert tokens.shape == ((2, 4) if kind == "seq2seq" else (2, 7))


def _flipping_model():
    """A GPT model whose every position predicts token 1 in float and token 2 once
    int8 or int4 round its head: the last block's final LayerNorm (gamma 0, beta 1)
    makes every hidden state a vector of ones; the head's column 1 is 1.0 and 31
    entries of 0.033 (sum 2.023), which round to 0 in int4 (step 1/15) and to
    4/127 in int8 (sum 1.98); column 2 is two 1.0 (2.0, exact in both)."""
    model = _causal_lm("gpt")
    norm = model.decoder_layers[-1].feedforward_layer_norm
    norm.gamma.assign(np.zeros(norm.gamma.shape, "float32"))
    norm.beta.assign(np.ones(norm.beta.shape, "float32"))
    kernel = np.zeros(model.lm_head.kernel.shape, "float32")
    kernel[0, 1], kernel[1:, 1] = 1.0, 0.033
    kernel[:2, 2] = 1.0
    model.lm_head.kernel.assign(kernel)
    return model


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_compiled_generate_uses_the_quantized_weights(mode):
    model = _flipping_model()
    prompt = TOKENS[:, :3]
    float_tokens = model.generate(prompt, max_new_tokens=4)  # compiled with float weights
    np.testing.assert_array_equal(float_tokens[:, 3:], 1)
    model.quantize(mode)
    np.testing.assert_array_equal(model.generate(prompt, max_new_tokens=4)[:, 3:], 2)
    eager = model.generate(prompt, max_new_tokens=4, compile=False)
    np.testing.assert_array_equal(eager[:, 3:], 2)


def test_quantized_model_saves_and_reloads(tmp_path):
    model = _causal_lm()
    model.quantize("int8")
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(to_numpy(reloaded(TOKENS)), to_numpy(model(TOKENS)))
    assert reloaded.lm_head.quantization_mode == "int8"
    np.testing.assert_array_equal(
        reloaded.generate(TOKENS[:, :3], max_new_tokens=4),
        model.generate(TOKENS[:, :3], max_new_tokens=4),
    )


def test_learned_position_table_is_int8_rows_and_reloads(tmp_path):
    model = _causal_lm("gpt")
    layer = model.decoder_embedding.position_embedding
    table = to_numpy(layer.position_embeddings)
    model.quantize("int8")
    assert layer.quantization_mode == "int8"
    assert keras.backend.standardize_dtype(layer.position_embeddings.dtype) == "int8"
    # Each row to within half its step (max|row| / 127), against the float table.
    rows = to_numpy(layer.position_embeddings) / to_numpy(layer.position_embeddings_scale)[:, None]
    step = np.abs(table).max(axis=-1, keepdims=True) / 127
    assert np.all(np.abs(rows - table) <= 0.5001 * step)
    x = random_normal(2, 6, 32, seed=3)
    np.testing.assert_allclose(to_numpy(layer(x)), to_numpy(x) + rows[:6], rtol=1e-6, atol=1e-6)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert reloaded.decoder_embedding.position_embedding.quantization_mode == "int8"
    np.testing.assert_array_equal(to_numpy(reloaded(TOKENS)), to_numpy(model(TOKENS)))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="SavedModel export needs TensorFlow")
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_model_and_generator_export_to_saved_model(tmp_path, mode):
    import tensorflow as tf

    model = _causal_lm()
    model.quantize(mode)
    path = os.path.join(tmp_path, "model")
    ka.export.export_model(model, path, format="tf_saved_model")
    served = tf.saved_model.load(path)
    np.testing.assert_allclose(
        served.serve(TOKENS).numpy(), to_numpy(model(TOKENS)), rtol=1e-5, atol=1e-5
    )
    generator_path = os.path.join(tmp_path, "generator")
    ka.export.export_generator(model, generator_path, format="tf_saved_model", max_length=7)
    generate = tf.saved_model.load(generator_path).signatures["generate"]
    prompt = TOKENS[:, :3]
    out = generate(tokens=tf.constant(prompt), mask=tf.constant(np.ones((2, 3), bool)))
    np.testing.assert_array_equal(out["tokens"].numpy(), model.generate(prompt, max_new_tokens=4))


@pytest.mark.parametrize("mode", ["int9", "INT8"])
def test_unknown_mode_is_rejected(mode):
    # Keras' own check (the wrapper around every `quantize`) names the argument.
    with pytest.raises(ValueError, match=f"Invalid quantization mode.*Received: mode={mode}"):
        _causal_lm().quantize(mode)


def test_quantizing_twice_is_rejected():
    model = _causal_lm()
    model.quantize("int8")
    with pytest.raises(ValueError, match=r"already quantized \(mode='int8'\).*mode='int4'"):
        model.quantize("int4")


def test_float8_model_generates_saves_and_reloads(tmp_path):
    # Keras' float8 `Dense` (e4m3 inputs and kernel, float32 scales) runs on CPU.
    model = _causal_lm()
    model.quantize("float8")
    prompt = TOKENS[:, :3]
    expected = model.generate(prompt, max_new_tokens=4)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert reloaded.lm_head.quantization_mode == "float8"
    np.testing.assert_array_equal(to_numpy(reloaded(TOKENS)), to_numpy(model(TOKENS)))
    np.testing.assert_array_equal(reloaded.generate(prompt, max_new_tokens=4), expected)


# -- LiteRT export of a quantized model ------------------------------------------------


def _litert_greedy(path, prompt, max_length):
    """The app's greedy loop over the exported `prefill`/`decode` (full-length rows)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(path)
    prefill = interpreter.get_signature_runner("prefill")
    decode = interpreter.get_signature_runner("decode")
    tokens = np.zeros((prompt.shape[0], max_length), "int32")
    tokens[:, : prompt.shape[1]] = prompt
    out = prefill(tokens=prompt, mask=np.ones(prompt.shape, bool))
    for index in range(prompt.shape[1], max_length):
        tokens[:, index] = out["logits"].argmax(-1)
        out = decode(token=tokens[:, index], cache=out["cache"], index=np.array(index, "int32"))
    return tokens


def _litert_serve(path, tokens):
    from ai_edge_litert.interpreter import Interpreter

    (output,) = Interpreter(path).get_signature_runner()(tokens=tokens).values()
    return output


def _assert_litert_logits_close(actual, expected):
    """Keras' int8 `Dense` rounds each activation to int8; where LiteRT's float ops
    (a norm's rsqrt, ...) differ from TensorFlow's in the last bit, a value at a
    rounding boundary lands one int8 step away, which moves the logits downstream by
    about a step (measured: 6 % of the logits, at most 0.6 % of the largest). The
    rest are the same numbers."""
    scale = np.abs(expected).max()
    assert np.abs(actual - expected).max() <= 0.02 * scale
    assert np.mean(np.abs(actual - expected) <= 1e-5 * scale) >= 0.8


@pytest.mark.skipif(BACKEND != "tensorflow", reason="LiteRT conversion of TensorFlow graphs")
def test_int8_model_and_generator_export_to_litert_with_their_int8_weights(tmp_path):
    pytest.importorskip("ai_edge_litert")
    keras.utils.set_random_seed(0)
    model = _causal_lm(vocabulary_size=300, embedding_dim=64, intermediate_dim=256)
    float_bytes = sum(int(np.prod(w.shape)) * 4 for w in model.weights)
    model.quantize("int8")
    prompt, max_length = TOKENS[:, :5], 20
    expected = model.generate(prompt, max_new_tokens=max_length - 5)
    path = ka.export.export_generator(model, tmp_path / "lm.tflite", max_length=max_length)
    # The int8 products run in float32 in the graph (exact): the same tokens.
    np.testing.assert_array_equal(_litert_greedy(path, prompt, max_length), expected)
    # The kernels are int8 in the file (measured 0.55x the float32 weights' bytes, the
    # float32 export 1.2x): smaller than any float32 export of the model.
    assert os.path.getsize(path) < 0.75 * float_bytes
    model_path = ka.export.export_model(model, tmp_path / "model.tflite", format="litert")
    _assert_litert_logits_close(_litert_serve(model_path, TOKENS), to_numpy(model(TOKENS)))
    # The user's model is left as it was: quantized, generating the same tokens, and
    # Keras' int8 matmul is int8 again outside the export.
    assert model.lm_head.quantization_mode == "int8"
    np.testing.assert_array_equal(model.generate(prompt, max_new_tokens=max_length - 5), expected)
    product = keras.ops.matmul(np.ones((2, 3), "int8"), np.ones((3, 2), "int8"))
    assert keras.backend.standardize_dtype(product.dtype) == "int32"


@pytest.mark.skipif(BACKEND != "tensorflow", reason="LiteRT conversion of TensorFlow graphs")
def test_int4_model_exports_to_litert(tmp_path):
    pytest.importorskip("ai_edge_litert")
    model = _causal_lm()
    model.quantize("int4")
    path = ka.export.export_model(model, tmp_path / "model.tflite", format="litert")
    _assert_litert_logits_close(_litert_serve(path, TOKENS), to_numpy(model(TOKENS)))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="LiteRT conversion of TensorFlow graphs")
def test_float8_model_is_refused_by_the_litert_exports(tmp_path):
    model = _causal_lm()
    model.quantize("float8")
    match = r"LiteRT has no float8 type.*Received: \d+ float8 layers .*format='litert'"
    with pytest.raises(ValueError, match=match):
        ka.export.export_generator(model, tmp_path / "lm.tflite", max_length=8)
    with pytest.raises(ValueError, match=match):
        ka.export.export_model(model, tmp_path / "model.tflite", format="litert")
    assert not os.listdir(tmp_path)


# -- LoRA ----------------------------------------------------------------------------


def _lora_names(variables):
    return sorted(v.path for v in variables if "lora" in v.name)


def test_enable_lora_trains_under_two_percent_of_a_llama_shaped_model():
    model = _causal_lm(
        vocabulary_size=8000, num_layers=4, embedding_dim=256, num_heads=8, intermediate_dim=688
    )
    layers = model.enable_lora(4)
    assert sorted({layer.name for layer in layers}) == ["query", "value"] and len(layers) == 8
    trainable = model.trainable_weights
    assert len(trainable) == 16 and _lora_names(trainable) == sorted(v.path for v in trainable)
    count = sum(int(np.prod(v.shape)) for v in trainable)
    assert count / model.count_params() <= 0.02


def _fine_tuned(model):
    """One epoch of `fit` on next-token targets: only the LoRA factors may move."""
    before = {v.path: to_numpy(v) for v in model.weights}
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    model.fit(TOKENS[:, :-1], TOKENS[:, 1:], epochs=3, verbose=0)
    return before


def test_lora_fine_tuning_moves_only_the_lora_weights_and_reaches_generate(tmp_path):
    model = _causal_lm("gpt")
    prompt = TOKENS[:, :3]
    model.generate(prompt, max_new_tokens=4)  # compiled before LoRA
    model.enable_lora(2, target_layer_names=("query", "value", "lm_head"))
    before = _fine_tuned(model)
    changed = sorted(
        v.path for v in model.weights if not np.array_equal(to_numpy(v), before[v.path])
    )
    assert changed and set(changed) <= set(_lora_names(model.weights))
    compiled = model.generate(prompt, max_new_tokens=4)
    np.testing.assert_array_equal(compiled, model.generate(prompt, max_new_tokens=4, compile=False))
    path = os.path.join(tmp_path, "lora.keras")
    model.save(path)  # Keras' Dense merges the factors into the kernel
    reloaded = keras.saving.load_model(path)
    assert _lora_names(reloaded.weights) == []
    np.testing.assert_allclose(
        to_numpy(reloaded(TOKENS)), to_numpy(model(TOKENS)), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(reloaded.generate(prompt, max_new_tokens=4), compiled)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="SavedModel export needs TensorFlow")
def test_lora_model_exports_merged(tmp_path):
    import tensorflow as tf

    model = _causal_lm()
    model.enable_lora(2)
    for layer in model._flatten_layers():
        if getattr(layer, "lora_enabled", False):
            layer.lora_kernel_b.assign(0.1 * np.ones(layer.lora_kernel_b.shape, "float32"))
    path = os.path.join(tmp_path, "generator")
    ka.export.export_generator(model, path, format="tf_saved_model", max_length=7)
    generate = tf.saved_model.load(path).signatures["generate"]
    prompt = TOKENS[:, :3]
    out = generate(tokens=tf.constant(prompt), mask=tf.constant(np.ones((2, 3), bool)))
    np.testing.assert_array_equal(out["tokens"].numpy(), model.generate(prompt, max_new_tokens=4))


@pytest.mark.parametrize("layer_class", ["MultiHeadAttention", "FeedForward"])
def test_layer_enable_lora_on_its_projections(layer_class):
    if layer_class == "MultiHeadAttention":
        layer = ka.MultiHeadAttention(num_heads=2, key_dim=8, query_norm="rms_norm")
        layer(X, X)
        expected = ["attention_output", "key", "query", "value"]
    else:
        layer = ka.FeedForward(32, activation="swiglu")
        layer(X)
        expected = ["gate_dense", "intermediate_dense", "output_dense"]
    assert sorted(target.name for target in layer.enable_lora(2)) == expected
    assert len(layer.trainable_weights) == 2 * len(expected)
    assert _lora_names(layer.trainable_weights) == sorted(v.path for v in layer.trainable_weights)


@pytest.mark.parametrize("rank", [0, -1, 1.5, True])
def test_bad_lora_rank_is_rejected(rank):
    with pytest.raises(
        ValueError, match=f"`rank` must be a positive integer. Received: rank={rank!r}"
    ):
        _causal_lm().enable_lora(rank)


def test_lora_target_that_matches_nothing_is_rejected():
    with pytest.raises(ValueError, match=r"no match: \['querry'\].*target_layer_names=\('querry',"):
        _causal_lm().enable_lora(2, target_layer_names=("querry", "value"))
    with pytest.raises(ValueError, match="no match: \\['final_norm'\\]"):
        _causal_lm().enable_lora(2, target_layer_names="final_norm")

"""`from_keras_hub`: keras-hub tasks, backbones and saved presets to this package's
models, text in and out through the kept preprocessor, `verify`, dtype policies,
`.keras` round trips and the errors (issue 29).

The keras-hub models are small with random weights (norm scales and biases moved off
1 and 0); their tokenizers are built here from tiny vocabularies (a byte-pair one for
GPT-2, a SentencePiece model trained on one sentence for Llama), so nothing is
downloaded. The references are keras-hub's own forward pass and `generate`. Each
family's conversion (logits, greedy tokens, `.keras` and preset round trips) is in
tests/test_from_keras_hub_families.py.
"""

import io

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

from keras_attention.convert import from_keras_hub  # noqa: E402
from keras_attention.convert.keras_hub import gpt2  # noqa: E402
from keras_attention.models import CausalLanguageModel, Seq2SeqTransformer  # noqa: E402

PROMPTS = ["The quick brown fox", "The fox"]
NEW_TOKENS = 6
MERGES = ["T h", "Th e", "Ġ q", "u i", "Ġq ui", "c k", "Ġqui ck", "Ġ b", "r o", "Ġb ro"]
MERGES += ["w n", "Ġbro wn", "Ġ f", "o x", "Ġf ox"]


def _randomize(model, seed=0):
    """Random weights; norm scales near 1 and biases near 0, each different."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        shape, name = tuple(weight.shape), weight.path.split("/")[-1]
        if name in ("scale", "gamma"):
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name in ("bias", "beta"):
            value = 0.2 * rng.standard_normal(shape)
        else:
            value = 0.5 * rng.standard_normal(shape)
        weight.assign(value.astype("float32"))


def _gpt2_tokenizer():
    # Id 0 is an ordinary character: keras-hub pads with 0, and a pad id equal to the
    # end id would end keras-hub's own loop at once.
    vocabulary = {c: i for i, c in enumerate("!abcdefghijklmnopqrstuvwxyzĠT.")}
    for merge in MERGES:
        vocabulary["".join(merge.split())] = len(vocabulary)
    vocabulary["<|endoftext|>"] = len(vocabulary)
    return keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=MERGES)


def _gpt2_lm(dtype=None, preprocessor=True):
    tokenizer = _gpt2_tokenizer()
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=32,
        dtype=dtype,
    )
    _randomize(backbone)
    preprocessor = (
        keras_hub.models.GPT2CausalLMPreprocessor(tokenizer=tokenizer, sequence_length=16)
        if preprocessor
        else None
    )
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor)
    lm.compile(sampler="greedy")
    return lm


def _llama_tokenizer():
    sentencepiece = pytest.importorskip("sentencepiece")
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["The quick brown fox jumps over the lazy dog."] * 4),
        model_writer=proto,
        vocab_size=30,
        model_type="char",
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        pad_piece="<pad>",
        minloglevel=2,
    )
    return keras_hub.models.LlamaTokenizer(proto=proto.getvalue())


def _keras_hub_text(lm, prompt):
    """keras-hub's greedy `generate` of one prompt with `NEW_TOKENS` new tokens."""
    mask = lm.preprocessor.generate_preprocess([prompt])["padding_mask"]
    length = int(keras.ops.convert_to_numpy(mask).sum())
    return lm.generate([prompt], max_length=length + NEW_TOKENS)[0]


@pytest.fixture(scope="module")
def gpt2_pair():
    keras.utils.set_random_seed(0)
    lm = _gpt2_lm()
    return lm, CausalLanguageModel.from_keras_hub(lm)


# -- conversions from a task, a backbone and a saved preset ---------------------------


def test_from_causal_lm_logits_match_keras_hub(gpt2_pair):
    lm, model = gpt2_pair
    tokens = np.array([[4, 9, 17, 30, 12], [20, 6, 0, 0, 0]], "int32")
    mask = tokens != 0
    expected = keras.ops.convert_to_numpy(lm({"token_ids": tokens, "padding_mask": mask}))
    actual = keras.ops.convert_to_numpy(model(tokens))
    assert np.abs(actual - expected)[mask].max() <= 1e-4
    assert isinstance(model, CausalLanguageModel) and model.dtype_policy.name == "float32"


def test_text_in_text_out_equals_keras_hub_generate(gpt2_pair):
    lm, model = gpt2_pair
    expected = [_keras_hub_text(lm, prompt) for prompt in PROMPTS]
    assert model.generate(PROMPTS, max_new_tokens=NEW_TOKENS) == expected
    assert model.generate(PROMPTS[0], max_new_tokens=NEW_TOKENS) == expected[0]
    assert model.tokenizer is lm.preprocessor.tokenizer


def test_text_generation_stops_at_the_end_token_by_default(gpt2_pair, monkeypatch):
    _, model = gpt2_pair
    calls = []
    run = model._run_generate

    def spy(arguments, *args):
        calls.append(arguments.stop_token_ids)
        return run(arguments, *args)

    monkeypatch.setattr(model, "_run_generate", spy)
    model.generate(PROMPTS, max_new_tokens=2, compile=False)
    model.generate(PROMPTS, max_new_tokens=2, stop_token_ids=[5], compile=False)
    model.generate([[4, 9]], max_new_tokens=2, compile=False)  # ids: no stop unless asked
    assert calls == [(model.tokenizer.end_token_id,), [5], None]


def test_token_ids_in_and_out_as_before(gpt2_pair):
    lm, model = gpt2_pair
    ids_lm = keras_hub.models.GPT2CausalLM(backbone=lm.backbone, preprocessor=None)
    ids_lm.compile(sampler="greedy")
    prompt = np.array([[31, 4, 9, 17, 30]], "int32")
    padded = np.pad(prompt, ((0, 0), (0, NEW_TOKENS)))
    expected = ids_lm.generate(
        {"token_ids": padded, "padding_mask": padded != 0},
        stop_token_ids=None,
    )["token_ids"]
    actual = model.generate(prompt, max_new_tokens=NEW_TOKENS)
    assert actual.dtype == np.int32
    np.testing.assert_array_equal(actual, expected)


def test_save_and_reload_keep_text_generation(gpt2_pair, tmp_path):
    _, model = gpt2_pair
    model.save(tmp_path / "gpt2.keras")
    loaded = keras.saving.load_model(tmp_path / "gpt2.keras")
    assert loaded.tokenizer is not None and loaded.tokenizer is not model.tokenizer
    assert loaded.tokenizer.vocabulary_size() == model.tokenizer.vocabulary_size()
    assert loaded.generate(PROMPTS, max_new_tokens=NEW_TOKENS) == model.generate(
        PROMPTS, max_new_tokens=NEW_TOKENS
    )


def test_from_backbone_has_ids_only():
    keras.utils.set_random_seed(1)
    lm = _gpt2_lm(preprocessor=False)
    model = from_keras_hub(lm.backbone)
    assert model.tokenizer is None
    assert model.generate([[4, 9]], max_new_tokens=2).shape == (1, 4)
    with pytest.raises(ValueError, match="has no tokenizer"):
        model.generate(["The fox"], max_new_tokens=2)


def test_llama_preset_folder_round_trip_with_sentencepiece(tmp_path):
    keras.utils.set_random_seed(3)
    tokenizer = _llama_tokenizer()
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=2,
        num_query_heads=4,
        num_key_value_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
    )
    _randomize(backbone)
    preprocessor = keras_hub.models.LlamaCausalLMPreprocessor(tokenizer, sequence_length=16)
    lm = keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=preprocessor)
    lm.save_to_preset(str(tmp_path / "llama"))
    model = CausalLanguageModel.from_keras_hub(str(tmp_path / "llama"))
    lm.compile(sampler="greedy")
    expected = [_keras_hub_text(lm, prompt) for prompt in ("The quick", "lazy dog")]
    assert model.generate(["The quick", "lazy dog"], max_new_tokens=NEW_TOKENS) == expected


def test_preset_name_is_loaded_by_keras_hub(gpt2_pair, monkeypatch):
    lm, model = gpt2_pair
    names = []

    def from_preset(preset, **kwargs):
        names.append((preset, kwargs))
        return lm

    monkeypatch.setattr(keras_hub.models.CausalLM, "from_preset", from_preset)
    converted = CausalLanguageModel.from_keras_hub("gpt2_base_en", dtype="float32")
    assert names == [("gpt2_base_en", {"dtype": "float32"})]
    np.testing.assert_array_equal(converted(np.array([[4, 9]])), model(np.array([[4, 9]])))


# -- dtype policies --------------------------------------------------------------------


def test_bfloat16_source_keeps_its_policy(tmp_path):
    keras.utils.set_random_seed(5)
    lm = _gpt2_lm(dtype="bfloat16", preprocessor=False)
    model = CausalLanguageModel.from_keras_hub(lm)  # default bfloat16 tolerance
    assert model.dtype_policy.name == "bfloat16"
    assert {keras.backend.standardize_dtype(w.dtype) for w in model.weights} == {"bfloat16"}
    assert keras.config.dtype_policy().name == "float32"  # the global policy restored
    model.save(tmp_path / "bf16.keras")
    loaded = keras.saving.load_model(tmp_path / "bf16.keras")
    assert loaded.dtype_policy.name == "bfloat16"
    np.testing.assert_array_equal(loaded.generate([[4, 9, 17]], 4), model.generate([[4, 9, 17]], 4))


# -- errors ------------------------------------------------------------------------------


def test_verify_catches_a_misplaced_weight(monkeypatch):
    keras.utils.set_random_seed(6)
    lm = _gpt2_lm(preprocessor=False)

    def corrupted(backbone, model, transplant):
        original(backbone, model, transplant)
        gamma = model.decoder_layers[1].feedforward_layer_norm.gamma
        gamma.assign(gamma * 1.01)

    original = gpt2.weights
    monkeypatch.setattr(gpt2, "weights", corrupted)
    with pytest.raises(ValueError, match="differ from the keras-hub model's by"):
        from_keras_hub(lm)
    assert from_keras_hub(lm, verify=False) is not None


def test_unsupported_features_are_listed_in_one_error():
    keras.utils.set_random_seed(7)
    lm = _gpt2_lm(preprocessor=False)
    lm.backbone.enable_lora(2)
    with pytest.raises(ValueError) as error:
        from_keras_hub(lm, dtype="float64")
    assert "LoRA adapters" in str(error.value) and "'float64'" in str(error.value)
    backbone = keras_hub.models.DistilBertBackbone(
        vocabulary_size=20, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16
    )
    with pytest.raises(ValueError, match="the backbone class DistilBertBackbone"):
        from_keras_hub(backbone)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda lm: from_keras_hub(keras.layers.Dense(2)), "Received: an object of type Dense"),
        (lambda lm: from_keras_hub(lm, tolerance=0), "Received: tolerance=0"),
        (lambda lm: from_keras_hub(lm, tolerance=-1e-3), "Received: tolerance=-0.001"),
        (lambda lm: Seq2SeqTransformer.from_keras_hub(lm), "use CausalLanguageModel"),
        (lambda lm: from_keras_hub(lm, bogus=1), "bogus"),
    ],
    ids=["not_keras_hub", "zero_tolerance", "negative_tolerance", "wrong_class", "bad_option"],
)
def test_bad_input_is_named(gpt2_pair, call, message):
    lm, _ = gpt2_pair
    with pytest.raises((ValueError, TypeError), match=message):
        call(lm)


def test_text_needs_no_prompt_mask(gpt2_pair):
    _, model = gpt2_pair
    with pytest.raises(ValueError, match="`prompt_mask` is for token ids"):
        model.generate(["The fox"], max_new_tokens=2, prompt_mask=[[True]])


# -- generation on device ----------------------------------------------------------------


def _gemma_lm(seed):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=40,
        num_layers=2,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=16,
        intermediate_dim=32,
        head_dim=8,
    )
    _randomize(backbone, seed)
    return keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)


@pytest.mark.tensorflow_only("LiteRT and ONNX conversion of TensorFlow graphs")
@pytest.mark.parametrize(
    "runtime, family",
    [("litert", "gpt2_with_tokenizer"), ("litert", "gemma"), ("onnx", "gpt2_with_tokenizer")],
)
def test_device_loop_of_a_converted_model_equals_generate(runtime, family, gpt2_pair, tmp_path):
    # The app's loop in LiteRT or ONNX Runtime, in a process without Keras or TensorFlow.
    for module in ("ai_edge_litert",) if runtime == "litert" else ("onnxruntime", "tf2onnx"):
        pytest.importorskip(module)
    from keras_attention.export import export_generator
    from tests.test_export_generator import MAX_LENGTH, _expected_rows, _run_app

    model = gpt2_pair[1] if family == "gpt2_with_tokenizer" else from_keras_hub(_gemma_lm(8))
    path = tmp_path / ("lm.tflite" if runtime == "litert" else "lm")
    path = export_generator(model, path, format=runtime, max_length=MAX_LENGTH)
    tokens = np.array([[3, 4, 5, 6], [7, 2, 8, 0]], "int32")
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool)
    lengths = mask.sum(axis=1)
    expected = model.generate(tokens, MAX_LENGTH - lengths.max(), prompt_mask=mask)
    served = _run_app(runtime, path, tmp_path, tokens=tokens, mask=mask)["tokens"]
    for row, expected_row in enumerate(_expected_rows(expected, lengths)):
        np.testing.assert_array_equal(served[row, : len(expected_row)], expected_row)


@pytest.mark.tensorflow_only("SavedModel export of TensorFlow graphs")
def test_saved_model_generate_of_a_converted_model_equals_generate(tmp_path):
    import tensorflow as tf

    from keras_attention.export import export_generator

    model = from_keras_hub(_gemma_lm(9))
    path = export_generator(model, tmp_path / "lm", format="tf_saved_model", max_length=10)
    tokens = np.array([[3, 4, 5], [7, 2, 8]], "int32")
    served = tf.saved_model.load(path).signatures["generate"](
        tokens=tokens, mask=np.ones(tokens.shape, bool)
    )["tokens"]
    np.testing.assert_array_equal(served.numpy(), model.generate(tokens, 7))

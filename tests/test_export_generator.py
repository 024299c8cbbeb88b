"""keras_attention.export.export_generator: prefill/decode steps with an explicit cache,
run by an app's own loop in LiteRT, ONNX Runtime (and TensorFlow) without this package."""

import os
import textwrap

import keras
import numpy as np
import pytest

from keras_attention.export import export_generator
from keras_attention.models import CausalLanguageModel, Seq2SeqTransformer
from tests.utils import run_script_without_package

MAX_LENGTH = 12
VOCABULARY = 30


def _causal_lm(**kwargs):
    return CausalLanguageModel(
        vocabulary_size=VOCABULARY,
        sequence_length=16,
        num_layers=2,
        embedding_dim=16,
        num_heads=2,
        intermediate_dim=32,
        **kwargs,
    )


def _seq2seq():
    return Seq2SeqTransformer(
        vocabulary_size=VOCABULARY,
        sequence_length=16,
        num_layers=2,
        embedding_dim=16,
        num_heads=2,
        intermediate_dim=32,
    )


# The app: greedy decoding with the interpreter's signature runners only. Prompt rows
# may have different lengths (mask); a row still inside its prompt feeds its prompt
# token, as `generate` does.
_APP_LOOP = textwrap.dedent(
    """
    import json, sys
    sys.modules["keras_attention"] = None  # any `import keras_attention` now fails
    sys.modules["keras"] = None  # the app needs the runtime only
    import numpy as np

    runtime, artifact, inputs_file, outputs_file = sys.argv[1:5]
    arrays = dict(np.load(inputs_file))
    max_length = int(arrays.pop("max_length"))
    if runtime == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(artifact)
        prefill = interpreter.get_signature_runner("prefill")
        decode = interpreter.get_signature_runner("decode")
    elif runtime == "onnx":
        import onnxruntime

        def runner(name):  # one graph per file; `decode` returns `next_cache`
            session = onnxruntime.InferenceSession(f"{artifact}/{name}.onnx")
            names = [output.name for output in session.get_outputs()]

            def run(**feeds):
                out = dict(zip(names, session.run(None, feeds)))
                return {("cache" if k == "next_cache" else k): v for k, v in out.items()}

            return run

        prefill, decode = runner("prefill"), runner("decode")
    else:
        import tensorflow as tf

        loaded = tf.saved_model.load(artifact)

        def runner(name):
            fn = loaded.signatures[name]
            return lambda **kw: {k: v.numpy() for k, v in fn(**kw).items()}

        prefill, decode = runner("prefill"), runner("decode")
        arrays_generate = runner("generate")(**arrays)["tokens"]
    tokens, mask = arrays["tokens"], arrays["mask"]
    lengths = mask.sum(axis=1)
    buffer = np.zeros((tokens.shape[0], max_length), "int32")
    for row, (prompt_row, mask_row) in enumerate(zip(tokens, mask)):
        buffer[row, : lengths[row]] = prompt_row[mask_row]
    out = prefill(**arrays)
    logits, cache = out["logits"], out["cache"]
    extra = {"encoder_cache": out["encoder_cache"]} if "encoder_cache" in out else {}
    for index in range(lengths.min(), max_length):
        token = np.where(index < lengths, buffer[:, index], logits.argmax(-1)).astype("int32")
        buffer[:, index] = token
        out = decode(token=token, cache=cache, index=np.array(index, "int32"), **extra)
        logits, cache = out["logits"], out["cache"]
    results = {"tokens": buffer}
    if runtime == "tf_saved_model":
        results["generate"] = arrays_generate
    np.savez(outputs_file, **results)
    forbidden = ("keras_attention", "keras")
    if runtime != "tf_saved_model":  # the LiteRT and ONNX apps run without TensorFlow
        forbidden += ("tensorflow",)
    print(json.dumps([m for m, mod in sys.modules.items()
                      if m.split(".")[0] in forbidden and mod]))
    """
)


def _run_app(runtime, artifact, tmp_path, **arrays):
    np.savez(tmp_path / "inputs.npz", max_length=MAX_LENGTH, **arrays)
    run_script_without_package(
        _APP_LOOP,
        runtime,
        artifact,
        tmp_path / "inputs.npz",
        tmp_path / "outputs.npz",
        cwd=tmp_path,
    )
    return dict(np.load(tmp_path / "outputs.npz"))


def _expected_rows(generated, lengths):
    """`generate` pads a row after its `max_new_tokens`; the app's buffer runs to
    `MAX_LENGTH` for every row. Compare each row's prompt and new tokens."""
    return [row[: length + MAX_LENGTH - lengths.max()] for row, length in zip(generated, lengths)]


@pytest.mark.tensorflow_only("LiteRT and ONNX conversion of TensorFlow graphs")
@pytest.mark.parametrize(
    "runtime, name, needs",
    [("litert", "lm.tflite", ("ai_edge_litert",)), ("onnx", "lm", ("onnxruntime", "tf2onnx"))],
)
def test_device_greedy_loop_equals_generate_causal_lm(runtime, name, needs, tmp_path):
    for module in needs:
        pytest.importorskip(module)
    keras.utils.set_random_seed(3)
    model = _causal_lm()
    path = export_generator(model, tmp_path / name, format=runtime, max_length=MAX_LENGTH)
    if runtime == "onnx":
        assert sorted(os.listdir(path)) == ["decode.onnx", "prefill.onnx"]
    # Right padding, a hole, and a prompt token 0 (padding for mask_zero models).
    tokens = np.array([[3, 4, 5, 6], [7, 0, 8, 0], [9, 2, 0, 11]], "int32")
    mask = np.array([[1, 1, 1, 1], [1, 0, 1, 0], [1, 1, 1, 1]], bool)
    lengths = mask.sum(axis=1)
    expected = model.generate(tokens, MAX_LENGTH - lengths.max(), prompt_mask=mask)
    served = _run_app(runtime, path, tmp_path, tokens=tokens, mask=mask)["tokens"]
    for row, expected_row in enumerate(_expected_rows(expected, lengths)):
        np.testing.assert_array_equal(served[row, : len(expected_row)], expected_row)
    # The loop really decoded: new tokens beyond the longest prompt exist.
    assert served.shape == (3, MAX_LENGTH)


@pytest.mark.tensorflow_only("LiteRT and ONNX conversion of TensorFlow graphs")
@pytest.mark.parametrize("runtime", ["litert", "onnx"])
def test_device_greedy_loop_equals_generate_seq2seq(tmp_path, runtime):
    for module in ("ai_edge_litert",) if runtime == "litert" else ("onnxruntime", "tf2onnx"):
        pytest.importorskip(module)
    keras.utils.set_random_seed(4)
    model = _seq2seq()
    path = tmp_path / ("seq2seq.tflite" if runtime == "litert" else "seq2seq")
    path = export_generator(model, path, format=runtime, max_length=MAX_LENGTH)
    source = np.array([[3, 4, 5, 6, 7], [8, 9, 10, 0, 0]], "int32")
    source_mask = source != 0
    tokens = np.array([[1], [1]], "int32")
    mask = np.ones((2, 1), bool)
    expected = model.generate(source, tokens, MAX_LENGTH - 1, encoder_padding_mask=source_mask)
    served = _run_app(
        runtime,
        path,
        tmp_path,
        encoder_tokens=source,
        encoder_mask=source_mask,
        tokens=tokens,
        mask=mask,
    )["tokens"]
    np.testing.assert_array_equal(served, expected)


@pytest.mark.tensorflow_only("SavedModel export of TensorFlow graphs")
@pytest.mark.parametrize(
    "model_kwargs, tokens, mask",
    [
        (
            {"mask_zero": False, "position": "sinusoidal"},
            [[3, 4, 0], [5, 6, 7]],
            [[1, 1, 0], [1, 1, 1]],
        ),
        # A sliding window shorter than the prompts: the cache of each layer is a
        # ring, and the prefill must leave it at the shorter (left-padded) prompt.
        (
            {"style": "llama", "sliding_window": 3},
            [[0, 0, 0, 0, 0, 3, 4], [5, 6, 7, 8, 9, 10, 11]],
            [[0, 0, 0, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1, 1]],
        ),
    ],
    ids=["gpt", "sliding_window"],
)
def test_saved_model_prefill_decode_and_generate_equal_generate(
    tmp_path, model_kwargs, tokens, mask
):
    keras.utils.set_random_seed(5)
    model = _causal_lm(**model_kwargs)
    path = export_generator(model, tmp_path / "lm", format="tf_saved_model", max_length=MAX_LENGTH)
    tokens, mask = np.array(tokens, "int32"), np.array(mask, bool)
    lengths = mask.sum(axis=1)
    expected = model.generate(tokens, MAX_LENGTH - tokens.shape[1], prompt_mask=mask)
    served = _run_app("tf_saved_model", path, tmp_path, tokens=tokens, mask=mask)
    for row, expected_row in enumerate(_expected_rows(expected, lengths)):
        np.testing.assert_array_equal(served["tokens"][row, : len(expected_row)], expected_row)
        np.testing.assert_array_equal(served["generate"][row, : len(expected_row)], expected_row)
    import tensorflow as tf

    too_wide = np.ones((1, MAX_LENGTH), "int32")
    loaded = tf.saved_model.load(path)
    for name in ("prefill", "generate"):
        with pytest.raises(tf.errors.InvalidArgumentError, match="max_length=12"):
            loaded.signatures[name](tokens=too_wide, mask=too_wide.astype(bool))


@pytest.mark.tensorflow_only("SavedModel export of TensorFlow graphs")
def test_saved_model_generate_stops_and_pads_as_generate(tmp_path):
    # The one SavedModel generate export (it replaces models.export_generate): stop
    # tokens and the pad token as in `generate`, inputs `tokens` and `mask`.
    keras.utils.set_random_seed(6)
    model = _causal_lm()
    tokens = np.array([[3, 4, 5, 6], [0, 7, 8, 0]], "int32")
    mask = np.array([[1, 1, 1, 1], [0, 1, 1, 0]], bool)
    free = model.generate(tokens, 6, prompt_mask=mask)
    stop = int(free[0, 5])  # the second new token of the first row
    expected = model.generate(
        tokens, 6, prompt_mask=mask, stop_token_ids=[stop], pad_token_id=VOCABULARY - 1
    )
    path = export_generator(
        model,
        tmp_path / "lm",
        format="tf_saved_model",
        max_length=10,
        stop_token_ids=[stop],
        pad_token_id=VOCABULARY - 1,
    )
    import tensorflow as tf

    served = tf.saved_model.load(path).signatures["generate"](tokens=tokens, mask=mask)
    np.testing.assert_array_equal(served["tokens"].numpy(), expected)
    assert (expected[0, 6:] == VOCABULARY - 1).all()  # it stopped and padded


# ------------------------------------------------------------------- bad input


def test_unknown_format_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"`format` must be one of.*Received: format='openvino'"):
        export_generator(_causal_lm(), tmp_path / "lm.xml", format="openvino")


def test_model_without_decoder_is_named(tmp_path):
    inputs = keras.Input((None,), dtype="int32")
    model = keras.Model(inputs, keras.layers.Embedding(10, 4)(inputs))
    with pytest.raises(ValueError, match="`model` must have a decoder.*Received: model of type"):
        export_generator(model, tmp_path / "m.tflite")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_length=0), "`max_length` must be a positive integer. Received: max_length=0"),
        (dict(max_length=17), "learned position table.*Received: max_length=17"),
        (
            dict(max_length=8, prompt_length=8),
            "greater than the prompt length. Received: max_length=8, prompt_length=8",
        ),
        (dict(quantization="int4"), "Received: quantization='int4'"),
        (
            dict(quantization="dynamic_int8", format="tf_saved_model"),
            "LiteRT format only. Received: quantization='dynamic_int8'",
        ),
        (
            dict(quantization="dynamic_int8", format="onnx"),
            "LiteRT format only. Received: quantization='dynamic_int8', format='onnx'",
        ),
        (
            dict(cache_dtype="int8", format="onnx"),
            "float32 cache only.*Received: cache_dtype='int8', format='onnx'",
        ),
        (
            dict(stop_token_ids=[2]),
            "SavedModel's `generate` signature.*Received: stop_token_ids=\\[2\\]",
        ),
        (
            dict(format="tf_saved_model", stop_token_ids=[VOCABULARY]),
            "`stop_token_ids` must be token ids in \\[0, vocabulary_size=30\\)",
        ),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        export_generator(_causal_lm(), tmp_path / "lm.tflite", **kwargs)
    assert os.listdir(tmp_path) == []


@pytest.mark.tensorflow_only("the path is checked after the backend")
def test_onnx_path_is_a_folder(tmp_path):
    with pytest.raises(ValueError, match="a folder for format='onnx'.*Received: path=.*lm.onnx"):
        export_generator(_causal_lm(), tmp_path / "lm.onnx", format="onnx")
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(keras.backend.backend() == "tensorflow", reason="the refusal is for JAX/torch")
def test_other_backends_are_refused_with_the_backend_named(tmp_path):
    with pytest.raises(ValueError, match="TensorFlow backend. Received: keras.backend.backend"):
        export_generator(_causal_lm(), tmp_path / "lm.tflite")

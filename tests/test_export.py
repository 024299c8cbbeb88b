"""keras_attention.export: atomic `.keras` saves and SavedModels that serve without the package."""

import os
import textwrap

import keras
import numpy as np
import pytest

import keras_attention
from keras_attention import export
from keras_attention.export import formats, saving
from tests.utils import run_script_without_package

FEATURES = 6
BACKEND = keras.backend.backend()
# SavedModels are traced by TensorFlow; Keras converts JAX functions with jax2tf.
saved_model_backends = pytest.mark.skipif(
    BACKEND == "torch",
    reason="SavedModel export needs TensorFlow or JAX; PyTorch "
    "exports with export_torch_program (tested below)",
)
torch_only = pytest.mark.skipif(BACKEND != "torch", reason="torch.export needs PyTorch")


def _self_attention_model(called=True):
    """Variable-length sequences -> SelfAttention (causal) -> Dense, a small model."""
    inputs = keras.Input((None, FEATURES), name="tokens")
    x = keras_attention.SelfAttention(8, name="attention")(inputs, use_causal_mask=True)
    outputs = keras.layers.Dense(3, name="head")(x)
    model = keras.Model(inputs, outputs)
    if called:
        model(np.zeros((1, 3, FEATURES), "float32"))  # Keras' ONNX exporter needs a call
    return model


def _two_input_model():
    """Cross-attention: the query and context lengths vary independently."""
    query = keras.Input((None, FEATURES), name="query")
    context = keras.Input((None, 4), name="context")
    x = keras_attention.MultiHeadAttention(2, 3)(query, keras.layers.Dense(FEATURES)(context))
    x = keras_attention.SelfAttention(5)(x)
    return keras.Model([query, context], x)


def _inputs(batch, seq_len, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, seq_len, FEATURES)).astype("float32")


# ----------------------------------------------------------------- save_model


def test_package_import_exposes_export_module():
    assert keras_attention.export.save_model is export.save_model
    assert callable(keras_attention.export.export_saved_model)


def test_save_model_round_trip_without_custom_objects(tmp_path):
    model = _self_attention_model()
    x = _inputs(2, 5)
    path = export.save_model(model, tmp_path / "sub" / "model.keras")
    assert path == str(tmp_path / "sub" / "model.keras")
    reloaded = keras.saving.load_model(path)  # safe_mode on, no custom_objects
    np.testing.assert_allclose(
        reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )
    assert [f for f in os.listdir(tmp_path / "sub")] == ["model.keras"]  # no temp files left


def test_save_model_overwrites_previous_file(tmp_path):
    path = tmp_path / "model.keras"
    first, second = _self_attention_model(), _self_attention_model()
    export.save_model(first, path)
    export.save_model(second, path)
    x = _inputs(1, 4)
    np.testing.assert_allclose(
        keras.saving.load_model(path).predict(x, verbose=0), second.predict(x, verbose=0), atol=1e-6
    )


def test_failure_mid_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.keras"
    model = _self_attention_model()
    export.save_model(model, path)
    before = path.read_bytes()
    x = _inputs(2, 3)
    expected = model.predict(x, verbose=0)

    other = _self_attention_model()
    real_save = keras.Model.save

    def save_then_fail(self, filepath, *args, **kwargs):
        real_save(self, filepath, *args, **kwargs)  # the temp file is fully written ...
        with open(filepath, "r+b") as handle:  # ... then corrupted, as if cut off
            handle.truncate(100)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(keras.Model, "save", save_then_fail)
    with pytest.raises(OSError, match="simulated"):
        export.save_model(other, path)
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.keras"]  # the temporary file was removed
    np.testing.assert_allclose(
        keras.saving.load_model(path).predict(x, verbose=0), expected, atol=1e-6
    )


def test_interrupt_mid_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.keras"
    export.save_model(_self_attention_model(), path)
    before = path.read_bytes()

    def interrupted(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as handle:
            handle.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.save_model(_self_attention_model(), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.keras"]


@pytest.mark.parametrize("name", ["model.h5", "model", "model.keras.bak"])
def test_save_model_rejects_other_suffixes(tmp_path, name):
    with pytest.raises(ValueError, match=r"must end in `\.keras`.*Received: path="):
        export.save_model(_self_attention_model(), tmp_path / name)
    assert os.listdir(tmp_path) == []


def test_save_model_rejects_non_models(tmp_path):
    with pytest.raises(
        TypeError, match="`model` must be a `keras.Model`. Received: model of type Dense"
    ):
        export.save_model(keras.layers.Dense(2), tmp_path / "m.keras")


# ------------------------------------------------------------- SavedModel export


@saved_model_backends
def test_serving_signature_has_dynamic_batch_and_sequence():
    specs = export.serving_signature(_two_input_model())
    assert [tuple(spec.shape.as_list()) for spec in specs] == [
        (None, None, FEATURES),
        (None, None, 4),
    ]
    assert [spec.dtype.name for spec in specs] == ["float32", "float32"]


@saved_model_backends
def test_serving_signature_needs_symbolic_inputs():
    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="input_signature"):
        export.serving_signature(Subclassed())


@saved_model_backends
def test_export_and_load_in_process(tmp_path):
    model = _two_input_model()
    path = export.export_saved_model(model, tmp_path / "export")
    serve = export.load_saved_model(path)
    rng = np.random.default_rng(3)
    for batch, q_len, kv_len in [(1, 3, 3), (4, 7, 2)]:
        query = rng.normal(size=(batch, q_len, FEATURES)).astype("float32")
        context = rng.normal(size=(batch, kv_len, 4)).astype("float32")
        expected = model.predict([query, context], verbose=0)
        np.testing.assert_allclose(np.asarray(serve(query, context)), expected, atol=1e-5)


_SERVE_WITHOUT_PACKAGE = textwrap.dedent(
    """
    import json, sys
    sys.modules["keras_attention"] = None  # any `import keras_attention` now fails
    try:
        import keras_attention  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("keras_attention was importable")
    import numpy as np
    import tensorflow as tf

    export_dir, inputs_file, outputs_file = sys.argv[1:4]
    loaded = tf.saved_model.load(export_dir)
    arrays = np.load(inputs_file)
    results = {name: loaded.serve(arrays[name]).numpy() for name in arrays.files}
    default = loaded.signatures["serving_default"]
    first = arrays.files[0]
    (signature_out,) = default(tf.constant(arrays[first])).values()
    results["signature_" + first] = signature_out.numpy()
    np.savez(outputs_file, **results)
    loaded_modules = [m for m, mod in sys.modules.items() if m.startswith("keras_attention") and mod]
    print(json.dumps(loaded_modules))
    """
)


@saved_model_backends
def test_saved_model_serves_in_subprocess_without_package(tmp_path):
    model = _self_attention_model()
    export_dir = export.export_saved_model(model, tmp_path / "export")
    cases = {"b2_len5": _inputs(2, 5, seed=1), "b7_len11": _inputs(7, 11, seed=2)}
    np.savez(tmp_path / "inputs.npz", **cases)

    run_script_without_package(
        _SERVE_WITHOUT_PACKAGE,
        export_dir,
        tmp_path / "inputs.npz",
        tmp_path / "outputs.npz",
        cwd=tmp_path,
    )
    served = np.load(tmp_path / "outputs.npz")
    for name, x in cases.items():
        expected = model.predict(x, verbose=0)
        assert served[name].shape == expected.shape
        np.testing.assert_allclose(served[name], expected, atol=1e-5)
    np.testing.assert_allclose(
        served["signature_b2_len5"], model.predict(cases["b2_len5"], verbose=0), atol=1e-5
    )


@saved_model_backends
def test_export_replaces_previous_export(tmp_path):
    path = tmp_path / "export"
    export.export_saved_model(_self_attention_model(), path)
    (path / "stale_marker").write_text("from the first export")
    second = _self_attention_model()
    export.export_saved_model(second, path)
    assert not (path / "stale_marker").exists()
    assert sorted(os.listdir(tmp_path)) == ["export"]  # no temp or old folders left
    x = _inputs(3, 4)
    np.testing.assert_allclose(
        np.asarray(export.load_saved_model(path)(x)), second.predict(x, verbose=0), atol=1e-5
    )


@saved_model_backends
@pytest.mark.parametrize("failure", ["tracing", "rename"])
def test_failed_export_keeps_previous_export(tmp_path, monkeypatch, failure):
    path = tmp_path / "export"
    first = _self_attention_model()
    export.export_saved_model(first, path)

    if failure == "tracing":

        def broken_serving_fn(model):
            def serve(*inputs):
                raise RuntimeError("export failed (simulated)")

            return serve

        monkeypatch.setattr(saving, "_serving_fn", broken_serving_fn)
    else:
        # The new export is written, the old one moved aside, then moving the new
        # one into place fails: the old export must be put back.
        real_rename = os.rename

        def rename(src, dst):
            if os.fspath(dst) == str(path) and ".tmp" in os.path.basename(src):
                raise OSError("export failed (simulated)")
            return real_rename(src, dst)

        monkeypatch.setattr(os, "rename", rename)
    with pytest.raises((RuntimeError, OSError), match="simulated"):
        export.export_saved_model(_self_attention_model(), path)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["export"]  # no temp or old folders left
    x = _inputs(2, 3)
    np.testing.assert_allclose(
        np.asarray(export.load_saved_model(path)(x)), first.predict(x, verbose=0), atol=1e-5
    )


@saved_model_backends
def test_export_refuses_existing_file(tmp_path):
    path = tmp_path / "taken"
    path.write_text("not a SavedModel")
    with pytest.raises(ValueError, match="existing file.*Received: path="):
        export.export_saved_model(_self_attention_model(), path)
    assert path.read_text() == "not a SavedModel"


@saved_model_backends
def test_load_saved_model_errors(tmp_path):
    with pytest.raises(ValueError, match="existing SavedModel folder"):
        export.load_saved_model(tmp_path / "missing")
    path = export.export_saved_model(_self_attention_model(), tmp_path / "export")
    with pytest.raises(ValueError, match="no endpoint named 'predict'"):
        export.load_saved_model(path, endpoint_name="predict")


@saved_model_backends
def test_written_files_have_ordinary_permissions(tmp_path):
    # The temporary file/folder are private while being written; the result is not.
    mask = os.umask(0o022)
    try:
        model = _self_attention_model()
        keras_path = export.save_model(model, tmp_path / "model.keras")
        export_dir = export.export_saved_model(model, tmp_path / "export")
    finally:
        os.umask(mask)
    assert os.stat(keras_path).st_mode & 0o777 == 0o644
    assert os.stat(export_dir).st_mode & 0o777 == 0o755


def _positional_transformer_model():
    """Token and position embeddings, MultiHeadAttention, an encoder: dynamic lengths."""
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras_attention.TokenAndPositionEmbedding(50, 12, 16)(tokens)
    x = keras_attention.SinusoidalPositionEncoding()(x)
    x = x + keras_attention.PositionEmbedding(sequence_length=12)(x)
    x = keras_attention.MultiHeadAttention(2, 8)(x, x, use_causal_mask=True)
    x = keras_attention.TransformerEncoder(intermediate_dim=16, num_heads=2)(x)
    return keras.Model(tokens, keras.layers.Dense(3)(x))


@saved_model_backends
def test_positional_transformer_exports_with_dynamic_lengths(tmp_path):
    # On JAX the export traces with symbolic batch and length: no Python comparison
    # of a symbolic dimension may happen in the call path.
    model = _positional_transformer_model()
    serve = export.load_saved_model(export.export_saved_model(model, tmp_path / "export"))
    rng = np.random.default_rng(4)
    for batch, length in [(1, 3), (4, 12)]:
        tokens = rng.integers(1, 50, (batch, length)).astype("int32")
        np.testing.assert_allclose(
            np.asarray(serve(tokens)), model.predict(tokens, verbose=0), atol=1e-5
        )


@pytest.mark.skipif(BACKEND != "torch", reason="the refusal is PyTorch's")
def test_saved_model_export_on_torch_names_the_alternatives(tmp_path):
    model = _self_attention_model()
    for call in (
        lambda: export.export_saved_model(model, tmp_path / "export"),
        lambda: export.serving_signature(model),
    ):
        with pytest.raises(ValueError, match="export_torch_program.*Received: keras.backend"):
            call()
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(BACKEND == "torch", reason="the refusal is for TensorFlow and JAX")
def test_torch_program_export_needs_torch(tmp_path):
    with pytest.raises(ValueError, match="export_saved_model.*Received: keras.backend"):
        export.export_torch_program(_self_attention_model(), tmp_path / "m.pt2")


_RUN_TORCH_PROGRAM_WITHOUT_PACKAGE = textwrap.dedent(
    """
    import json, sys
    sys.modules["keras_attention"] = None  # any `import keras_attention` now fails
    sys.modules["keras"] = None  # the program needs PyTorch only
    import numpy as np
    import torch

    program_file, inputs_file, outputs_file = sys.argv[1:4]
    module = torch.export.load(program_file).module()
    arrays = np.load(inputs_file)
    results = {name: module(torch.from_numpy(arrays[name])).detach().numpy()
               for name in arrays.files}
    np.savez(outputs_file, **results)
    print(json.dumps([m for m, mod in sys.modules.items()
                      if m.split(".")[0] in ("keras_attention", "keras") and mod]))
    """
)


@torch_only
def test_torch_program_serves_in_subprocess_without_package(tmp_path):
    model = _self_attention_model()
    path = export.export_torch_program(model, tmp_path / "sub" / "model.pt2")
    assert os.listdir(tmp_path / "sub") == ["model.pt2"]  # no temporary file left
    cases = {
        "b2_len5": _inputs(2, 5, seed=1),
        "b7_len11": _inputs(7, 11, seed=2),
        "b1_len1": _inputs(1, 1, seed=3),
    }
    np.savez(tmp_path / "inputs.npz", **cases)
    run_script_without_package(
        _RUN_TORCH_PROGRAM_WITHOUT_PACKAGE,
        path,
        tmp_path / "inputs.npz",
        tmp_path / "outputs.npz",
        cwd=tmp_path,
    )
    served = np.load(tmp_path / "outputs.npz")
    for name, x in cases.items():
        np.testing.assert_allclose(served[name], model.predict(x, verbose=0), atol=1e-5)


@torch_only
def test_torch_program_of_several_inputs_has_dynamic_lengths(tmp_path):
    # Keras calls a model of several inputs with one list: the program takes one too,
    # with each input's batch and length dynamic.
    import torch

    model = _two_input_model()
    path = export.export_torch_program(model, tmp_path / "model.pt2")
    program = torch.export.load(path).module()
    for batch, q_len, kv_len in ((2, 5, 7), (3, 9, 4)):
        query = _inputs(batch, q_len, seed=q_len)
        context = np.random.default_rng(kv_len).normal(size=(batch, kv_len, 4)).astype("float32")
        served = program([torch.from_numpy(query), torch.from_numpy(context)])
        np.testing.assert_allclose(
            served.detach().numpy(), model.predict([query, context], verbose=0), atol=1e-5
        )


class _LengthAsTensor(keras.layers.Layer):
    """Turns the traced sequence length into a tensor: torch.export then fixes it."""

    def call(self, x):
        length = keras.ops.convert_to_tensor(keras.ops.shape(x)[1], "float32")
        return x * length


@torch_only
def test_torch_program_that_fixed_a_dynamic_axis_is_refused(tmp_path):
    inputs = keras.Input((None, FEATURES))
    model = keras.Model(inputs, _LengthAsTensor()(inputs))
    with pytest.raises(ValueError, match="does not accept sizes other than the example"):
        export.export_torch_program(model, tmp_path / "model.pt2")
    assert os.listdir(tmp_path) == []  # the temporary file is removed


@torch_only
def test_torch_program_rejects_other_suffixes(tmp_path):
    with pytest.raises(ValueError, match=r"must end in `\.pt2`.*Received: path="):
        export.export_torch_program(_self_attention_model(), tmp_path / "model.keras")


# ------------------------------------------------------------------ export_model


def test_export_model_refuses_a_format_the_backend_does_not_offer(tmp_path):
    model = _self_attention_model()
    with pytest.raises(ValueError, match=r"`format` must be one of .*Received: format='tflite'"):
        export.export_model(model, str(tmp_path / "m.tflite"), format="tflite")
    assert os.listdir(tmp_path) == []


def test_export_model_names_the_format_that_works_where_one_cannot(tmp_path, monkeypatch):
    model = _self_attention_model()
    if BACKEND == "jax":  # the real case: jax2tf's XlaCallModule has no OpenVINO rule
        with pytest.raises(ValueError, match=r"format='openvino' cannot work on the jax.*'onnx'"):
            export.export_model(model, str(tmp_path / "m.xml"), format="openvino")
    monkeypatch.setitem(formats._REFUSED, (BACKEND, "onnx"), ("use format='x'", "a reason"))
    with pytest.raises(ValueError, match=rf"on the {BACKEND} backend; use format='x'. Why: a"):
        export.export_model(model, str(tmp_path / "m.onnx"), format="onnx")
    assert os.listdir(tmp_path) == []


def test_failed_converter_keeps_previous_file_and_names_complete_formats(tmp_path, monkeypatch):
    model = _self_attention_model()
    model(np.zeros((1, 3, FEATURES), "float32"))
    path = tmp_path / "m.onnx"
    path.write_text("previous export")

    def half_written(filepath, format, **kwargs):
        with open(filepath, "w") as f:
            f.write("half")
        raise RuntimeError("the converter failed")

    monkeypatch.setattr(model, "export", half_written)
    with pytest.raises(RuntimeError, match="the converter failed") as info:
        export.export_model(model, str(path), format="onnx")
    assert str(export.COMPLETE_FORMATS[BACKEND]) in str(info.value)
    assert path.read_text() == "previous export"
    assert os.listdir(tmp_path) == ["m.onnx"]  # no temporary folder left behind


def test_export_model_writes_the_file_keras_writes(tmp_path, monkeypatch):
    model = _self_attention_model()
    model(np.zeros((1, 3, FEATURES), "float32"))
    calls = []

    def fake_export(filepath, format, **kwargs):
        calls.append(format)
        with open(filepath, "w") as f:
            f.write(format)

    monkeypatch.setattr(model, "export", fake_export)
    written = export.export_model(model, str(tmp_path / "sub" / "m.onnx"), format="onnx")
    assert calls == ["onnx"]
    assert written == str(tmp_path / "sub" / "m.onnx")
    assert os.listdir(tmp_path / "sub") == ["m.onnx"]
    assert (tmp_path / "sub" / "m.onnx").read_text() == "onnx"


def _record_exports(model, monkeypatch):
    calls = []
    monkeypatch.setattr(model, "export", lambda *args, **kwargs: calls.append(args))
    return calls


@pytest.mark.parametrize("error_type", [TypeError, ValueError, KeyError, NotImplementedError])
def test_every_converter_error_is_wrapped_with_the_complete_formats(
    tmp_path, monkeypatch, error_type
):
    model = _self_attention_model()

    def converter(filepath, format, **kwargs):
        raise error_type("the converter has no rule for op Foo")

    monkeypatch.setattr(model, "export", converter)
    with pytest.raises(RuntimeError) as info:
        export.export_model(model, str(tmp_path / "m.onnx"), format="onnx")
    message = str(info.value)
    assert f"format='onnx' failed on the {BACKEND} backend" in message
    assert f"{error_type.__name__}: " in message and "no rule for op Foo" in message
    assert str(export.COMPLETE_FORMATS[BACKEND]) in message
    assert type(info.value.__cause__) is error_type
    assert os.listdir(tmp_path) == []


def _file_formats():
    return [
        f
        for f in export.FORMATS[BACKEND]
        if f in export.SUFFIXES and (BACKEND, f) not in formats._REFUSED
    ]


@pytest.mark.parametrize("format", _file_formats())
def test_export_model_checks_the_file_name_before_converting(tmp_path, monkeypatch, format):
    model = _self_attention_model()
    calls = _record_exports(model, monkeypatch)
    suffix = export.SUFFIXES[format]
    with pytest.raises(ValueError, match=rf"must end in `\{suffix}` for format='{format}'"):
        export.export_model(model, str(tmp_path / "m.onnx"), format=format)
    folder = tmp_path / f"folder{suffix}"
    folder.mkdir()
    with pytest.raises(ValueError, match=r"`path` is an existing folder.*Received: path="):
        export.export_model(model, str(folder), format=format)
    assert calls == [] and os.listdir(tmp_path) == [folder.name]


def test_export_model_checks_paths_of_every_format_before_converting(tmp_path, monkeypatch):
    model = _self_attention_model()
    calls = _record_exports(model, monkeypatch)
    (tmp_path / "m.onnx").mkdir()
    with pytest.raises(ValueError, match="existing folder; format='onnx' writes a file"):
        export.export_model(model, str(tmp_path / "m.onnx"), format="onnx")
    if "tf_saved_model" in export.FORMATS[BACKEND]:
        (tmp_path / "file").write_text("not a folder")
        with pytest.raises(ValueError, match="existing file; a SavedModel is a folder"):
            export.export_model(model, str(tmp_path / "file"), format="tf_saved_model")
    assert calls == []


def test_a_missing_converter_says_how_to_install_it(tmp_path, monkeypatch):
    model = _self_attention_model()
    calls = _record_exports(model, monkeypatch)
    converters = {(BACKEND, "onnx"): ("no_such_converter_module", "no-such-converter")}
    monkeypatch.setattr(formats, "CONVERTERS", converters)
    with pytest.raises(ModuleNotFoundError) as info:
        export.export_model(model, str(tmp_path / "m.onnx"), format="onnx")
    message = str(info.value)
    assert "format='onnx'" in message and "`pip install no-such-converter`" in message
    assert "`export` extra" in message and str(export.COMPLETE_FORMATS[BACKEND]) in message
    assert info.value.name == "no_such_converter_module"
    monkeypatch.setitem(formats.CONVERTER_CONFLICTS, "no-such-converter", "requires old numpy")
    with pytest.raises(ModuleNotFoundError, match="not in this package's `export` extra: it "):
        export.export_model(model, str(tmp_path / "m.onnx"), format="onnx")
    assert calls == [] and os.listdir(tmp_path) == []


@pytest.mark.skipif(BACKEND != "torch", reason="litert-torch is PyTorch's LiteRT converter")
def test_torch_litert_without_litert_torch_names_the_install_and_the_formats(tmp_path):
    import importlib.util

    if importlib.util.find_spec("litert_torch") is not None:
        pytest.skip("litert-torch is installed")
    model = _self_attention_model()
    with pytest.raises(ModuleNotFoundError) as info:
        export.export_model(model, str(tmp_path / "m.tflite"), format="litert")
    message = str(info.value)
    assert "`pip install litert-torch`" in message
    assert "typing-extensions" in message and "jax2onnx" in message
    assert str(export.COMPLETE_FORMATS["torch"]) in message
    assert os.listdir(tmp_path) == []


def test_onnx_export_of_a_model_never_called_says_to_call_it(tmp_path, monkeypatch):
    model = _self_attention_model(called=False)
    calls = _record_exports(model, monkeypatch)
    with pytest.raises(ValueError, match=r"called on data once.*model\(x\).*never called"):
        export.export_model(model, str(tmp_path / "m.onnx"), format="onnx")
    assert calls == [] and os.listdir(tmp_path) == []
    model(np.zeros((1, 3, FEATURES), "float32"))
    export.export_model(model, str(tmp_path / "m.onnx"), format="onnx")
    assert len(calls) == 1

"""tools/export_matrix.py: every layer and builder against every `model.export`
format, each artifact run in its own runtime without this package."""

import importlib.util
import os

import keras
import numpy as np
import pytest

from keras_attention.export import formats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND = keras.backend.backend()
DOCS = os.path.join(ROOT, "docs", "deployment.md")


def _load_tool():
    # A developer tool, not a module of the package: loaded from its file.
    path = os.path.join(ROOT, "tools", "export_matrix.py")
    spec = importlib.util.spec_from_file_location("export_matrix", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


matrix = _load_tool()


def _runtimes_installed(formats):
    missing = [f for f in formats if importlib.util.find_spec(matrix.RUNTIMES[f]) is None]
    if missing:
        pytest.skip(f"runtimes not installed (pip install -e '.[export]'): {missing}")


# The representative subset of each backend, run by the normal suite (the full matrix
# is the slow test below): (cases, formats) that pass in its table. TensorFlow:
# MultiHeadAttention (masks, causal, cross-attention of another length) and the causal
# LM builder in every format; JAX and PyTorch, whose converters are slower, one case
# in formats that take it (their tables show what the others refuse), and on PyTorch
# the layers whose ONNX files needed the package's help (LayerNormalization in the
# blocks, `moveaxis` in RotaryEmbedding and RelativePositionBias).
REPRESENTATIVE = {
    "tensorflow": [
        (["MultiHeadAttention", "causal_language_model"], matrix.BACKEND_FORMATS["tensorflow"])
    ],
    "jax": [(["MultiHeadAttention"], ["tf_saved_model"])],
    "torch": [
        (["MultiHeadAttention"], ["onnx", "torch"]),
        (["TransformerEncoder", "RotaryEmbedding", "RelativePositionBias"], ["onnx"]),
    ],
}


@pytest.mark.parametrize("names, formats", REPRESENTATIVE[BACKEND])
def test_representative_subset_runs_in_every_runtime(tmp_path, names, formats):
    # Two shapes each (batch and sequence length change).
    for format in formats:
        if matrix.missing_converter(format):
            pytest.skip(matrix.missing_converter(format))
    _runtimes_installed(formats)
    results = matrix.run_matrix(names, formats, workdir=tmp_path)
    for name, row in results.items():
        for format, result in row.items():
            assert result["status"] == "ok", (name, format, result["detail"])
            assert result["max_error"] <= matrix.ATOL
    # the artifacts were really written: one per case and format
    written = os.listdir(tmp_path)
    for name in names:
        for format in formats:
            assert any(f.startswith(f"{name}_{format}") for f in written), (name, format)


def test_a_missing_converter_is_named_without_exporting(tmp_path, monkeypatch):
    format = matrix.BACKEND_FORMATS[BACKEND][0]
    converters = {(BACKEND, format): ("no_such_converter_module", "no-such-converter")}
    monkeypatch.setattr(formats, "CONVERTERS", converters)
    results = matrix.run_matrix(["RMSNorm"], [format], workdir=tmp_path)
    assert results == {
        "RMSNorm": {
            format: {
                "status": "error",
                "max_error": None,
                "detail": "needs `no-such-converter`, which is not installed "
                "(`pip install -e '.[export]'`)",
            }
        }
    }
    assert not any(f.startswith(f"RMSNorm_{format}") for f in os.listdir(tmp_path))


def test_judge_reports_wrong_values_shapes_and_static_artifacts(tmp_path):
    expected = {"case": [np.zeros((2, 3), "float32"), np.zeros((3, 4), "float32")]}
    job = {"case": "case", "outputs": str(tmp_path / "out")}
    np.save(tmp_path / "out_0.npy", np.full((2, 3), 2e-5, "float32"))
    np.save(tmp_path / "out_1.npy", np.zeros((3, 4), "float32"))
    result = matrix._judge(job, {"0": "ok", "1": "ok"}, expected)
    assert result["status"] == "error" and "max error 2.0e-05" in result["detail"]
    np.save(tmp_path / "out_0.npy", np.zeros((2, 3), "float32"))
    result = matrix._judge(job, {"0": "ok", "1": "RuntimeError: cannot resize"}, expected)
    assert result["status"] == "static" and "cannot resize" in result["detail"]
    np.save(tmp_path / "out_1.npy", np.zeros((3, 5), "float32"))
    result = matrix._judge(job, {"0": "ok", "1": "ok"}, expected)
    assert result == {"status": "error", "max_error": None, "detail": "shape (3, 5), Keras (3, 4)"}


def test_table_lists_failures_with_their_reason_and_writes_between_markers(tmp_path):
    results = {
        "SelfAttention": {
            "onnx": {"status": "ok", "max_error": 2e-7, "detail": ""},
            "litert": {"status": "error", "max_error": None, "detail": "export: no kernel"},
        }
    }
    text = matrix.table(results, backend="tensorflow")
    assert "| SelfAttention (layer) | ✓ | ✗ [1] |" in text
    assert "[1] SelfAttention / `litert`: export: no kernel" in text
    path = tmp_path / "doc.md"
    tf_start, tf_end = matrix.markers("tensorflow")
    jax_start, jax_end = matrix.markers("jax")
    assert tf_start != jax_start and "tensorflow" in tf_start
    path.write_text(f"intro\n{tf_start}\nold\n{tf_end}\n{jax_start}\njax table\n{jax_end}\noutro\n")
    matrix.write_table(text, path, backend="tensorflow")
    written = path.read_text()
    assert "old" not in written and text in written and written.endswith("outro\n")
    # only the named backend's table changes
    assert f"{jax_start}\njax table\n{jax_end}" in written
    assert written.index(text) < written.index(jax_start)
    unmarked = tmp_path / "unmarked.md"
    unmarked.write_text("no markers")
    with pytest.raises(ValueError, match="must contain the markers"):
        matrix.write_table(text, unmarked)


def test_unknown_case_is_named():
    with pytest.raises(ValueError, match=r"`names` must be cases.*Received: \['Nope'\]"):
        matrix.run_matrix(["Nope"])


@pytest.mark.slow
def test_full_matrix_matches_the_table_in_the_docs(tmp_path):
    # The current backend's table (TensorFlow: 5 to 11 minutes on 2 cores, 22 cases x
    # 4 formats, one runtime process).
    _runtimes_installed(matrix.BACKEND_FORMATS[BACKEND])
    text = matrix.table(matrix.run_matrix(workdir=tmp_path))
    with open(DOCS) as handle:
        document = handle.read()
    start, end = matrix.markers()
    assert start in document and end in document, f"no {BACKEND} table in docs/deployment.md"
    assert document[document.index(start) : document.index(end)].strip() == (f"{start}\n{text}"), (
        f"docs/deployment.md is stale: run `KERAS_BACKEND={BACKEND} "
        "python tools/export_matrix.py --write docs/deployment.md`"
    )

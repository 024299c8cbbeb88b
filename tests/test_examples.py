"""Every example script runs end to end with `--smoke` and writes only into its output folder."""

import importlib.util
import os
import sys

import keras
import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _run(name, tmp_path):
    """Import `examples/<name>.py` and call `main([... --smoke])` in this process.

    Importing instead of spawning a Python per example saves the TensorFlow start-up
    (seconds each on two cores); the scripts' own subprocess checks still run.
    """
    sys.path.insert(0, EXAMPLES)
    try:
        spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.main(["--smoke", "--output-dir", str(tmp_path)])
    finally:
        sys.path.remove(EXAMPLES)
        keras.backend.clear_session()


def test_quickstart(tmp_path):
    result = _run("quickstart", tmp_path)
    assert result["keras_diff"] <= 1e-5 and result["served_diff"] <= 1e-5
    if keras.backend.backend() == "torch":  # a torch.export program instead
        assert sorted(os.listdir(tmp_path)) == ["quickstart_digits.keras",
                                                "quickstart_digits_savedmodel.pt2"]
        return
    assert sorted(os.listdir(tmp_path)) == ["quickstart_digits.keras", "quickstart_digits_savedmodel"]
    assert os.path.isfile(os.path.join(result["export_dir"], "saved_model.pb"))


def test_padding_masks(tmp_path):
    result = _run("padding_masks", tmp_path)
    assert result["padded_weight"] == 0.0
    assert result["pad_diff"] <= 1e-5
    assert os.listdir(tmp_path) == ["padding_masks.keras"]


def test_plot_attention(tmp_path):
    pytest.importorskip("matplotlib")
    result = _run("plot_attention", tmp_path)
    assert len(result["paths"]) == 4
    for path in result["paths"]:
        with open(path, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_date_translation(tmp_path):
    pytest.importorskip("matplotlib")
    result = _run("date_translation", tmp_path)
    assert 0.0 <= result["exact_match"] <= 1.0
    assert all(len(p) == 10 for p in result["predictions"])  # YYYY-MM-DD length
    assert os.path.isfile(result["keras_path"]) and result["pictures"]


def test_char_language_model(tmp_path):
    result = _run("char_language_model", tmp_path)
    assert result["perplexity"] > 1.0
    assert result["sample"].startswith(result["prompt"])
    assert os.path.isfile(result["keras_path"])


def test_scripts_have_the_common_flags():
    for name in ["quickstart", "date_translation", "char_language_model", "padding_masks", "plot_attention"]:
        with open(os.path.join(EXAMPLES, f"{name}.py")) as handle:
            source = handle.read()
        assert "_shared.parse_args(" in source, name  # --epochs, --output-dir, --smoke

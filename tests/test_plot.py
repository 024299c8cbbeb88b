"""keras_attention.plot: heat maps per head, labelled axes, matplotlib optional."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from keras_attention.plot import plot_attention  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _weights(heads, q_len, kv_len, seed=0):
    logits = np.random.default_rng(seed).normal(size=(heads, q_len, kv_len))
    return np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)


def _panels(fig):
    return [axis for axis in fig.axes if axis.get_visible() and axis.get_label() != "<colorbar>"]


def test_one_panel_per_head_with_labels_and_png(tmp_path):
    weights = _weights(3, 4, 5)
    path = tmp_path / "maps" / "attention.png"
    fig = plot_attention(
        weights, x_labels=list("abcde"), y_labels=list("wxyz"), path=path, title="t"
    )
    panels = _panels(fig)
    assert [axis.get_title() for axis in panels] == ["head 0", "head 1", "head 2"]
    assert [t.get_text() for t in panels[0].get_xticklabels()] == list("abcde")
    assert [t.get_text() for t in panels[0].get_yticklabels()] == list("wxyz")
    # The picture shows the weights themselves, head by head.
    for head, axis in enumerate(panels):
        np.testing.assert_allclose(axis.images[0].get_array(), weights[head], atol=1e-6)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "shape, expected_panels", [((4, 5), 1), ((1, 4, 5), 1), ((1, 2, 4, 5), 2), ((6, 3, 3), 6)]
)
def test_accepted_shapes(shape, expected_panels):
    weights = np.full(shape, 0.2, "float32")
    assert len(_panels(plot_attention(weights, max_columns=4))) == expected_panels


def test_heads_selects_panels_and_accepts_tensors():
    weights = _weights(4, 2, 3)
    fig = plot_attention(keras.ops.convert_to_tensor(weights), heads=[3, 1])
    panels = _panels(fig)
    assert [axis.get_title() for axis in panels] == ["head 3", "head 1"]
    np.testing.assert_allclose(panels[0].images[0].get_array(), weights[3], atol=1e-6)
    assert len(_panels(plot_attention(weights, heads=2))) == 1


def test_accepts_scores_that_carry_gradients():
    # On PyTorch, scores from a layer with weights require grad; `.numpy()` raises.
    import keras_attention as ka

    x = np.random.default_rng(1).normal(size=(1, 3, 8)).astype("float32")
    _, scores = ka.MultiHeadAttention(2, 4)(x, x, return_attention_scores=True)
    fig = plot_attention(scores)
    panels = _panels(fig)
    assert len(panels) == 2
    np.testing.assert_allclose(
        panels[1].images[0].get_array(), keras.ops.convert_to_numpy(scores)[0, 1], atol=1e-6
    )


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"weights": np.zeros((2, 1, 3, 3))},
            ValueError,
            r"batch of 1.*Received: weights.shape=\(2, 1, 3, 3\)",
        ),
        ({"weights": np.zeros(3)}, ValueError, r"Received: weights.shape=\(3,\)"),
        ({"weights": np.array([["a"]])}, TypeError, "must hold numbers"),
        ({"heads": 2}, ValueError, r"integers in \[0, 2\).*Received: heads=2"),
        ({"heads": []}, ValueError, "must not be empty"),
        (
            {"x_labels": ["a"]},
            ValueError,
            r"`x_labels` must have one label per position \(kv_len=4\). Received: 1",
        ),
        ({"y_labels": list("abcd")}, ValueError, r"`y_labels`.*\(q_len=3\). Received: 4"),
        ({"max_columns": 0}, ValueError, "Received: max_columns=0"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    arguments = {"weights": np.zeros((2, 3, 4))}
    arguments.update(kwargs)
    with pytest.raises(error, match=message):
        plot_attention(**arguments)


def test_package_works_without_matplotlib():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["matplotlib"] = None  # as if matplotlib were not installed
        import keras_attention
        from keras_attention.plot import plot_attention
        try:
            plot_attention([[1.0]])
        except ImportError as error:
            print(type(error).__name__, "|", error)
        else:
            raise SystemExit("no error without matplotlib")
        """
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO_ROOT)
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ModuleNotFoundError |")
    assert 'pip install "keras-attention-layers[plot]"' in result.stdout

"""`plot_attention` figures are readable: per-panel titles, no overlapping text."""

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import itertools

from keras_attention.plot import plot_attention


def _text_boxes(fig):
    """(owner, kind, bbox) of every visible title and tick label, after drawing."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = []
    for index, axis in enumerate(fig.axes[:-1]):  # the last axis is the colour bar
        if not axis.get_visible():
            continue
        if axis.get_title():
            boxes.append((index, "title", axis.title.get_window_extent(renderer)))
        for kind, labels in (("x", axis.get_xticklabels()), ("y", axis.get_yticklabels())):
            for label in labels:
                if label.get_visible() and label.get_text():
                    boxes.append((index, kind, label.get_window_extent(renderer)))
    return boxes


def _overlap(a, b, slack=0.5):
    return min(a.x1, b.x1) - max(a.x0, b.x0) > slack and min(a.y1, b.y1) - max(a.y0, b.y0) > slack


@pytest.mark.parametrize("num_heads,length", [(4, 10), (6, 16), (3, 24)])
def test_multi_panel_titles_and_ticks_do_not_overlap(num_heads, length):
    import matplotlib.pyplot as plt

    weights = np.random.default_rng(0).dirichlet(np.ones(length), size=(num_heads, length))
    labels = [f"token{i}" for i in range(length)]
    fig = plot_attention(weights, x_labels=labels, y_labels=labels, title="a long figure title")
    try:
        titles = [axis.get_title() for axis in fig.axes[:num_heads]]
        assert titles == [f"head {h}" for h in range(num_heads)]
        boxes = _text_boxes(fig)
        for i, (owner_a, kind_a, a) in enumerate(boxes):
            for owner_b, kind_b, b in boxes[i + 1 :]:
                if owner_a == owner_b and kind_a == kind_b:
                    continue  # neighbouring ticks of one axis: checked below
                assert not _overlap(a, b), (owner_a, kind_a, owner_b, kind_b)
        # Ticks of one axis do not run into each other either.
        for owner in range(num_heads):
            for kind in ("x", "y"):
                ticks = [b for o, k, b in boxes if o == owner and k == kind]
                for a, b in itertools.pairwise(ticks):
                    assert not _overlap(a, b), (owner, kind)
        suptitle = fig._suptitle.get_window_extent(fig.canvas.get_renderer())
        for _, _, box in boxes:
            assert not _overlap(suptitle, box)
    finally:
        plt.close(fig)


def test_panel_titles_argument():
    import matplotlib.pyplot as plt

    weights = np.full((3, 4, 4), 0.25)
    fig = plot_attention(weights, panel_titles=["causal", "padding", "both"])
    try:
        assert [a.get_title() for a in fig.axes[:3]] == ["causal", "padding", "both"]
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="panel_titles"):
        plot_attention(weights, heads=[0, 1], panel_titles=["only one"])

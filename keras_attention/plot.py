"""Attention maps as pictures: `plot_attention` draws one heat map per head.

matplotlib is an optional extra (`pip install "keras-attention-layers[plot]"`); it is
imported only when a picture is drawn, never when the package is imported.
"""

import math
import os
import sys

import numpy as np

from keras_attention import _validation
from keras_attention import backend as backend_lib

__all__ = ["plot_attention"]

_INSTALL_HINT = (
    "keras_attention.plot needs matplotlib, an optional extra. Install it with "
    '`pip install "keras-attention-layers[plot]"` (or `pip install matplotlib`).'
)


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise ModuleNotFoundError(_INSTALL_HINT, name="matplotlib") from error
    # Without a display (servers, CI) pick the file-only backend; keep a backend the
    # user already chose, e.g. inline in a notebook.
    if not _has_display() and "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _has_display():
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def plot_attention(
    weights,
    x_labels=None,
    y_labels=None,
    heads=None,
    path=None,
    title=None,
    cmap="viridis",
    max_columns=4,
    panel_titles=None,
):
    """Draw attention weights as heat maps, one panel per head.

    Row `i`, column `j` of a panel is how much query `i` attends to key `j`; each
    row of a softmax attention sums to 1 (or 0 for a fully masked query).

    Args:
        weights: array-like attention weights (numpy, tensor) of shape
            `(q_len, kv_len)`, `(heads, q_len, kv_len)`, or with a batch axis of size
            1, `(1, heads, q_len, kv_len)` / `(1, q_len, kv_len)` -- for a larger
            batch select one example first, e.g. `scores[0]`.
        x_labels: optional sequence of `kv_len` labels for the keys (columns).
        y_labels: optional sequence of `q_len` labels for the queries (rows).
        heads: optional int or sequence of ints, the heads to draw (default all).
        path: optional file path; the figure is saved there (format from the suffix,
            e.g. `.png`) and parent folders are created.
        title: optional figure title.
        cmap: matplotlib colour map name.
        max_columns: panels per row of the grid.
        panel_titles: optional sequence of titles, one per drawn panel; default
            `"head h"` for several heads and no panel title for one.

    Returns:
        The `matplotlib.figure.Figure`. Close it with `matplotlib.pyplot.close(fig)`
        when drawing many.

    Raises:
        ModuleNotFoundError: matplotlib is not installed (the message says how to
            install it).

    Example:
    >>> import numpy as np
    >>> from keras_attention.plot import plot_attention
    >>> weights = np.full((2, 3, 4), 0.25)           # 2 heads, 3 queries, 4 keys
    >>> fig = plot_attention(weights, x_labels=list("abcd"), path="/tmp/attn.png")
    >>> len(fig.axes)                                  # 2 panels + 1 colour bar
    3
    """
    weights = _to_heads(weights)
    num_heads, q_len, kv_len = weights.shape
    head_ids = _select_heads(heads, num_heads)
    x_labels = _check_labels(x_labels, kv_len, "x_labels", "kv_len")
    y_labels = _check_labels(y_labels, q_len, "y_labels", "q_len")
    _validation.check_positive_int(max_columns, "max_columns")

    if panel_titles is not None:
        panel_titles = [str(t) for t in panel_titles]
        if len(panel_titles) != len(head_ids):
            raise ValueError(
                f"`panel_titles` must have one title per drawn panel ({len(head_ids)}). "
                f"Received: {len(panel_titles)} titles"
            )
    elif num_heads > 1:
        panel_titles = [f"head {head}" for head in head_ids]

    plt = _pyplot()
    columns = min(len(head_ids), max_columns)
    rows = math.ceil(len(head_ids) / columns)
    panel = max(2.5, 0.3 * max(q_len, kv_len))
    # The constrained layout keeps panel titles, tick labels and the colour bar
    # from overlapping (tight_layout cannot place a colour bar shared by panels).
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(panel * columns + 1.0, panel * rows + 0.6),
        squeeze=False,
        layout="constrained",
    )
    vmax = float(weights[head_ids].max()) if weights.size else 1.0
    image = None
    for index, axis in enumerate(axes.flat):
        if index >= len(head_ids):
            axis.set_visible(False)
            continue
        head = head_ids[index]
        image = axis.imshow(weights[head], cmap=cmap, vmin=0.0, vmax=max(vmax, 1e-9), aspect="auto")
        if panel_titles is not None:
            axis.set_title(panel_titles[index])
        axis.set_xlabel("key")
        axis.set_ylabel("query")
        _set_ticks(axis.set_xticks, axis.set_xticklabels, x_labels, rotate=True)
        _set_ticks(axis.set_yticks, axis.set_yticklabels, y_labels, rotate=False)
    fig.colorbar(image, ax=list(axes.flat), shrink=0.8, label="attention weight")
    if title:
        fig.suptitle(title)
    if path is not None:
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fig.savefig(path, dpi=100, bbox_inches="tight")
    return fig


def _to_heads(weights):
    array = backend_lib.to_numpy(weights)
    if not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"`weights` must hold numbers. Received: weights with dtype {array.dtype}")
    array = array.astype("float32")
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise ValueError(
                "`weights` with 4 axes must have a batch of 1, `(1, heads, q_len, "
                "kv_len)`; select one example first, e.g. `weights[0]`. "
                f"Received: weights.shape={array.shape}"
            )
        array = array[0]
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(
            "`weights` must have shape `(q_len, kv_len)`, `(heads, q_len, kv_len)` or "
            f"`(1, heads, q_len, kv_len)`. Received: weights.shape={array.shape}"
        )
    return array


def _select_heads(heads, num_heads):
    if heads is None:
        return list(range(num_heads))
    ids = [heads] if isinstance(heads, (int, np.integer)) else list(heads)
    if not ids:
        raise ValueError(f"`heads` must not be empty. Received: heads={heads!r}")
    for head in ids:
        if (
            isinstance(head, bool)
            or not isinstance(head, (int, np.integer))
            or not 0 <= head < num_heads
        ):
            raise ValueError(
                f"`heads` must be integers in [0, {num_heads}) (the weights have "
                f"{num_heads} heads). Received: heads={heads!r}"
            )
    return [int(head) for head in ids]


def _check_labels(labels, size, name, axis_name):
    if labels is None:
        return None
    labels = [str(label) for label in labels]
    if len(labels) != size:
        raise ValueError(
            f"`{name}` must have one label per position ({axis_name}={size}). "
            f"Received: {len(labels)} labels"
        )
    return labels


def _set_ticks(set_ticks, set_labels, labels, rotate):
    if labels is None:
        return
    set_ticks(range(len(labels)))
    set_labels(labels, rotation=90 if rotate else 0, fontsize=8)

"""Draw the pictures of docs/guide.md into docs/images/ and print the numbers it quotes.

    python docs/make_figures.py            # needs matplotlib (pip install "keras-attention-layers[plot]")

The PNG files are committed (small, 100 dpi); run this script to recreate them after
changing a picture.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # a source checkout works without installing

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_attention  # noqa: E402
from keras_attention import masks, ops  # noqa: E402
from keras_attention.plot import plot_attention  # noqa: E402

IMAGES = os.path.join(HERE, "images")


def variance_table(dims=(4, 16, 64, 256, 1024), samples=20_000, seed=0):
    """Variance of q.k for unit-variance q, k, with and without the 1/sqrt(d_k) scale,
    and the mean largest softmax weight over 16 keys (how saturated the softmax is)."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in dims:
        q = rng.standard_normal((samples, d))
        k = rng.standard_normal((samples, 16, d))
        scores = np.einsum("nd,nkd->nk", q, k)

        def top_weight(s):
            e = np.exp(s - s.max(-1, keepdims=True))
            return float((e / e.sum(-1, keepdims=True)).max(-1).mean())

        rows.append(
            (
                d,
                float(scores.var()),
                float((scores / np.sqrt(d)).var()),
                top_weight(scores),
                top_weight(scores / np.sqrt(d)),
            )
        )
    return rows


def main():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(IMAGES, exist_ok=True)
    keras.utils.set_random_seed(0)

    # 1. Why divide by sqrt(d_k).
    rows = variance_table()
    print("| d_k | var(q.k) | var(q.k / sqrt(d_k)) | mean max softmax weight, unscaled | scaled |")
    print("|---:|---:|---:|---:|---:|")
    for d, raw, scaled, top_raw, top_scaled in rows:
        print(f"| {d} | {raw:.1f} | {scaled:.3f} | {top_raw:.3f} | {top_scaled:.3f} |")
    fig, axis = plt.subplots(figsize=(5, 3.2))
    dims = [r[0] for r in rows]
    axis.plot(dims, [r[3] for r in rows], "o-", label="q.k (unscaled)")
    axis.plot(dims, [r[4] for r in rows], "o-", label="q.k / sqrt(d_k)")
    axis.axhline(1 / 16, color="gray", ls=":", label="uniform over 16 keys")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("d_k")
    axis.set_ylabel("mean largest softmax weight")
    axis.legend(fontsize=8)
    fig.savefig(os.path.join(IMAGES, "scaling.png"), dpi=100, bbox_inches="tight")
    plt.close(fig)

    # 2. Masks: causal, padding, and both combined (True = may attend).
    causal = np.asarray(masks.causal_mask(6))
    padding = np.asarray(masks.padding_mask(np.array([[1, 1, 1, 1, 0, 0]], bool)))[0]
    padding = np.broadcast_to(padding, (6, 6))
    combined = np.stack([causal, padding, causal & padding]).astype("float32")
    labels = ["t0", "t1", "t2", "t3", "pad", "pad"]
    fig = plot_attention(
        combined,
        x_labels=labels,
        y_labels=labels,
        cmap="Greys",
        path=os.path.join(IMAGES, "masks.png"),
        panel_titles=["causal", "padding", "both (causal AND padding)"],
        title="True = may attend (black); white = masked",
    )
    plt.close(fig)

    # 3. Attention weights of a toy self-attention: softmax(Q K^T / sqrt(d_k)) with
    #    3 x one-hot embeddings (scores 9 / sqrt(5) for the same word, 0 otherwise),
    #    so repeated words attend to each other.
    words = "the cat sat on the mat".split()
    vocab = {w: i for i, w in enumerate(sorted(set(words)))}
    x = np.eye(len(vocab), dtype="float32")[[vocab[w] for w in words]][None] * 3.0
    _, weights = ops.scaled_dot_product_attention(x, x, x, return_attention_scores=True)
    fig = plot_attention(
        np.asarray(weights)[0],
        x_labels=words,
        y_labels=words,
        path=os.path.join(IMAGES, "self_attention.png"),
        title="softmax(Q K^T / sqrt(d_k)), Q = K = V = 3 x one-hot",
    )
    plt.close(fig)

    # 4. Causal weights of a (random, untrained) 4-head MultiHeadAttention.
    layer = keras_attention.MultiHeadAttention(num_heads=4, key_dim=8)
    sequence = np.random.default_rng(1).standard_normal((1, 6, 16)).astype("float32")
    _, scores = layer(sequence, sequence, use_causal_mask=True, return_attention_scores=True)
    fig = plot_attention(
        np.asarray(scores),
        path=os.path.join(IMAGES, "multi_head.png"),
        title="4 heads, causal mask (untrained layer)",
    )
    plt.close(fig)

    # 5. Additive vs dot-product scores for one query over 8 keys.
    rng = np.random.default_rng(2)
    query, keys = (
        rng.standard_normal((1, 1, 16)).astype("float32"),
        rng.standard_normal((1, 8, 16)).astype("float32"),
    )
    additive = keras_attention.AdditiveAttention(units=16)
    _, additive_weights = additive(query, keys, return_attention_scores=True)
    _, dot_weights = ops.scaled_dot_product_attention(
        query, keys, keys, return_attention_scores=True
    )
    both = np.concatenate([np.asarray(dot_weights)[0], np.asarray(additive_weights).reshape(1, -1)])
    fig = plot_attention(
        both,
        x_labels=[f"k{i}" for i in range(8)],
        y_labels=["dot / sqrt(d)", "additive"],
        path=os.path.join(IMAGES, "additive_vs_dot.png"),
        title="one query, 8 keys (untrained additive layer)",
    )
    plt.close(fig)
    # 6. ALiBi: the weights the bias alone gives (all q.k = 0), causal, 4 of 8 heads.
    positions = np.arange(10)
    bias = keras_attention.ALiBiBias(num_heads=8)(positions, positions)
    zeros = np.zeros((1, 8, 10, 4), "float32")
    _, alibi_weights = ops.scaled_dot_product_attention(
        zeros, zeros, zeros, bias=bias, causal=True, return_attention_scores=True
    )
    slopes = ops.alibi_slopes(8)
    fig = plot_attention(
        np.asarray(alibi_weights)[0, [0, 2, 4, 7]],
        path=os.path.join(IMAGES, "alibi.png"),
        panel_titles=[f"head {h}: m = 1/{round(1 / slopes[h])}" for h in (0, 2, 4, 7)],
        title="softmax(-m |i - j|) with q.k = 0, causal: ALiBi alone (8 heads)",
    )
    plt.close(fig)

    # 7. Sliding window, w = 3: bidirectional band, and causal (the 3 most recent keys).
    band = np.asarray(masks.sliding_window_mask(10, 10, 3))
    causal = np.asarray(masks.causal_mask(10))
    windows = np.stack([band, band & causal]).astype("float32")
    fig = plot_attention(
        windows,
        cmap="Greys",
        path=os.path.join(IMAGES, "sliding_window.png"),
        panel_titles=["|i - j| < 3", "causal: i - 3 < j <= i"],
        title="sliding_window=3 (black = may attend)",
    )
    plt.close(fig)

    print(
        "pictures written to",
        IMAGES,
        ":",
        ", ".join(sorted(f for f in os.listdir(IMAGES) if f.endswith(".png"))),
    )


if __name__ == "__main__":
    main()

"""Attention maps of a trained model, one panel per head.

Trains the quickstart's digit classifier (8 pixel rows as 8 tokens), then draws for
a few test digits the self-attention weights of each head (`row i attends row j`)
and the weights with which `AttentionPooling` summarises the rows, as PNG files in
`--output-dir` (matplotlib required: `pip install "keras-attention-layers[plot]"`).

    python examples/plot_attention.py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _shared  # noqa: E402

import keras  # noqa: E402

from keras_attention.plot import plot_attention  # noqa: E402

import quickstart  # noqa: E402  (same data and model)


def attention_maps(model, images):
    """Self-attention `(batch, heads, 8, 8)` and pooling weights `(batch, 8)`."""
    inner = keras.Model(
        model.input, [model.get_layer("positions").output, model.get_layer("norm2").output]
    )
    x, encoded = inner(images)
    _, self_weights = model.get_layer("attention")(x, x, return_attention_scores=True)
    _, pool_weights = model.get_layer("pool")(encoded, return_attention_scores=True)
    # convert_to_numpy, not np.asarray: PyTorch tensors that require grad refuse it.
    to_numpy = keras.ops.convert_to_numpy
    return to_numpy(self_weights), to_numpy(pool_weights).reshape(len(images), -1)


def main(argv=None):
    args = _shared.parse_args(__doc__.splitlines()[0], argv, epochs=30)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keras.utils.set_random_seed(args.seed)
    x_train, y_train, x_test, y_test = quickstart.load_data(args.smoke, args.seed)
    model = quickstart.build_model()
    model.compile(
        keras.optimizers.Adam(2e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=32, verbose=2 if args.smoke else 1)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)

    count = 2 if args.smoke else 4
    self_weights, pool_weights = attention_maps(model, x_test[:count])
    rows = [f"row {i}" for i in range(8)]
    paths = []
    for i in range(count):
        path = os.path.join(args.output_dir, f"attention_digit{i}_label{y_test[i]}.png")
        fig = plot_attention(
            self_weights[i],
            x_labels=rows,
            y_labels=rows,
            path=path,
            title=f"digit {y_test[i]}: self-attention per head",
        )
        plt.close(fig)
        # The pooling query is one row of weights over the 8 pixel rows; show it next
        # to the image it summarises.
        fig, (left, right) = plt.subplots(1, 2, figsize=(6, 3))
        left.imshow(x_test[i], cmap="gray_r")
        left.set_title(f"digit {y_test[i]}")
        right.barh(range(8), pool_weights[i][::-1])
        right.set_yticks(range(8), rows[::-1])
        right.set_title("AttentionPooling weights")
        pool_path = os.path.join(args.output_dir, f"pooling_digit{i}_label{y_test[i]}.png")
        fig.savefig(pool_path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        paths += [path, pool_path]
    _shared.print_summary(
        "attention maps", {"test accuracy": f"{accuracy:.4f}", "pictures": ", ".join(paths)}
    )
    return {"accuracy": accuracy, "paths": paths}


if __name__ == "__main__":
    main()

"""Quickstart: classify handwritten digits with multi-head attention, save, reload, export.

Each 8x8 digit image (scikit-learn's `load_digits`, shipped with scikit-learn: no
download) is read as a sequence of 8 tokens, one per pixel row, with 8 features each:

    rows -> Dense embedding + sinusoidal positions -> MultiHeadAttention and a
    feed-forward network (each + residual, LayerNorm) -> AttentionPooling -> Dense(10)

Then: save a `.keras` file with `keras_attention.export.save_model`, reload it with
`keras.saving.load_model` and compare; export a TensorFlow SavedModel and serve it in
a fresh Python process where `keras_attention` cannot be imported; compare again.

    python examples/quickstart.py            # 0.992 test accuracy measured; ~2.5 min on 2 busy cores
    python examples/quickstart.py --smoke    # seconds, for the test suite
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _shared  # noqa: E402  (command line, sys.path for a source checkout)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_attention  # noqa: E402


def load_data(smoke, seed):
    """Digits as `(samples, 8 rows, 8 pixels)` in [0, 1]; 80/20 stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, random_state=seed, stratify=digits.target
    )
    if smoke:
        x_train, y_train, x_test, y_test = x_train[:64], y_train[:64], x_test[:32], y_test[:32]
    return x_train, y_train, x_test, y_test


def build_model(embedding_dim=64, num_heads=4, dropout=0.1):
    # `None` rows: the model (and its SavedModel) accept any number of tokens.
    rows = keras.Input((None, 8), name="rows")
    x = keras.layers.Dense(embedding_dim, name="embed")(rows)
    x = keras_attention.SinusoidalPositionEncoding(name="positions")(x)
    # One Transformer encoder block written out: attention, then a feed-forward
    # network, each with a residual connection and LayerNorm.
    attended = keras_attention.MultiHeadAttention(
        num_heads=num_heads,
        key_dim=embedding_dim // num_heads,
        dropout=dropout,
        name="attention",
    )(x, x)
    x = keras.layers.LayerNormalization(name="norm1")(x + keras.layers.Dropout(dropout)(attended))
    hidden = keras.layers.Dense(2 * embedding_dim, activation="relu", name="ffn_in")(x)
    hidden = keras.layers.Dense(embedding_dim, name="ffn_out")(hidden)
    x = keras.layers.LayerNormalization(name="norm2")(x + keras.layers.Dropout(dropout)(hidden))
    # A learned query attends over the 8 rows and keeps what identifies the digit.
    pooled = keras_attention.AttentionPooling(units=embedding_dim, name="pool")(x)
    pooled = keras.layers.Dropout(2 * dropout)(pooled)
    logits = keras.layers.Dense(10, name="classifier")(pooled)
    return keras.Model(rows, logits, name="digits_attention")


def main(argv=None):
    args = _shared.parse_args(__doc__.splitlines()[0], argv, epochs=40)
    keras.utils.set_random_seed(args.seed)
    start = time.perf_counter()

    x_train, y_train, x_test, y_test = load_data(args.smoke, args.seed)
    model = build_model()
    batch_size = 32
    steps = args.epochs * int(np.ceil(len(x_train) * 0.9 / batch_size))
    learning_rate = keras.optimizers.schedules.CosineDecay(
        0.0, steps, warmup_target=3e-3, warmup_steps=max(1, steps // 10)
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(
        x_train,
        y_train,
        validation_split=0.1,
        epochs=args.epochs,
        batch_size=batch_size,
        verbose=2 if args.smoke else 1,
    )
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    train_seconds = time.perf_counter() - start

    # .keras: atomic save, then reload with no custom_objects (safe_mode on).
    keras_path = keras_attention.export.save_model(
        model, os.path.join(args.output_dir, "quickstart_digits.keras")
    )
    reloaded = keras.saving.load_model(keras_path)
    expected = model.predict(x_test, verbose=0)
    keras_diff = float(np.max(np.abs(reloaded.predict(x_test, verbose=0) - expected)))

    # SavedModel (a torch.export program on PyTorch): served by TensorFlow (PyTorch)
    # alone, in a process without keras_attention.
    export_dir = _shared.export_for_serving(
        model, os.path.join(args.output_dir, "quickstart_digits_savedmodel")
    )
    first_rows = x_test[:5, :6]  # a different batch size and number of rows
    served = _shared.serve_in_fresh_process(
        export_dir, {"test": x_test, "first_rows": first_rows}, args.output_dir
    )
    served_diff = max(
        float(np.max(np.abs(served["test"] - expected))),
        float(np.max(np.abs(served["first_rows"] - model.predict(first_rows, verbose=0)))),
    )

    _shared.print_summary(
        "quickstart",
        {
            "test accuracy": f"{accuracy:.4f} ({len(x_test)} digits)",
            "training time": f"{train_seconds:.1f} s",
            ".keras file": keras_path,
            ".keras max |diff|": f"{keras_diff:.2e}",
            "SavedModel": export_dir,
            "SavedModel max |diff| (fresh process, no keras_attention)": f"{served_diff:.2e}",
        },
    )
    if keras_diff > 1e-5 or served_diff > 1e-5:
        raise SystemExit("reloaded models disagree with the trained one")
    return {
        "accuracy": accuracy,
        "keras_path": keras_path,
        "export_dir": export_dir,
        "keras_diff": keras_diff,
        "served_diff": served_diff,
    }


if __name__ == "__main__":
    main()

"""Quantization: `.keras` size, perplexity and greedy speed in int8/int4, the int8 cache, LoRA.

Prints one markdown table (not a test) for two models, each trained briefly on the
Python help texts (`pydoc_data.topics`, characters as tokens) so that its perplexity
means something, then quantized with `model.quantize` (Keras' own):

- char LM: the model of `examples/char_language_model.py` (2 layers, d_model 128,
  4 heads, feed-forward 256, 128 learned positions, vocabulary = the characters);
- Llama-shaped: `CausalLanguageModel(style="llama")`, vocabulary 8000, 4 layers,
  hidden 256, 4 heads (head_dim 64), feed-forward 1024, RoPE (only the characters'
  ids occur in the text).

Rows: the `.keras` file's bytes (the model without optimizer state: float32, int8,
int4, the ratio to float32); the
held-out perplexity (windows of the last 10% of the text, never trained on); greedy
tokens/s of the compiled `generate` (float32 vs int8 weights, float cache, timed in
turn a, b, a, b: fair on a busy machine; median of `--repeats`); the int8 cache: its
bytes / float32's and the share of greedy positions where its tokens equal the float
cache's (float weights, held-out prompts); LoRA's trainable fraction at rank 4
(`enable_lora(4)`: query and value).

Usage:
    python benchmarks/bench_quantize.py               # TensorFlow, ~10 minutes on 2 cores
    python benchmarks/bench_quantize.py --backend jax
    python benchmarks/bench_quantize.py --smoke       # one tiny model, a minute
"""

import argparse
import math
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["tensorflow", "jax", "torch"], default="tensorflow")
    parser.add_argument("--train-steps", type=int, default=150, help="training steps a model")
    parser.add_argument("--repeats", type=int, default=5, help="timed generate calls a case")
    parser.add_argument("--smoke", action="store_true", help="tiny models, a few steps")
    args = parser.parse_args(argv)
    if args.smoke:
        args.train_steps, args.repeats = 2, 1
    return args


def _models(models, smoke, vocabulary):
    """`{name: (build function, sequence length)}`."""
    if smoke:  # one tiny model: the code path of both
        return {
            "Llama-shaped (smoke)": (
                lambda: models.CausalLanguageModel(
                    vocabulary_size=200,
                    sequence_length=32,
                    num_layers=1,
                    embedding_dim=32,
                    num_heads=2,
                    intermediate_dim=32,
                    style="llama",
                ),
                32,
            )
        }
    return {
        "char LM": (
            lambda: models.causal_language_model(
                vocabulary_size=vocabulary,
                sequence_length=128,
                num_layers=2,
                embedding_dim=128,
                num_heads=4,
                intermediate_dim=256,
            ),
            128,
        ),
        "Llama-shaped": (
            lambda: models.CausalLanguageModel(
                vocabulary_size=8000,
                sequence_length=128,
                num_layers=4,
                embedding_dim=256,
                num_heads=4,
                intermediate_dim=1024,
                style="llama",
                dropout=0.0,
            ),
            128,
        ),
    }


def _text_ids(smoke):
    from pydoc_data import topics

    text = "\n".join(topics.topics[key] for key in sorted(topics.topics))
    text = "".join(c if c.isascii() and (c.isprintable() or c == "\n") else " " for c in text)
    text = text[:30_000] if smoke else text[:600_000]
    characters = sorted(set(text))
    lookup = {c: i + 1 for i, c in enumerate(characters)}
    return [lookup[c] for c in text], len(characters) + 1


def _windows(np, ids, count, length, rng):
    starts = rng.integers(0, len(ids) - length - 1, size=count)
    x = np.stack([ids[s : s + length] for s in starts]).astype("int32")
    y = np.stack([ids[s + 1 : s + length + 1] for s in starts]).astype("int32")
    return x, y


def _perplexity(np, model, x, y):
    logits = model.predict(x, batch_size=32, verbose=0).astype("float64")
    logits -= logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return math.exp(-np.take_along_axis(log_probs, y[..., None], axis=-1).mean())


def _timed(runs, repeats):
    """Median seconds of each run, called in turn (a, b, a, b, ...) after a warm-up."""
    for run in runs.values():
        run()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _bytes(keras, np, structure):
    return sum(
        np.asarray(keras.ops.convert_to_numpy(x)).nbytes for x in keras.tree.flatten(structure)
    )


def measure(name, build, length, data, args, folder):
    """One model's column: `{row: value}`."""
    import keras
    import numpy as np

    (x_train, y_train), (x_test, y_test), prompts = data
    keras.utils.set_random_seed(0)
    model = build()
    model.compile(
        keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    steps = args.train_steps
    model.fit(
        x_train[: 32 * steps, :length], y_train[: 32 * steps, :length], batch_size=32, verbose=0
    )
    paths, perplexity, loaded = {}, {}, {}
    checkpoint = os.path.join(folder, f"{name}_trained.keras")
    model.save(checkpoint)  # with the optimizer's state: not what is deployed
    for mode in ("float32", "int8", "int4"):
        # The model alone (no optimizer state), as deployed: the sizes compared.
        loaded[mode] = keras.saving.load_model(checkpoint, compile=False)
        if mode == "float32":
            paths[mode] = os.path.join(folder, f"{name}_float32.keras")
            loaded[mode].save(paths[mode])
        else:
            loaded[mode].quantize(mode)
            paths[mode] = os.path.join(folder, f"{name}_{mode}.keras")
            loaded[mode].save(paths[mode])
        perplexity[mode] = _perplexity(np, loaded[mode], x_test[:, :length], y_test[:, :length])
    sizes = {mode: os.path.getsize(path) for mode, path in paths.items()}
    new = 8 if args.smoke else 64
    speed_prompts = prompts[:4, :16]
    seconds = _timed(
        {
            "float32": lambda: loaded["float32"].generate(speed_prompts, new),
            "int8": lambda: loaded["int8"].generate(speed_prompts, new),
            "int8 + int8 cache": lambda: loaded["int8"].generate(
                speed_prompts, new, cache_dtype="int8"
            ),
        },
        args.repeats,
    )
    speed = {mode: speed_prompts.shape[0] * new / s for mode, s in seconds.items()}
    agree_new = min(new, length - prompts.shape[1])
    float_tokens = loaded["float32"].generate(prompts, agree_new)
    int8_tokens = loaded["float32"].generate(prompts, agree_new, cache_dtype="int8")
    agreement = float(np.mean(float_tokens[:, -agree_new:] == int8_tokens[:, -agree_new:]))
    cache_ratio = _bytes(keras, np, model.initial_cache(1, length, "int8")) / _bytes(
        keras, np, model.initial_cache(1, length)
    )
    total = model.count_params()
    model.enable_lora(4)
    lora = sum(int(np.prod(w.shape)) for w in model.trainable_weights) / total
    return {
        ".keras MB float32": f"{sizes['float32'] / 1e6:.2f}",
        ".keras int8 / float32": f"{sizes['int8'] / sizes['float32']:.3f}",
        ".keras int4 / float32": f"{sizes['int4'] / sizes['float32']:.3f}",
        "perplexity float32": f"{perplexity['float32']:.3f}",
        "perplexity int8 (change)": f"{perplexity['int8']:.3f} "
        f"({perplexity['int8'] / perplexity['float32'] - 1:+.2%})",
        "perplexity int4 (change)": f"{perplexity['int4']:.3f} "
        f"({perplexity['int4'] / perplexity['float32'] - 1:+.2%})",
        "greedy tokens/s float32": f"{speed['float32']:.0f}",
        "greedy tokens/s int8 (ratio)": f"{speed['int8']:.0f} "
        f"({speed['int8'] / speed['float32']:.2f}x)",
        "greedy tokens/s int8 + int8 cache (ratio)": f"{speed['int8 + int8 cache']:.0f} "
        f"({speed['int8 + int8 cache'] / speed['float32']:.2f}x)",
        "int8 cache bytes / float32": f"{cache_ratio:.3f}",
        "int8 cache tokens = float cache": f"{agreement:.1%} ({float_tokens.shape[0]} x {agree_new})",
        "LoRA rank 4 trainable fraction": f"{lora:.2%}",
    }


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, ROOT)
    import keras
    import numpy as np

    from keras_attention import models

    ids, vocabulary = _text_ids(args.smoke)
    rng = np.random.default_rng(0)
    split = int(0.9 * len(ids))
    length = 32 if args.smoke else 128
    data = (
        _windows(np, ids[:split], 32 * args.train_steps, length, rng),
        _windows(np, ids[split:], 16 if args.smoke else 128, length, rng),
        _windows(np, ids[split:], 8, 16, rng)[0],
    )
    print(f"backend {keras.backend.backend()}, keras {keras.__version__}, {os.cpu_count()} CPUs")
    columns = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, (build, seq) in _models(models, args.smoke, vocabulary).items():
            columns[name] = measure(name, build, seq, data, args, folder)
    names = list(columns)
    print("\n| measure | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for row in columns[names[0]]:
        print(f"| {row} | " + " | ".join(columns[n][row] for n in names) + " |")
    return columns


if __name__ == "__main__":
    main()

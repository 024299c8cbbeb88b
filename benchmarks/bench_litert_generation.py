"""LiteRT generation: file size, per-token decode latency, and int8 token agreement.

Prints markdown tables (not a test). Trains the character language model of
`examples/char_language_model.py` briefly (2 layers, d_model 128, 4 heads,
feed-forward 256, 128 positions), exports it with
`keras_attention.export.export_generator` to LiteRT in float32 and with dynamic-range
int8 quantization (`optimizations=[tf.lite.Optimize.DEFAULT]`: int8 weights, float
activations), and measures with the `ai-edge-litert` interpreter (XNNPACK, one thread):

- the `.tflite` file size;
- `prefill` time for a 32-character prompt (median of 25 calls), and the per-token
  time of `decode` (median and 90th percentile over `--repeats` passes of `--steps`
  calls, batch 1);
- greedy token agreement of int8 with float32 over `--prompts` held-out prompts of
  32 characters and `--new` new characters each: the share of new tokens equal at the
  same position, the share of identical continuations, and the mean length of the
  common prefix; and float32 LiteRT against `model.generate` (should be 100 %).

`--from-keras-hub` times instead the Llama-3.1- and Gemma-2-shaped keras-hub models of
`bench_generate.py --architectures` (random weights) converted with
`CausalLanguageModel.from_keras_hub`, exported the same two ways with a cache of 96
positions (a 32-token prompt, 64 new): file size, prefill, decode per token and the
greedy tokens against `model.generate` (the code is in `keras_hub_tables.py`).

Usage:
    python benchmarks/bench_litert_generation.py
    python benchmarks/bench_litert_generation.py --from-keras-hub   # keras-hub Llama, Gemma
    python benchmarks/bench_litert_generation.py --smoke    # tiny model, seconds
"""

import argparse
import math
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-windows", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=90, help="decode calls timed")
    parser.add_argument("--repeats", type=int, default=5, help="passes over the decode steps")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new", type=int, default=64, help="new tokens per prompt")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--from-keras-hub",
        action="store_true",
        help="only the Llama / Gemma models converted by from_keras_hub (issue 29)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.train_windows, args.epochs, args.steps, args.prompts, args.new = 256, 1, 10, 4, 8
        args.repeats = 1
    return args


def time_steps(generator, prompt, steps, repeats):
    """Milliseconds of `generator`'s `prefill` of `prompt` (median of `5 * repeats`
    calls) and of one `decode` step (median and 90th percentile over `repeats` passes
    of `steps` greedy steps after the prompt, batch 1, within the cache)."""
    import numpy as np

    tokens = np.array([prompt], "int32")
    mask = np.ones_like(tokens, bool)
    prefill_times = []
    for _ in range(repeats * 5):
        start = time.perf_counter()
        out = generator.prefill(tokens=tokens, mask=mask)
        prefill_times.append(time.perf_counter() - start)
    step_times = []
    for _ in range(repeats):  # several passes: a busy machine adds outliers
        cache, token = out["cache"], out["logits"].argmax(-1).astype("int32")
        for index in range(len(prompt), min(generator.max_length, len(prompt) + steps)):
            start = time.perf_counter()
            step = generator.decode(token=token, cache=cache, index=np.array(index, "int32"))
            step_times.append(time.perf_counter() - start)
            cache, token = step["cache"], step["logits"].argmax(-1).astype("int32")
    step_times.sort()
    return (
        statistics.median(prefill_times) * 1e3,
        statistics.median(step_times) * 1e3,
        step_times[int(0.9 * (len(step_times) - 1))] * 1e3,
    )


def main(argv=None):
    args = parse_args(argv)
    if args.from_keras_hub:
        from keras_hub_tables import print_litert_table

        return print_litert_table(args)
    import char_language_model
    import keras
    import numpy as np
    import tensorflow as tf
    from litert_app import LiteRTGenerator

    import keras_attention

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    length = char_language_model.SEQUENCE_LENGTH
    text = char_language_model.load_text(args.smoke)
    characters, _, ids = char_language_model.vocabulary(text)
    split = int(0.9 * len(ids))
    x, y = char_language_model.windows(ids[:split], args.train_windows, rng)
    x_val, y_val = char_language_model.windows(ids[split:], 256, rng)
    model = char_language_model.build_model(len(characters), args.smoke)
    start = time.perf_counter()
    model.fit(x, y, epochs=args.epochs, batch_size=64, verbose=0)
    train_seconds = time.perf_counter() - start
    val_loss = float(model.evaluate(x_val, y_val, verbose=0, batch_size=128))

    folder = tempfile.mkdtemp(prefix="bench_litert_")
    paths, export_seconds = {}, {}
    for name, quantization in (("float32", None), ("int8 dynamic range", "dynamic_int8")):
        start = time.perf_counter()
        paths[name] = keras_attention.export.export_generator(
            model,
            os.path.join(folder, f"{name.split()[0]}.tflite"),
            max_length=length,
            quantization=quantization,
        )
        export_seconds[name] = time.perf_counter() - start

    prompt_length = 32
    starts = rng.integers(split, len(ids) - prompt_length, size=args.prompts)
    prompts = [ids[s : s + prompt_length].tolist() for s in starts]
    rows, continuations = [], {}
    for name, path in paths.items():
        generator = LiteRTGenerator(path, num_threads=args.threads)
        prefill, median, p90 = time_steps(generator, prompts[0], args.steps, args.repeats)
        rows.append((name, os.path.getsize(path) / 1e6, prefill, median, p90, export_seconds[name]))
        continuations[name] = [row[prompt_length:] for row in generator.generate(prompts, args.new)]
    keras_tokens = model.generate(np.array(prompts, "int32"), args.new)[:, prompt_length:]
    continuations["model.generate"] = keras_tokens.tolist()

    print(
        f"\nTensorFlow {tf.__version__}, ai-edge-litert, {args.threads} thread(s); model "
        f"trained {train_seconds:.0f} s, validation perplexity {math.exp(val_loss):.2f} "
        f"(uniform: {len(characters)}); decode of batch 1, cache of {length} positions.\n"
    )
    print(
        "| model | file MB | prefill 32 tokens ms | decode ms/token (median) | p90 ms | export s |"
    )
    print("|---|---|---|---|---|---|")
    for name, size, prefill, median, p90, seconds in rows:
        print(f"| {name} | {size:.2f} | {prefill:.2f} | {median:.3f} | {p90:.3f} | {seconds:.1f} |")

    def agreement(a, b):
        a, b = np.array(continuations[a]), np.array(continuations[b])
        same = a == b
        prefix = [int(np.argmin(row)) if not row.all() else len(row) for row in same]
        return same.mean(), same.all(axis=1).mean(), statistics.mean(prefix)

    print(
        f"\n{args.prompts} held-out prompts of {prompt_length} characters, {args.new} new "
        "characters each, greedy:\n"
    )
    print("| compared | tokens equal | continuations identical | mean common prefix |")
    print("|---|---|---|---|")
    for a, b in (("int8 dynamic range", "float32"), ("float32", "model.generate")):
        tokens_equal, identical, prefix = agreement(a, b)
        print(
            f"| {a} vs {b} | {100 * tokens_equal:.1f} % | {100 * identical:.1f} % | "
            f"{prefix:.1f} of {args.new} |"
        )


if __name__ == "__main__":
    main()

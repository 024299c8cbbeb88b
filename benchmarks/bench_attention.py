"""Speed of keras_attention.MultiHeadAttention vs keras.layers.MultiHeadAttention.

Prints markdown tables (not a test). Same configuration, same process, same inputs:
batch 8, d_model 256, 8 heads of 32, self-attention on (batch, N, d_model);
forward and forward+backward (gradients of all weights), under `tf.function` and
with `jit_compile=True` (XLA) on TensorFlow, `jax.jit` on JAX, eager on PyTorch
(the way Keras' own PyTorch trainer runs by default). Also, on TensorFlow, the
attention core alone:
`keras_attention.ops.scaled_dot_product_attention` vs a hand-written
`tf.matmul -> tf.nn.softmax -> tf.matmul`.

With `--sliding-window W`: the sliding-window table instead. Causal self-attention
of the attention core (`ops.scaled_dot_product_attention`, `implementation="flash"`,
batch 1, 8 heads of 64), forward+backward, each case in its own subprocess (peak
resident memory): window W against full causal attention, with the ratio of time
and memory between successive N (linear growth: 2x per doubling).

FLOP formula (multiply-add = 2 FLOPs), B batch, N length, D model width:
    forward = 8 * B * N * D^2   (four D x D projections)
            + 4 * B * N^2 * D   (Q K^T and weights @ V over all heads)
    forward+backward = 3 * forward

Usage:
    python benchmarks/bench_attention.py            # N = 128, 512, 1024, 2048
    python benchmarks/bench_attention.py --quick    # N = 128, 512
    python benchmarks/bench_attention.py --smoke    # seconds; used by the tests
    python benchmarks/bench_attention.py --backend jax      # or --backend torch
    python benchmarks/bench_attention.py --backend torch --implementation fused plain
    python benchmarks/bench_attention.py --sliding-window 512   # N = 4096 ... 32768
    KERAS_BACKEND=jax python benchmarks/bench_attention.py --backend jax --dtype bfloat16 \
        --batch 4 --heads 16 --head-dim 64 --lengths 1024 4096 16384   # on a GPU
"""

import argparse
import os
import statistics
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["tensorflow", "jax", "torch"], default="tensorflow")
    parser.add_argument(
        "--implementation",
        nargs="+",
        default=["default"],
        choices=["default", "plain", "fused", "chunked", "flash"],
        help="our attention paths to time (default: the backend's default path)",
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 1024, 2048])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="N = 128, 512 only")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one repeat")
    parser.add_argument("--no-xla", action="store_true", help="skip jit_compile=True")
    parser.add_argument(
        "--sliding-window",
        type=int,
        default=None,
        help="instead: the sliding-window table (TensorFlow) with this window",
    )
    parser.add_argument("--window-lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths = [128, 512]
    if args.smoke:
        args.lengths, args.batch, args.repeats = [16], 2, 1
    return args


def median_ms(fns, repeats):
    """Median wall time in ms of each function in `fns`.

    The functions are timed in turn within each repeat (a, b, a, b, ...), so a drift
    in the machine's speed affects all of them alike and their ratio stays fair.
    """
    for fn in fns:  # warm-up: tracing and compilation
        fn()
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, series in zip(fns, times):
            start = time.perf_counter()
            fn()
            series.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(series) for series in times]


def flops(batch, length, width):
    return 8 * batch * length * width**2 + 4 * batch * length**2 * width


def tensorflow_runners(layer, x, jit_compile):
    import tensorflow as tf

    @tf.function(jit_compile=jit_compile)
    def forward(x):
        return layer(x, x)

    @tf.function(jit_compile=jit_compile)
    def forward_backward(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.cast(layer(x, x), "float32") ** 2)
        return tape.gradient(loss, layer.trainable_variables)

    def run(fn):
        return lambda: [t.numpy() for t in tf.nest.flatten(fn(x))]

    return run(forward), run(forward_backward)


def jax_runners(layer, x, jit_compile):
    import jax

    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def loss_fn(trainable, x):
        out, _ = layer.stateless_call(trainable, non_trainable, x, x)
        return (out.astype("float32") ** 2).sum()

    forward = jax.jit(lambda t, x: layer.stateless_call(t, non_trainable, x, x)[0])
    grad = jax.jit(jax.grad(loss_fn))
    return (
        lambda: forward(trainable, x).block_until_ready(),
        lambda: jax.tree_util.tree_map(lambda g: g.block_until_ready(), grad(trainable, x)),
    )


def torch_runners(layer, x, jit_compile):
    import torch

    def forward():
        with torch.no_grad():
            return layer(x, x).cpu()

    def forward_backward():
        loss = (layer(x, x).float() ** 2).sum()
        return torch.autograd.grad(loss, [v.value for v in layer.trainable_variables])

    return forward, forward_backward


WINDOW_CHILD = r"""
import json, os, resource, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf
from keras_attention import ops
length, window = int(sys.argv[1]), int(sys.argv[2]) or None
q, k, v = (tf.random.normal((1, 8, length, 64)) for _ in range(3))

@tf.function
def step(q, k, v):
    with tf.GradientTape() as tape:
        tape.watch([q, k, v])
        out = ops.scaled_dot_product_attention(
            q, k, v, causal=True, sliding_window=window, implementation="flash"
        )
        loss = tf.reduce_sum(out * out)
    return tape.gradient(loss, [q, k, v])

[g.numpy() for g in step(q, k, v)]  # tracing
times = []
while len(times) < 3 and sum(times) < 20:  # best of 3 calls, or of what fits in 20 s
    start = time.perf_counter()
    [g.numpy() for g in step(q, k, v)]
    times.append(time.perf_counter() - start)
seconds = min(times)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak": peak, "seconds": seconds}))
"""


def window_table(args):
    import json
    import subprocess

    window = args.sliding_window
    print(f"# Sliding window {window} vs full causal attention (flash path, TensorFlow)\n")
    print("causal self-attention core, batch 1, 8 heads of 64, forward+backward, one")
    print("subprocess per case (best of 3 calls after tracing, fewer when they pass 20 s;")
    print("peak RSS includes TensorFlow)\n")
    print(
        "| N | window s | window GiB | s ratio to N/2 | GiB ratio to N/2 | full causal s "
        "| full / window | load |"
    )
    print("|---|---|---|---|---|---|---|---|")
    previous = None
    for length in args.window_lengths:
        results = []
        for w in (window, 0):
            proc = subprocess.run(
                [sys.executable, "-c", WINDOW_CHILD, str(length), str(w)],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-2000:])
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        windowed, full = results
        ratios = ("", "")
        if previous is not None:
            ratios = (
                f"{windowed['seconds'] / previous['seconds']:.2f}",
                f"{windowed['peak'] / previous['peak']:.2f}",
            )
        print(
            f"| {length} | {windowed['seconds']:.2f} | {windowed['peak'] / 2**30:.2f} | "
            f"{ratios[0]} | {ratios[1]} | {full['seconds']:.2f} | "
            f"{full['seconds'] / windowed['seconds']:.1f} | {os.getloadavg()[0]:.1f} |"
        )
        sys.stdout.flush()
        previous = windowed


def main(argv=None):
    args = parse_args(argv)
    if args.sliding_window is not None:
        if args.smoke:
            args.window_lengths = [64, 128]
        return window_table(args)
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    import keras_attention as ka

    keras.config.set_dtype_policy(args.dtype)
    width = args.heads * args.head_dim
    runners = {"tensorflow": tensorflow_runners, "jax": jax_runners, "torch": torch_runners}[
        args.backend
    ]
    modes = [
        ({"tensorflow": "tf.function", "jax": "jax.jit", "torch": "eager"}[args.backend], False)
    ]
    if args.backend == "tensorflow" and not args.no_xla:
        modes.append(("XLA", True))

    print(f"# MultiHeadAttention: keras_attention vs keras ({args.backend}, {args.dtype})\n")
    from keras_attention import backend as backend_lib

    versions = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
    backend_module = __import__(versions[args.backend])
    print(
        f"batch {args.batch}, d_model {width}, {args.heads} heads x {args.head_dim}, "
        f"median of {args.repeats} interleaved runs after warm-up, Keras {keras.__version__}, "
        f"{args.backend} {backend_module.__version__}, default path here: "
        f"{backend_lib.default_implementation()!r}\n"
    )
    print(
        "| N | mode | ours | pass | keras ms | ours ms | ours/keras | keras GFLOP/s | ours GFLOP/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for length in args.lengths:
        x = keras.ops.convert_to_tensor(
            rng.standard_normal((args.batch, length, width)).astype("float32"), args.dtype
        )
        theirs = keras.layers.MultiHeadAttention(args.heads, args.head_dim)
        theirs(x, x)
        for implementation in args.implementation:
            ours = ka.MultiHeadAttention(
                args.heads,
                args.head_dim,
                implementation=None if implementation == "default" else implementation,
            )
            ours(x, x)
            for mode, jit in modes:
                keras_fns, ours_fns = runners(theirs, x, jit), runners(ours, x, jit)
                for index, label in enumerate(("fwd", "fwd+bwd")):
                    try:
                        k_ms, o_ms = median_ms([keras_fns[index], ours_fns[index]], args.repeats)
                    except Exception as error:  # noqa: BLE001 - report OOM etc. in the table
                        print(f"<!-- N={length} {mode} {label} failed: {error!r:.200} -->")
                        k_ms = o_ms = float("nan")
                    work = flops(args.batch, length, width) * (3 if index else 1)
                    print(
                        f"| {length} | {mode} | {implementation} | {label} | {k_ms:.2f} | "
                        f"{o_ms:.2f} | {o_ms / k_ms:.2f} | {work / k_ms / 1e6:.0f} | "
                        f"{work / o_ms / 1e6:.0f} |"
                    )
        sys.stdout.flush()

    if args.backend == "tensorflow":
        core_table(args, rng)


def core_table(args, rng):
    import tensorflow as tf

    from keras_attention import ops as attention_ops

    print("\n# Attention core: ops.scaled_dot_product_attention vs hand-written TF\n")
    print(f"(batch {args.batch}, {args.heads} heads, N, {args.head_dim}), forward, tf.function\n")
    print("| N | hand-written ms | ops ms | ops/hand |")
    print("|---|---|---|---|")
    scale = 1.0 / args.head_dim**0.5

    @tf.function
    def hand(q, k, v):
        scores = tf.matmul(q, k, transpose_b=True) * scale
        return tf.matmul(tf.nn.softmax(scores, axis=-1), v)

    @tf.function
    def ours(q, k, v):
        return attention_ops.scaled_dot_product_attention(q, k, v)

    for length in args.lengths:
        q, k, v = (
            tf.constant(
                rng.standard_normal((args.batch, args.heads, length, args.head_dim)).astype(
                    "float32"
                )
            )
            for _ in range(3)
        )
        hand_ms, ops_ms = median_ms(
            [
                lambda q=q, k=k, v=v: hand(q, k, v).numpy(),
                lambda q=q, k=k, v=v: ours(q, k, v).numpy(),
            ],
            args.repeats,
        )
        print(f"| {length} | {hand_ms:.2f} | {ops_ms:.2f} | {ops_ms / hand_ms:.2f} |")


if __name__ == "__main__":
    main()

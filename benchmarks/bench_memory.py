"""Peak memory of multi-head self-attention forward+backward on long sequences.

Prints a markdown table (not a test). Each case runs in its own subprocess, which
reports its peak resident set size (ru_maxrss); the parent kills a case that passes
the limit (16 GiB by default) and stops that series at the first failure.

Cases, at batch 1, 8 heads, head dim 64 (d_model 512), N = 2048 ... 65536:
- keras: `keras.layers.MultiHeadAttention(8, 64)`
- ours plain: `keras_attention.MultiHeadAttention(8, 64, implementation="plain")`
- ours default: `keras_attention.MultiHeadAttention(8, 64)` (switches to the flash
  path by itself above `keras_attention.ops.CHUNKED_THRESHOLD` score elements)
- ours chunked: `implementation="chunked"` (query chunks, recomputed by `keras.remat`)
- ours flash: `implementation="flash"` (FlashAttention-2 tiles, custom gradient)
- pytorch sdpa: `torch.nn.functional.scaled_dot_product_attention` on separate
  `(1, 8, N, 64)` query, key and value (PyTorch's CPU flash kernel), the reference
  users compare with; PyTorch is an optional dependency of this benchmark only: the
  row says "skipped" when it is not installed.

Each child times `--calls` forward+backward calls (default 1) after a warm-up call on
8 tokens: "seconds" is the last call, "first s" the first, which includes tracing ours'
`tf.function` and, on the flash path, compiling its passes with XLA (about 10 s in all
at N = 8192 on the 2-core machine of docs/performance.md; `--calls 2` separates it).

Usage:
    python benchmarks/bench_memory.py                 # N = 2048 ... 65536
    python benchmarks/bench_memory.py --cases "ours flash" "pytorch sdpa" --lengths 16384
    python benchmarks/bench_memory.py --cases "ours flash" "pytorch sdpa" --calls 2
    python benchmarks/bench_memory.py --smoke         # one tiny case per series
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

CASES = {
    "keras": "keras.layers.MultiHeadAttention(8, 64)",
    "ours plain": "ka.MultiHeadAttention(8, 64, implementation='plain')",
    "ours default": "ka.MultiHeadAttention(8, 64)",
    "ours chunked": "ka.MultiHeadAttention(8, 64, implementation='chunked')",
    "ours flash": "ka.MultiHeadAttention(8, 64, implementation='flash')",
    "pytorch sdpa": None,
}

TORCH_CHILD = r"""
import json, resource, sys, time
import torch
length, calls = int(sys.argv[1]), int(sys.argv[2])
q, k, v = (torch.randn(1, 8, length, 64, requires_grad=True) for _ in range(3))
sdpa = torch.nn.functional.scaled_dot_product_attention
(sdpa(q[:, :, :8], k[:, :, :8], v[:, :, :8]) ** 2).sum().backward()  # warm-up
times = []
for _ in range(calls):
    start = time.perf_counter()
    (sdpa(q, k, v) ** 2).sum().backward()
    times.append(time.perf_counter() - start)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak": peak, "seconds": times[-1], "first": times[0]}))
"""

CHILD = r"""
import json, os, resource, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, tensorflow as tf
import keras_attention as ka
length, calls = int(sys.argv[1]), int(sys.argv[2])
layer = {layer}
x = tf.random.normal((1, length, 512))
layer(x[:, :8], x[:, :8])

@tf.function
def step(x):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x, x) ** 2)
    return tape.gradient(loss, layer.trainable_variables)

times = []
for _ in range(calls):
    start = time.perf_counter()
    [g.numpy() for g in step(x)]
    times.append(time.perf_counter() - start)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"peak": peak, "seconds": times[-1], "first": times[0]}}))
"""


def rss(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_case(layer_expr, length, limit_bytes, timeout, calls=1):
    code = TORCH_CHILD if layer_expr is None else CHILD.format(layer=layer_expr)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(length), str(calls)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    start = time.monotonic()
    while proc.poll() is None:
        if rss(proc.pid) > limit_bytes:
            proc.kill()
            proc.wait()
            return None, f"> {limit_bytes / 2**30:.0f} GiB (stopped)"
        if time.monotonic() - start > timeout:
            proc.kill()
            proc.wait()
            return None, f"> {timeout:.0f} s (stopped)"
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        lines = err.strip().splitlines() or ["?"]
        errors = [line for line in lines if "Error" in line] or lines
        return None, f"failed: {errors[-1].strip()[:100]}"
    return json.loads(out.strip().splitlines()[-1]), None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384, 32768, 65536]
    )
    parser.add_argument("--limit-gib", type=float, default=16.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument(
        "--calls", type=int, default=1, help="timed calls per case (seconds: the last)"
    )
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.lengths = [64]
    limit = args.limit_gib * 2**30

    print("# Peak RSS of MHA forward+backward (batch 1, 8 heads, head dim 64)\n")
    print("(load: the machine's 1-minute load average when the case ended; the timings")
    print("are only comparable between rows measured at a similar load)\n")
    print("| case | N | peak RSS GiB | seconds | first s | load |")
    print("|---|---|---|---|---|---|")
    for case in args.cases:
        if case == "pytorch sdpa" and importlib.util.find_spec("torch") is None:
            print(f"| {case} | | skipped: PyTorch is not installed | | | |")
            continue
        for length in args.lengths:
            result, failure = run_case(CASES[case], length, limit, args.timeout, args.calls)
            if failure:
                print(f"| {case} | {length} | {failure} | | | |")
                sys.stdout.flush()
                break
            print(
                f"| {case} | {length} | {result['peak'] / 2**30:.2f} | "
                f"{result['seconds']:.1f} | {result['first']:.1f} | {os.getloadavg()[0]:.1f} |"
            )
            sys.stdout.flush()


if __name__ == "__main__":
    main()

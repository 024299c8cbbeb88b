"""PyTorch generation: the traced decoding step vs the eager loop vs keras-hub.

Prints a markdown table (not a test). On the PyTorch backend `generate()` runs its
token loop in Python; its one-token step is traced once per shape into an FX graph
(`keras_attention.backend.torch_step`). This script times, in one process and in
turn (a, b, c, a, b, c, ...), on the sizes of `bench_generate.py` (vocabulary 1000,
4 layers, 4 heads, d_model 256, feed-forward 1024, random weights, greedy):

- ours: `generate()` (the traced step);
- ours eager: `generate(..., compile=False)` (every step through the Keras layers,
  what `generate()` did on PyTorch before the traced step);
- keras-hub: `GPT2CausalLM.generate` of the same size (eager on PyTorch).

tokens/s of a later call (median of `--repeats`), the first call's seconds (for ours:
tracing included), and whether ours and ours eager give the same tokens. The thread
count and the load average are printed: on a machine shared with other jobs, set
`OMP_NUM_THREADS=1` (PyTorch's threads otherwise wait for each other's cores).

Usage:
    python benchmarks/bench_torch_generate.py                  # 3 cases
    python benchmarks/bench_torch_generate.py --cases 4,16,64 --repeats 3
    python benchmarks/bench_torch_generate.py --smoke          # tiny, no keras-hub
"""

import argparse
import os
import sys

os.environ["KERAS_BACKEND"] = "torch"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_generate  # noqa: E402  (the sizes, the keras-hub model, the timer)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=None, help="batch,prompt,new triples")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny model, no keras-hub")
    args = parser.parse_args(argv)
    cases = [tuple(int(v) for v in c.split(",")) for c in args.cases or ()]
    cases = cases or bench_generate.CASES
    import numpy as np
    import torch

    if args.smoke:
        cases, args.repeats = [(2, 4, 4)], 1
    size, ours = bench_generate.issue15_model(args.smoke)
    hub = None if args.smoke else bench_generate.gpt2_causal_lm(size)
    print(f"{bench_generate.versions(hub is not None)}, torch threads {torch.get_num_threads()}")
    print(
        "\n| batch, prompt, new | ours tokens/s | ours eager tokens/s | keras-hub tokens/s "
        "| ours / eager | ours / keras-hub | first call s (ours, eager, keras-hub) "
        "| tokens equal | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for batch, prompt_len, new in cases:
        prompt = rng.integers(1, size["vocabulary"], (batch, prompt_len)).astype("int32")
        first, median, equal = time_case(ours, hub, prompt, new, args.repeats)
        speed = {name: batch * new / t for name, t in median.items()}
        hub_speed = speed.get("keras-hub")
        print(
            f"| {batch}, {prompt_len}, {new} | {speed['ours']:.1f} | {speed['eager']:.1f} | "
            + (f"{hub_speed:.1f} | " if hub_speed else "- | ")
            + f"{speed['ours'] / speed['eager']:.2f} | "
            + (f"{speed['ours'] / hub_speed:.2f} | " if hub_speed else "- | ")
            + f"{first['ours']:.1f}, {first['eager']:.1f}, {first.get('keras-hub', 0):.1f} | "
            + f"{'yes' if equal else 'NO'} | {os.getloadavg()[0]:.1f} |"
        )


def time_case(ours, hub, prompt, new, repeats):
    """First-call seconds and median seconds of ours, ours eager and keras-hub (when
    given), timed in turn, and whether ours and ours eager gave the same tokens."""
    import numpy as np

    batch, prompt_len = prompt.shape
    outputs = {}
    runs = {
        "ours": lambda: outputs.update(ours=ours.generate(prompt, new)),
        "eager": lambda: outputs.update(eager=ours.generate(prompt, new, compile=False)),
    }
    if hub is not None:
        inputs = {
            "token_ids": np.pad(prompt, ((0, 0), (0, new))),
            "padding_mask": np.arange(prompt_len + new)[None, :].repeat(batch, 0) < prompt_len,
        }
        runs["keras-hub"] = lambda: hub.generate(inputs, stop_token_ids=None)
    first, median, _ = bench_generate.time_interleaved(runs, repeats)
    return first, median, np.array_equal(outputs["ours"], outputs["eager"])


if __name__ == "__main__":
    main()

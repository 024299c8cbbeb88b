"""Generation speed: keras_attention's compiled `generate` vs keras-hub's `GPT2CausalLM`.

Prints markdown tables (not a test). Both models have the same size: vocabulary
1000, 4 layers, 4 heads, d_model 256, feed-forward 1024, random weights, greedy
decoding of `new` tokens after a `prompt`-token prompt for `batch` sequences.
keras-hub's backbone is built directly (no preset, no download). For each case:

- first call: seconds of the first `generate` (tracing + compilation + the run);
- tokens/s: `batch * new / seconds` of a later call (median over repeats).

A second table times the second turn of a conversation (`--history` tokens of history:
a first turn's prompt and answer, then 16 new tokens): the time to its first token
with the first turn's `GenerationState` (only the new tokens run through the model)
and without (the whole history runs again), on a model of the same size with a
position table of 1024.

The two models are timed in turn in one process (a, b, a, b, ...), so the ratios are
fair even on a busy machine. keras-hub is an optional benchmark dependency
(`pip install "keras-hub>=0.32,<0.33"`, the `bench` extra).

Usage:
    python benchmarks/bench_generate.py                   # TensorFlow, 3 cases
    python benchmarks/bench_generate.py --backend jax
    python benchmarks/bench_generate.py --smoke           # seconds; no keras-hub needed
"""

import argparse
import os
import statistics
import sys
import time

CASES = [(4, 16, 64), (1, 32, 128), (16, 64, 64)]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["tensorflow", "jax", "torch"], default="tensorflow")
    parser.add_argument(
        "--cases", nargs="+", default=None, help="batch,prompt,new triples, e.g. 4,16,64"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-keras-hub", action="store_true", help="time ours only")
    parser.add_argument("--smoke", action="store_true", help="tiny model, two cases, ours only")
    parser.add_argument(
        "--history", type=int, default=512, help="second-turn table: tokens of history (0: skip)"
    )
    args = parser.parse_args(argv)
    args.cases = [tuple(int(v) for v in c.split(",")) for c in args.cases] if args.cases else CASES
    if args.smoke:
        args.cases, args.repeats, args.no_keras_hub = [(2, 4, 4), (1, 3, 5)], 1, True
        args.history = min(args.history, 8)
    return args


def second_turn(size, history, repeats):
    """Median seconds to the first token of a second turn of `new` tokens, with and
    without the first turn's state: `(new, with_state, rerun)`."""
    import numpy as np

    from keras_attention import models

    new, answer = 16 if history > 64 else 2, history // 8
    model = models.causal_language_model(
        vocabulary_size=size["vocabulary"],
        sequence_length=max(1024, 2 * history),
        num_layers=size["layers"],
        embedding_dim=size["width"],
        num_heads=size["heads"],
        intermediate_dim=size["ff"],
        dropout=0.0,
    )
    rng = np.random.default_rng(1)
    first = rng.integers(1, size["vocabulary"], (1, history - answer))
    _, state = model.generate(first, answer, return_state=True, max_length=2 * history)
    turn = rng.integers(1, size["vocabulary"], (1, new))
    whole = np.concatenate([state.history()[0][None, :], turn], axis=1)
    runs = {
        "state": lambda: model.generate(turn, 1, state=state),
        "rerun": lambda: model.generate(whole, 1),
    }
    times = {name: [] for name in runs}
    for run in runs.values():
        run()  # compile
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return new, statistics.median(times["state"]), statistics.median(times["rerun"])


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import keras
    import numpy as np

    from keras_attention import models

    size = dict(vocabulary=1000, layers=4, heads=4, width=256, ff=1024, length=256)
    if args.smoke:
        size = dict(vocabulary=50, layers=1, heads=2, width=16, ff=32, length=16)
    keras.utils.set_random_seed(0)
    ours = models.causal_language_model(
        vocabulary_size=size["vocabulary"],
        sequence_length=size["length"],
        num_layers=size["layers"],
        embedding_dim=size["width"],
        num_heads=size["heads"],
        intermediate_dim=size["ff"],
        dropout=0.0,
    )
    hub = None
    if not args.no_keras_hub:
        import keras_hub

        backbone = keras_hub.models.GPT2Backbone(
            vocabulary_size=size["vocabulary"],
            num_layers=size["layers"],
            num_heads=size["heads"],
            hidden_dim=size["width"],
            intermediate_dim=size["ff"],
            dropout=0.0,
            max_sequence_length=size["length"],
        )
        hub = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
        hub.compile(sampler="greedy")

    rng = np.random.default_rng(0)
    print(
        f"backend {keras.backend.backend()}, keras {keras.__version__}"
        + ("" if hub is None else f", keras-hub {keras_hub.__version__}")
        + f", {os.cpu_count()} CPUs; model {size}"
    )
    rows = []
    for batch, prompt_len, new in args.cases:
        prompt = rng.integers(1, size["vocabulary"], (batch, prompt_len)).astype("int32")
        total = prompt_len + new
        hub_inputs = {
            "token_ids": np.pad(prompt, ((0, 0), (0, new))),
            "padding_mask": np.arange(total)[None, :].repeat(batch, 0) < prompt_len,
        }
        runs = {"ours": lambda prompt=prompt, new=new: ours.generate(prompt, new)}
        if hub is not None:
            runs["keras-hub"] = lambda inputs=hub_inputs: hub.generate(inputs, stop_token_ids=None)
        first, times = {}, {name: [] for name in runs}
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            first[name] = time.perf_counter() - start
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        speed = {name: batch * new / statistics.median(t) for name, t in times.items()}
        rows.append((batch, prompt_len, new, speed, first))
    print()
    print(
        "| batch, prompt, new | ours tokens/s | keras-hub tokens/s | ours / keras-hub "
        "| ours first call s | keras-hub first call s | first-call ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for batch, prompt_len, new, speed, first in rows:
        hub_speed, hub_first = speed.get("keras-hub"), first.get("keras-hub")
        print(
            f"| {batch}, {prompt_len}, {new} | {speed['ours']:.0f} | "
            + (f"{hub_speed:.0f} | {speed['ours'] / hub_speed:.2f} | " if hub_speed else "- | - | ")
            + f"{first['ours']:.2f} | "
            + (f"{hub_first:.2f} | {first['ours'] / hub_first:.2f} |" if hub_first else "- | - |")
        )
    if args.history:
        new, with_state, rerun = second_turn(size, args.history, args.repeats)
        print()
        print(
            "| second turn: history, new | first token with state ms | re-running the history ms "
            "| speed-up |"
        )
        print("|---|---|---|---|")
        print(
            f"| {args.history}, {new} | {with_state * 1e3:.1f} | {rerun * 1e3:.1f} "
            f"| {rerun / with_state:.1f} |"
        )
    return rows


if __name__ == "__main__":
    main()

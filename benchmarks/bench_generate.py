"""Generation speed: keras_attention's compiled `generate` vs keras-hub's `GPT2CausalLM`.

Prints markdown tables (not a test). Both models have the same size: vocabulary
1000, 4 layers, 4 heads, d_model 256, feed-forward 1024, random weights, greedy
decoding of `new` tokens after a `prompt`-token prompt for `batch` sequences.
keras-hub's backbone is built directly (no preset, no download). For each case:

- first call: seconds of the first `generate` (tracing + compilation + the run);
- tokens/s: `batch * new / seconds` of a later call (median over repeats).

A second table times the logits processors: ours sampling (`sampler="random"`) with
all eight processors of `keras_attention.models.processors` against the same
sampling without them, one case, interleaved (`--no-processors` skips it; target:
at most 1.15x the time).

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
    python benchmarks/bench_generate.py --no-keras-hub --cases 4,16,64   # processors
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
        "--no-processors", action="store_true", help="skip the logits-processors table"
    )
    parser.add_argument(
        "--processors-only", action="store_true", help="only the logits-processors table"
    )
    parser.add_argument(
        "--history", type=int, default=512, help="second-turn table: tokens of history (0: skip)"
    )
    args = parser.parse_args(argv)
    args.cases = [tuple(int(v) for v in c.split(",")) for c in args.cases] if args.cases else CASES
    if args.smoke:
        args.cases, args.repeats, args.no_keras_hub = [(2, 4, 4), (1, 3, 5)], 1, True
        args.history = min(args.history, 8)
    return args


def time_interleaved(runs, repeats):
    """Seconds of each run's first call, and the median and the fastest of `repeats`
    later calls; the runs take turns (a, b, a, b, ...), so a busy machine slows them
    alike."""
    first, times = {}, {name: [] for name in runs}
    for name, run in runs.items():
        start = time.perf_counter()
        run()
        first[name] = time.perf_counter() - start
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    return first, median, {name: min(t) for name, t in times.items()}


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
    _, median, _ = time_interleaved(runs, repeats)
    return new, median["state"], median["rerun"]


def print_second_turn(size, history, repeats):
    """The second-turn table: time to the first token with and without the state."""
    new, with_state, rerun = second_turn(size, history, repeats)
    print()
    print(
        "| second turn: history, new | first token with state ms | re-running the history ms "
        "| speed-up |"
    )
    print("|---|---|---|---|")
    print(
        f"| {history}, {new} | {with_state * 1e3:.1f} | {rerun * 1e3:.1f} "
        f"| {rerun / with_state:.1f} |"
    )


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
    for batch, prompt_len, new in [] if args.processors_only else args.cases:
        prompt = rng.integers(1, size["vocabulary"], (batch, prompt_len)).astype("int32")
        total = prompt_len + new
        hub_inputs = {
            "token_ids": np.pad(prompt, ((0, 0), (0, new))),
            "padding_mask": np.arange(total)[None, :].repeat(batch, 0) < prompt_len,
        }
        runs = {"ours": lambda prompt=prompt, new=new: ours.generate(prompt, new)}
        if hub is not None:
            runs["keras-hub"] = lambda inputs=hub_inputs: hub.generate(inputs, stop_token_ids=None)
        first, seconds, _ = time_interleaved(runs, args.repeats)
        speed = {name: batch * new / t for name, t in seconds.items()}
        rows.append((batch, prompt_len, new, speed, first))
    if rows:
        print_table(rows)
    if not args.no_processors:
        time_processors(ours, args.cases[0], size["vocabulary"], args.repeats)
    if args.history and not args.processors_only:
        print_second_turn(size, args.history, args.repeats)
    return rows


def print_table(rows):
    """The markdown table of ours vs keras-hub."""
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


def time_processors(model, case, vocabulary, repeats):
    """Sampling with every logits processor vs the same sampling without them."""
    import numpy as np

    from keras_attention.models import processors as p

    batch, prompt_len, new = case
    prompt = np.random.default_rng(1).integers(1, vocabulary, (batch, prompt_len)).astype("int32")
    processors = [
        p.RepetitionPenalty(1.2),
        p.PresencePenalty(0.5),
        p.FrequencyPenalty(0.5),
        p.NoRepeatNGram(3),
        p.MinP(0.05),
        p.BannedSequences([[1], [2, 3], [4, 5, 6]]),
        p.MinNewTokens(4, [7]),
        p.SuppressTokens([8, 9]),
    ]
    runs = {
        "plain": lambda: model.generate(prompt, new, sampler="random", seed=0),
        "processors": lambda: model.generate(
            prompt, new, sampler="random", seed=0, processors=processors
        ),
    }
    first, seconds, fastest = time_interleaved(runs, repeats)
    print()
    print(
        "| batch, prompt, new | sampling s (median, fastest) | sampling + 8 processors s "
        "| time ratio (median, fastest) | first call s (plain, processors) |"
    )
    print("|---|---|---|---|---|")
    plain, processed = seconds["plain"], seconds["processors"]
    print(
        f"| {batch}, {prompt_len}, {new} | {plain:.3f}, {fastest['plain']:.3f} | "
        f"{processed:.3f}, {fastest['processors']:.3f} | {processed / plain:.2f}, "
        f"{fastest['processors'] / fastest['plain']:.2f} | "
        f"{first['plain']:.2f}, {first['processors']:.2f} |"
    )
    return seconds


if __name__ == "__main__":
    main()

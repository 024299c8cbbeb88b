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

`--from-keras-hub` prints only the same comparison for the same two backbones converted
with `CausalLanguageModel.from_keras_hub(causal_lm)` (issue 29; the code is in
`keras_hub_tables.py`).

`--architectures` prints only the published-architectures table (issue 28): a
Llama-3.1-shaped and a Gemma-2-shaped keras-hub backbone (vocabulary 8000, 4 layers,
hidden 256, 8 query / 2 key-value heads, random weights) converted with
`keras_attention.convert.keras_hub.convert`, greedy at batch 1, prompt 32, 64 new
tokens: ours against keras-hub's own `CausalLM.generate` on the same weights, keras-hub
compiled its default way and with `jit_compile=True`, and whether the tokens are
equal. `--smoke` runs it on tiny backbones when keras-hub is installed.

The two models are timed in turn in one process (a, b, a, b, ...), so the ratios are
fair even on a busy machine. keras-hub is an optional benchmark dependency
(`pip install "keras-hub>=0.32,<0.33"`, the `bench` extra).

Usage:
    python benchmarks/bench_generate.py                   # TensorFlow, 3 cases
    python benchmarks/bench_generate.py --backend jax
    python benchmarks/bench_generate.py --smoke           # seconds; no keras-hub needed
    python benchmarks/bench_generate.py --no-keras-hub --cases 4,16,64   # processors
    python benchmarks/bench_generate.py --architectures --repeats 15   # Llama 3.1, Gemma 2
    python benchmarks/bench_generate.py --from-keras-hub --repeats 15  # the same, from_keras_hub
"""

import argparse
import importlib.util
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
        "--architectures", action="store_true", help="only the Llama-3.1 / Gemma-2 table"
    )
    parser.add_argument(
        "--from-keras-hub",
        action="store_true",
        help="only the table of models converted by from_keras_hub (issue 29)",
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
    import numpy as np

    if args.architectures:
        return print_architectures(args.repeats)
    if args.from_keras_hub:
        from keras_hub_tables import print_generate_table

        return print_generate_table(args.repeats, args.smoke)
    size, ours = issue15_model(args.smoke)
    hub = None if args.no_keras_hub else gpt2_causal_lm(size)
    print(f"{versions(hub is not None)}; model {size}")
    rng = np.random.default_rng(0)
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
    if args.smoke and not args.processors_only and importlib.util.find_spec("keras_hub"):
        print_architectures(args.repeats, smoke=True)
    return rows


def versions(with_keras_hub):
    """The backend, the versions and the CPU count, for the tables' first line."""
    import keras

    line = f"backend {keras.backend.backend()}, keras {keras.__version__}"
    if with_keras_hub:
        import keras_hub

        line += f", keras-hub {keras_hub.__version__}"
    return line + f", {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"


def issue15_model(smoke):
    """The issue-15 size (`smoke`: a tiny one) as our model, seeded: `(size, model)`."""
    import keras

    from keras_attention import models

    size = dict(vocabulary=1000, layers=4, heads=4, width=256, ff=1024, length=256)
    if smoke:
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
    return size, ours


def gpt2_causal_lm(size):
    """keras-hub's `GPT2CausalLM` of `size`, built directly (no preset), greedy."""
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
    return hub


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


def architecture_backbones(smoke=False):
    """name -> (keras-hub backbone, its `CausalLM` class): Llama 3.1's and Gemma 2's
    settings at vocabulary 8000, 4 layers, hidden 256, 8 query / 2 key-value heads
    (`smoke`: tiny). Gemma 2's window is 64 (real: 4096) so that it binds within the
    96 tokens of a call."""
    import keras_hub

    size = dict(
        vocabulary_size=8000, num_layers=4, hidden_dim=256, num_query_heads=8, num_key_value_heads=2
    )
    if smoke:
        size.update(vocabulary_size=50, num_layers=2, hidden_dim=16, num_query_heads=2)
    width, heads = size["hidden_dim"], size["num_query_heads"]
    llama = keras_hub.models.Llama3Backbone(
        **size,
        intermediate_dim=4 * width,
        rope_max_wavelength=500_000,
        rope_frequency_adjustment_factor=8.0,
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_pretraining_sequence_length=8192,
        layer_norm_epsilon=1e-5,
    )
    gemma = keras_hub.models.GemmaBackbone(
        **size,
        intermediate_dim=8 * width,  # keras-hub's Gemma: gate + up, 4 * width each
        head_dim=width // heads,
        use_post_ffw_norm=True,
        use_post_attention_norm=True,
        attention_logit_soft_cap=50.0,
        final_logit_soft_cap=30.0,
        use_sliding_window_attention=True,
        sliding_window_size=4 if smoke else 64,
        layer_norm_epsilon=1e-6,
    )
    return {
        "llama3.1": (llama, keras_hub.models.Llama3CausalLM),
        "gemma2": (gemma, keras_hub.models.GemmaCausalLM),
    }


def time_architecture(backbone, causal_lm_class, prompt, new, repeats, converter=None):
    """Ours (converted by `converter(causal_lm)`, default `convert`) vs keras-hub's
    `generate`, compiled its default way and with `jit_compile=True`, on the same
    weights: `(first, median, fastest, tokens_equal)`."""
    import numpy as np

    from keras_attention.convert.keras_hub import convert

    hub = causal_lm_class(backbone=backbone, preprocessor=None)
    hub.compile(sampler="greedy")
    hub_xla = causal_lm_class(backbone=backbone, preprocessor=None)
    hub_xla.compile(sampler="greedy", jit_compile=True)
    ours = (converter or convert)(hub)
    batch, prompt_len = prompt.shape
    inputs = {
        "token_ids": np.pad(prompt, ((0, 0), (0, new))),
        "padding_mask": np.arange(prompt_len + new)[None, :].repeat(batch, 0) < prompt_len,
    }
    calls = {
        "ours": lambda: ours.generate(prompt, new),
        "keras-hub": lambda: hub.generate(inputs, stop_token_ids=None),
        "keras-hub XLA": lambda: hub_xla.generate(inputs, stop_token_ids=None),
    }
    outputs = {}  # each run's latest tokens, for the tokens-equal column
    runs = {name: lambda name=name: outputs.update({name: calls[name]()}) for name in calls}
    first, median, fastest = time_interleaved(runs, repeats)
    ours_tokens = np.asarray(outputs["ours"])[:, : prompt_len + new]
    equal = all(
        np.array_equal(ours_tokens, np.asarray(outputs[name]["token_ids"]))
        for name in ("keras-hub", "keras-hub XLA")
    )
    return first, median, fastest, equal


def print_architectures(repeats, smoke=False, batch=1, prompt_len=32, new=64):
    """The published-architectures table: tokens/s of ours and of keras-hub's two
    settings (median of `repeats`), the ratio to keras-hub's faster setting (median,
    fastest), first-call seconds and whether the tokens are equal."""
    import keras
    import numpy as np

    if smoke:
        prompt_len, new = 3, 4
    keras.utils.set_random_seed(0)
    backbones = architecture_backbones(smoke)
    print(f"\n{versions(True)}; batch {batch}, prompt {prompt_len}, new {new}")
    print(
        "\n| architecture | ours tokens/s | keras-hub tokens/s (default, XLA) "
        "| ours / faster keras-hub (median, fastest) | first call s (ours, keras-hub, "
        "keras-hub XLA) | ours / keras-hub XLA first call | tokens equal |"
    )
    print("|---|---|---|---|---|---|---|")
    rows = {}
    for name, (backbone, causal_lm_class) in backbones.items():
        vocabulary = backbone.vocabulary_size
        prompt = np.random.default_rng(0).integers(1, vocabulary, (batch, prompt_len))
        first, median, fastest, equal = time_architecture(
            backbone, causal_lm_class, prompt.astype("int32"), new, repeats
        )
        speed = {k: batch * new / t for k, t in median.items()}
        hub_best = max(speed["keras-hub"], speed["keras-hub XLA"])
        hub_fastest = min(fastest["keras-hub"], fastest["keras-hub XLA"])
        print(
            f"| {name} | {speed['ours']:.0f} | {speed['keras-hub']:.0f}, "
            f"{speed['keras-hub XLA']:.0f} | {speed['ours'] / hub_best:.2f}, "
            f"{hub_fastest / fastest['ours']:.2f} | {first['ours']:.2f}, "
            f"{first['keras-hub']:.2f}, {first['keras-hub XLA']:.2f} | "
            f"{first['ours'] / first['keras-hub XLA']:.2f} | {'yes' if equal else 'NO'} |"
        )
        rows[name] = (speed, first, equal)
    return rows


if __name__ == "__main__":
    main()

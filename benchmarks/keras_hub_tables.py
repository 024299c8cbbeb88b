"""The tables of models converted with `CausalLanguageModel.from_keras_hub` (issue 29).

Not a script: `bench_generate.py --from-keras-hub` prints the generation-speed table
and `bench_litert_generation.py --from-keras-hub` the LiteRT one. Both use the
Llama-3.1- and Gemma-2-shaped keras-hub backbones of `bench_generate.py
--architectures` (vocabulary 8000, 4 layers, hidden 256, 8 query / 2 key-value heads,
keras-hub's random initial weights; tiny with `smoke`), wrapped in keras-hub's own
`Llama3CausalLM` / `GemmaCausalLM` (no preprocessor) and converted with
`CausalLanguageModel.from_keras_hub(causal_lm)` (its default `verify=True`: the
logits of a padded probe batch checked against keras-hub's).
"""

import importlib.metadata
import os
import tempfile
import time


def _converter():
    from keras_attention.models import CausalLanguageModel

    return CausalLanguageModel.from_keras_hub


def print_generate_table(repeats, smoke=False, batch=1, prompt_len=32, new=64):
    """Greedy tokens/s of ours (converted) against keras-hub's `generate` on the same
    `CausalLM`, compiled its default way and with `jit_compile=True`; the ratio is to
    the faster of the two (by median, and by fastest call). One process, the three
    taking turns after a first (warm-up) call each; the median of `repeats` calls."""
    import keras
    import numpy as np
    from bench_generate import architecture_backbones, time_architecture, versions

    if smoke:
        prompt_len, new = 3, 4
    keras.utils.set_random_seed(0)
    backbones = architecture_backbones(smoke)
    print(
        f"\n{versions(True)}; `CausalLanguageModel.from_keras_hub`, greedy, batch {batch}, "
        f"prompt {prompt_len}, new {new}, median of {repeats}"
    )
    print(
        "\n| model | keras-hub tokens/s (default, XLA) | ours tokens/s "
        "| ours / faster keras-hub (median, fastest) | first call s (ours, keras-hub, "
        "keras-hub XLA) | tokens equal |"
    )
    print("|---|---|---|---|---|---|")
    rows = {}
    for name, (backbone, causal_lm_class) in backbones.items():
        rng = np.random.default_rng(0)
        prompt = rng.integers(1, backbone.vocabulary_size, (batch, prompt_len)).astype("int32")
        first, median, fastest, equal = time_architecture(
            backbone, causal_lm_class, prompt, new, repeats, converter=_converter()
        )
        speed = {k: batch * new / t for k, t in median.items()}
        faster = max(("keras-hub", "keras-hub XLA"), key=speed.get)
        hub_fastest = min(fastest["keras-hub"], fastest["keras-hub XLA"])
        print(
            f"| {name} | {speed['keras-hub']:.0f}, {speed['keras-hub XLA']:.0f} "
            f"| {speed['ours']:.0f} | {speed['ours'] / speed[faster]:.2f}, "
            f"{hub_fastest / fastest['ours']:.2f} | {first['ours']:.2f}, "
            f"{first['keras-hub']:.2f}, {first['keras-hub XLA']:.2f} "
            f"| {'yes' if equal else 'NO'} |"
        )
        rows[name] = (speed, first, equal)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    return rows


def print_litert_table(args):
    """File size, prefill, decode per token and greedy agreement of the converted
    models exported to LiteRT in float32 and dynamic-range int8."""
    import keras
    import numpy as np
    import tensorflow as tf
    from bench_generate import architecture_backbones
    from bench_litert_generation import time_steps
    from litert_app import LiteRTGenerator

    from keras_attention.export import export_generator

    prompt_len, new = (3, 4) if args.smoke else (32, 64)
    keras.utils.set_random_seed(0)
    folder = tempfile.mkdtemp(prefix="bench_litert_hub_")
    rows = []
    for name, (backbone, causal_lm_class) in architecture_backbones(args.smoke).items():
        model = _converter()(causal_lm_class(backbone=backbone, preprocessor=None))
        rng = np.random.default_rng(0)
        prompts = rng.integers(1, backbone.vocabulary_size, (args.prompts, prompt_len))
        expected = np.asarray(model.generate(prompts.astype("int32"), new))
        expected = expected[:, prompt_len : prompt_len + new]
        for label, quantization in (("float32", None), ("int8 dynamic range", "dynamic_int8")):
            start = time.perf_counter()
            path = export_generator(
                model,
                os.path.join(folder, f"{name}_{label.split()[0]}.tflite"),
                format="litert",
                max_length=prompt_len + new,
                quantization=quantization,
            )
            seconds = time.perf_counter() - start
            generator = LiteRTGenerator(path, num_threads=args.threads)
            timings = time_steps(generator, prompts[0].tolist(), args.steps, args.repeats)
            tokens = np.array(generator.generate(prompts.tolist(), new))[:, prompt_len:]
            size = os.path.getsize(path) / 1e6
            rows.append((name, label, size, *timings, seconds, (tokens == expected).mean()))
    print(
        f"\nTensorFlow {tf.__version__}, ai-edge-litert "
        f"{importlib.metadata.version('ai-edge-litert')}, {args.threads} thread(s), "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
        f"`CausalLanguageModel.from_keras_hub`, batch 1, cache of {prompt_len + new} "
        f"positions, {args.repeats} passes of {min(args.steps, new)} decode steps; "
        f"greedy: {args.prompts} prompts of {prompt_len} random tokens, {new} new each.\n"
    )
    print(
        f"| model | weights | file MB | prefill {prompt_len} tokens ms | decode ms/token "
        "(median) | p90 ms | export s | new tokens equal to model.generate |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, label, size, prefill, median, p90, seconds, equal in rows:
        print(
            f"| {name} | {label} | {size:.2f} | {prefill:.2f} | {median:.3f} | {p90:.3f} "
            f"| {seconds:.1f} | {100 * equal:.1f} % |"
        )
    return rows

"""Fine-tune with LoRA, quantize to int8, generate and export: the character language model.

Trains the character language model of `char_language_model.py` on the Python help
texts (`pydoc_data.topics`), then fine-tunes it with LoRA (`model.enable_lora(rank)`:
only rank-`rank` factors of every attention's query and value projections train) on a
second text, the docstrings of the standard library's modules. Saving merges the LoRA
factors into the kernels; the reloaded model is quantized to int8
(`model.quantize("int8")`, Keras' own), generates with the float and the int8
key/value cache (`generate(cache_dtype="int8")`), and is exported with its generator
(`export_generator`, TensorFlow). The script reports the `.keras` sizes, the held-out
perplexity (the last 10% of the docstrings, never trained on) of each stage, the
trainable fraction of LoRA, and greedy tokens per second with each cache.

Writes `finetune_quantize_lora.keras` (the fine-tuned model, with its optimizer),
`finetune_quantize_float32.keras` and `finetune_quantize_int8.keras` (the model alone,
merged, in float32 and int8) and (TensorFlow) `finetune_quantize_int8_generator/`
under `saved_models/`.

    python examples/finetune_quantize.py
    python examples/finetune_quantize.py --lora-rank 8 --smoke
"""

import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _shared  # noqa: E402
import char_language_model  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_attention  # noqa: E402

SEQUENCE_LENGTH = char_language_model.SEQUENCE_LENGTH


def second_text(smoke):
    """The fine-tuning text: the docstrings of standard library modules."""
    import importlib

    names = sorted(
        "abc argparse ast asyncio base64 bisect calendar collections colorsys contextlib "
        "copy csv dataclasses datetime decimal difflib enum fractions functools glob "
        "gzip hashlib heapq hmac html inspect io ipaddress itertools json logging "
        "math operator os pathlib pickle pprint random re shlex shutil statistics "
        "string struct subprocess tarfile tempfile textwrap threading timeit tokenize "
        "typing unittest urllib uuid warnings weakref zipfile".split()
    )
    docs = []
    for name in names:
        module = importlib.import_module(name)
        docs.append(module.__doc__)
        docs += [getattr(module, attr).__doc__ for attr in sorted(vars(module))[:40]]
    text = "\n".join(doc for doc in docs if isinstance(doc, str) and len(doc) > 40)
    text = "".join(c if c.isascii() and (c.isprintable() or c == "\n") else " " for c in text)
    return text[:20_000] if smoke else text[:400_000]


def perplexity(model, x, y):
    """`exp` of the mean next-character loss on windows `x`, `y` (the logits' log
    softmax in numpy: no compile, so the saved model keeps its optimizer)."""
    logits = model.predict(x, batch_size=64, verbose=0).astype("float64")
    logits -= logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return math.exp(-np.take_along_axis(log_probs, y[..., None], axis=-1).mean())


def tokens_per_second(model, prompt, new_tokens, cache_dtype=None):
    """Greedy tokens per second of the compiled `generate` (its compile excluded):
    best of 3 runs, and the tokens."""
    model.generate(prompt, new_tokens, cache_dtype=cache_dtype)  # compile
    times = []
    for _ in range(3):
        start = time.perf_counter()
        tokens = model.generate(prompt, new_tokens, cache_dtype=cache_dtype)
        times.append(time.perf_counter() - start)
    return len(prompt) * new_tokens / min(times), tokens


def export_generator_check(model, path, prompt, new_tokens):
    """Export `model`'s generator with the int8 cache (SavedModel); whether its
    `generate` signature writes the tokens of `model.generate(cache_dtype="int8")`."""
    import tensorflow as tf

    prompt = np.array(prompt, "int32")
    max_length = prompt.shape[1] + new_tokens
    keras_attention.export.export_generator(
        model, path, format="tf_saved_model", max_length=max_length, cache_dtype="int8"
    )
    served = tf.saved_model.load(path).signatures["generate"](
        tokens=prompt, mask=np.ones(prompt.shape, bool)
    )["tokens"]
    expected = model.generate(prompt, new_tokens, cache_dtype="int8")
    return bool(np.array_equal(served.numpy(), expected))


def _size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main(argv=None):
    def extra(parser):
        parser.add_argument("--lora-rank", type=int, default=4, help="LoRA rank (default 4)")
        parser.add_argument("--prompt", default="Return the ", help="start of the generated text")

    args = _shared.parse_args(__doc__.splitlines()[0], argv, epochs=3, extra=extra)
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    base_text, tuning_text = char_language_model.load_text(args.smoke), second_text(args.smoke)
    characters, char_to_id, base_ids = char_language_model.vocabulary(
        base_text, tuning_text + args.prompt
    )
    tuning_ids = np.array([char_to_id[c] for c in tuning_text], "int32")
    split = int(0.9 * len(tuning_ids))  # held out: the last 10% of the docstrings
    counts = (256, 128, 32) if args.smoke else (12_000, 3_000, 500)
    x_base, y_base = char_language_model.windows(base_ids, counts[0], rng)
    x_tune, y_tune = char_language_model.windows(tuning_ids[:split], counts[1], rng)
    x_test, y_test = char_language_model.windows(tuning_ids[split:], counts[2], rng)

    # 1. The base model, on the help texts.
    model = char_language_model.build_model(len(characters), args.smoke)
    model.fit(x_base, y_base, epochs=args.epochs, batch_size=64, verbose=2)
    base_perplexity = perplexity(model, x_test, y_test)

    # 2. LoRA on the docstrings: only the factors train.
    total = model.count_params()
    model.enable_lora(args.lora_rank)
    lora_fraction = sum(int(np.prod(w.shape)) for w in model.trainable_weights) / total
    model.compile(
        keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x_tune, y_tune, epochs=args.epochs, batch_size=64, verbose=2)
    lora_perplexity = perplexity(model, x_test, y_test)
    lora_path = keras_attention.export.save_model(
        model, os.path.join(args.output_dir, "finetune_quantize_lora.keras")
    )  # the LoRA factors merged into the kernels

    # 3. int8 weights, from the saved (merged) model; the float32 file to compare
    # sizes with is the same model, also without the optimizer's state.
    float_path = keras_attention.export.save_model(
        keras.saving.load_model(lora_path, compile=False),
        os.path.join(args.output_dir, "finetune_quantize_float32.keras"),
    )
    quantized = keras.saving.load_model(lora_path, compile=False)
    quantized.quantize("int8")
    int8_perplexity = perplexity(quantized, x_test, y_test)
    int8_path = keras_attention.export.save_model(
        quantized, os.path.join(args.output_dir, "finetune_quantize_int8.keras")
    )

    # 4. Generation with the float and the int8 key/value cache.
    prompt = [[char_to_id[c] for c in args.prompt]]
    new_tokens = 16 if args.smoke else SEQUENCE_LENGTH - len(args.prompt)
    float_speed, float_tokens = tokens_per_second(quantized, prompt, new_tokens)
    int8_speed, int8_tokens = tokens_per_second(quantized, prompt, new_tokens, "int8")
    agreement = float(np.mean(float_tokens == int8_tokens))
    sample = "".join(characters[i - 1] for i in int8_tokens[0] if i != 0)

    # 5. The generator export (TensorFlow: SavedModel graphs).
    export_path, exported_equal = None, None
    if keras.backend.backend() == "tensorflow":
        export_path = os.path.join(args.output_dir, "finetune_quantize_int8_generator")
        exported_equal = export_generator_check(quantized, export_path, prompt, new_tokens)

    print("\n--- generated (int8 weights, int8 cache) ---\n" + sample + "\n---")
    results = {
        "lora_trainable_fraction": lora_fraction,
        "base_perplexity": base_perplexity,
        "lora_perplexity": lora_perplexity,
        "int8_perplexity": int8_perplexity,
        "float32_keras_bytes": _size(float_path),
        "int8_keras_bytes": _size(int8_path),
        "float_cache_tokens_per_second": float_speed,
        "int8_cache_tokens_per_second": int8_speed,
        "cache_token_agreement": agreement,
        "export_path": export_path,
        "exported_equals_generate": exported_equal,
        "sample": sample,
        "prompt": args.prompt,
    }
    _shared.print_summary(
        "fine-tune with LoRA, quantize to int8",
        {
            "LoRA trainable fraction": f"{lora_fraction:.2%} (rank {args.lora_rank})",
            "held-out perplexity": f"base {base_perplexity:.2f}, LoRA {lora_perplexity:.2f}, "
            f"LoRA + int8 {int8_perplexity:.2f} (uniform guess: {len(characters)})",
            ".keras size": f"float32 {_size(float_path) / 1e6:.2f} MB, "
            f"int8 {_size(int8_path) / 1e6:.2f} MB",
            "greedy tokens/s": f"float cache {float_speed:.0f}, int8 cache {int8_speed:.0f}",
            "int8 cache tokens = float cache tokens": f"{agreement:.0%} of positions",
            "exported generator (int8 cache) = generate": exported_equal,
        },
    )
    return results


if __name__ == "__main__":
    main()

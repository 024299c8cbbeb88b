"""Speculative decoding: greedy tokens/s with prompt lookup and with a draft model,
against plain greedy `generate`, on the character language model.

Prints a markdown table (not a test). Two character language models of
`examples/char_language_model.py` are trained here on the same text (the Python
docs that ship with Python): the target (2 layers, d_model 128, feed-forward 256)
and a draft about 4x smaller (2 layers, d_model 64, feed-forward 128). The prompt
quotes a passage of the text and starts it again, so a model that continues the
quote repeats spans of its prompt (prompt lookup's case). For each method: greedy
tokens/s of batch 1 (median of repeats after a first, compiling call; the methods
timed in turn in one process), the share of steps that verified drafts (prompt
lookup makes a plain one-token step where the text has no match), the share of the
verified drafts kept, and whether the tokens equal plain greedy's.

Usage:
    python benchmarks/bench_speculative.py                 # TensorFlow
    python benchmarks/bench_speculative.py --backend jax
    python benchmarks/bench_speculative.py --smoke         # seconds
"""

import argparse
import os
import statistics
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["tensorflow", "jax", "torch"], default="tensorflow")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new", type=int, default=56, help="new tokens")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-windows", type=int, default=4000)
    parser.add_argument("--smoke", action="store_true", help="tiny models, one repeat")
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats, args.new, args.epochs, args.train_windows = 1, 8, 1, 32
    return args


def _train(module, ids, width, layers, args):
    import keras
    import numpy as np

    import keras_attention

    model = keras_attention.models.causal_language_model(
        vocabulary_size=int(ids.max()) + 1,
        sequence_length=module.SEQUENCE_LENGTH,
        num_layers=layers,
        embedding_dim=width,
        num_heads=4,
        intermediate_dim=2 * width,
        dropout=0.0,
    )
    model.compile(
        keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    x, y = module.windows(ids, args.train_windows, np.random.default_rng(0))
    model.fit(x, y, epochs=args.epochs, batch_size=64, verbose=0)
    return model


def _kept_share(model, prompt, new, **speculation):
    """`(share of drafts kept, share of steps that verified)`, counted from the
    target's calls in an eager run: verifying calls have `num_draft_tokens + 1`
    tokens; prompt lookup's steps without a match are plain one-token calls."""
    k = speculation["num_draft_tokens"]
    calls, original = [], model.call_with_cache

    def counting(tokens, *a, **kw):
        calls.append(tokens.shape[1])
        return original(tokens, *a, **kw)

    model.call_with_cache = counting
    try:
        model.generate(prompt, new, compile=False, **speculation)
    finally:
        del model.call_with_cache
    verified, plain = calls.count(k + 1), calls.count(1)
    kept = (new - plain - verified) / max(verified * k, 1)
    return kept, verified / max(verified + plain, 1)


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    sys.path.insert(0, os.path.join(root, "examples"))
    import char_language_model as module
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    text = module.load_text(args.smoke)
    characters, char_to_id, ids = module.vocabulary(text)
    scale = 4 if args.smoke else 1
    target = _train(module, ids, 128 // scale, 2, args)
    draft = _train(module, ids, 64 // scale, 2, args)
    passage = text[2000:2040]
    prompt_text = f'"{passage}"\nAgain: "{passage[:12]}'
    prompt = [[char_to_id[c] for c in prompt_text]]
    methods = {
        "plain greedy": {},
        "prompt lookup (n=3, k=8)": {"prompt_lookup": 3, "num_draft_tokens": 8},
        "draft model (k=4)": {"draft_model": draft, "num_draft_tokens": 4},
    }
    plain = target.generate(prompt, args.new)
    for speculation in methods.values():
        target.generate(prompt, args.new, **speculation)  # compile
    times = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, speculation in methods.items():
            start = time.perf_counter()
            out = target.generate(prompt, args.new, **speculation)
            times[name].append(time.perf_counter() - start)
            assert out.shape == plain.shape
    base = args.new / statistics.median(times["plain greedy"])
    print(f"\nbackend {args.backend}, batch 1, prompt {len(prompt[0])}, {args.new} new tokens\n")
    print("| method | tokens/s | speed-up | steps verified | drafts kept | tokens = plain greedy |")
    print("|---|---|---|---|---|---|")
    for name, speculation in methods.items():
        rate = args.new / statistics.median(times[name])
        kept = verified = "-"
        if speculation:
            kept, verified = _kept_share(target, prompt, args.new, **speculation)
            kept, verified = f"{kept:.0%}", f"{verified:.0%}"
        same = bool(np.array_equal(target.generate(prompt, args.new, **speculation), plain))
        print(f"| {name} | {rate:.0f} | {rate / base:.2f}x | {verified} | {kept} | {same} |")
    written = "".join(characters[i - 1] for i in plain[0, len(prompt[0]) :] if i)
    print(f"\nplain greedy continues: {written!r}")


if __name__ == "__main__":
    main()

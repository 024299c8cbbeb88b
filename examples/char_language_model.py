"""Character language model: causal self-attention on the Python docs, then text generation.

The text is `pydoc_data.topics` (the help texts that ship with Python; no download).
`keras_attention.models.causal_language_model` (token + position embedding, causal
`TransformerDecoder` blocks, next-token logits) is trained on 128-character windows;
the script reports validation loss and perplexity (`exp(loss)`: how many characters
the model is, on average, choosing between) and writes text from a prompt with the
model's own `generate`: nucleus (top-p) sampling, stopping at the end of the line
(a stop token), decoded by one compiled loop over the key/value cache.

The character vocabulary is saved beside the model (`char_language_model.vocab.json`),
so the reloaded model writes text on its own (the script checks it writes the same).
The learned position table holds 128 positions: a prompt plus `--new-chars` longer
than that is an error (`ValueError` from `generate`), not a silently shorter text.

    python examples/char_language_model.py
    python examples/char_language_model.py --prompt "The for statement"
"""

import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _shared  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_attention  # noqa: E402

SEQUENCE_LENGTH = 128


def load_text(smoke):
    from pydoc_data import topics

    text = "\n".join(topics.topics[key] for key in sorted(topics.topics))
    text = "".join(c if c.isascii() and (c.isprintable() or c == "\n") else " " for c in text)
    return text[:30_000] if smoke else text[:1_200_000]


def vocabulary(text, extra=""):
    """The sorted characters of `text` (and of `extra`, e.g. a prompt), the id of each
    (id 0 is kept free for padding: characters start at 1) and `text` as ids."""
    characters = sorted(set(text) | set(extra))
    char_to_id = {c: i + 1 for i, c in enumerate(characters)}
    ids = np.array([char_to_id[c] for c in text], "int32")
    return characters, char_to_id, ids


def build_model(num_characters, smoke):
    """The character language model, compiled: 2 `TransformerDecoder` layers,
    d_model 128, 4 heads, feed-forward 256, `SEQUENCE_LENGTH` positions (1 layer,
    32 and 64 with `smoke`), next-character logits over `num_characters` + padding."""
    model = keras_attention.models.causal_language_model(
        vocabulary_size=num_characters + 1,
        sequence_length=SEQUENCE_LENGTH,
        num_layers=1 if smoke else 2,
        embedding_dim=32 if smoke else 128,
        num_heads=4,
        intermediate_dim=64 if smoke else 256,
        dropout=0.1,
    )
    model.compile(
        keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model


def windows(ids, count, rng):
    """`count` random windows: inputs `ids[s : s+L]`, targets shifted by one."""
    starts = rng.integers(0, len(ids) - SEQUENCE_LENGTH - 1, size=count)
    x = np.stack([ids[s : s + SEQUENCE_LENGTH] for s in starts])
    y = np.stack([ids[s + 1 : s + SEQUENCE_LENGTH + 1] for s in starts])
    return x, y


def write(model, characters, prompt, new_chars, seed):
    """Continue `prompt` by up to `new_chars` characters: top-p sampling, stopping
    at the first newline (the stop token ends the line)."""
    char_to_id = {c: i + 1 for i, c in enumerate(characters)}  # id 0 is padding
    tokens = model.generate(
        [[char_to_id[c] for c in prompt]],
        max_new_tokens=new_chars,
        sampler=keras_attention.models.TopPSampler(p=0.9, temperature=0.8),
        seed=seed,
        stop_token_ids=[char_to_id["\n"]],
        pad_token_id=0,
    )
    return "".join(characters[i - 1] for i in tokens[0] if i != 0)


def main(argv=None):
    def extra(parser):
        parser.add_argument(
            "--prompt", default="The with statement", help="start of the generated text"
        )
        parser.add_argument("--new-chars", type=int, default=100, help="characters to generate")
        parser.add_argument(
            "--train-windows",
            type=int,
            default=None,
            help="training windows of 128 characters (default 12000; 64 with --smoke)",
        )

    args = _shared.parse_args(__doc__.splitlines()[0], argv, epochs=6, extra=extra)
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    text = load_text(args.smoke)
    characters, _, ids = vocabulary(text, args.prompt)
    split = int(0.9 * len(ids))  # the last 10% of the text is never trained on
    train_count, val_count = (64, 32) if args.smoke else (12_000, 500)
    if args.train_windows is not None:
        if args.train_windows < 1:
            raise ValueError(
                "`--train-windows` must be a positive integer. "
                f"Received: --train-windows={args.train_windows}"
            )
        train_count = args.train_windows
    x_train, y_train = windows(ids[:split], train_count, rng)
    x_val, y_val = windows(ids[split:], val_count, rng)

    model = build_model(len(characters), args.smoke)
    model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=args.epochs,
        batch_size=64,
        verbose=2 if args.smoke else 1,
    )
    val_loss = float(model.evaluate(x_val, y_val, verbose=0, batch_size=128))
    perplexity = math.exp(val_loss)

    # Positions are learned up to SEQUENCE_LENGTH: keep the end of a long prompt so
    # that prompt + new characters fit (more new characters raise a ValueError).
    new_chars = 8 if args.smoke else args.new_chars
    prompt = args.prompt[-max(1, SEQUENCE_LENGTH - new_chars) :]
    sample = write(model, characters, prompt, new_chars, args.seed)

    keras_path = keras_attention.export.save_model(
        model, os.path.join(args.output_dir, "char_language_model.keras")
    )
    vocab_path = os.path.join(args.output_dir, "char_language_model.vocab.json")
    with open(vocab_path, "w") as handle:
        json.dump({"characters": characters, "first_id": 1}, handle)
    # The reloaded model and its vocabulary write the same text on their own.
    reloaded = keras.saving.load_model(keras_path)
    with open(vocab_path) as handle:
        reloaded_sample = write(
            reloaded, json.load(handle)["characters"], prompt, new_chars, args.seed
        )
    print("\n--- generated ---\n" + sample + "\n-----------------")
    _shared.print_summary(
        "character language model",
        {
            "characters of text": f"{len(text)} ({len(characters)} distinct)",
            "validation loss": f"{val_loss:.4f} nats/char",
            "validation perplexity": f"{perplexity:.2f} (uniform guess: {len(characters)})",
            ".keras file": keras_path,
            "vocabulary file": vocab_path,
            "reloaded model writes the same text": reloaded_sample == sample,
        },
    )
    return {
        "val_loss": val_loss,
        "perplexity": perplexity,
        "uniform_perplexity": len(characters),
        "prompt": prompt,
        "sample": sample,
        "keras_path": keras_path,
        "vocab_path": vocab_path,
        "reloaded_sample": reloaded_sample,
    }


if __name__ == "__main__":
    main()

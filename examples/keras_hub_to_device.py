"""Bring a keras-hub model to this package and to a device: convert, generate text, run on LiteRT.

Builds a small keras-hub GPT-2 (`GPT2CausalLM`, random weights, a byte-pair tokenizer
of a few words) and saves it with keras-hub's own `save_to_preset` into a temporary
folder, so nothing is downloaded. Then, as a user with a real preset would:

1. loads the preset folder with `CausalLanguageModel.from_keras_hub(path)` (weights,
   dtype and tokenizer; `verify=True` checks the logits against keras-hub's),
2. generates text from a string prompt with the compiled `generate()` and compares
   it with keras-hub's greedy `generate` on the same prompt,
3. exports the LiteRT generator (`export_generator(..., format="litert")`: the
   `prefill` and `decode` signatures, the key/value cache as explicit state) and
   runs the token loop of `examples/litert_app.py` with `ai-edge-litert`'s
   interpreter, checking that it writes the same tokens as `generate`,
4. prints the tokens per second of the three (greedy, batch 1, best of 3 warm calls).

The weights are random, so the text is nonsense; the point is that all three agree.
With internet, the same lines take a real preset (a keras-hub name or an `hf://`
handle; any family the guide's "Bring your keras-hub model" lists):

    from keras_attention.export import export_generator
    from keras_attention.models import CausalLanguageModel

    model = CausalLanguageModel.from_keras_hub("gpt2_base_en")  # or "hf://google/gemma-3-1b-it"
    print(model.generate(["The quick brown fox"], max_new_tokens=32))
    export_generator(model, "saved_models/gpt2.tflite", format="litert", max_length=64)

or this script with `--preset gpt2_base_en`. Writes `keras_hub_to_device.tflite`
under `saved_models/`.

    python examples/keras_hub_to_device.py
    python examples/keras_hub_to_device.py --smoke
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _shared  # noqa: E402
import litert_app  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_attention.export import export_generator  # noqa: E402
from keras_attention.models import CausalLanguageModel  # noqa: E402

# The words the tokenizer knows as whole tokens; any other text is spelled in letters.
WORDS = "The quick brown fox jumps over the lazy dog and a cat sat on mat".split()


def byte_pair_tokenizer():
    """A GPT-2 tokenizer of single characters plus merges that spell `WORDS`."""
    import keras_hub

    # Id 0 is an ordinary character: keras-hub pads with 0, and a pad id equal to the
    # end id would end keras-hub's own loop at once.
    characters = "!" + "".join(chr(c) for c in range(33, 127) if chr(c) != "!") + "Ġ"
    vocabulary = {c: i for i, c in enumerate(characters)}
    merges = []
    for word in ["Ġ" + word for word in WORDS] + WORDS:
        for end in range(2, len(word) + 1):
            merge = f"{word[: end - 1]} {word[end - 1]}"
            if merge not in merges:
                merges.append(merge)
                vocabulary.setdefault(word[:end], len(vocabulary))
    vocabulary["<|endoftext|>"] = len(vocabulary)
    return keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges)


def save_small_preset(path, smoke, seed):
    """A random `GPT2CausalLM` with its preprocessor, written by `save_to_preset`."""
    import keras_hub

    keras.utils.set_random_seed(seed)
    tokenizer = byte_pair_tokenizer()
    size = dict(num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64)
    if not smoke:
        size = dict(num_layers=6, num_heads=8, hidden_dim=512, intermediate_dim=2048)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=tokenizer.vocabulary_size(), max_sequence_length=256, **size
    )
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=32)
    keras_hub.models.GPT2CausalLM(backbone, preprocessor).save_to_preset(path)
    return path


def timed(function, *args, repeats=3, **kwargs):
    """`function(...)` after one warm-up call (which compiles), and the fewest
    seconds of `repeats` calls (the least disturbed by other work on the machine)."""
    function(*args, **kwargs)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
    return result, min(seconds)


def prompt_ids(model, prompt):
    """The token ids the kept preprocessor makes of `prompt` (start token included)."""
    inputs = model.preprocessor.generate_preprocess([prompt])
    tokens = keras.ops.convert_to_numpy(inputs["token_ids"])[0]
    mask = keras.ops.convert_to_numpy(inputs["padding_mask"])[0].astype(bool)
    return tokens[mask].astype("int32")


def generate_with_litert(model, tflite_path, ids, max_new_tokens):
    """`examples/litert_app.py`'s greedy loop on `ids` (no stop token): its tokens,
    text and seconds."""
    generator = litert_app.LiteRTGenerator(tflite_path)
    (tokens,), seconds = timed(generator.generate, [ids.tolist()], max_new_tokens)
    return tokens, detokenize(model, tokens), seconds


def detokenize(model, tokens):
    """The text of `tokens` (one list of ids), special tokens stripped, by the
    preprocessor `from_keras_hub` kept on `model`."""
    tokens = np.array([tokens], "int32")
    return first_string(
        model.preprocessor.generate_postprocess(
            {"token_ids": tokens, "padding_mask": np.ones(tokens.shape, bool)}
        )
    )


def first_string(strings):
    """The first string of keras-hub's text output (a list, array or tensor of str
    or bytes), as a Python string."""
    if hasattr(strings, "numpy"):  # a string tensor
        strings = strings.numpy()
    text = np.asarray(strings, dtype=object).reshape(-1)[0]
    return text.decode("utf-8") if isinstance(text, bytes) else str(text)


def print_speed_table(new_tokens, seconds):
    print(f"\n== greedy tokens/s, batch 1, {new_tokens} new tokens, best of 3 warm calls ==")
    print(f"{'engine':<38}{'seconds':>9}{'tokens/s':>10}")
    for name, value in seconds.items():
        print(f"{name:<38}{value:>9.3f}{new_tokens / value:>10.1f}")


def main(argv=None):
    def extra(parser):
        parser.add_argument("--prompt", default="The quick brown fox", help="the prompt")
        parser.add_argument("--new-tokens", type=int, default=64, help="tokens to generate")
        parser.add_argument(
            "--preset",
            default=None,
            help="a keras-hub preset name or hf:// handle (downloads it) instead of "
            "the small local model",
        )

    args = _shared.parse_args(__doc__.splitlines()[0], argv, epochs=1, extra=extra)
    import keras_hub

    new_tokens = 8 if args.smoke else args.new_tokens
    with tempfile.TemporaryDirectory() as folder:
        preset = args.preset or save_small_preset(
            os.path.join(folder, "gpt2_small"), args.smoke, args.seed
        )
        model = CausalLanguageModel.from_keras_hub(preset)  # verify=True: logits checked
        reference = keras_hub.models.CausalLM.from_preset(preset)
    reference.compile(sampler="greedy")

    # No stop token, so that every engine writes exactly `new_tokens` tokens.
    ids = prompt_ids(model, args.prompt)
    text, ours_seconds = timed(
        model.generate, args.prompt, max_new_tokens=new_tokens, stop_token_ids=[]
    )
    hub_text, hub_seconds = timed(
        reference.generate, [args.prompt], max_length=len(ids) + new_tokens, stop_token_ids=None
    )
    hub_text = first_string(hub_text)
    tokens = model.generate(ids[None], max_new_tokens=new_tokens)[0].tolist()

    tflite_path = export_generator(
        model,
        os.path.join(args.output_dir, "keras_hub_to_device.tflite"),
        format="litert",
        max_length=len(ids) + new_tokens,
    )
    litert_tokens, litert_text, litert_seconds = generate_with_litert(
        model, tflite_path, ids, new_tokens
    )
    print(f"\nprompt: {args.prompt!r} ({len(ids)} tokens, start token included)")
    print(f"keras_attention generate: {text!r}")
    print(f"keras-hub generate:       {hub_text!r}")
    print(f"LiteRT prefill/decode:    {litert_text!r}")
    print_speed_table(
        new_tokens,
        {
            "keras_attention generate (compiled)": ours_seconds,
            "keras-hub generate": hub_seconds,
            "LiteRT prefill/decode (litert_app)": litert_seconds,
        },
    )
    _shared.print_summary(
        "keras-hub model on device",
        {
            "preset": args.preset or "a small random GPT-2 (save_to_preset, temporary)",
            ".tflite file": f"{tflite_path} ({os.path.getsize(tflite_path) / 1e6:.2f} MB)",
            "same text as keras-hub generate (greedy)": text == hub_text,
            "LiteRT tokens = generate tokens": litert_tokens == tokens,
        },
    )
    return {
        "prompt": args.prompt,
        "text": text,
        "keras_hub_text": hub_text,
        "litert_text": litert_text,
        "tokens": tokens,
        "litert_tokens": litert_tokens,
        "tokens_per_second": {
            "keras_attention": new_tokens / ours_seconds,
            "keras_hub": new_tokens / hub_seconds,
            "litert": new_tokens / litert_seconds,
        },
        "tflite_path": tflite_path,
    }


if __name__ == "__main__":
    main()

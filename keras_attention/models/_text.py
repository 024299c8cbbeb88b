"""Text in, text out for the model classes: a keras-hub preprocessor kept on the
model (`model.preprocessor`, `model.tokenizer`), saved in its config and `.keras`
assets, and `generate` on strings as tokenize -> compiled ids loop -> detokenize.

The string steps stay outside the compiled loop: the preprocessor tokenizes in
Python (or `tf.data`-style ops) before the call, the loop sees token ids only, and
the ids are turned back into strings after it. Nothing here imports keras-hub: the
preprocessor is any Keras layer with keras-hub's `generate_preprocess` /
`generate_postprocess` methods and a `tokenizer`.
"""

import keras
import numpy as np


def is_text(prompt):
    """Whether `prompt` is a string or a list/tuple of strings (not token ids)."""
    if isinstance(prompt, (str, bytes)):
        return True
    return (
        isinstance(prompt, (list, tuple))
        and bool(prompt)
        and all(isinstance(row, (str, bytes)) for row in prompt)
    )


def check_preprocessor(preprocessor):
    """`preprocessor` unchanged when it is None or a layer with keras-hub's
    generation methods; a `TypeError` naming what it received otherwise."""
    needed = ("generate_preprocess", "generate_postprocess", "tokenizer")
    if preprocessor is None:
        return None
    if not isinstance(preprocessor, keras.layers.Layer) or not all(
        hasattr(preprocessor, name) for name in needed
    ):
        raise TypeError(
            "`preprocessor` must be a keras-hub `CausalLMPreprocessor` (a Keras layer "
            f"with {list(needed)}). Received: preprocessor={preprocessor!r}"
        )
    return preprocessor


def attach(model, preprocessor):
    """Keep `preprocessor` on `model` as a tracked attribute, so that `.keras` saving
    writes its vocabulary files as assets of `model` and loading reads them back."""
    model.preprocessor = check_preprocessor(preprocessor)
    return model


def serialize(model):
    """The `get_config` entry of `model`'s preprocessor (None without one)."""
    preprocessor = getattr(model, "preprocessor", None)
    return None if preprocessor is None else keras.saving.serialize_keras_object(preprocessor)


def deserialize(config):
    """The preprocessor of a `get_config` entry (imports keras-hub through Keras'
    registered name when there is one)."""
    return None if config is None else keras.saving.deserialize_keras_object(config)


def end_token_ids(tokenizer):
    """The tokenizer's end-of-text ids (`end_token_id`, and `end_token2_id` where
    the tokenizer has a second one, e.g. Gemma 3's `<end_of_turn>`), as keras-hub's
    `generate` stops at."""
    ids = [getattr(tokenizer, name, None) for name in ("end_token_id", "end_token2_id")]
    return tuple(int(i) for i in ids if i is not None)


def generate_text(model, prompt, prompt_mask, max_new_tokens, stop_token_ids, run):
    """`run(tokens, mask, stop_token_ids)` (the compiled ids loop) on the tokenized
    `prompt`, returning strings (one string for a string prompt) that hold the prompt
    and its continuation without special tokens, as keras-hub's `generate` does."""
    preprocessor = getattr(model, "preprocessor", None)
    if preprocessor is None:
        raise ValueError(
            f"'{model.name}' has no tokenizer, so `prompt` must be token ids. Received: "
            f"prompt={prompt!r}. Models converted with `from_keras_hub` from a task with "
            "a preprocessor keep it; or set `model.preprocessor`."
        )
    if prompt_mask is not None:
        raise ValueError(
            "`prompt_mask` is for token ids; a text prompt is tokenized and padded by "
            f"the preprocessor. Received: a prompt_mask with prompt={prompt!r}"
        )
    single = isinstance(prompt, (str, bytes))
    prompts = [prompt] if single else list(prompt)
    inputs = preprocessor.generate_preprocess(prompts)
    tokens = keras.ops.convert_to_numpy(inputs["token_ids"])
    mask = keras.ops.convert_to_numpy(inputs["padding_mask"]).astype(bool)
    if stop_token_ids is None:
        stop_token_ids = end_token_ids(preprocessor.tokenizer)
    output = run(tokens, mask, stop_token_ids)
    strings = preprocessor.generate_postprocess(
        {
            "token_ids": output,
            "padding_mask": _output_mask(output, mask, max_new_tokens, stop_token_ids),
        }
    )
    strings = [_to_str(text) for text in _to_list(strings)]
    return strings[0] if single else strings


def _output_mask(output, prompt_mask, max_new_tokens, stop_token_ids):
    """True for each row's prompt and its `max_new_tokens` new tokens up to its
    first stop token (kept: the postprocess strips special tokens), False for the
    padding after."""
    lengths = prompt_mask.sum(axis=1)
    columns = np.arange(output.shape[1])
    new = columns[None, :] >= lengths[:, None]
    stops = new & np.isin(output, np.asarray(stop_token_ids, "int64"))
    ends = np.where(stops.any(axis=1), stops.argmax(axis=1) + 1, lengths + max_new_tokens)
    return columns[None, :] < ends[:, None]


def _to_list(strings):
    if hasattr(strings, "numpy"):  # a tf string tensor
        strings = strings.numpy()
    return np.asarray(strings, dtype=object).reshape(-1).tolist()


def _to_str(text):
    return text.decode("utf-8") if isinstance(text, bytes) else str(text)

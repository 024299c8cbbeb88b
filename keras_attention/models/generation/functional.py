"""`generate(model, prompt, ...)`: the function form of the models' `generate()`, and
generation by recomputing the whole sequence for any token -> logits model."""

import numpy as np
from keras import ops

from keras_attention import _validation
from keras_attention.models import samplers as samplers_lib
from keras_attention.models.generation.loop import GenerativeMixin
from keras_attention.models.generation.prompts import prepare_prompt

_STRATEGIES = ("greedy", "sample")


def generate(
    model,
    prompt,
    max_new_tokens,
    strategy="greedy",
    temperature=1.0,
    top_k=None,
    seed=None,
    encoder_tokens=None,
    use_cache=True,
):
    """Extend `prompt` by `max_new_tokens` tokens (the function form of `generate`).

    For a :class:`CausalLanguageModel` or :class:`Seq2SeqTransformer` this calls the
    model's compiled `generate` (greedy, or sampling with `temperature` and `top_k`).
    `use_cache=False` instead runs `model` on the whole sequence at every step; it
    works for any model mapping tokens to `(batch, seq, vocab)` logits.

    Args:
        model: a model of this package, or any token -> logits model with
            `use_cache=False`.
        prompt: int `(batch, prompt_len)`, `prompt_len >= 1`.
        max_new_tokens: positive int.
        strategy: `"greedy"` or `"sample"` (from `softmax(logits / temperature)`,
            among the `top_k` most likely tokens if given).
        temperature: positive float, for `"sample"`.
        top_k: positive int or `None`, for `"sample"`.
        seed: int, for reproducible samples.
        encoder_tokens: int `(batch, src_len)`, required for seq2seq models.
        use_cache: decode with the model's compiled cached loop (default) or recompute.

    Returns:
        Numpy int32 `(batch, prompt_len + max_new_tokens)`.

    Example:
    >>> from keras_attention.models import causal_language_model
    >>> model = causal_language_model(vocabulary_size=20, sequence_length=16)
    >>> generate(model, [[1, 2, 3]], max_new_tokens=4).shape
    (1, 7)
    """
    if strategy not in _STRATEGIES:
        raise ValueError(
            f"`strategy` must be one of {_STRATEGIES}. Received: strategy={strategy!r}"
        )
    samplers_lib.sampler.check_positive_float(temperature, "temperature")
    _validation.check_positive_int(top_k, "top_k", allow_none=True)
    _validation.check_bool(use_cache, "use_cache")
    if strategy == "greedy":
        sampler = samplers_lib.GreedySampler()
    elif top_k is not None:
        sampler = samplers_lib.TopKSampler(top_k, temperature)
    else:
        sampler = samplers_lib.RandomSampler(temperature)
    is_seq2seq = len(model.inputs) == 2
    if is_seq2seq and encoder_tokens is None:
        raise ValueError(
            f"Model '{model.name}' is an encoder-decoder: `encoder_tokens` "
            "(batch, src_len) is required. Received: encoder_tokens=None"
        )
    if not is_seq2seq and encoder_tokens is not None:
        raise ValueError(
            f"Model '{model.name}' has no encoder; `encoder_tokens` must be None. "
            f"Received: encoder_tokens.shape={np.shape(encoder_tokens)}"
        )
    if use_cache:
        if not isinstance(model, GenerativeMixin):
            raise ValueError(
                "`model` must be a CausalLanguageModel or Seq2SeqTransformer to decode "
                f"with the cache. Received: model '{model.name}' of type "
                f"{type(model).__name__}; pass use_cache=False to generate by "
                "recomputing the full sequence."
            )
        kwargs = dict(sampler=sampler, seed=seed)
        if is_seq2seq:
            return model.generate(encoder_tokens, prompt, max_new_tokens, **kwargs)
        return model.generate(prompt, max_new_tokens, **kwargs)
    return _generate_by_recomputing(model, prompt, max_new_tokens, sampler, seed, encoder_tokens)


def _generate_by_recomputing(model, prompt, max_new_tokens, sampler, seed, encoder_tokens):
    vocabulary = model.output_shape[-1]
    tokens, lengths = prepare_prompt(prompt, None, vocabulary)
    _validation.check_positive_int(max_new_tokens, "max_new_tokens")
    rng = np.random.default_rng(seed)
    for _ in range(max_new_tokens):
        inputs = tokens if encoder_tokens is None else [np.asarray(encoder_tokens), tokens]
        logits = ops.convert_to_numpy(model(inputs, training=False))[:, -1]
        noise = rng.random(logits.shape).astype("float32")
        token = ops.convert_to_numpy(sampler.next_token(logits.astype("float32"), noise))
        tokens = np.concatenate([tokens, token[:, None].astype("int32")], axis=1)
    return tokens

"""The checks of `generate()`'s arguments, turned into the static settings of one
generation and the prompt's tensors."""

import collections
import numbers

import numpy as np

from keras_attention import _validation
from keras_attention.models import processors as processors_lib
from keras_attention.models import samplers as samplers_lib
from keras_attention.models.generation import speculative
from keras_attention.models.generation.prompts import check_token_ids, prepare_prompt
from keras_attention.models.generation.state import CACHE_DTYPES, GenerationSettings


class GenerateArguments(
    collections.namedtuple(
        "GenerateArguments",
        "prompt max_new_tokens prompt_mask sampler seed stop_token_ids pad_token_id "
        "compile processors speculation cache_dtype",
        defaults=(None, (None, None, None), None),
    )
):
    """`generate()`'s and `stream()`'s arguments as the model received them, unchecked:
    one tuple from the public methods to the loop, the stream and the state session.
    `speculation` is `(draft_model, num_draft_tokens, prompt_lookup)`; `cache_dtype`
    None or `"int8"`."""

    __slots__ = ()

    @classmethod
    def from_locals(cls, values):
        """The arguments named in `values` (the public method's `locals()` at its
        start); those it lacks (`stream` takes no speculation) keep their defaults."""
        return cls(**{name: values[name] for name in cls._fields if name in values})


def check_generate_arguments(model, arguments):
    """Check the :class:`GenerateArguments` of `model.generate()`: `(settings, tokens,
    lengths, seed)`, the prompt rows left-aligned and the seed as a `(2,)` int32 array."""
    prompt, max_new_tokens, prompt_mask, sampler, seed = arguments[:5]
    stop_token_ids, pad_token_id, compile, processors, speculation, cache_dtype = arguments[5:]
    embedding = model.decoder_embedding
    vocabulary = embedding.vocabulary_size
    tokens, lengths = prepare_prompt(prompt, prompt_mask, vocabulary)
    _validation.check_positive_int(max_new_tokens, "max_new_tokens")
    sampler = samplers_lib.get(sampler)
    if isinstance(sampler, samplers_lib.BeamSampler) and sampler.num_beams > vocabulary:
        raise ValueError(
            f"`num_beams` must be at most the vocabulary size ({vocabulary}). "
            f"Received: num_beams={sampler.num_beams}"
        )
    stop_token_ids = check_token_ids(stop_token_ids, "stop_token_ids", vocabulary)
    (pad_token_id,) = check_token_ids([pad_token_id], "pad_token_id", vocabulary)
    _validation.check_bool(compile, "compile")
    _validation.check_one_of(cache_dtype, "cache_dtype", CACHE_DTYPES)
    processors = processors_lib.check(processors, vocabulary)
    speculation = speculative.check_speculation(model, sampler, *speculation)
    speculative.check_positions(
        model, int(lengths.max()) + max_new_tokens, max_new_tokens, speculation
    )
    settings = GenerationSettings(
        max_new_tokens,
        sampler,
        stop_token_ids,
        pad_token_id,
        processors=processors,
        speculation=speculation,
        cache_dtype=cache_dtype,
    )
    if seed is None:
        seed = int(np.random.randint(0, 2**31 - 1))
    elif isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"`seed` must be an integer or None. Received: seed={seed!r}")
    seed = np.array([int(seed) % (2**31), int(seed) // (2**31) % (2**31)], "int32")
    return settings, tokens, lengths, seed

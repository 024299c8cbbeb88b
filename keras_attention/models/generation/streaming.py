"""Streaming generation: the models' `stream()`, new tokens in chunks of a few steps,
each chunk one compiled call of the token loop.

The first call runs the prefill and the first chunk; every later chunk is one call of
a second function that resumes the loop from its variables (the token buffer, the
caches, the stop state) up to an end index given as a tensor, so each function is
compiled once per input signature and reused by every chunk. The loop is the one of
`generate()`, with the same random numbers per absolute position, so the chunks put
together are `generate()`'s new tokens for the same seed.

Chunk `k` holds every row's new tokens `k * chunk_size` to `(k + 1) * chunk_size - 1`.
Rows whose prompts are shorter than the longest start generating earlier: a chunk's
call runs the loop until the longest prompt's row has its tokens (the shorter rows'
extra tokens wait in the buffer for the next chunk).
"""

import functools

import numpy as np
from keras import ops

from keras_attention import _validation
from keras_attention.models import samplers as samplers_lib
from keras_attention.models.generation.state import EncoderState, initial_loop_vars


def stream(model, chunk_size, generate_arguments, encoder_inputs=()):
    """Check the arguments now and return the generator of chunks.

    Args:
        model: a model with the `GenerativeMixin` step API.
        chunk_size: positive int, new tokens per chunk.
        generate_arguments: the `GenerateArguments` of `stream()`.
        encoder_inputs: `(encoder_tokens, encoder_padding_mask)` for
            encoder-decoders, checked.

    Returns:
        A generator of numpy int32 `(batch, <= chunk_size)` arrays.
    """
    _validation.check_positive_int(chunk_size, "chunk_size")
    settings, tokens, lengths, seed = model._check_generate_arguments(generate_arguments)
    if isinstance(settings.sampler, samplers_lib.BeamSampler):
        raise ValueError(
            "Beam search cannot stream: its beams are reordered until the end, so no "
            "token is final before the last step. Use `generate()`, or a greedy or "
            f"random `sampler`. Received: sampler={settings.sampler!r}"
        )
    compile = generate_arguments.compile
    key = (settings, len(encoder_inputs))
    first = model._generation_function(
        ("stream_first",) + key, functools.partial(_first_chunk, model), settings, compile
    )
    resume = model._generation_function(
        ("stream_next",) + key, functools.partial(_next_chunk, model), settings, compile
    )
    arguments = [ops.convert_to_tensor(x) for x in (tokens, lengths, seed, *encoder_inputs)]
    return _chunks(first, resume, arguments, lengths, settings.max_new_tokens, chunk_size)


def _chunks(first, resume, arguments, lengths, max_new_tokens, chunk_size):
    lengths_tensor, seed = arguments[1:3]
    longest = int(lengths.max())
    start, limit, running = 0, max_new_tokens, True  # `start`: the next chunk's first count
    while start < limit:
        width = min(chunk_size, limit - start)
        if running:
            # The loop runs until the longest prompt's row has `start + width` new tokens.
            end = ops.convert_to_tensor(np.int32(longest + start + width))
            if start == 0:
                *loop_vars, encoded = first(*arguments, end)
            else:
                loop_vars = resume(*loop_vars, lengths_tensor, seed, end, *encoded)
            buffer, done, count = (ops.convert_to_numpy(loop_vars[i]) for i in (1, 3, 4))
            if done.all():
                # Every row has stopped: the rest is in the buffer, up to the last
                # row's last token.
                running, limit = False, min(limit, int(count.max()))
                width = min(width, limit - start)
                if width <= 0:
                    return
        columns = lengths[:, None] + start + np.arange(width)[None, :]
        yield np.take_along_axis(buffer, columns, axis=1).astype("int32")
        start += width


def _first_chunk(model, settings, mode, tokens, lengths, seed, *encoder_inputs_and_end):
    """The prefill and the first chunk: `(index, buffer, caches, done, count,
    encoded)`, `encoded` the encoder's tensors as a flat tuple (empty without)."""
    model._generation_functions().traces += 1
    *encoder_inputs, end = encoder_inputs_and_end
    encoded = model.encode(*encoder_inputs) if encoder_inputs else None
    lengths = ops.cast(lengths, "int32")
    buffer, caches, _ = model._prefill(tokens, lengths, settings, encoded)
    loop_vars = initial_loop_vars(ops.min(lengths), buffer, caches)
    loop_vars = model._sampling_loop(settings, mode, loop_vars, lengths, seed, encoded, end)
    flat = (
        () if encoded is None else (encoded.sequence, encoded.padding_mask, *encoded.cross_caches)
    )
    return (*loop_vars, flat)


def _next_chunk(
    model, settings, mode, index, buffer, caches, done, count, lengths, seed, end, *flat
):
    """The loop from its variables up to `end`: the new loop variables."""
    model._generation_functions().traces += 1
    encoded = EncoderState(flat[0], flat[1], list(flat[2:])) if flat else None
    loop_vars = (index, buffer, caches, done, count)
    return model._sampling_loop(
        settings, mode, loop_vars, ops.cast(lengths, "int32"), seed, encoded, end
    )

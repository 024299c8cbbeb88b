"""Generation: the compiled decoding loop behind the models' `generate()`, its input
checks, the SavedModel export of a generate signature, and the functional `generate`.

The loop follows keras-hub's `CausalLM.generate`: the prompt is run once (prefill)
into a fixed-size key/value cache, then one `keras.ops.while_loop` produces a token
per step. The whole function (prefill, loop, sampling) is compiled once per input
signature (`tf.function` with XLA on TensorFlow, `jax.jit` on JAX; see `keras_attention.backend.generation`)
and cached on the model for calls of the same shapes and settings.

Prompts of different lengths share one index: the loop starts at the shortest
prompt, and a row still inside its prompt keeps its prompt token instead of the
sampled one, so every row gets exactly the tokens it would get alone. Token id 0 is
padding only for models built with `mask_zero=True`.
"""

import collections
import functools
import numbers

import keras
import numpy as np
from keras import ops

from keras_attention import _validation
from keras_attention.backend import generation as _backend
from keras_attention.models import samplers as samplers_lib

_Settings = collections.namedtuple(
    "_Settings", ["max_new_tokens", "sampler", "stop_token_ids", "pad_token_id"]
)
# The encoder's output, its padding mask, and every decoder layer's cross-attention
# keys/values of it: computed once per generation.
_Encoded = collections.namedtuple("_Encoded", ["sequence", "padding_mask", "cross_caches"])


class _Functions:
    """The compiled generate functions of one model, by their static settings.

    A plain object (not a dict), so Keras and TensorFlow do not track the functions
    as part of the model when it is saved or exported.
    """

    def __init__(self):
        self.functions = {}
        self.traces = 0  # Python executions of the generate function (tests read it)


class GenerativeMixin:
    """`generate()` for the models of this package that own a decoder.

    The model provides `decoder_embedding` (a `TokenAndPositionEmbedding`),
    `decoder_layers` (`TransformerDecoder`s), `lm_head` (a `Dense`, or `None` for
    logits through the transposed token table) and, for encoder-decoders,
    `encode(encoder_tokens, encoder_padding_mask)`.
    """

    def _generation_functions(self):
        functions = self.__dict__.get("_generate_functions")
        if functions is None:
            functions = _Functions()
            object.__setattr__(self, "_generate_functions", functions)
        return functions

    # -- one decoding step -------------------------------------------------------

    def _logits(self, x):
        if self.lm_head is None:
            return self.decoder_embedding(x, reverse=True)
        return self.lm_head(x)

    def _decode(self, tokens, index, caches, key_mask, encoded, logits=True):
        """Run `tokens (batch, n)` at positions `index...` through the decoder with
        the caches; return `(logits (batch, n, vocab) or None, new caches)`."""
        x = self.decoder_embedding(tokens, start_index=index)
        query_mask = ops.not_equal(tokens, 0) if self.decoder_embedding.mask_zero else None
        new_caches = []
        for i, (layer, cache) in enumerate(zip(self.decoder_layers, caches)):
            kwargs = dict(
                decoder_padding_mask=key_mask,
                self_attention_cache=cache,
                cache_index=index,
                training=False,
            )
            if encoded is None:
                x, cache = layer(x, mask=query_mask, **kwargs)
            else:
                x, cache = layer(
                    x,
                    encoded.sequence,
                    encoder_padding_mask=encoded.padding_mask,
                    cross_attention_cache=encoded.cross_caches[i],
                    decoder_sequence_mask=query_mask,
                    **kwargs,
                )
            new_caches.append(cache)
        return (self._logits(x) if logits else None), new_caches

    def _key_mask(self, buffer):
        # Keys the model itself masks (token 0 with mask_zero=True); positions not yet
        # written are hidden by the causal mask of the cache.
        return ops.not_equal(buffer, 0) if self.decoder_embedding.mask_zero else None

    # -- the loops -----------------------------------------------------------------

    def _generate_tensors(self, settings, mode, tokens, lengths, seed, *encoder_inputs):
        """tokens `(batch, width)` (prompt rows left-aligned), lengths `(batch,)` ->
        tokens `(batch, width + max_new_tokens)`."""
        self._generation_functions().traces += 1
        encoded = self.encode(*encoder_inputs) if encoder_inputs else None
        if isinstance(settings.sampler, samplers_lib.BeamSampler):
            return self._beam_search(settings, mode, tokens, lengths, encoded)
        return self._sample(settings, mode, tokens, lengths, seed, encoded)

    def _prefill(self, tokens, lengths, settings, encoded):
        batch, width = ops.shape(tokens)[0], ops.shape(tokens)[1]
        total = width + settings.max_new_tokens
        padding = ops.full((batch, settings.max_new_tokens), settings.pad_token_id, "int32")
        buffer = ops.concatenate([ops.cast(tokens, "int32"), padding], axis=1)
        in_prompt = ops.arange(total, dtype="int32")[None, :] < lengths[:, None]
        buffer = ops.where(in_prompt, buffer, settings.pad_token_id)
        caches = [layer.get_initial_cache(batch, total) for layer in self.decoder_layers]
        # The prompt in one call; rows' padding is overwritten by the loop before any
        # real token attends to it (the loop starts at the shortest prompt).
        _, caches = self._decode(tokens, 0, caches, self._key_mask(buffer), encoded, logits=False)
        return buffer, caches, total

    def _sample(self, settings, mode, tokens, lengths, seed, encoded):
        lengths = ops.cast(lengths, "int32")
        buffer, caches, total = self._prefill(tokens, lengths, settings, encoded)
        batch = ops.shape(buffer)[0]
        sampler = settings.sampler
        stop_ids = ops.convert_to_tensor(list(settings.stop_token_ids) or [-1], "int32")

        def cond(index, buffer, caches, done, count):
            return ops.logical_and(index < total, ops.logical_not(ops.all(done)))

        def body(index, buffer, caches, done, count):
            previous = ops.slice(buffer, [0, index - 1], [batch, 1])
            logits, caches = self._decode(
                previous, index - 1, caches, self._key_mask(buffer), encoded
            )
            logits = ops.cast(logits[:, 0, :], "float32")
            noise = None
            if sampler.is_random:
                noise = _backend.uniform(ops.shape(logits), seed, index)
            sampled = sampler.next_token(logits, noise)
            token, done, count = _advance(
                buffer, index, lengths, sampled, done, count, stop_ids, settings
            )
            buffer = ops.slice_update(buffer, [0, index], token[:, None])
            return index + 1, buffer, caches, done, count

        loop_vars = (
            ops.min(lengths),
            buffer,
            caches,
            ops.zeros((batch,), "bool"),
            ops.zeros((batch,), "int32"),
        )
        return _backend.while_loop(cond, body, loop_vars, mode)[1]

    def _beam_search(self, settings, mode, tokens, lengths, encoded):
        beams = settings.sampler.num_beams
        batch = ops.shape(tokens)[0]

        def expand(x):
            return ops.repeat(x, beams, axis=0)

        if encoded is not None:
            encoded = _Encoded(
                expand(encoded.sequence),
                expand(encoded.padding_mask),
                [expand(cache) for cache in encoded.cross_caches],
            )
        lengths = expand(ops.cast(lengths, "int32"))
        buffer, caches, total = self._prefill(expand(tokens), lengths, settings, encoded)
        rows = ops.shape(buffer)[0]
        vocabulary = self.decoder_embedding.vocabulary_size
        stop_ids = ops.convert_to_tensor(list(settings.stop_token_ids) or [-1], "int32")
        # Every beam starts as a copy of the prompt; only the first may be extended
        # first, or the search would pick the same continuation `beams` times.
        first = ops.cast(ops.arange(beams) == 0, "float32")
        scores = ops.tile((first - 1.0)[None, :] * 1e9, (batch, 1))
        only_pad = ops.where(ops.arange(vocabulary) == settings.pad_token_id, 0.0, -1e9)[None, :]
        batch_offset = (ops.arange(batch, dtype="int32") * beams)[:, None]

        def cond(index, buffer, caches, done, count, scores):
            return ops.logical_and(index < total, ops.logical_not(ops.all(done)))

        def body(index, buffer, caches, done, count, scores):
            previous = ops.slice(buffer, [0, index - 1], [rows, 1])
            logits, caches = self._decode(
                previous, index - 1, caches, self._key_mask(buffer), encoded
            )
            log_probs = ops.log_softmax(ops.cast(logits[:, 0, :], "float32"), axis=-1)
            # A finished beam goes on with padding at no cost.
            log_probs = ops.where(done[:, None], only_pad, log_probs)
            candidates = ops.reshape(scores, (-1, 1)) + log_probs
            top_scores, top_ids = ops.top_k(
                ops.reshape(candidates, (batch, beams * vocabulary)), beams
            )
            in_prompt = ops.reshape(index < lengths, (batch, beams))
            source = ops.where(in_prompt, ops.arange(beams)[None, :], top_ids // vocabulary)
            scores = ops.where(in_prompt, scores, top_scores)
            order = ops.reshape(ops.cast(source, "int32") + batch_offset, (-1,))
            buffer, done, count = (ops.take(x, order, axis=0) for x in (buffer, done, count))
            caches = [ops.take(cache, order, axis=0) for cache in caches]
            sampled = ops.cast(ops.reshape(top_ids % vocabulary, (-1,)), "int32")
            token, done, count = _advance(
                buffer, index, lengths, sampled, done, count, stop_ids, settings
            )
            buffer = ops.slice_update(buffer, [0, index], token[:, None])
            return index + 1, buffer, caches, done, count, scores

        loop_vars = (
            ops.min(lengths),
            buffer,
            caches,
            ops.zeros((rows,), "bool"),
            ops.zeros((rows,), "int32"),
            scores,
        )
        _, buffer, _, _, count, scores = _backend.while_loop(cond, body, loop_vars, mode)
        length = ops.cast(ops.maximum(ops.reshape(count, (batch, beams)), 1), "float32")
        ranking = scores / length**settings.sampler.length_penalty
        best = ops.cast(ops.argmax(ranking, axis=-1), "int32") + batch_offset[:, 0]
        return ops.take(buffer, best, axis=0)

    # -- the public entry ----------------------------------------------------------

    def _run_generate(
        self,
        prompt,
        max_new_tokens,
        prompt_mask,
        sampler,
        seed,
        stop_token_ids,
        pad_token_id,
        compile,
        encoder_inputs=(),
    ):
        embedding = self.decoder_embedding
        vocabulary = embedding.vocabulary_size
        tokens, lengths = prepare_prompt(prompt, prompt_mask, vocabulary)
        _validation.check_positive_int(max_new_tokens, "max_new_tokens")
        sampler = samplers_lib.get(sampler)
        if isinstance(sampler, samplers_lib.BeamSampler) and sampler.num_beams > vocabulary:
            raise ValueError(
                f"`num_beams` must be at most the vocabulary size ({vocabulary}). "
                f"Received: num_beams={sampler.num_beams}"
            )
        stop_token_ids = _check_token_ids(stop_token_ids, "stop_token_ids", vocabulary)
        (pad_token_id,) = _check_token_ids([pad_token_id], "pad_token_id", vocabulary)
        _validation.check_bool(compile, "compile")
        longest = int(lengths.max())
        if embedding.position == "learned" and longest + max_new_tokens > embedding.sequence_length:
            raise ValueError(
                "The longest prompt plus `max_new_tokens` must fit the model's learned "
                f"position table (sequence_length={embedding.sequence_length}). "
                f"Received: prompt length {longest}, max_new_tokens={max_new_tokens}"
            )
        settings = _Settings(max_new_tokens, sampler, stop_token_ids, pad_token_id)
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        elif isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ValueError(f"`seed` must be an integer or None. Received: seed={seed!r}")
        seed = np.array([int(seed) % (2**31), int(seed) // (2**31) % (2**31)], "int32")
        args = [ops.convert_to_tensor(x) for x in (tokens, lengths, seed, *encoder_inputs)]
        if compile:
            functions = self._generation_functions()
            key = (settings, len(encoder_inputs))
            if key not in functions.functions:
                functions.functions[key] = _backend.compile_function(
                    functools.partial(self._generate_tensors, settings, "compiled"),
                    self.variables,
                )
            output = functions.functions[key](*args)
        else:
            output = _backend.run_eagerly(
                functools.partial(self._generate_tensors, settings, "eager")
            )(*args)
        return ops.convert_to_numpy(output).astype("int32")


def _advance(buffer, index, lengths, sampled, done, count, stop_ids, settings):
    """The token written at `index`: the prompt's while a row is in it, the sampled
    one after, `pad_token_id` once the row has stopped; and the new stop state."""
    batch = ops.shape(buffer)[0]
    prompt_token = ops.slice(buffer, [0, index], [batch, 1])[:, 0]
    in_prompt = index < lengths
    token = ops.where(in_prompt, prompt_token, ops.where(done, settings.pad_token_id, sampled))
    generated = ops.logical_not(ops.logical_or(in_prompt, done))
    count = count + ops.cast(generated, "int32")
    is_stop = ops.any(token[:, None] == stop_ids[None, :], axis=-1)
    done = ops.logical_or(done, ops.logical_and(generated, is_stop))
    done = ops.logical_or(done, count >= settings.max_new_tokens)
    return token, done, count


def prepare_prompt(prompt, prompt_mask, vocabulary_size, name="prompt"):
    """Check a prompt and left-align its rows: `(tokens (batch, longest), lengths)`.

    `prompt` is int `(batch, length)` with an optional boolean `prompt_mask` of the
    same shape (`True` = a token of the prompt, wherever it is), or a list of token
    lists of different lengths.
    """
    mask_name = f"{name}_mask"
    if (
        prompt_mask is None
        and isinstance(prompt, (list, tuple))
        and prompt
        and all(isinstance(row, (list, tuple, np.ndarray)) for row in prompt)
    ):
        widths = [len(row) for row in prompt]
        if len(set(widths)) > 1:  # ragged: pad and mask
            padded = np.zeros((len(prompt), max(widths)), "int64")
            prompt_mask = np.zeros(padded.shape, bool)
            for i, row in enumerate(prompt):
                padded[i, : len(row)] = row
                prompt_mask[i, : len(row)] = True
            prompt = padded
    tokens = np.asarray(prompt)
    if tokens.ndim != 2 or not (np.issubdtype(tokens.dtype, np.integer) or tokens.size == 0):
        raise ValueError(
            f"`{name}` must be integer tokens of shape (batch, length), or a list of "
            f"token lists. Received: {name}.shape={tokens.shape}, dtype={tokens.dtype}"
        )
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(
            f"`{name}` must have at least one row and one token. "
            f"Received: {name}.shape={tokens.shape}"
        )
    if prompt_mask is None:
        mask = np.ones(tokens.shape, bool)
    else:
        mask = np.asarray(prompt_mask)
        if mask.shape != tokens.shape:
            raise ValueError(
                f"`{mask_name}` must have the shape of `{name}`, {tokens.shape}. "
                f"Received: {mask_name}.shape={mask.shape}"
            )
        if mask.dtype != bool:
            if not np.isin(mask, (0, 1)).all():
                raise ValueError(
                    f"`{mask_name}` must be boolean (or 0/1). Received values "
                    f"{np.unique(mask)[:5].tolist()}"
                )
            mask = mask.astype(bool)
    lengths = mask.sum(axis=1).astype("int32")
    if (lengths == 0).any():
        raise ValueError(
            f"Every row of `{name}` needs at least one token. Received: {mask_name} "
            f"rows {np.flatnonzero(lengths == 0).tolist()} are all False"
        )
    real = tokens[mask]
    if real.min() < 0 or real.max() >= vocabulary_size:
        raise ValueError(
            f"`{name}` tokens must be ids in [0, vocabulary_size={vocabulary_size}). "
            f"Received: ids from {real.min()} to {real.max()}"
        )
    # Real tokens first, in order, then padding (stable: the key is unique per column).
    width = tokens.shape[1]
    columns = np.arange(width)
    order = np.argsort(np.where(mask, columns, width + columns), axis=1)
    tokens = np.take_along_axis(tokens, order, axis=1)[:, : lengths.max()]
    tokens = np.where(columns[: lengths.max()] < lengths[:, None], tokens, 0)
    return tokens.astype("int32"), lengths


def _check_token_ids(ids, name, vocabulary_size):
    if ids is None:
        return ()
    if isinstance(ids, (numbers.Integral, np.integer)):
        ids = [ids]
    ids = list(ids)
    bad = [
        i
        for i in ids
        if isinstance(i, bool)
        or not isinstance(i, (numbers.Integral, np.integer))
        or not 0 <= i < vocabulary_size
    ]
    if bad:
        shown = ids if name == "stop_token_ids" else ids[0]
        raise ValueError(
            f"`{name}` must be token ids in [0, vocabulary_size={vocabulary_size}). "
            f"Received: {name}={shown!r}"
        )
    return tuple(int(i) for i in ids)


def export_generate(model, path, max_new_tokens, stop_token_ids=None, pad_token_id=0):
    """Export greedy generation as a TensorFlow SavedModel that needs only TensorFlow.

    The SavedModel has the signature `generate(prompt_tokens, prompt_mask)`:
    `prompt_tokens` int32 `(batch, width)`, `prompt_mask` bool `(batch, width)`
    (`True` for the prompt's tokens, anywhere in the row); it returns
    `{"tokens": int32 (batch, width + max_new_tokens)}` laid out as
    :meth:`CausalLanguageModel.generate` does. With learned positions,
    `width + max_new_tokens` must not exceed the model's `sequence_length`.
    TensorFlow backend only.

    Args:
        model: a :class:`CausalLanguageModel`.
        path: folder to write.
        max_new_tokens: positive int, fixed at export.
        stop_token_ids, pad_token_id: as in `generate`.

    Returns:
        `path`.

    Example (TensorFlow only, in a process without this package):
    ```python
    loaded = tf.saved_model.load(path)
    out = loaded.signatures["generate"](prompt_tokens=tokens, prompt_mask=mask)
    out["tokens"]
    ```
    """
    if _backend.BACKEND != "tensorflow":
        raise ValueError(
            "`export_generate` writes a TensorFlow SavedModel and needs the TensorFlow "
            f"backend. Received: backend={_backend.BACKEND!r}"
        )
    if not isinstance(model, GenerativeMixin) or getattr(model, "encode", None):
        raise ValueError(
            f"`model` must be a CausalLanguageModel. Received: model of type {type(model).__name__}"
        )
    import tensorflow as tf

    vocabulary = model.decoder_embedding.vocabulary_size
    _validation.check_positive_int(max_new_tokens, "max_new_tokens")
    settings = _Settings(
        max_new_tokens,
        samplers_lib.GreedySampler(),
        _check_token_ids(stop_token_ids, "stop_token_ids", vocabulary),
        _check_token_ids([pad_token_id], "pad_token_id", vocabulary)[0],
    )

    def serve(prompt_tokens, prompt_mask):
        tokens, lengths = _left_align(prompt_tokens, prompt_mask)
        seed = ops.zeros((2,), "int32")
        return {"tokens": model._generate_tensors(settings, "graph", tokens, lengths, seed)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "generate",
        serve,
        input_signature=[
            tf.TensorSpec((None, None), tf.int32, name="prompt_tokens"),
            tf.TensorSpec((None, None), tf.bool, name="prompt_mask"),
        ],
    )
    archive.write_out(path, verbose=False)
    return path


def _left_align(tokens, mask):
    """In-graph version of `prepare_prompt`'s reordering (no checks)."""
    mask = ops.cast(mask, "bool")
    width = ops.shape(tokens)[1]
    columns = ops.arange(width, dtype="int32")[None, :]
    order = ops.argsort(ops.where(mask, columns, columns + width), axis=-1)
    tokens = ops.take_along_axis(ops.cast(tokens, "int32"), order, axis=1)
    lengths = ops.sum(ops.cast(mask, "int32"), axis=1)
    return ops.where(columns < lengths[:, None], tokens, 0), lengths


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

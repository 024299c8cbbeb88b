"""The decoding loop behind the models' `generate()`, and the models' step API.

The loop follows keras-hub's `CausalLM.generate`: the prompt is run once (prefill)
into a fixed-size key/value cache, then one `keras.ops.while_loop` produces a token
per step. The whole function (prefill, loop, sampling) is compiled once per input
signature (`tf.function` with XLA on TensorFlow, `jax.jit` on JAX; see
`keras_attention.backend.generation`) and cached on the model for calls of the same
shapes and settings.

Prompts of different lengths share one index: the loop starts at the shortest
prompt, and a row still inside its prompt keeps its prompt token instead of the
sampled one, so every row gets exactly the tokens it would get alone. The prefill
keeps in the cache only the positions every row has (`cache_write_length`), so the
loop resumes on a cache at its first position: a sliding window's ring filled with
the longer rows' positions would have lost keys the shorter rows still attend to.
Token id 0 is padding only for models built with `mask_zero=True`.
"""

import functools

import keras
from keras import ops

from keras_attention.backend import generation as _backend
from keras_attention.models import processors as processors_lib
from keras_attention.models import samplers as samplers_lib
from keras_attention.models.generation import arguments as arguments_lib
from keras_attention.models.generation import speculative
from keras_attention.models.generation.prompts import left_align
from keras_attention.models.generation.state import (
    CompiledFunctions,
    EncoderState,
    GenerationSettings,
    advance,
    initial_loop_vars,
)


class GenerativeMixin:
    """`generate()` and the step API of the models of this package that own a decoder.

    The model provides `decoder_embedding` (a `TokenAndPositionEmbedding`),
    `decoder_layers` (`TransformerDecoder`s), `lm_head` (a `Dense`, or `None` for
    logits through the transposed token table) and, for encoder-decoders,
    `encode(encoder_tokens, encoder_padding_mask)`.

    The package-internal step API, used by `generate()` and `keras_attention.export`
    (traceable `keras.ops`, no argument checks):

    - :meth:`initial_cache` `(batch_size, max_length, cache_dtype=None)`: the zero
      key/value cache (int8 with `cache_dtype="int8"`).
    - :meth:`call_with_cache` `(tokens, cache, index, key_mask=None,
      encoder_state=None, return_logits=True, cache_write_length=None)`: tokens at
      positions `index...` through the decoder, `(logits, cache)`: the prefill (the
      prompt at index 0, keeping the shortest prompt's positions) and every
      decoding step.
    - :meth:`left_align` `(tokens, mask)`: the prompt rows' tokens moved to the
      front, `(tokens, lengths)`.
    - :meth:`generate_graph` `(tokens, mask, max_new_tokens, stop_token_ids=(),
      pad_token_id=0, encoder_inputs=())`: the greedy `generate()` loop in the
      caller's trace (the SavedModel `generate` signature).
    """

    def _generation_functions(self):
        functions = self.__dict__.get("_generate_functions")
        if functions is None:
            functions = CompiledFunctions()
            object.__setattr__(self, "_generate_functions", functions)
        return functions

    # -- the step API ------------------------------------------------------------

    def initial_cache(self, batch_size, max_length, cache_dtype=None):
        """The zero key/value cache of `max_length` positions: a list with one
        cache per decoder layer (the layout of `TransformerDecoder.get_initial_cache`;
        with `cache_dtype="int8"` each is a `QuantizedCache` of int8 keys/values and
        float32 scales)."""
        return [
            layer.get_initial_cache(batch_size, max_length, cache_dtype)
            for layer in self.decoder_layers
        ]

    def call_with_cache(
        self,
        tokens,
        cache,
        index,
        key_mask=None,
        encoder_state=None,
        return_logits=True,
        cache_write_length=None,
    ):
        """Run `tokens` at positions `index, index + 1, ...` through the decoder,
        reading and writing the key/value `cache`.

        Args:
            tokens: int `(batch, n)`: a prompt (at `index` 0) or one token a row.
            cache: from :meth:`initial_cache` or a previous call.
            index: int or int32 scalar tensor, the position of `tokens[:, 0]`.
            key_mask: optional boolean `(batch, max_length)`, `False` for cache
                positions no query may attend (padding); the causal mask of the
                cache hides the positions not written yet.
            encoder_state: for encoder-decoders, the `EncoderState` of
                `encode` (or `encoder_state_from_cache`).
            return_logits: `False` skips the output projection (a prefill whose
                logits are not read) and returns `None` for them.
            cache_write_length: optional int or int32 scalar tensor `n`: the new
                cache keeps only `tokens[:, :n]` (the logits cover all). A prefill
                of prompts of different lengths passes the shortest length, where
                the decoding loop resumes.

        Returns:
            `(logits (batch, n, vocabulary_size) or None, new cache)`.
        """
        x = self._embed(tokens, index)
        query_mask = ops.not_equal(tokens, 0) if self.decoder_embedding.mask_zero else None
        new_cache = []
        for i, (layer, layer_cache) in enumerate(zip(self.decoder_layers, cache)):
            kwargs = dict(
                decoder_padding_mask=key_mask,
                self_attention_cache=layer_cache,
                cache_index=index,
                cache_write_length=cache_write_length,
                training=False,
            )
            if encoder_state is None:
                x, layer_cache = layer(x, mask=query_mask, **kwargs)
            else:
                x, layer_cache = layer(
                    x,
                    encoder_state.sequence,
                    encoder_padding_mask=encoder_state.padding_mask,
                    cross_attention_cache=encoder_state.cross_caches[i],
                    decoder_sequence_mask=query_mask,
                    **kwargs,
                )
            new_cache.append(layer_cache)
        return (self._logits(x) if return_logits else None), new_cache

    left_align = staticmethod(left_align)

    def generate_graph(
        self,
        tokens,
        mask,
        max_new_tokens,
        stop_token_ids=(),
        pad_token_id=0,
        encoder_inputs=(),
        processors=(),
        cache_dtype=None,
    ):
        """The greedy `generate()` loop as ops of the caller's trace (no checks, no
        compile cache): what a SavedModel's `generate` signature runs.

        Args:
            tokens, mask: int `(batch, width)` and boolean `(batch, width)`, `True`
                for the prompt's tokens, anywhere in the row.
            max_new_tokens: int or int32 scalar tensor.
            stop_token_ids, pad_token_id: checked token ids, as in `generate()`.
            encoder_inputs: `(encoder_tokens, encoder_padding_mask)` for
                encoder-decoders.
            processors: checked `LogitsProcessor`s, applied before the argmax.
            cache_dtype: None or `"int8"`, as in `generate()`.

        Returns:
            int32 `(batch, width + max_new_tokens)`, laid out as `generate()` does.
        """
        tokens, lengths = left_align(tokens, mask)
        sampler = samplers_lib.GreedySampler()
        settings = GenerationSettings(
            max_new_tokens,
            sampler,
            tuple(stop_token_ids),
            pad_token_id,
            processors=tuple(processors),
            cache_dtype=cache_dtype,
        )
        seed = ops.zeros((2,), "int32")
        return self._generate_tensors(settings, "graph", tokens, lengths, seed, *encoder_inputs)

    def _decode_step(self, mode):
        # `call_with_cache` as the token loops call it (on PyTorch, a traced graph).
        steps = self._generation_functions().steps
        return _backend.decode_step(self.call_with_cache, self.variables, steps, mode)

    def _embed(self, tokens, index=0):
        # The embedding path of the decoder (a model with scaled or normalized
        # embeddings overrides it).
        return self.decoder_embedding(tokens, start_index=index)

    def _logits(self, x):
        if self.lm_head is None:
            return self.decoder_embedding(x, reverse=True)
        return self.lm_head(x)

    def _key_mask(self, buffer):
        # Keys the model itself masks (token 0 with mask_zero=True); positions not yet
        # written are hidden by the causal mask of the cache.
        return ops.not_equal(buffer, 0) if self.decoder_embedding.mask_zero else None

    # -- the loops -----------------------------------------------------------------

    def _generate_tensors(self, settings, mode, tokens, lengths, seed, *encoder_inputs):
        """tokens `(batch, width)` (prompt rows left-aligned), lengths `(batch,)` ->
        tokens `(batch, width + max_new_tokens)`."""
        self._generation_functions().traces += 1
        if settings.speculation is not None:
            return speculative.speculative_sample(self, settings, mode, tokens, lengths, seed)
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
        caches = self.initial_cache(batch, total, settings.cache_dtype)
        # The prompt in one call, keeping the positions every row has: the loop starts
        # at the shortest prompt and runs the longer rows' next tokens from there.
        _, caches = self.call_with_cache(
            tokens,
            caches,
            0,
            self._key_mask(buffer),
            encoded,
            return_logits=False,
            cache_write_length=ops.min(lengths),
        )
        return buffer, caches, total

    def _sample(self, settings, mode, tokens, lengths, seed, encoded):
        lengths = ops.cast(lengths, "int32")
        buffer, caches, total = self._prefill(tokens, lengths, settings, encoded)
        loop_vars = initial_loop_vars(ops.min(lengths), buffer, caches)
        return self._sampling_loop(settings, mode, loop_vars, lengths, seed, encoded, total)[1]

    def _sampling_loop(self, settings, mode, loop_vars, lengths, seed, encoded, end):
        """The token loop from `loop_vars` `(index, buffer, caches, done, count)`
        until every row is done or `index` reaches `end` (an int32 scalar: the
        buffer's length, or where a streamed chunk ends); returns the loop vars."""
        stop_ids = ops.convert_to_tensor(list(settings.stop_token_ids) or [-1], "int32")
        step = self._decode_step(mode)

        def cond(index, buffer, caches, done, count):
            return ops.logical_and(index < end, ops.logical_not(ops.all(done)))

        def body(index, buffer, caches, done, count):
            sampled, caches = self._next_token(
                step, settings, buffer, caches, index, lengths, count, seed, index, encoded
            )
            token, done, count = advance(
                buffer, index, lengths, sampled, done, count, stop_ids, settings
            )
            buffer = ops.slice_update(buffer, [0, index], token[:, None])
            return index + 1, buffer, caches, done, count

        return _backend.while_loop(cond, body, tuple(loop_vars), mode)

    def _next_token(
        self, step, settings, buffer, caches, index, lengths, count, seed, noise_step, encoded=None
    ):
        """One token a row for position `index`: `_next_logits`, then the sampler,
        its noise drawn at `noise_step`: `(sampled (batch,) int32, caches)`."""
        logits, caches = self._next_logits(
            step, settings, buffer, caches, index, lengths, count, encoded
        )
        noise = None
        if settings.sampler.is_random:
            noise = _backend.uniform(ops.shape(logits), seed, noise_step)
        return settings.sampler.next_token(logits, noise), caches

    def _next_logits(self, step, settings, buffer, caches, index, lengths, count, encoded):
        """The processed logits for position `index`: `step` (`call_with_cache` or
        the loop's decode step) on the token at `index - 1`, then the processors:
        `(logits (batch, vocabulary), caches)`."""
        batch = ops.shape(buffer)[0]
        previous = ops.slice(buffer, [0, index - 1], [batch, 1])
        logits, caches = step(previous, caches, index - 1, self._key_mask(buffer), encoded)
        state = (buffer, lengths, index, count)
        return processors_lib.apply(settings.processors, logits[:, 0, :], *state), caches

    def _beam_search(self, settings, mode, tokens, lengths, encoded):
        beams = settings.sampler.num_beams
        batch = ops.shape(tokens)[0]

        def expand(x):
            return ops.repeat(x, beams, axis=0)

        if encoded is not None:
            encoded = EncoderState(
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
        step = self._decode_step(mode)

        def cond(index, buffer, caches, done, count, scores):
            return ops.logical_and(index < total, ops.logical_not(ops.all(done)))

        def body(index, buffer, caches, done, count, scores):
            logits, caches = self._next_logits(
                step, settings, buffer, caches, index, lengths, count, encoded
            )
            log_probs = ops.log_softmax(logits, axis=-1)
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
            # (an int8 cache's values and scales alike)
            caches = keras.tree.map_structure(lambda x: ops.take(x, order, axis=0), caches)
            sampled = ops.cast(ops.reshape(top_ids % vocabulary, (-1,)), "int32")
            token, done, count = advance(
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

    def _run_generate(self, arguments, encoder_inputs=()):
        """`generate()` of the :class:`GenerateArguments` `arguments` (and, for
        encoder-decoders, the checked `(encoder_tokens, encoder_padding_mask)`)."""
        settings, tokens, lengths, seed = self._check_generate_arguments(arguments)
        compile = arguments.compile
        args = [ops.convert_to_tensor(x) for x in (tokens, lengths, seed, *encoder_inputs)]
        key = (settings, len(encoder_inputs))
        function = self._generation_function(key, self._generate_tensors, settings, compile)
        return ops.convert_to_numpy(function(*args)).astype("int32")

    def _generation_function(self, key, method, settings, compile):
        """`method(settings, mode, *tensors)` compiled once per `key` (and input
        signature) and cached on the model, or run eagerly with `compile=False`."""
        if not compile:
            return _backend.run_eagerly(functools.partial(method, settings, "eager"))
        functions = self._generation_functions()
        if key not in functions.functions:
            variables = list(self.variables)
            if settings.speculation is not None and settings.speculation.draft_model is not None:
                variables += list(settings.speculation.draft_model.variables)
            functions.functions[key] = _backend.compile_function(
                functools.partial(method, settings, "compiled"), variables
            )
        return functions.functions[key]

    def _check_generate_arguments(self, arguments):
        """Check `generate()`'s arguments (see :func:`arguments.check_generate_arguments`):
        `(settings, tokens, lengths, seed)`."""
        return arguments_lib.check_generate_arguments(self, arguments)

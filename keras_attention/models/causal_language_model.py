"""`CausalLanguageModel`: a decoder-only (GPT-style) Transformer that owns `generate()`."""

import warnings

import keras

from keras_attention import _validation
from keras_attention.layers.transformer_decoder import TransformerDecoder
from keras_attention.models import _conversion, _decoder_options, _parts, _text
from keras_attention.models._adaptation import AdaptationMixin
from keras_attention.models.generation import deprecated, session, streaming
from keras_attention.models.generation.arguments import GenerateArguments
from keras_attention.models.generation.loop import GenerativeMixin


@keras.saving.register_keras_serializable(package="keras_attention")
class CausalLanguageModel(
    _conversion.ConvertibleMixin, AdaptationMixin, GenerativeMixin, keras.Model
):
    """A decoder-only language model: next-token logits and compiled generation.

    tokens -> `TokenAndPositionEmbedding` (`embedding`, layer name
    `token_embedding`) -> [`embedding_scaling`] -> [`embedding_norm_layer`] ->
    dropout -> `num_layers` x `TransformerDecoder` without cross-attention
    (`decoder_layers`, `decoder_layer_{i}`) -> [`final_norm_layer`, layer name
    `final_norm`] -> `Dense(vocabulary_size)` (`lm_head`), or with
    `tie_embeddings=True` the transposed token table (`lm_head` is then `None`) ->
    [`logit_scaling`]. The parts in brackets are `None` when their option is off.

    The architecture options below are explicit; `style` is a shorthand that fills
    those left `None`. `style="gpt"` (the default): learned positions, post-norm
    LayerNorm blocks (epsilon 1e-5) with biases, ReLU, no final norm.
    `style="llama"`: token embeddings only with RoPE in every attention
    (`position="rotary"`), pre-norm :class:`RMSNorm` blocks (epsilon 1e-6), SwiGLU, no
    biases anywhere, a final RMSNorm. The guide's table lists the options of GPT-2,
    Llama 1/2/3, Mistral, Qwen, Phi-3, Gemma 1/2/3, GPT-NeoX, BLOOM and Mixtral.

    Built functionally in `__init__` (like keras-hub's backbones), so `summary()`,
    `fit`, `.keras` save/load (no `custom_objects`) and `model.export` work as for
    any functional model; the parts are attributes, never looked up by name.

    Package-internal step API, used by `generate()` and `keras_attention.export`
    (see :class:`~keras_attention.models.generation.GenerativeMixin`):
    `initial_cache(batch_size, max_length)`, `call_with_cache(tokens, cache, index,
    key_mask=None, encoder_state=None, return_logits=True) -> (logits, cache)`,
    `left_align(tokens, mask) -> (tokens, lengths)` and `generate_graph(tokens, mask,
    max_new_tokens, stop_token_ids=(), pad_token_id=0)`.

    Args:
        vocabulary_size: positive int.
        sequence_length: positive int, the longest sequence (size of the learned
            position table; bounds prompt + new tokens in `generate`).
        num_layers, embedding_dim, num_heads, intermediate_dim: positive ints;
            `embedding_dim` divisible by `num_heads` unless `head_dim` is given.
        dropout: float in `[0, 1)`.
        position: `"learned"`, `"sinusoidal"`, `"rotary"` (RoPE in the attention)
            or `"none"` (default from `style`; with `style="llama"`, `"none"` means
            `"rotary"`, as in configs saved before it existed).
        tie_embeddings: reuse the token table as the output projection.
        mask_zero: token id 0 is padding (masked as a key, and left out of the loss
            by `fit`); with `False` it is an ordinary token.
        style: `"gpt"` or `"llama"` (see above).
        num_key_value_heads: positive int dividing `num_heads` (grouped-query
            attention); default `num_heads`.
        sliding_window: optional positive int, each token attends to the last
            `sliding_window` tokens (Mistral; with `layer_types`, only the
            "sliding" layers); the generation cache is then a ring of that size.
        soft_cap: optional positive float, attention logit soft-capping (Gemma 2).
        normalization: `"layer_norm"` or `"rms_norm"`, every norm of the model.
        layer_norm_epsilon: positive float, their epsilon.
        normalize_first: bool, pre-norm blocks.
        final_norm: bool, a norm before the output projection.
        post_norm: bool, sandwich norms `x + norm(f(norm(x)))` (Gemma 2/3).
        parallel_residual: bool, `x + attn(norm1(x)) + ffn(norm2(x))` (GPT-NeoX).
        activation: the feed-forward's: a Keras activation, `"gelu_tanh"`, or gated
            `"swiglu"`, `"geglu"`, `"geglu_tanh"`.
        use_bias: bool, or a tuple of the parts with a bias: `"query"`, `"key"`,
            `"value"`, `"output"`, `"feedforward"`, `"norm"` (LayerNorm offsets),
            `"lm_head"`.
        head_dim: optional positive int, the size of each head (default
            `embedding_dim // num_heads`).
        attention_scale: optional positive float multiplying `q . k` (default
            `1 / sqrt(head_dim)`).
        query_norm, key_norm: None, `"rms_norm"` or `"layer_norm"` over each head's
            queries / keys; `qk_norm_epsilon`: their epsilon.
        score_bias: None or `"alibi"` (ALiBi distance penalties, one layer shared by
            the blocks).
        final_logit_soft_cap: optional positive float `c`, logits `c tanh(l / c)`.
        max_wavelength, rotary_fraction, rope_scaling: RoPE's base (10000), rotated
            fraction of each head (1.0) and frequency scaling (a dict, see
            :class:`RotaryEmbedding`); only with `position="rotary"`.
        layer_types: optional list of `"full"` / `"sliding"`, one per layer.
        sliding_max_wavelength, sliding_rope_scaling: RoPE settings of the
            "sliding" layers of `layer_types` (default: `max_wavelength` and no
            scaling).
        embedding_scale: optional positive float multiplying the embeddings
            (Gemma: `sqrt(embedding_dim)`).
        embedding_norm: bool, a norm after the embeddings (BLOOM).
        logit_scale: optional positive float multiplying the logits.
        num_experts, num_experts_per_token: a :class:`MixtureOfExperts`
            feed-forward in each block (Mixtral), both or neither.
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

    Call arguments:
        tokens: int `(batch, seq)`.

    Returns:
        Next-token logits `(batch, seq, vocabulary_size)`: position `t` predicts
        token `t + 1`.

    Example:
    >>> model = CausalLanguageModel(vocabulary_size=50, sequence_length=32)
    >>> model.output_shape
    (None, None, 50)
    >>> model.generate([[1, 2, 3]], max_new_tokens=4).shape
    (1, 7)
    """

    def __init__(
        self,
        vocabulary_size,
        sequence_length,
        num_layers=2,
        embedding_dim=64,
        num_heads=4,
        intermediate_dim=128,
        dropout=0.1,
        position=None,
        tie_embeddings=False,
        mask_zero=True,
        style="gpt",
        num_key_value_heads=None,
        sliding_window=None,
        soft_cap=None,
        normalization=None,
        layer_norm_epsilon=None,
        normalize_first=None,
        final_norm=None,
        post_norm=False,
        parallel_residual=False,
        activation=None,
        use_bias=None,
        head_dim=None,
        attention_scale=None,
        query_norm=None,
        key_norm=None,
        qk_norm_epsilon=None,
        score_bias=None,
        final_logit_soft_cap=None,
        max_wavelength=None,
        rotary_fraction=None,
        rope_scaling=None,
        layer_types=None,
        sliding_max_wavelength=None,
        sliding_rope_scaling=None,
        embedding_scale=None,
        embedding_norm=False,
        logit_scale=None,
        num_experts=None,
        num_experts_per_token=None,
        **kwargs,
    ):
        config = _parts.model_config(locals(), "CausalLanguageModel")
        options = _decoder_options.resolve(config)
        config["position"] = options["position"]
        kwargs.setdefault("name", "causal_language_model")
        # === Layers ===
        embedding = _parts.embedding("token_embedding", options)
        embedding_scaling = _parts.scaling(options["embedding_scale"], None, "embedding_scaling")
        embedding_norm_layer = _parts.norm(options, "embedding_norm", options["embedding_norm"])
        embedding_dropout = keras.layers.Dropout(dropout, name="embedding_dropout")
        decoder_layers = [
            TransformerDecoder(**arguments)
            for arguments in _decoder_options.block_arguments(options)
        ]
        final_norm_layer = _parts.norm(options, "final_norm", options["final_norm"])
        lm_head = None
        if not tie_embeddings:
            head_bias = "lm_head" in _decoder_options.bias_parts(options["use_bias"])
            lm_head = keras.layers.Dense(vocabulary_size, use_bias=head_bias, name="lm_head")
        logit_scaling = _parts.scaling(logit_scale, final_logit_soft_cap, "logit_scaling")
        # === Functional model ===
        tokens = keras.Input((None,), dtype="int32", name="tokens")
        x = _parts.apply(
            (embedding_scaling, embedding_norm_layer, embedding_dropout), embedding(tokens)
        )
        x = _parts.apply(decoder_layers, x)
        x = _parts.apply((final_norm_layer,), x)
        x = embedding(x, reverse=True) if lm_head is None else lm_head(x)
        x = _parts.apply((logit_scaling,), x)
        super().__init__(inputs=tokens, outputs=x, **kwargs)
        # === Parts (assigned after `Model.__init__`, which PyTorch's Module needs) ===
        self.decoder_layers = decoder_layers
        self.embedding = embedding
        self.embedding_scaling = embedding_scaling
        self.embedding_norm_layer = embedding_norm_layer
        self.embedding_dropout = embedding_dropout
        self.final_norm_layer = final_norm_layer
        self.lm_head = lm_head
        self.logit_scaling = logit_scaling
        # === Config ===
        _parts.set_config(self, config)

    def _embed(self, tokens, index=0):
        x = self.embedding(tokens, start_index=index)
        for layer in (self.embedding_scaling, self.embedding_norm_layer):
            x = x if layer is None else layer(x)
        return x

    def _logits(self, x):
        if self.final_norm_layer is not None:
            x = self.final_norm_layer(x)
        x = super()._logits(x)
        return x if self.logit_scaling is None else self.logit_scaling(x)

    @property
    def decoder_embedding(self):
        return self.embedding

    def generate(
        self,
        prompt,
        max_new_tokens,
        prompt_mask=None,
        sampler="greedy",
        seed=None,
        stop_token_ids=None,
        pad_token_id=0,
        compile=True,
        processors=None,
        draft_model=None,
        num_draft_tokens=None,
        prompt_lookup=None,
        return_state=False,
        state=None,
        max_length=None,
        cache_dtype=None,
    ):
        """Continue each prompt by up to `max_new_tokens` tokens.

        One prefill call runs the prompt into the key/value cache; then the token
        loop runs inside one compiled function (`tf.function` with XLA, `jax.jit`),
        compiled on the first call of each input shape and setting and reused after.

        Args:
            prompt: int `(batch, length)`, or a list of token lists of different
                lengths.
            max_new_tokens: positive int, new tokens per sequence.
            prompt_mask: optional boolean `(batch, length)`, `True` for the prompt's
                tokens (right padding, left padding or holes). Without it every
                token is part of the prompt; token 0 is never treated as padding
                here (the model masks it itself only with `mask_zero=True`).
            sampler: a `keras_attention.models.samplers.Sampler` or one of
                `"greedy"`, `"random"`, `"top_k"`, `"top_p"`, `"beam"`.
            seed: int for reproducible sampling; `None` draws a fresh seed.
            stop_token_ids: token ids that end a sequence (the stop token is kept,
                the positions after it get `pad_token_id`); the loop ends when every
                sequence has stopped.
            pad_token_id: int, written after a sequence's last token.
            compile: `False` runs the same loop eagerly, op by op (for debugging).
            processors: optional list of
                `keras_attention.models.processors.LogitsProcessor`s (repetition,
                presence and frequency penalties, `NoRepeatNGram`, `MinP`, ...),
                applied in order to the next-token logits before the sampler,
                beam search included, inside the compiled loop.
            draft_model: optional smaller `CausalLanguageModel` with the same
                vocabulary: speculative decoding, each step drafts
                `num_draft_tokens` tokens with it and the model verifies them in one
                call (greedy: the same tokens; sampling: the same distribution).
            num_draft_tokens: positive int (at most 64), the drafts a step
                (default 4 with `draft_model`, 8 with `prompt_lookup`).
            prompt_lookup: optional positive int `n`: speculative decoding drafting
                the tokens that followed the latest earlier occurrence of the last
                `n` tokens (in the prompt or the text so far); no second model.
                See `keras_attention.models.generation.speculative`.
            return_state: `True` also returns a
                :class:`~keras_attention.models.generation.GenerationState` (the
                caches and each row's tokens so far) to continue the conversation
                with `state=`; not with beam search.
            state: a `GenerationState` of this model: `prompt` holds only the new
                tokens of each row, which are run through the model after its
                history (the history is not run again).
            max_length: with `return_state=True` and no `state`, the cache
                positions of the whole conversation (every later turn must fit);
                default: the longest prompt plus `max_new_tokens`, rounded up to a
                multiple of 128 (at most the learned position table).
            cache_dtype: `None` (the key/value cache in the compute dtype) or
                `"int8"`: keys and values stored as int8 with a float32 scale per
                position and head (0.28x the float32 bytes at head_dim 32; a token
                can differ from the float cache's where two logits nearly tie).

        Returns:
            Numpy int32 `(batch, longest prompt + max_new_tokens)`: row `i` holds its
            prompt tokens, its new tokens, then `pad_token_id`. With a `state`, the
            prompt is each row's history followed by its new tokens (what
            `generate` of the whole history returns). With `return_state=True`,
            `(tokens, state)`.

        Text: on a model with a :attr:`tokenizer`, `prompt` may be a string or a
        list of strings; the preprocessor tokenizes them (adding its start token),
        the same compiled loop runs on the ids (stopping by default at the
        tokenizer's end token), and the result is the prompt and its continuation
        as strings, without special tokens (a string for a string), as keras-hub's
        `generate` returns.
        """
        speculation = (draft_model, num_draft_tokens, prompt_lookup)
        arguments = GenerateArguments.from_locals(locals())
        if _text.is_text(prompt):
            return _text.generate_text(
                self,
                prompt,
                prompt_mask,
                max_new_tokens,
                stop_token_ids,
                lambda tokens, mask, stops: self._run_generate(
                    arguments._replace(prompt=tokens, prompt_mask=mask, stop_token_ids=stops)
                ),
            )
        _validation.check_bool(return_state, "return_state")
        if return_state or state is not None:
            if processors or cache_dtype:
                raise ValueError(
                    "A conversation state (`return_state`, `state`) does not combine "
                    "with `processors` or `cache_dtype` yet. Received: "
                    f"processors={processors!r}, cache_dtype={cache_dtype!r}"
                )
            return session.generate_with_state(self, arguments, state, max_length, return_state)
        if max_length is not None:
            raise ValueError(
                "`max_length` sizes the cache of a conversation: it needs "
                f"`return_state=True`. Received: max_length={max_length!r}"
            )
        return self._run_generate(arguments)

    def stream(
        self,
        prompt,
        max_new_tokens,
        chunk_size=8,
        prompt_mask=None,
        sampler="greedy",
        seed=None,
        stop_token_ids=None,
        pad_token_id=0,
        compile=True,
        processors=None,
    ):
        """Generate as :meth:`generate` does, yielding the new tokens in chunks.

        Each chunk is one call of a compiled function (compiled on the first chunk
        of each input shape and setting, reused by every later chunk and call);
        the chunks put together are :meth:`generate`'s new tokens for the same
        `seed`. The arguments are checked when `stream` is called.

        Args:
            chunk_size: positive int, new tokens per chunk (the last may be
                shorter; a row that has stopped gets `pad_token_id`).
            prompt, max_new_tokens, prompt_mask, sampler, seed, stop_token_ids,
                pad_token_id, compile, processors: as in :meth:`generate`; beam
                search cannot stream.

        Yields:
            Numpy int32 `(batch, <= chunk_size)`: every row's next new tokens.
            The stream ends after `max_new_tokens` tokens, or once every row has
            stopped.

        Example:
        >>> from keras_attention.models import causal_language_model
        >>> model = causal_language_model(vocabulary_size=20, sequence_length=16)
        >>> [chunk.shape for chunk in model.stream([[1, 2, 3]], 5, chunk_size=2)]
        [(1, 2), (1, 2), (1, 1)]
        """
        arguments = GenerateArguments.from_locals(locals())
        return streaming.stream(self, chunk_size, arguments)

    def export_generate(self, path, max_new_tokens, stop_token_ids=None, pad_token_id=0):
        """Deprecated: use :func:`keras_attention.export.export_generator` with
        `format="tf_saved_model"` (see :func:`keras_attention.models.export_generate`
        for the renamed inputs). Emits a `DeprecationWarning`."""
        warnings.warn(deprecated._MESSAGE, DeprecationWarning, stacklevel=2)
        return deprecated._export_generate(self, path, max_new_tokens, stop_token_ids, pad_token_id)

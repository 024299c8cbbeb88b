"""`Seq2SeqTransformer`: an encoder-decoder Transformer that owns `generate()`."""

import keras
import numpy as np
from keras import ops

from keras_attention.layers.transformer_decoder import TransformerDecoder
from keras_attention.models import _conversion, _parts, _seq2seq_parts
from keras_attention.models._adaptation import AdaptationMixin
from keras_attention.models.generation import streaming
from keras_attention.models.generation.arguments import GenerateArguments
from keras_attention.models.generation.loop import GenerativeMixin
from keras_attention.models.generation.prompts import prepare_prompt
from keras_attention.models.generation.state import EncoderState


@keras.saving.register_keras_serializable(package="keras_attention")
class Seq2SeqTransformer(
    _conversion.ConvertibleMixin, AdaptationMixin, GenerativeMixin, keras.Model
):
    """An encoder-decoder Transformer ("Attention Is All You Need") with `generate()`.

    encoder tokens -> `encoder_embedding` -> `encoder_layers` (`TransformerEncoder`,
    `encoder_layer_{i}`); decoder tokens -> `decoder_embedding` -> `decoder_layers`
    (`TransformerDecoder` with cross-attention to the encoder output,
    `decoder_layer_{i}`) -> `lm_head` (or the tied token table) -> next-token logits.
    Built functionally in `__init__`, like :class:`CausalLanguageModel`.

    Package-internal step API, used by `generate()` and `keras_attention.export`:
    that of :class:`CausalLanguageModel` (`initial_cache`, `call_with_cache`,
    `left_align`, `generate_graph` with `encoder_inputs=(encoder_tokens,
    encoder_padding_mask)`), plus `encode(encoder_tokens, encoder_padding_mask) ->
    EncoderState` (run once; pass it to `call_with_cache` as `encoder_state`) and
    `encoder_state_from_cache(cross_caches, padding_mask)` (the state from
    cross-attention keys/values kept by the caller).

    Args:
        vocabulary_size, sequence_length, num_layers, embedding_dim, num_heads,
        intermediate_dim, dropout, mask_zero: as for :class:`CausalLanguageModel`;
            the vocabulary and the longest sequence are those of both sides.
        position: `"learned"` (default) or `"sinusoidal"` positions added to the
            token embeddings, `"none"`, or `"relative"`: T5's learned relative
            position bias, one :class:`RelativePositionBias` for the encoder's
            self-attentions (bidirectional, `encoder_position_bias`) and one for the
            decoder's (causal, `decoder_position_bias`), each shared by every layer
            of its stack.
        share_embeddings: `False` (each side its own tables), `True` (one
            `shared_embedding` for source and target) or `"tokens"` (one token
            table, each side its own position table: BART).
        tie_embeddings: the output projection is the decoder's token table.
        scale_embeddings: multiply token embeddings by `sqrt(embedding_dim)`.
        activation: the blocks' feed-forward activation (`"relu"`, `"gelu"`,
            `"gelu_tanh"`, or gated `"swiglu"`, `"geglu"`, `"geglu_tanh"`).
        normalize_first: pre-norm blocks (`x + f(norm(x))`, T5) instead of the
            paper's post-norm (`norm(x + f(x))`, BART).
        normalization: `"layer_norm"` or `"rms_norm"` (T5), for every norm.
        layer_norm_epsilon: positive float, every norm's epsilon.
        use_bias: bool, or the parts with biases from `"query"`, `"key"`,
            `"value"`, `"output"`, `"feedforward"`, `"norm"` (LayerNorm offsets)
            and `"lm_head"`.
        head_dim: optional per-head size (T5's `d_kv`); default
            `embedding_dim // num_heads`.
        attention_scale: optional positive float multiplying `q . k` instead of
            `1 / sqrt(head_dim)` (T5: 1.0).
        relative_num_buckets, relative_max_distance: the buckets of
            `position="relative"` (T5: 32 and 128).
        embedding_norm: a norm on each side's embeddings (BART's
            `layernorm_embedding`), before the embedding dropout.
        final_norm: a norm at the end of each stack (`encoder_final_norm`,
            `decoder_final_norm`; pre-norm models such as T5).
        output_scale: optional positive float multiplying the decoder's output
            before the output projection (T5 with tied embeddings:
            `embedding_dim ** -0.5`).
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

    The defaults build the model of "Attention Is All You Need" (the same layers
    and weights as before these options). `keras_attention.convert.keras_hub.bart`
    and `.t5` give the arguments of keras-hub's BART and T5 and copy their weights.

    Call arguments:
        inputs: `[encoder_tokens (batch, src_seq), decoder_tokens (batch, tgt_seq)]`.

    Returns:
        Next-token logits `(batch, tgt_seq, vocabulary_size)`. Train with teacher
        forcing: decoder tokens `[start, y_1, ..., y_{n-1}]`, targets `[y_1, ..., y_n]`.

    Example:
    >>> model = Seq2SeqTransformer(vocabulary_size=50, sequence_length=16)
    >>> model.output_shape
    (None, None, 50)
    >>> model.generate([[5, 6, 7]], [[1]], max_new_tokens=3).shape
    (1, 4)
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
        position="learned",
        share_embeddings=False,
        tie_embeddings=False,
        scale_embeddings=False,
        mask_zero=True,
        activation="relu",
        normalize_first=False,
        normalization="layer_norm",
        layer_norm_epsilon=1e-5,
        use_bias=True,
        head_dim=None,
        attention_scale=None,
        relative_num_buckets=32,
        relative_max_distance=128,
        embedding_norm=False,
        final_norm=False,
        output_scale=None,
        **kwargs,
    ):
        config = _parts.model_config(locals(), "Seq2SeqTransformer")
        _seq2seq_parts.check_options(config)
        kwargs.setdefault("name", "transformer_seq2seq")
        parts = _layers(config)
        # === Functional model ===
        encoder_tokens = keras.Input((None,), dtype="int32", name="encoder_tokens")
        decoder_tokens = keras.Input((None,), dtype="int32", name="decoder_tokens")
        x = parts["encoder_embedding_dropout"](parts["encoder_embedding"](encoder_tokens))
        for layer in parts["encoder_layers"]:
            x = layer(x)
        if parts["encoder_final_norm"] is not None:
            x = parts["encoder_final_norm"](x)
        y = parts["decoder_embedding_dropout"](parts["decoder_embedding"](decoder_tokens))
        for layer in parts["decoder_layers"]:
            y = layer(y, x)
        logits = _head(
            y,
            parts["decoder_final_norm"],
            output_scale,
            parts["decoder_embedding"],
            parts["lm_head"],
        )
        super().__init__(inputs=[encoder_tokens, decoder_tokens], outputs=logits, **kwargs)
        # === Parts (assigned after `Model.__init__`, which PyTorch's Module needs) ===
        for name, layer in parts.items():
            setattr(self, name, layer)
        # === Config ===
        _parts.set_config(self, config)

    def _logits(self, x):
        return _head(
            x, self.decoder_final_norm, self.output_scale, self.decoder_embedding, self.lm_head
        )

    def encode(self, encoder_tokens, encoder_padding_mask):
        """Run the encoder once: an `EncoderState` of its outputs, padding mask, and
        the cross-attention keys/values of every decoder layer (reused at every
        decoding step). Part of the step API."""
        mask = ops.cast(encoder_padding_mask, "bool")
        if self.encoder_embedding.mask_zero:
            mask = ops.logical_and(mask, ops.not_equal(encoder_tokens, 0))
        x = self.encoder_embedding(encoder_tokens)
        for layer in self.encoder_layers:
            x = layer(x, padding_mask=mask, training=False)
        if self.encoder_final_norm is not None:
            x = self.encoder_final_norm(x)
        cross_caches = [layer.compute_cross_attention_cache(x) for layer in self.decoder_layers]
        return EncoderState(x, mask, cross_caches)

    def encoder_state_from_cache(self, cross_caches, padding_mask):
        """The `EncoderState` of cross-attention keys/values computed earlier (by
        :meth:`encode`, kept by the caller, e.g. an exported `decode` step's input).

        The decoder reads only the encoder output's length once its keys/values are
        given, so the state's `sequence` is zeros of that length. Part of the step API.

        Args:
            cross_caches: one tensor per decoder layer, `(batch, src_len, features)`.
            padding_mask: boolean `(batch, src_len)`, `True` for real source tokens.
        """
        batch, length = ops.shape(padding_mask)[0], ops.shape(padding_mask)[1]
        sequence = ops.zeros((batch, length, self.embedding_dim), "float32")
        return EncoderState(sequence, padding_mask, list(cross_caches))

    def generate(
        self,
        encoder_tokens,
        prompt,
        max_new_tokens,
        encoder_padding_mask=None,
        prompt_mask=None,
        sampler="greedy",
        seed=None,
        stop_token_ids=None,
        pad_token_id=0,
        compile=True,
        processors=None,
        cache_dtype=None,
    ):
        """Decode a target for each source sequence; the encoder runs once.

        Args:
            encoder_tokens: int `(batch, src_len)`, the source sequences.
            prompt: int `(batch, length)` decoder start (e.g. a start token), or a
                list of token lists.
            max_new_tokens: positive int.
            encoder_padding_mask: optional boolean `(batch, src_len)`, `True` for
                real source tokens (with `mask_zero=True`, token 0 is padding too).
            prompt_mask, sampler, seed, stop_token_ids, pad_token_id, compile,
                processors: as in :meth:`CausalLanguageModel.generate`.
                cache_dtype: as in :meth:`CausalLanguageModel.generate` (`"int8"`
                quantizes the decoder's self-attention cache; the cross-attention
                keys/values of the source stay float).

        Returns:
            Numpy int32 `(batch, longest prompt + max_new_tokens)`.
        """
        encoder_inputs = self._encoder_inputs(encoder_tokens, encoder_padding_mask, prompt)
        arguments = GenerateArguments.from_locals(locals())
        return self._run_generate(arguments, encoder_inputs)

    def stream(
        self,
        encoder_tokens,
        prompt,
        max_new_tokens,
        chunk_size=8,
        encoder_padding_mask=None,
        prompt_mask=None,
        sampler="greedy",
        seed=None,
        stop_token_ids=None,
        pad_token_id=0,
        compile=True,
        processors=None,
    ):
        """Decode as :meth:`generate` does, yielding the new tokens in chunks of
        `chunk_size` (see :meth:`CausalLanguageModel.stream`); the encoder runs
        once, in the first chunk's call.

        Yields:
            Numpy int32 `(batch, <= chunk_size)`: every row's next new tokens.
        """
        encoder_inputs = self._encoder_inputs(encoder_tokens, encoder_padding_mask, prompt)
        arguments = GenerateArguments.from_locals(locals())
        return streaming.stream(self, chunk_size, arguments, encoder_inputs)

    def _encoder_inputs(self, encoder_tokens, encoder_padding_mask, prompt):
        """Check the source and its mask against the prompt's batch:
        `(encoder_tokens, encoder_padding_mask)` as numpy arrays."""
        source, _ = prepare_prompt(
            encoder_tokens, None, self.vocabulary_size, name="encoder_tokens"
        )
        if encoder_padding_mask is None:
            encoder_padding_mask = np.ones(source.shape, bool)
        encoder_padding_mask = np.asarray(encoder_padding_mask)
        if encoder_padding_mask.shape != source.shape:
            raise ValueError(
                "`encoder_padding_mask` must have the shape of `encoder_tokens`, "
                f"{source.shape}. Received: encoder_padding_mask.shape="
                f"{encoder_padding_mask.shape}"
            )
        if self.position == "learned" and source.shape[1] > self.sequence_length:
            raise ValueError(
                "`encoder_tokens` must fit the learned position table "
                f"(sequence_length={self.sequence_length}). "
                f"Received: encoder_tokens.shape={source.shape}"
            )
        batch = np.shape(prompt)[0] if not isinstance(prompt, list) else len(prompt)
        if batch != source.shape[0]:
            raise ValueError(
                "`encoder_tokens` and `prompt` must have the same batch size. Received: "
                f"encoder_tokens.shape={source.shape}, prompt batch={batch}"
            )
        return source, encoder_padding_mask.astype(bool)


def _layers(config):
    """The layers of a `Seq2SeqTransformer` of `config`, by attribute name."""
    encoder_embedding, decoder_embedding = _seq2seq_parts.embeddings(config)
    encoder_bias, decoder_bias = _seq2seq_parts.relative_biases(config)
    block_kwargs = _seq2seq_parts.block_kwargs(config)
    if encoder_bias is not None:
        block_kwargs_encoder = dict(block_kwargs, score_bias=encoder_bias)
        block_kwargs_decoder = dict(block_kwargs, score_bias=decoder_bias)
    else:
        block_kwargs_encoder = block_kwargs_decoder = block_kwargs
    dropout, num_layers = config["dropout"], config["num_layers"]
    final_norm = config["final_norm"]
    lm_head = None
    if not config["tie_embeddings"]:
        lm_head = keras.layers.Dense(
            config["vocabulary_size"],
            use_bias=_seq2seq_parts.has_bias(config["use_bias"], "lm_head"),
            name="lm_head",
        )
    return {
        "encoder_embedding": encoder_embedding,
        "encoder_embedding_dropout": keras.layers.Dropout(
            dropout, name="encoder_embedding_dropout"
        ),
        "encoder_position_bias": encoder_bias,
        "encoder_layers": _parts.encoder_layers(config, **block_kwargs_encoder),
        "encoder_final_norm": _seq2seq_parts.norm(config, "encoder_final_norm")
        if final_norm
        else None,
        "decoder_embedding": decoder_embedding,
        "decoder_embedding_dropout": keras.layers.Dropout(
            dropout, name="decoder_embedding_dropout"
        ),
        "decoder_position_bias": decoder_bias,
        "decoder_layers": [
            TransformerDecoder(
                config["intermediate_dim"],
                config["num_heads"],
                dropout=dropout,
                name=f"decoder_layer_{i}",
                **block_kwargs_decoder,
            )
            for i in range(num_layers)
        ],
        "decoder_final_norm": _seq2seq_parts.norm(config, "decoder_final_norm")
        if final_norm
        else None,
        "lm_head": lm_head,
    }


def _head(x, final_norm, output_scale, embedding, lm_head):
    """Decoder outputs -> logits: the final norm, the output scale (T5's
    `d_model ** -0.5` before its tied head), then `lm_head` or the tied table."""
    if final_norm is not None:
        x = final_norm(x)
    if output_scale is not None:
        x = x * ops.cast(output_scale, x.dtype)
    return embedding(x, reverse=True) if lm_head is None else lm_head(x)

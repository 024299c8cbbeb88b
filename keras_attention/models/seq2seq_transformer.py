"""`Seq2SeqTransformer`: an encoder-decoder Transformer that owns `generate()`."""

import keras
import numpy as np
from keras import ops

from keras_attention import _validation
from keras_attention.layers.transformer_decoder import TransformerDecoder
from keras_attention.models import _parts
from keras_attention.models._adaptation import AdaptationMixin
from keras_attention.models.generation.loop import GenerativeMixin
from keras_attention.models.generation.prompts import prepare_prompt
from keras_attention.models.generation.state import EncoderState


@keras.saving.register_keras_serializable(package="keras_attention")
class Seq2SeqTransformer(AdaptationMixin, GenerativeMixin, keras.Model):
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
        intermediate_dim, dropout, position, mask_zero: as for
            :class:`CausalLanguageModel`; the vocabulary and the longest sequence
            are those of both sides.
        share_embeddings: one token table (`shared_embedding`) for source and target.
        tie_embeddings: the output projection is the decoder's token table.
        scale_embeddings: multiply token embeddings by `sqrt(embedding_dim)`.
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

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
        **kwargs,
    ):
        _parts.check_model_kwargs(kwargs, "Seq2SeqTransformer")
        config = dict(
            vocabulary_size=vocabulary_size,
            sequence_length=sequence_length,
            num_layers=num_layers,
            embedding_dim=embedding_dim,
            num_heads=num_heads,
            intermediate_dim=intermediate_dim,
            dropout=dropout,
            position=position,
            share_embeddings=share_embeddings,
            tie_embeddings=tie_embeddings,
            scale_embeddings=scale_embeddings,
            mask_zero=mask_zero,
        )
        _parts.check_common(config)
        for flag in ("share_embeddings", "tie_embeddings", "scale_embeddings", "mask_zero"):
            _validation.check_bool(config[flag], flag)
        kwargs.setdefault("name", "transformer_seq2seq")
        # === Layers ===
        if share_embeddings:
            encoder_embedding = _parts.embedding("shared_embedding", config, scale_embeddings)
            decoder_embedding = encoder_embedding
        else:
            encoder_embedding = _parts.embedding("encoder_embedding", config, scale_embeddings)
            decoder_embedding = _parts.embedding("decoder_embedding", config, scale_embeddings)
        encoder_embedding_dropout = keras.layers.Dropout(dropout, name="encoder_embedding_dropout")
        decoder_embedding_dropout = keras.layers.Dropout(dropout, name="decoder_embedding_dropout")
        encoder_layers = _parts.encoder_layers(config)
        decoder_layers = [
            TransformerDecoder(
                intermediate_dim, num_heads, dropout=dropout, name=f"decoder_layer_{i}"
            )
            for i in range(num_layers)
        ]
        lm_head = None if tie_embeddings else keras.layers.Dense(vocabulary_size, name="lm_head")
        # === Functional model ===
        encoder_tokens = keras.Input((None,), dtype="int32", name="encoder_tokens")
        decoder_tokens = keras.Input((None,), dtype="int32", name="decoder_tokens")
        x = encoder_embedding_dropout(encoder_embedding(encoder_tokens))
        for layer in encoder_layers:
            x = layer(x)
        y = decoder_embedding_dropout(decoder_embedding(decoder_tokens))
        for layer in decoder_layers:
            y = layer(y, x)
        logits = decoder_embedding(y, reverse=True) if lm_head is None else lm_head(y)
        super().__init__(inputs=[encoder_tokens, decoder_tokens], outputs=logits, **kwargs)
        # === Parts (assigned after `Model.__init__`, which PyTorch's Module needs) ===
        self.decoder_embedding = decoder_embedding
        self.decoder_embedding_dropout = decoder_embedding_dropout
        self.decoder_layers = decoder_layers
        self.encoder_embedding = encoder_embedding
        self.encoder_embedding_dropout = encoder_embedding_dropout
        self.encoder_layers = encoder_layers
        self.lm_head = lm_head
        # === Config ===
        _parts.set_config(self, config)

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
                cache_dtype: as in :meth:`CausalLanguageModel.generate` (`"int8"`
                quantizes the decoder's self-attention cache; the cross-attention
                keys/values of the source stay float).

        Returns:
            Numpy int32 `(batch, longest prompt + max_new_tokens)`.
        """
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
        return self._run_generate(
            prompt,
            max_new_tokens,
            prompt_mask,
            sampler,
            seed,
            stop_token_ids,
            pad_token_id,
            compile,
            encoder_inputs=(source, encoder_padding_mask.astype(bool)),
            cache_dtype=cache_dtype,
        )

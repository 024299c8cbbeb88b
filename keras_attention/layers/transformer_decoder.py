"""`TransformerDecoder`: one decoder block, causal self-attention, optional
cross-attention, then a feed-forward network, with a decoding cache."""

import keras
from keras import ops

from keras_attention import _validation, masks
from keras_attention.layers import _common, _decoding_cache, _keras_hub_cache
from keras_attention.layers._transformer_block import _padding_mask, _TransformerBlock


@keras.saving.register_keras_serializable(package="keras_attention")
class TransformerDecoder(_TransformerBlock):
    """One decoder block: causal self-attention, optional cross-attention, then FFN.

    Post-norm (the paper):
    `x = LN(x + Dropout(CausalMHA(x, x)))`,
    `x = LN(x + Dropout(MHA(x, encoder_sequence)))` (only with `encoder_sequence`),
    `y = LN(x + Dropout(FFN(x)))`. `normalize_first=True` moves each LayerNorm to
    the sublayer's input, `post_norm` and `parallel_residual` (self-attention only)
    as in :class:`TransformerEncoder`.

    Without `encoder_sequence` the block is a GPT-style decoder (no cross-attention
    weights are created). The cross-attention sublayers are created by `build` only
    when it receives an `encoder_sequence` shape, i.e. when the layer is first
    called with one; a decoder built one way cannot be called the other way.

    Incremental decoding: pass a `self_attention_cache` and `cache_index` (keras-hub's
    name: `self_attention_cache_update_index`); the new token(s) are written in the
    cache at `cache_index` and attend causally to everything before them, so each
    step costs one position instead of the whole prefix. Two cache layouts, told
    apart by their rank:

    - This package's, from :meth:`get_initial_cache`: `(batch, max_length,
      num_key_value_heads * 2 * key_dim)` (`layers/_decoding_cache.py`); the
      cross-attention keys/values of `encoder_sequence` can be computed once with
      :meth:`compute_cross_attention_cache` and passed as `cross_attention_cache`
      (not returned). Returns `(outputs, new_cache)`. `get_initial_cache(...,
      dtype="int8")` makes an int8 cache (this layout only).
    - keras-hub's, `(batch, 2, max_length, num_heads, head_dim)` (keys `[:, 0]`,
      values `[:, 1]`), with its protocol: with cross-attention a
      `cross_attention_cache` `(batch, 2, enc_seq, num_heads, head_dim)` is required
      too, filled from `encoder_sequence` at `cross_attention_cache_update_index`
      (usually 0) or, with `None`, used as it is; returns
      `(outputs, self_attention_cache[, cross_attention_cache])`, as keras-hub's
      `TransformerDecoder`.

    Sublayers: `self_attention`, `self_attention_dropout`,
    `self_attention_layer_norm`, `cross_attention`, `cross_attention_dropout`,
    `cross_attention_layer_norm` (the last three `None` without cross-attention),
    with `post_norm` `self_attention_post_norm`, `cross_attention_post_norm`,
    `feedforward_post_norm`,
    `feedforward`, `feedforward_dropout`, `feedforward_layer_norm`. Parameters, with
    `d` decoder and `e` encoder features: `4 d h k + 3 h k + d` (self-attention)
    `+ 2 d h k + 2 e h k + 3 h k + d + 2 d` (cross-attention and its LayerNorm)
    `+ 2 d f + f + d + 4 d` (FFN and two LayerNorms).

    Args:
        Same as :class:`TransformerEncoder`.

    Call arguments (keras-hub's, in its order, then this package's):
        decoder_sequence: `(batch, seq, features)`.
        encoder_sequence: optional `(batch, enc_seq, enc_features)`.
        decoder_padding_mask: boolean `(batch, seq)`, `True` for real tokens; with a
            cache, `(batch, max_length)` over the cache positions (with a
            `sliding_window`, whose cache is a ring, over all positions).
        decoder_attention_mask: boolean `(batch, seq, seq)` (with a cache
            `(batch, seq, max_length)`), `True` = may attend; merged with the
            causal and padding masks.
        encoder_padding_mask: boolean `(batch, enc_seq)`.
        encoder_attention_mask: boolean `(batch, seq, enc_seq)` for the
            cross-attention.
        self_attention_cache: optional cache of the self-attention, in either
            layout (see above).
        self_attention_cache_update_index: keras-hub's name of `cache_index`.
        cross_attention_cache: optional cross-attention keys/values (see above).
        cross_attention_cache_update_index: keras-hub's protocol only: where
            the keys/values of `encoder_sequence` go in `cross_attention_cache`,
            or `None` to use it as it is.
        use_causal_mask: `True` (default); `False` lets every position attend to
            every other (refused with a cache, which is causal).
        cache_write_length: optional int or scalar int tensor `n` (with
            `self_attention_cache`): the new cache keeps only the first `n` new
            tokens (see `MultiHeadAttention`), e.g. the prompt positions every row
            of a batch of prompts of different lengths has.
        training: whether dropout is active.
        return_attention_scores: if `True`, also return the attention weights:
            self-attention `(batch, num_heads, seq, seq)` (`seq` = `max_length`
            with a cache) and, with an `encoder_sequence`, cross-attention
            `(batch, num_heads, seq, encoder_seq)`.
        cache_index: int or scalar int tensor, where the new tokens go in the cache
            (required with `self_attention_cache`).
        decoder_sequence_mask, encoder_sequence_mask (or `mask` when
            `decoder_sequence` is the only tensor): Keras masks, filled in by Keras
            and combined with the padding masks.

    Returns:
        `(batch, seq, features)` carrying the decoder's Keras mask, or a tuple:
        the outputs, then with `return_attention_scores=True` the self- and (with an
        encoder) cross-attention weights, then with `self_attention_cache` the new
        cache (and in keras-hub's protocol the cross-attention cache), e.g.
        `(outputs, new_cache)` or `(outputs, self_scores, cross_scores, new_cache)`.

    Example:
    >>> import numpy as np
    >>> decoder = TransformerDecoder(intermediate_dim=32, num_heads=2)
    >>> target, source = np.zeros((2, 4, 8), "float32"), np.zeros((2, 6, 8), "float32")
    >>> tuple(decoder(target, source).shape)
    (2, 4, 8)
    """

    def __init__(self, intermediate_dim, num_heads, *args, **kwargs):
        super().__init__(intermediate_dim, num_heads, *args, **kwargs)
        self.cross_attention = None
        self.cross_attention_dropout = None
        self.cross_attention_layer_norm = None
        self.cross_attention_post_norm = None

    def build(self, decoder_sequence_shape, encoder_sequence_shape=None):
        _validation.check_sequence(decoder_sequence_shape, "decoder_sequence")
        features = decoder_sequence_shape[-1]
        self.self_attention = self._attention(features, "self_attention")
        self.self_attention.build(decoder_sequence_shape, decoder_sequence_shape)
        if encoder_sequence_shape is not None:
            _validation.check_sequence(encoder_sequence_shape, "encoder_sequence")
            if self.parallel_residual:
                raise ValueError(
                    "`parallel_residual=True` is for blocks without cross-attention "
                    "(GPT-NeoX); this decoder was called with an `encoder_sequence`. "
                    f"Received: parallel_residual=True, encoder_sequence.shape="
                    f"{tuple(encoder_sequence_shape)}"
                )
            self.cross_attention = self._attention(features, "cross_attention")
            self.cross_attention.build(decoder_sequence_shape, encoder_sequence_shape)
            self.cross_attention_dropout = self._dropout("cross_attention_dropout")
            self.cross_attention_layer_norm = self._layer_norm("cross_attention_layer_norm")
            self.cross_attention_post_norm = self._post_norm("cross_attention_post_norm")
        self._build_feedforward(decoder_sequence_shape)
        self.built = True

    def compute_cross_attention_cache(self, encoder_sequence):
        """The cross-attention keys/values of `encoder_sequence`, to pass as
        `cross_attention_cache` at every decoding step."""
        if self.cross_attention is None:
            raise ValueError(
                "This TransformerDecoder has no cross-attention (it was first called "
                "without `encoder_sequence`)."
            )
        return self.cross_attention.compute_key_value_cache(encoder_sequence)

    def get_initial_cache(self, batch_size, max_length, dtype=None):
        """A zero self-attention cache for incremental decoding (layer must be built);
        `dtype="int8"`: quantized (see `MultiHeadAttention.get_initial_cache`)."""
        if self.self_attention is None:
            raise ValueError("The decoder must be built (called once) before `get_initial_cache`.")
        return self.self_attention.get_initial_cache(batch_size, max_length, dtype)

    def call(
        self,
        decoder_sequence,
        encoder_sequence=None,
        decoder_padding_mask=None,
        decoder_attention_mask=None,
        encoder_padding_mask=None,
        encoder_attention_mask=None,
        self_attention_cache=None,
        self_attention_cache_update_index=None,
        cross_attention_cache=None,
        cross_attention_cache_update_index=None,
        use_causal_mask=True,
        training=None,
        return_attention_scores=False,
        cache_index=None,
        mask=None,
        decoder_sequence_mask=None,
        encoder_sequence_mask=None,
        cache_write_length=None,
    ):
        cache_index = self._check_call(
            encoder_sequence,
            self_attention_cache,
            _keras_hub_cache.cache_index(cache_index, self_attention_cache_update_index),
            use_causal_mask,
            cache_write_length,
        )
        # keras-hub's caches (batch, 2, length, heads, head_dim), in this package's layout
        stacked, self_attention_cache, cross_attention_cache, new_cross_cache = (
            _keras_hub_cache.unstack(
                self,
                encoder_sequence,
                self_attention_cache,
                cross_attention_cache,
                cross_attention_cache_update_index,
            )
        )
        scores, new_cache = [], []
        attention_mask = self._self_attention_mask(
            decoder_sequence,
            decoder_padding_mask,
            mask if decoder_sequence_mask is None else decoder_sequence_mask,
            decoder_attention_mask,
            use_causal_mask,
            self_attention_cache,
        )
        cache_arguments = _cache_arguments(self_attention_cache, cache_index, cache_write_length)
        x = self._attention_residual(
            decoder_sequence,
            "self_attention",
            scores,
            new_cache,
            training,
            attention_mask=attention_mask,
            return_attention_scores=return_attention_scores,
            **cache_arguments,
        )
        if encoder_sequence is not None:
            x = self._attention_residual(
                x,
                "cross_attention",
                scores,
                new_cache,
                training,
                value=encoder_sequence,
                attention_mask=self._cross_attention_mask(
                    decoder_sequence,
                    encoder_sequence,
                    encoder_padding_mask,
                    encoder_sequence_mask,
                    encoder_attention_mask,
                ),
                key_value_cache=cross_attention_cache,
                return_attention_scores=return_attention_scores,
            )
        x = self._feedforward_residual(x, training)
        if stacked:
            new_cache = [_keras_hub_cache.to_stacked(self, new_cache[0]), new_cross_cache]
        outputs = (x, *scores, *(cache for cache in new_cache if cache is not None))
        return outputs if len(outputs) > 1 else x

    def _self_attention_mask(
        self, decoder_sequence, padding_mask, decoder_mask, attention_mask, causal, cache
    ):
        """The self-attention mask: the padding, Keras and attention masks merged,
        causal over the sequence (with `causal`), or over the cache's slots."""
        dec_len = ops.shape(decoder_sequence)[1]
        if cache is not None:
            return self._cached_self_attention_mask(
                padding_mask, decoder_mask, attention_mask, cache, dec_len
            )
        padding_mask, attention_mask = _checked_masks(
            "decoder", decoder_sequence, padding_mask, decoder_mask, attention_mask
        )
        return _common.self_attention_mask(padding_mask, dec_len, attention_mask, causal)

    def _cross_attention_mask(
        self, decoder_sequence, encoder_sequence, padding_mask, encoder_mask, attention_mask
    ):
        """The cross-attention mask: the encoder's padding and Keras masks over its
        keys, and an `encoder_attention_mask` `(batch, dec_len, enc_len)`."""
        padding_mask, attention_mask = _checked_masks(
            "encoder", encoder_sequence, padding_mask, encoder_mask, attention_mask
        )
        return masks.merge_attention_masks(
            value_mask=padding_mask,
            attention_mask=attention_mask,
            q_len=ops.shape(decoder_sequence)[1],
            kv_len=ops.shape(encoder_sequence)[1],
        )

    def _check_call(self, encoder_sequence, cache, cache_index, use_causal_mask, write_length):
        """Check the call's arguments against the layer; return the cache index."""
        if encoder_sequence is not None and self.cross_attention is None:
            raise ValueError(
                "This TransformerDecoder was built without cross-attention (its first "
                "call had no `encoder_sequence`), so it cannot take `encoder_sequence`"
                ". Use a new decoder, first called with an `encoder_sequence`."
            )
        if encoder_sequence is None and self.cross_attention is not None:
            raise ValueError(
                "This TransformerDecoder was built with cross-attention, so "
                "`encoder_sequence` is required. Received: encoder_sequence=None"
            )
        if cache is not None and cache_index is None:
            raise ValueError(
                "`cache_index` (keras-hub's `self_attention_cache_update_index`) is "
                "required with `self_attention_cache`. Received: cache_index=None"
            )
        if cache is None and cache_index is not None:
            raise ValueError(
                "`cache_index` (keras-hub's `self_attention_cache_update_index`) is only "
                f"used with `self_attention_cache`. Received: cache_index={cache_index!r}, "
                "self_attention_cache=None"
            )
        if cache is None and write_length is not None:
            raise ValueError(
                "`cache_write_length` is only used with `self_attention_cache`. "
                f"Received: cache_write_length={write_length!r}, self_attention_cache=None"
            )
        _validation.check_bool(use_causal_mask, "use_causal_mask")
        if cache is not None and not use_causal_mask:
            raise ValueError(
                "A decoding cache is causal: `use_causal_mask=False` cannot be combined "
                "with `self_attention_cache`. Received: use_causal_mask=False"
            )
        return cache_index

    def _cached_self_attention_mask(self, padding_mask, query_mask, attention_mask, cache, dec_len):
        """With a cache, the keys are the cache's `max_length` slots; the attention
        layer adds the causal part (new tokens see slots up to their own)."""
        max_length = ops.shape(_decoding_cache.rows(cache))[1]
        # With a sliding window the cache is a ring of the last `window` positions and
        # the padding mask covers absolute positions (the attention gathers from it).
        ring = self.self_attention.sliding_window is not None
        if padding_mask is not None:
            padding_mask = masks.validate_mask(padding_mask, "decoder_padding_mask")
            shape = tuple(padding_mask.shape)
            if ring and len(shape) == 2:
                max_length = ops.shape(padding_mask)[1]
            elif len(shape) != 2 or not _validation.compatible(
                shape, (cache.shape[0], cache.shape[1])
            ):
                raise ValueError(
                    "With `self_attention_cache`, `decoder_padding_mask` must have "
                    "shape (batch, max_length) over the cache positions, i.e. "
                    f"{tuple(cache.shape[:2])}. Received: "
                    f"decoder_padding_mask.shape={shape}, "
                    f"self_attention_cache.shape={tuple(cache.shape)}"
                )
        if attention_mask is not None:
            attention_mask = masks.validate_mask(attention_mask, "decoder_attention_mask")
        return masks.merge_attention_masks(
            query_mask=query_mask,
            value_mask=padding_mask,
            attention_mask=attention_mask,
            q_len=dec_len,
            kv_len=max_length,
        )

    def compute_output_shape(
        self,
        decoder_sequence_shape,
        encoder_sequence_shape=None,
        self_attention_cache_shape=None,
    ):
        if self_attention_cache_shape is not None:
            return tuple(decoder_sequence_shape), tuple(self_attention_cache_shape)
        return tuple(decoder_sequence_shape)

    def compute_output_spec(
        self,
        decoder_sequence,
        encoder_sequence=None,
        self_attention_cache=None,
        cross_attention_cache=None,
        return_attention_scores=False,
        **kwargs,
    ):
        def spec(shape, dtype=None):
            return keras.KerasTensor(tuple(shape), dtype=dtype or self.compute_dtype)

        outputs = [spec(decoder_sequence.shape)]
        batch, dec_len = decoder_sequence.shape[0], decoder_sequence.shape[1]
        stacked = self_attention_cache is not None and len(self_attention_cache.shape) == 5
        if return_attention_scores:
            keys = dec_len
            if self_attention_cache is not None:
                keys = self_attention_cache.shape[2 if stacked else 1]
            outputs.append(spec((batch, self.num_heads, dec_len, keys)))
            if encoder_sequence is not None:
                enc_len = encoder_sequence.shape[1]
                outputs.append(spec((batch, self.num_heads, dec_len, enc_len)))
        for cache in (self_attention_cache, cross_attention_cache if stacked else None):
            if cache is not None:
                outputs.append(_decoding_cache.output_spec(cache))
        return tuple(outputs) if len(outputs) > 1 else outputs[0]


def _checked_masks(side, sequence, padding_mask, keras_mask, attention_mask):
    """The padding of `{side}_sequence` (its checked `{side}_padding_mask` combined
    with its Keras mask) and the checked `{side}_attention_mask`."""
    padding_mask = _padding_mask(
        padding_mask, keras_mask, sequence, f"{side}_padding_mask", f"{side}_sequence"
    )
    if attention_mask is not None:
        attention_mask = masks.validate_mask(attention_mask, f"{side}_attention_mask")
    return padding_mask, attention_mask


def _cache_arguments(cache, cache_index, write_length):
    """The self-attention's cache keywords: none without a cache."""
    if cache is None:
        return {}
    return {"cache": cache, "cache_index": cache_index, "cache_write_length": write_length}

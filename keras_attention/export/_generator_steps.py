"""The functions `export_generator` traces: `prefill`, `decode` and `generate` on the
models' step API, with the per-layer caches and the key mask packed into the one state
tensor an app passes back (its layout: `export/generator.py`'s docstring)."""

from keras import ops

from keras_attention.layers._decoding_cache import QuantizedCache


class Steps:
    """The traced functions: the model's step API, with the per-layer caches and the
    key mask packed into one tensor (the state an app passes back)."""

    def __init__(
        self, model, max_length, check_width, generate_settings=((), 0, ()), cache_dtype=None
    ):
        self.model = model
        self.max_length = max_length
        self.check_width = check_width
        self.stop_token_ids, self.pad_token_id, self.processors = generate_settings
        self.cache_dtype = cache_dtype
        self.seq2seq = hasattr(model, "encode")
        self.mask_zero = model.decoder_embedding.mask_zero
        self.num_layers = len(model.decoder_layers)
        caches = model.initial_cache(1, max_length, cache_dtype)
        self.layer_features = caches[0].shape[-1]
        # Positions each layer's cache holds: `max_length`, or a sliding window's ring.
        self.layer_slots = [cache.shape[1] for cache in caches]
        self.cache_features = self.num_layers * self.layer_features + 1
        if cache_dtype is not None:  # the scales' float32 bytes
            self.layer_scales = caches[0].scales.shape[-1]
            self.cache_features += 4 * self.num_layers * self.layer_scales

    # -- packing the per-layer caches and the key mask into one tensor --------------

    def _pack(self, caches, key_mask):
        flags = ops.expand_dims(ops.cast(key_mask, "float32"), -1)
        rows = [
            ops.pad(ops.cast(cache, "float32"), [[0, 0], [0, self.max_length - slots], [0, 0]])
            for cache, slots in zip(caches, self.layer_slots)
        ]
        return ops.concatenate(rows + [flags], axis=-1)

    def _unpack(self, state):
        size = self.layer_features
        caches = [
            state[:, :slots, i * size : (i + 1) * size] for i, slots in enumerate(self.layer_slots)
        ]
        return caches, state[..., -1] > 0.5

    def _pack_state(self, caches, key_mask):
        """The self-attention caches and key mask as the one state tensor: `_pack`'s
        float32, or int8 values, the bytes of the float32 scales, the key mask."""
        if self.cache_dtype is None:
            return self._pack(caches, key_mask)
        import tensorflow as tf

        def padded(x, slots):  # (LiteRT pads no int8: zeros are concatenated)
            if slots == self.max_length:
                return x
            zeros = ops.zeros((ops.shape(x)[0], self.max_length - slots, x.shape[-1]), x.dtype)
            return ops.concatenate([x, zeros], axis=1)

        values = [padded(cache.values, n) for cache, n in zip(caches, self.layer_slots)]
        scales = [padded(cache.scales, n) for cache, n in zip(caches, self.layer_slots)]
        scales = tf.bitcast(ops.concatenate(scales, axis=-1), tf.int8)
        scales = ops.reshape(scales, (-1, self.max_length, 4 * len(caches) * self.layer_scales))
        flags = ops.expand_dims(ops.cast(key_mask, "int8"), -1)
        return ops.concatenate(values + [scales, flags], axis=-1)

    def _unpack_state(self, state):
        if self.cache_dtype is None:
            return self._unpack(state)
        import tensorflow as tf

        size, count = self.layer_features, self.layer_scales
        scales = state[..., self.num_layers * size : -1]
        scales = ops.reshape(scales, (-1, self.max_length, self.num_layers * count, 4))
        scales = tf.bitcast(scales, tf.float32)
        caches = [
            QuantizedCache(
                state[:, :slots, i * size : (i + 1) * size],
                scales[:, :slots, i * count : (i + 1) * count],
            )
            for i, slots in enumerate(self.layer_slots)
        ]
        return caches, ops.cast(state[..., -1], "int32") > 0

    def _checked(self, tokens):
        """`tokens`, after a run-time check that the prompt leaves room in the cache."""
        if not self.check_width:
            return tokens
        import tensorflow as tf

        width = tf.shape(tokens)[1]
        check = tf.debugging.assert_less(
            width,
            self.max_length,
            message=f"The prompt width must be smaller than max_length={self.max_length} "
            "(prompt plus new tokens); received a wider `tokens`",
        )
        with tf.control_dependencies([check]):
            return tf.identity(tokens)

    # -- prefill and decode -----------------------------------------------------------

    def _prefill(self, tokens, mask, encoder_state):
        tokens, lengths = self.model.left_align(self._checked(tokens), mask)
        batch, width = ops.shape(tokens)[0], ops.shape(tokens)[1]
        columns = ops.arange(self.max_length, dtype="int32")[None, :]
        padded = ops.pad(tokens, [[0, 0], [0, self.max_length - width]])
        key_mask = ops.logical_and(columns < lengths[:, None], ops.not_equal(padded, 0))
        if not self.mask_zero:
            key_mask = columns < lengths[:, None]
        # The cache keeps the positions every row has: the app's loop starts there.
        logits, caches = self.model.call_with_cache(
            tokens,
            self.model.initial_cache(batch, self.max_length, self.cache_dtype),
            0,
            key_mask if self.mask_zero else None,
            encoder_state,
            cache_write_length=ops.min(lengths),
        )
        last = ops.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
        return {"logits": ops.cast(last, "float32"), "cache": self._pack_state(caches, key_mask)}

    def _decode(self, token, cache, index, encoder_state):
        caches, key_mask = self._unpack_state(cache)
        token = ops.cast(token, "int32")[:, None]
        index = ops.cast(index, "int32")
        valid = ops.not_equal(token, 0) if self.mask_zero else ops.ones_like(token, "bool")
        key_mask = ops.slice_update(key_mask, [0, index], valid)
        logits, caches = self.model.call_with_cache(
            token, caches, index, key_mask if self.mask_zero else None, encoder_state
        )
        logits = ops.cast(logits[:, 0], "float32")
        return {"logits": logits, "cache": self._pack_state(caches, key_mask)}

    def prefill(self, tokens, mask):
        return self._prefill(tokens, mask, None)

    def decode(self, token, cache, index):
        return self._decode(token, cache, index, None)

    def prefill_seq2seq(self, encoder_tokens, encoder_mask, tokens, mask):
        encoder_state = self.model.encode(encoder_tokens, encoder_mask)
        outputs = self._prefill(tokens, mask, encoder_state)
        outputs["encoder_cache"] = self._pack(
            encoder_state.cross_caches, encoder_state.padding_mask
        )
        return outputs

    def decode_seq2seq(self, token, cache, encoder_cache, index):
        caches, mask = self._unpack(encoder_cache)
        encoder_state = self.model.encoder_state_from_cache(caches, mask)
        return self._decode(token, cache, index, encoder_state)

    # -- the signatures: each exported function and its input specs -----------------

    def signatures(self, prompt_length, with_generate=False):
        """`{name: (function, input specs)}` of `prefill`, `decode` (and `generate`):
        the names and shapes every format exports (`prompt_length` fixes the width)."""
        import tensorflow as tf

        width = prompt_length
        tokens = [
            tf.TensorSpec((None, width), tf.int32, name="tokens"),
            tf.TensorSpec((None, width), tf.bool, name="mask"),
        ]
        state_dtype = tf.int8 if self.cache_dtype else tf.float32
        cache = tf.TensorSpec((None, self.max_length, self.cache_features), state_dtype, "cache")
        token = tf.TensorSpec((None,), tf.int32, name="token")
        index = tf.TensorSpec((), tf.int32, name="index")
        if not self.seq2seq:
            signatures = {
                "prefill": (self.prefill, tokens),
                "decode": (self.decode, [token, cache, index]),
                "generate": (self.generate, tokens),
            }
        else:
            source = [
                tf.TensorSpec((None, None), tf.int32, name="encoder_tokens"),
                tf.TensorSpec((None, None), tf.bool, name="encoder_mask"),
            ]
            encoder_cache = tf.TensorSpec(
                (None, None, self.cache_features), tf.float32, name="encoder_cache"
            )
            signatures = {
                "prefill": (self.prefill_seq2seq, source + tokens),
                "decode": (self.decode_seq2seq, [token, cache, encoder_cache, index]),
                "generate": (self.generate_seq2seq, source + tokens),
            }
        if not with_generate:
            del signatures["generate"]
        return signatures

    # -- the whole greedy loop (SavedModel only: LiteRT has no loop of this kind) -----

    def _generate(self, tokens, mask, encoder_inputs):
        tokens = self._checked(tokens)
        return {
            "tokens": self.model.generate_graph(
                tokens,
                mask,
                self.max_length - ops.shape(tokens)[1],
                self.stop_token_ids,
                self.pad_token_id,
                encoder_inputs,
                processors=self.processors,
                cache_dtype=self.cache_dtype,
            )
        }

    def generate(self, tokens, mask):
        return self._generate(tokens, mask, ())

    def generate_seq2seq(self, encoder_tokens, encoder_mask, tokens, mask):
        return self._generate(tokens, mask, (encoder_tokens, encoder_mask))

"""Transformer blocks: `FeedForward`, `TransformerEncoder`, `TransformerDecoder`.

Each block is "attention, then a position-wise feed-forward network", with a residual
connection and layer normalization around every sublayer. The attention is this
package's `MultiHeadAttention`; the masks of every kind are merged into one boolean
mask by `keras_attention.masks.merge_attention_masks` before it is handed over.
"""

import keras
from keras import ops

from keras_attention import masks
from keras_attention.layers import _common
from keras_attention.layers.multi_head import MultiHeadAttention


@keras.saving.register_keras_serializable(package="keras_attention")
class FeedForward(keras.layers.Layer):
    """Position-wise feed-forward network: `FFN(x) = act(x W_1 + b_1) W_2 + b_2`.

    The same two `Dense` layers (`intermediate_dense`, `output_dense`) are applied at
    every position independently, so the layer mixes features, never positions (that
    is attention's job). The output has as many features as the input, so the block
    can sit inside a residual connection. Parameters: `2 d f + f + d` for `d` input
    features and `f = intermediate_dim` (without biases: `2 d f`).

    Args:
        intermediate_dim: positive int, the hidden size `d_ff` (2048 in the paper).
        activation: activation of the hidden layer (`"relu"` in the paper).
        dropout: float in `[0, 1)`, dropout on the hidden activations.
        use_bias: whether both `Dense` layers have biases.
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer,
        kernel_constraint, bias_constraint: passed to both `Dense` layers.
        seed: int, seed for dropout.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `(batch, ..., features)`.
        training: whether dropout is active.

    Returns:
        Same shape as `inputs`, carrying the input's Keras mask.

    Example:
    >>> import numpy as np
    >>> FeedForward(32)(np.zeros((2, 5, 8), "float32")).shape
    TensorShape([2, 5, 8])
    """

    def __init__(
        self,
        intermediate_dim,
        activation="relu",
        dropout=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _common.check_positive_int(intermediate_dim, "intermediate_dim")
        _common.check_rate(dropout, "dropout")
        _common.check_bool(use_bias, "use_bias")
        self.intermediate_dim = intermediate_dim
        self.activation = keras.activations.get(activation)
        self.dropout = dropout
        self.use_bias = use_bias
        self.seed = seed
        self.projection = _common.ProjectionSettings(
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
        )
        self.supports_masking = True
        self.intermediate_dense = keras.layers.Dense(
            intermediate_dim,
            activation=self.activation,
            use_bias=use_bias,
            name="intermediate_dense",
            dtype=self.dtype_policy,
            **self.projection.dense_kwargs(),
        )
        self.dropout_layer = keras.layers.Dropout(
            dropout, seed=seed, name="dropout", dtype=self.dtype_policy
        )
        self.output_dense = None

    def build(self, inputs_shape):
        _common.check_rank(inputs_shape, (2, 3, 4), "inputs", "(batch, ..., features)")
        features = inputs_shape[-1]
        if features is None:
            raise ValueError(
                "The last axis of `inputs` (features) must be known. "
                f"Received: inputs.shape={tuple(inputs_shape)}"
            )
        self.output_dense = keras.layers.Dense(
            features,
            use_bias=self.use_bias,
            name="output_dense",
            dtype=self.dtype_policy,
            **self.projection.dense_kwargs(),
        )
        self.intermediate_dense.build(inputs_shape)
        self.output_dense.build(tuple(inputs_shape[:-1]) + (self.intermediate_dim,))
        self.built = True

    def call(self, inputs, training=None):
        hidden = self.intermediate_dense(inputs)
        hidden = self.dropout_layer(hidden, training=training)
        return self.output_dense(hidden)

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "intermediate_dim": self.intermediate_dim,
                "activation": keras.activations.serialize(self.activation),
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "seed": self.seed,
                **self.projection.get_config(),
            }
        )
        return config


def _check_sequence(shape, name):
    _common.check_rank(shape, 3, name, "rank 3 (batch, seq, features)")
    if shape[-1] is None:
        raise ValueError(
            f"The last axis of `{name}` (features) must be known. "
            f"Received: {name}.shape={tuple(shape)}"
        )


def _check_padding_mask(padding_mask, sequence, name, sequence_name):
    """A padding mask must be `(batch, seq)` for its sequence; say which one if not."""
    if padding_mask is None:
        return None
    padding_mask = masks.validate_mask(padding_mask, name=name)
    shape, seq_shape = tuple(padding_mask.shape), tuple(sequence.shape)
    if len(shape) != 2 or not _compatible(shape, seq_shape[:2]):
        raise ValueError(
            f"`{name}` must have shape (batch, seq) matching `{sequence_name}`, "
            f"i.e. {seq_shape[:2]}. Received: {name}.shape={shape}, "
            f"{sequence_name}.shape={seq_shape}"
        )
    return padding_mask


def _compatible(shape_a, shape_b):
    return all(a is None or b is None or a == b for a, b in zip(shape_a, shape_b))


class _TransformerBlock(keras.layers.Layer):
    """Shared constructor, sublayer factories and config of the two blocks."""

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        key_dim=None,
        dropout=0.1,
        activation="relu",
        layer_norm_epsilon=1e-5,
        normalize_first=False,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _common.check_positive_int(num_heads, "num_heads")
        _common.check_positive_int(intermediate_dim, "intermediate_dim")
        _common.check_positive_int(key_dim, "key_dim", allow_none=True)
        _common.check_rate(dropout, "dropout")
        _common.check_bool(normalize_first, "normalize_first")
        if isinstance(layer_norm_epsilon, bool) or not isinstance(
            layer_norm_epsilon, (int, float)
        ) or layer_norm_epsilon <= 0:
            raise ValueError(
                "`layer_norm_epsilon` must be a positive float. "
                f"Received: layer_norm_epsilon={layer_norm_epsilon!r}"
            )
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.key_dim = key_dim
        self.dropout = dropout
        self.activation = keras.activations.get(activation)
        self.layer_norm_epsilon = layer_norm_epsilon
        self.normalize_first = normalize_first
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.seed = seed
        self.supports_masking = True
        self._seed_offset = 0
        self.feedforward = FeedForward(
            intermediate_dim,
            activation=self.activation,
            name="feedforward",
            dtype=self.dtype_policy,
            **self._initializers(),
        )
        self.feedforward_dropout = self._dropout("feedforward_dropout")
        self.feedforward_layer_norm = self._layer_norm("feedforward_layer_norm")

    def _initializers(self):
        return {
            "kernel_initializer": keras.initializers.get(
                keras.initializers.serialize(self.kernel_initializer)
            ),
            "bias_initializer": keras.initializers.get(
                keras.initializers.serialize(self.bias_initializer)
            ),
        }

    def _next_seed(self):
        # Each dropout gets its own seed, so their masks are not identical.
        self._seed_offset += 1
        return None if self.seed is None else self.seed + self._seed_offset

    def _dropout(self, name):
        return keras.layers.Dropout(
            self.dropout, seed=self._next_seed(), name=name, dtype=self.dtype_policy
        )

    def _layer_norm(self, name):
        return keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name=name, dtype=self.dtype_policy
        )

    def _attention(self, features, name):
        key_dim = self.key_dim
        if key_dim is None:
            if features % self.num_heads:
                raise ValueError(
                    f"With key_dim=None the features ({features}) must be divisible "
                    f"by num_heads={self.num_heads}; pass `key_dim` explicitly "
                    "otherwise."
                )
            key_dim = features // self.num_heads
        return MultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=key_dim,
            dropout=self.dropout,
            name=name,
            dtype=self.dtype_policy,
            seed=self._next_seed(),
            **self._initializers(),
        )

    def _residual(self, x, sublayer, layer_norm, dropout, training):
        """`LayerNorm(x + Dropout(sublayer(x)))` (paper), or with `normalize_first`
        `x + Dropout(sublayer(LayerNorm(x)))` (pre-norm, easier to train deep)."""
        residual = x
        if self.normalize_first:
            x = layer_norm(x)
        x = dropout(sublayer(x), training=training)
        x = x + residual
        if not self.normalize_first:
            x = layer_norm(x)
        return x

    def _build_feedforward(self, shape):
        for layer_norm in self._layer_norms():
            layer_norm.build(shape)
        self.feedforward.build(shape)

    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "key_dim": self.key_dim,
                "dropout": self.dropout,
                "activation": keras.activations.serialize(self.activation),
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "normalize_first": self.normalize_first,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "seed": self.seed,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_attention")
class TransformerEncoder(_TransformerBlock):
    """One encoder block of "Attention Is All You Need": self-attention, then FFN.

    Post-norm (the paper, `normalize_first=False`):
    `x = LayerNorm(x + Dropout(MHA(x, x)))`, `y = LayerNorm(x + Dropout(FFN(x)))`.
    Pre-norm (`normalize_first=True`):
    `x = x + Dropout(MHA(LN(x), LN(x)))`, `y = x + Dropout(FFN(LN(x)))`; a stack
    of pre-norm blocks is usually followed by one final `LayerNormalization`.

    Sublayers: `self_attention` (`MultiHeadAttention`), `self_attention_dropout`,
    `self_attention_layer_norm`, `feedforward` (:class:`FeedForward`),
    `feedforward_dropout`, `feedforward_layer_norm`. With `d` features,
    `h = num_heads`, `k = key_dim`, `f = intermediate_dim` the block has
    `4 d h k + 3 h k + d` (attention) `+ 2 d f + f + d` (FFN) `+ 4 d` (two
    LayerNorms) parameters.

    Args:
        num_heads: positive int, number of attention heads.
        intermediate_dim: positive int, hidden size of the FFN.
        key_dim: size of each head; default `features // num_heads`.
        dropout: float in `[0, 1)`, used on the attention probabilities and on each
            sublayer's output before the residual addition (the paper's `P_drop`).
        activation: FFN activation.
        layer_norm_epsilon: positive float.
        normalize_first: pre-norm if `True`, post-norm (the paper) if `False`.
        kernel_initializer, bias_initializer: for every `Dense` inside.
        seed: int, seed for the dropouts.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `(batch, seq, features)`.
        padding_mask: boolean `(batch, seq)`, `True` for real tokens.
        attention_mask: boolean `(batch, seq, seq)`, `True` = may attend.
        training: whether dropout is active.
        mask: the Keras mask of `inputs`, filled in by Keras; combined with
            `padding_mask`. Padded positions are never attended.

    Returns:
        `(batch, seq, features)`, carrying the input's Keras mask.

    Example:
    >>> import numpy as np
    >>> encoder = TransformerEncoder(num_heads=2, intermediate_dim=32)
    >>> encoder(np.zeros((2, 5, 8), "float32")).shape
    TensorShape([2, 5, 8])
    """

    def __init__(self, num_heads, intermediate_dim, **kwargs):
        super().__init__(num_heads, intermediate_dim, **kwargs)
        self.self_attention = None
        self.self_attention_dropout = self._dropout("self_attention_dropout")
        self.self_attention_layer_norm = self._layer_norm("self_attention_layer_norm")

    def _layer_norms(self):
        return (self.self_attention_layer_norm, self.feedforward_layer_norm)

    def build(self, inputs_shape):
        _check_sequence(inputs_shape, "inputs")
        self.self_attention = self._attention(inputs_shape[-1], "self_attention")
        self.self_attention.build(inputs_shape, inputs_shape)
        self._build_feedforward(inputs_shape)
        self.built = True

    def call(
        self,
        inputs,
        padding_mask=None,
        attention_mask=None,
        training=None,
        mask=None,
        inputs_mask=None,
    ):
        # Keras fills `mask` when `inputs` is the only tensor argument and
        # `inputs_mask` when more tensors are passed.
        padding_mask = masks.combine_masks(
            _check_padding_mask(padding_mask, inputs, "padding_mask", "inputs"),
            mask if mask is not None else inputs_mask,
        )
        seq_len = ops.shape(inputs)[1]
        # Padded keys are never attended; padded queries attend nothing (their
        # attention output is zero, and the output mask marks them).
        attention_mask = masks.merge_attention_masks(
            query_mask=padding_mask,
            value_mask=padding_mask,
            attention_mask=attention_mask,
            q_len=seq_len,
            kv_len=seq_len,
        )

        def self_attention(x):
            return self.self_attention(
                x, x, attention_mask=attention_mask, training=training
            )

        x = self._residual(
            inputs, self_attention, self.self_attention_layer_norm,
            self.self_attention_dropout, training,
        )
        return self._residual(
            x, lambda y: self.feedforward(y, training=training),
            self.feedforward_layer_norm, self.feedforward_dropout, training,
        )

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape)


@keras.saving.register_keras_serializable(package="keras_attention")
class TransformerDecoder(_TransformerBlock):
    """One decoder block: causal self-attention, optional cross-attention, then FFN.

    Post-norm (the paper):
    `x = LN(x + Dropout(CausalMHA(x, x)))`,
    `x = LN(x + Dropout(MHA(x, encoder_sequence)))` (only with `encoder_sequence`),
    `y = LN(x + Dropout(FFN(x)))`. `normalize_first=True` moves each LayerNorm to
    the sublayer's input, as in :class:`TransformerEncoder`.

    Without `encoder_sequence` the block is a GPT-style decoder (no cross-attention
    weights are created). The cross-attention sublayers are created by `build` only
    when it receives an `encoder_sequence` shape, i.e. when the layer is first
    called with one; a decoder built one way cannot be called the other way.

    Incremental decoding: pass a `self_attention_cache` (from
    :meth:`get_initial_cache`) and `cache_index`; the new token(s) are written in
    the cache at `cache_index` and attend causally to everything before them, so
    each step costs one position instead of the whole prefix. Cross-attention is
    recomputed from `encoder_sequence` at each step.

    Sublayers: `self_attention`, `self_attention_dropout`,
    `self_attention_layer_norm`, `cross_attention`, `cross_attention_dropout`,
    `cross_attention_layer_norm` (the last three `None` without cross-attention),
    `feedforward`, `feedforward_dropout`, `feedforward_layer_norm`. Parameters, with
    `d` decoder and `e` encoder features: `4 d h k + 3 h k + d` (self-attention)
    `+ 2 d h k + 2 e h k + 3 h k + d + 2 d` (cross-attention and its LayerNorm)
    `+ 2 d f + f + d + 4 d` (FFN and two LayerNorms).

    Args:
        Same as :class:`TransformerEncoder`.

    Call arguments:
        decoder_sequence: `(batch, seq, features)`.
        encoder_sequence: optional `(batch, enc_seq, enc_features)`.
        decoder_padding_mask: boolean `(batch, seq)`, `True` for real tokens; with a
            cache, `(batch, max_length)` over the cache positions.
        encoder_padding_mask: boolean `(batch, enc_seq)`.
        self_attention_cache: optional cache tensor of the self-attention,
            `(batch, max_length, num_heads * 2 * key_dim)`.
        cache_index: int or scalar int tensor, where the new tokens go in the cache
            (required with `self_attention_cache`).
        training: whether dropout is active.
        decoder_sequence_mask, encoder_sequence_mask (or `mask` when
            `decoder_sequence` is the only tensor): Keras masks, filled in by Keras
            and combined with the padding masks.

    Returns:
        `(batch, seq, features)` carrying the decoder's Keras mask, or with
        `self_attention_cache` the pair `(outputs, new_cache)`.

    Example:
    >>> import numpy as np
    >>> decoder = TransformerDecoder(num_heads=2, intermediate_dim=32)
    >>> target, source = np.zeros((2, 4, 8), "float32"), np.zeros((2, 6, 8), "float32")
    >>> decoder(target, source).shape
    TensorShape([2, 4, 8])
    """

    def __init__(self, num_heads, intermediate_dim, **kwargs):
        super().__init__(num_heads, intermediate_dim, **kwargs)
        self.self_attention = None
        self.self_attention_dropout = self._dropout("self_attention_dropout")
        self.self_attention_layer_norm = self._layer_norm("self_attention_layer_norm")
        self.cross_attention = None
        self.cross_attention_dropout = None
        self.cross_attention_layer_norm = None

    def _layer_norms(self):
        norms = (self.self_attention_layer_norm, self.feedforward_layer_norm)
        if self.cross_attention_layer_norm is not None:
            norms += (self.cross_attention_layer_norm,)
        return norms

    def build(self, decoder_sequence_shape, encoder_sequence_shape=None):
        _check_sequence(decoder_sequence_shape, "decoder_sequence")
        features = decoder_sequence_shape[-1]
        self.self_attention = self._attention(features, "self_attention")
        self.self_attention.build(decoder_sequence_shape, decoder_sequence_shape)
        if encoder_sequence_shape is not None:
            _check_sequence(encoder_sequence_shape, "encoder_sequence")
            self.cross_attention = self._attention(features, "cross_attention")
            self.cross_attention.build(decoder_sequence_shape, encoder_sequence_shape)
            self.cross_attention_dropout = self._dropout("cross_attention_dropout")
            self.cross_attention_layer_norm = self._layer_norm(
                "cross_attention_layer_norm"
            )
        self._build_feedforward(decoder_sequence_shape)
        self.built = True

    def get_initial_cache(self, batch_size, max_length, dtype=None):
        """A zero self-attention cache for incremental decoding (layer must be built)."""
        if self.self_attention is None:
            raise ValueError(
                "The decoder must be built (called once) before `get_initial_cache`."
            )
        return self.self_attention.get_initial_cache(batch_size, max_length, dtype)

    def call(
        self,
        decoder_sequence,
        encoder_sequence=None,
        decoder_padding_mask=None,
        encoder_padding_mask=None,
        self_attention_cache=None,
        cache_index=None,
        training=None,
        mask=None,
        decoder_sequence_mask=None,
        encoder_sequence_mask=None,
    ):
        self._check_call(encoder_sequence, self_attention_cache, cache_index)
        use_cache = self_attention_cache is not None
        dec_len = ops.shape(decoder_sequence)[1]
        decoder_mask = mask if decoder_sequence_mask is None else decoder_sequence_mask
        if use_cache:
            self_mask = self._cached_self_attention_mask(
                decoder_padding_mask, decoder_mask, self_attention_cache, dec_len
            )
        else:
            decoder_padding_mask = masks.combine_masks(
                _check_padding_mask(
                    decoder_padding_mask, decoder_sequence, "decoder_padding_mask",
                    "decoder_sequence",
                ),
                decoder_mask,
            )
            self_mask = masks.merge_attention_masks(
                query_mask=decoder_padding_mask,
                value_mask=decoder_padding_mask,
                use_causal_mask=True,
                q_len=dec_len,
                kv_len=dec_len,
            )

        new_cache = []

        def self_attention(x):
            if not use_cache:
                return self.self_attention(
                    x, x, attention_mask=self_mask, training=training
                )
            output, cache = self.self_attention(
                x, x, attention_mask=self_mask, cache=self_attention_cache,
                cache_index=cache_index, training=training,
            )
            new_cache.append(cache)
            return output

        x = self._residual(
            decoder_sequence, self_attention, self.self_attention_layer_norm,
            self.self_attention_dropout, training,
        )
        if encoder_sequence is not None:
            encoder_padding_mask = masks.combine_masks(
                _check_padding_mask(
                    encoder_padding_mask, encoder_sequence, "encoder_padding_mask",
                    "encoder_sequence",
                ),
                encoder_sequence_mask,
            )
            cross_mask = masks.merge_attention_masks(
                value_mask=encoder_padding_mask,
                q_len=dec_len,
                kv_len=ops.shape(encoder_sequence)[1],
            )

            def cross_attention(y):
                return self.cross_attention(
                    y, encoder_sequence, attention_mask=cross_mask, training=training
                )

            x = self._residual(
                x, cross_attention, self.cross_attention_layer_norm,
                self.cross_attention_dropout, training,
            )
        x = self._residual(
            x, lambda y: self.feedforward(y, training=training),
            self.feedforward_layer_norm, self.feedforward_dropout, training,
        )
        return (x, new_cache[0]) if use_cache else x

    def _check_call(self, encoder_sequence, cache, cache_index):
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
                "`cache_index` is required with `self_attention_cache`. "
                "Received: cache_index=None"
            )
        if cache is None and cache_index is not None:
            raise ValueError(
                "`cache_index` is only used with `self_attention_cache`. "
                f"Received: cache_index={cache_index!r}, self_attention_cache=None"
            )

    def _cached_self_attention_mask(self, padding_mask, query_mask, cache, dec_len):
        """With a cache, the keys are the cache's `max_length` slots; the attention
        layer adds the causal part (new tokens see slots up to their own)."""
        max_length = ops.shape(cache)[1]
        if padding_mask is not None:
            padding_mask = masks.validate_mask(padding_mask, "decoder_padding_mask")
            shape = tuple(padding_mask.shape)
            if len(shape) != 2 or not _compatible(shape, (cache.shape[0], cache.shape[1])):
                raise ValueError(
                    "With `self_attention_cache`, `decoder_padding_mask` must have "
                    "shape (batch, max_length) over the cache positions, i.e. "
                    f"{tuple(cache.shape[:2])}. Received: "
                    f"decoder_padding_mask.shape={shape}, "
                    f"self_attention_cache.shape={tuple(cache.shape)}"
                )
        return masks.merge_attention_masks(
            query_mask=query_mask,
            value_mask=padding_mask,
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

"""`_TransformerBlock`: the constructor, sublayer factories, residual step and checks
shared by `TransformerEncoder` and `TransformerDecoder`.

Each block is "attention, then a position-wise feed-forward network", with a residual
connection and layer normalization around every sublayer. The attention is this
package's `MultiHeadAttention`; the masks of every kind are merged into one boolean
mask by `keras_attention.masks.merge_attention_masks` before it is handed over.
"""

import keras

from keras_attention import _validation, masks
from keras_attention.layers import _common
from keras_attention.layers._layer_normalization import LayerNormalization
from keras_attention.layers.feed_forward import (
    FeedForward,
    resolve_activation,
    serialize_activation,
)
from keras_attention.layers.multi_head_attention import MultiHeadAttention
from keras_attention.layers.rms_norm import RMSNorm
from keras_attention.layers.rotary_embedding import RotaryEmbedding

_NORMALIZATIONS = ("layer_norm", "rms_norm")


def _padding_mask(padding_mask, keras_mask, sequence, name, sequence_name):
    """The padding of `sequence`: its `padding_mask` (checked) combined with its Keras
    mask (either may be None)."""
    return masks.combine_masks(
        _check_padding_mask(padding_mask, sequence, name, sequence_name), keras_mask
    )


def _check_padding_mask(padding_mask, sequence, name, sequence_name):
    """A padding mask must be `(batch, seq)` for its sequence; say which one if not."""
    if padding_mask is None:
        return None
    padding_mask = masks.validate_mask(padding_mask, name=name)
    shape, seq_shape = tuple(padding_mask.shape), tuple(sequence.shape)
    if len(shape) != 2 or not _validation.compatible(shape, seq_shape[:2]):
        raise ValueError(
            f"`{name}` must have shape (batch, seq) matching `{sequence_name}`, "
            f"i.e. {seq_shape[:2]}. Received: {name}.shape={shape}, "
            f"{sequence_name}.shape={seq_shape}"
        )
    return padding_mask


class _TransformerBlock(keras.layers.Layer):
    """Shared constructor, sublayer factories and config of the two blocks."""

    def __init__(
        self,
        intermediate_dim,
        num_heads,
        dropout=0.0,
        activation="relu",
        layer_norm_epsilon=1e-5,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        normalize_first=False,
        key_dim=None,
        seed=None,
        normalization="layer_norm",
        use_bias=True,
        num_key_value_heads=None,
        position_embedding=None,
        sliding_window=None,
        soft_cap=None,
        query_norm=None,
        key_norm=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _validation.check_positive_int(intermediate_dim, "intermediate_dim")
        _validation.check_positive_int(num_heads, "num_heads")
        _validation.check_positive_int(key_dim, "key_dim", allow_none=True)
        _validation.check_rate(dropout, "dropout")
        _validation.check_bool(normalize_first, "normalize_first")
        _validation.check_positive_float(layer_norm_epsilon, "layer_norm_epsilon")
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.key_dim = key_dim
        self.dropout = dropout
        self.activation = resolve_activation(activation)
        self.layer_norm_epsilon = layer_norm_epsilon
        self.normalize_first = normalize_first
        _validation.check_one_of(normalization, "normalization", _NORMALIZATIONS)
        _validation.check_bool(use_bias, "use_bias")
        self.normalization = normalization
        self.use_bias = use_bias
        # Passed to every MultiHeadAttention of the block (validated there).
        self.attention_options = {
            "num_key_value_heads": num_key_value_heads,
            "position_embedding": position_embedding,
            "sliding_window": sliding_window,
            "soft_cap": soft_cap,
            "query_norm": query_norm,
            "key_norm": key_norm,
        }
        self._check_attention_options(num_heads, key_dim)
        # Only the initializers reach the Dense layers inside (as in keras-hub).
        self.projection = _common.ProjectionSettings.from_arguments(locals(), self.dtype_policy)
        self.kernel_initializer = self.projection.kernel_initializer
        self.bias_initializer = self.projection.bias_initializer
        self.seed = seed
        self.supports_masking = True
        self._seed_offset = 0
        self.feedforward = FeedForward(
            intermediate_dim,
            activation=self.activation,
            use_bias=use_bias,
            name="feedforward",
            dtype=self.dtype_policy,
            **self.projection.dense_kwargs(_common.INITIALIZER_KEYS),
        )
        self.feedforward_dropout = self._dropout("feedforward_dropout")
        self.feedforward_layer_norm = self._layer_norm("feedforward_layer_norm")

    def _next_seed(self):
        # Each dropout gets its own seed, so their masks are not identical.
        self._seed_offset += 1
        return None if self.seed is None else self.seed + self._seed_offset

    def _dropout(self, name):
        return keras.layers.Dropout(
            self.dropout, seed=self._next_seed(), name=name, dtype=self.dtype_policy
        )

    def _layer_norm(self, name):
        if self.normalization == "rms_norm":
            return RMSNorm(epsilon=self.layer_norm_epsilon, name=name, dtype=self.dtype_policy)
        return LayerNormalization(
            epsilon=self.layer_norm_epsilon,
            center=self.use_bias,
            name=name,
            dtype=self.dtype_policy,
        )

    def _check_attention_options(self, num_heads, key_dim):
        """Fail in the constructor, not at the first call, on a bad attention option."""
        options = self.attention_options
        kv_heads = options["num_key_value_heads"]
        _validation.check_positive_int(kv_heads, "num_key_value_heads", allow_none=True)
        if kv_heads is not None and num_heads % kv_heads:
            raise ValueError(
                "`num_heads` must be divisible by `num_key_value_heads`. Received: "
                f"num_heads={num_heads}, num_key_value_heads={kv_heads}"
            )
        _validation.check_positive_int(options["sliding_window"], "sliding_window", allow_none=True)
        if options["soft_cap"] is not None:
            _validation.check_positive_float(options["soft_cap"], "soft_cap")
        for name in ("query_norm", "key_norm"):
            _validation.check_one_of(options[name], name, (None, "rms_norm", "layer_norm"))
        position = options["position_embedding"]
        if not (position in (None, "rotary") or isinstance(position, (dict, RotaryEmbedding))):
            raise ValueError(
                "`position_embedding` must be None, 'rotary' or a RotaryEmbedding "
                f"instance. Received: position_embedding={position!r}"
            )

    def _attention_options(self, self_attention):
        options = dict(self.attention_options)
        if isinstance(options["position_embedding"], keras.layers.Layer):
            # each attention gets its own copy (it has no weights)
            layer = options["position_embedding"]
            options["position_embedding"] = layer.__class__.from_config(layer.get_config())
        if not self_attention:
            # positions and windows are those of the decoder's own sequence
            options.update(position_embedding=None, sliding_window=None)
        return options

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
            use_bias=self.use_bias,
            **self._attention_options(name == "self_attention"),
            **self.projection.dense_kwargs(_common.INITIALIZER_KEYS),
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

    def _attention_sublayer(self, attention, scores, caches, value=None, **call_arguments):
        """The sublayer `x -> attention(x, value, **call_arguments)` for `_residual`
        (self-attention, `x` as value, when `value` is None). It returns the output;
        the attention scores and the new cache, when the call asks for them, go to
        the lists `scores` and `caches`."""
        return_scores = call_arguments.get("return_attention_scores", False)
        with_cache = call_arguments.get("cache") is not None

        def sublayer(x):
            outputs = attention(x, x if value is None else value, **call_arguments)
            if not (return_scores or with_cache):
                return outputs
            if return_scores:
                scores.append(outputs[1])
            if with_cache:
                caches.append(outputs[-1])
            return outputs[0]

        return sublayer

    def _attention_residual(self, x, name, scores, caches, training, **call_arguments):
        """The attention sublayer `name` (`"self_attention"`, `"cross_attention"`) of
        `_attention_sublayer` with its residual connection and normalization."""
        attention = getattr(self, name)
        sublayer = self._attention_sublayer(
            attention, scores, caches, training=training, **call_arguments
        )
        layer_norm, dropout = getattr(self, f"{name}_layer_norm"), getattr(self, f"{name}_dropout")
        return self._residual(x, sublayer, layer_norm, dropout, training)

    def _feedforward_residual(self, x, training):
        """The feed-forward sublayer with its residual connection and normalization."""
        return self._residual(
            x,
            lambda y: self.feedforward(y, training=training),
            self.feedforward_layer_norm,
            self.feedforward_dropout,
            training,
        )

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
                "intermediate_dim": self.intermediate_dim,
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "dropout": self.dropout,
                "activation": serialize_activation(self.activation),
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "normalize_first": self.normalize_first,
                "seed": self.seed,
                "normalization": self.normalization,
                "use_bias": self.use_bias,
                **{
                    key: value
                    if value is None or isinstance(value, (int, float, str))
                    else keras.saving.serialize_keras_object(value)
                    for key, value in self.attention_options.items()
                },
                **self.projection.get_config(_common.INITIALIZER_KEYS),
            }
        )
        return config

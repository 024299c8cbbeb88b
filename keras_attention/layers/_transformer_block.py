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
from keras_attention.layers.feed_forward import FeedForward
from keras_attention.layers.multi_head_attention import MultiHeadAttention


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
        _validation.check_positive_int(num_heads, "num_heads")
        _validation.check_positive_int(intermediate_dim, "intermediate_dim")
        _validation.check_positive_int(key_dim, "key_dim", allow_none=True)
        _validation.check_rate(dropout, "dropout")
        _validation.check_bool(normalize_first, "normalize_first")
        _validation.check_positive_float(layer_norm_epsilon, "layer_norm_epsilon")
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.key_dim = key_dim
        self.dropout = dropout
        self.activation = keras.activations.get(activation)
        self.layer_norm_epsilon = layer_norm_epsilon
        self.normalize_first = normalize_first
        # Only the initializers reach the Dense layers inside (as in keras-hub).
        self.projection = _common.ProjectionSettings(
            dtype=self.dtype_policy,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
        )
        self.kernel_initializer = self.projection.kernel_initializer
        self.bias_initializer = self.projection.bias_initializer
        self.seed = seed
        self.supports_masking = True
        self._seed_offset = 0
        self.feedforward = FeedForward(
            intermediate_dim,
            activation=self.activation,
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
                "seed": self.seed,
                **self.projection.get_config(_common.INITIALIZER_KEYS),
            }
        )
        return config

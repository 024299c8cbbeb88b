"""Position information for attention: sinusoidal and learned encodings, token embeddings.

Attention is permutation-equivariant: without positions, "dog bites man" and "man
bites dog" give the same set of outputs. The layers here add a position signal to a
`(batch, seq, features)` sequence. Both position layers return `inputs + positions`
(keras-hub's `PositionEmbedding` returns the positions alone), so they compose in a
`Sequential` and keep the input's Keras mask.
"""

import math

import keras
from keras import ops

from keras_attention import _validation, backend
from keras_attention.layers._common import NothingToQuantize

_POSITION_KINDS = ("learned", "sinusoidal", "none")


@keras.saving.register_keras_serializable(package="keras_attention")
class SinusoidalPositionEncoding(NothingToQuantize, keras.layers.Layer):
    """Adds the fixed sin/cos position encoding of "Attention Is All You Need".

    `PE(pos, 2i) = sin(pos / max_wavelength^(2i / d))` and
    `PE(pos, 2i + 1) = cos(pos / max_wavelength^(2i / d))`, with `d` the number of
    features. Each pair of features is a rotation at its own frequency, so
    `PE(pos + k)` is a linear function of `PE(pos)`: relative offsets are easy to
    attend to, and any sequence length works (no weights, nothing to outgrow).

    Args:
        max_wavelength: positive number, the longest wavelength (10000 in the paper).
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `(batch, seq, features)`.
        start_index: int or scalar int tensor, position of the first step (for
            incremental decoding, where one step is fed at a time). Default 0.

    Returns:
        `inputs + PE[start_index : start_index + seq]`, same shape as `inputs`,
        carrying the input's Keras mask.

    Example:
    >>> import numpy as np
    >>> x = np.zeros((2, 5, 8), "float32")
    >>> tuple(SinusoidalPositionEncoding()(x).shape)
    (2, 5, 8)
    """

    def __init__(self, max_wavelength=10000, **kwargs):
        super().__init__(**kwargs)
        if (
            isinstance(max_wavelength, bool)
            or not isinstance(max_wavelength, (int, float))
            or max_wavelength <= 1
        ):
            raise ValueError(
                "`max_wavelength` must be a number greater than 1. "
                f"Received: max_wavelength={max_wavelength!r}"
            )
        self.max_wavelength = max_wavelength
        self.supports_masking = True

    def build(self, inputs_shape):
        _validation.check_sequence(inputs_shape, "inputs")
        self.built = True

    def encoding(self, seq_len, features, start_index=0):
        """The `(seq_len, features)` encoding for positions `start_index + [0, seq_len)`,
        computed in float32 (positions up to thousands need the precision)."""
        positions = ops.cast(
            backend.positions(seq_len) + ops.cast(start_index, "int32"),
            "float32",
        )
        dims = backend.positions(features)
        # Features 2i and 2i + 1 share the frequency max_wavelength^(-2i / d).
        exponent = ops.cast(2 * (dims // 2), "float32") / float(features)
        inverse_frequency = ops.power(float(self.max_wavelength), -exponent)
        angles = ops.expand_dims(positions, 1) * ops.expand_dims(inverse_frequency, 0)
        is_even = ops.expand_dims(ops.equal(dims % 2, 0), 0)
        return ops.where(is_even, ops.sin(angles), ops.cos(angles))

    def call(self, inputs, start_index=0):
        start_index = _validation.check_index(start_index, "start_index")
        shape = ops.shape(inputs)
        encoding = self.encoding(shape[1], inputs.shape[-1], start_index)
        return inputs + ops.cast(encoding, inputs.dtype)

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config["max_wavelength"] = self.max_wavelength
        return config


@keras.saving.register_keras_serializable(package="keras_attention")
class PositionEmbedding(NothingToQuantize, keras.layers.Layer):
    """Adds a learned embedding of each position (as in BERT and GPT-2).

    One trainable `(sequence_length, features)` table; position `p` adds row `p`.
    `quantize("int8")` (through `model.quantize`) stores it as int8 rows.
    Unlike :class:`SinusoidalPositionEncoding`, sequences longer than
    `sequence_length` cannot be encoded.

    Args:
        sequence_length: positive int, the longest sequence the layer accepts.
        initializer: initializer of the table (default `"glorot_uniform"`).
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `(batch, seq, features)` with `seq <= sequence_length`.
        start_index: int or scalar int tensor, position of the first step (for
            incremental decoding). Default 0.

    Returns:
        `inputs + table[start_index : start_index + seq]`, same shape as `inputs`,
        carrying the input's Keras mask.

    Example:
    >>> import numpy as np
    >>> layer = PositionEmbedding(sequence_length=16)
    >>> tuple(layer(np.zeros((2, 5, 8), "float32")).shape)
    (2, 5, 8)
    """

    def __init__(self, sequence_length, initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        _validation.check_positive_int(sequence_length, "sequence_length")
        self.sequence_length = sequence_length
        self.initializer = keras.initializers.get(initializer)
        self.supports_masking = True

    def build(self, inputs_shape):
        _validation.check_sequence(inputs_shape, "inputs")
        if inputs_shape[1] is not None and inputs_shape[1] > self.sequence_length:
            raise ValueError(
                f"`inputs` has {inputs_shape[1]} steps but the layer was built for "
                f"at most sequence_length={self.sequence_length}. "
                f"Received: inputs.shape={tuple(inputs_shape)}"
            )
        self.position_embeddings = self.add_weight(
            name="embeddings",
            shape=(self.sequence_length, inputs_shape[-1]),
            initializer=self.initializer,
            trainable=True,
        )
        self.built = True

    def call(self, inputs, start_index=0):
        start_index = _validation.check_index(start_index, "start_index")
        seq_len = ops.shape(inputs)[1]
        if isinstance(inputs.shape[1], int) and isinstance(start_index, int):
            if start_index + inputs.shape[1] > self.sequence_length:
                raise ValueError(
                    f"Positions up to {start_index + inputs.shape[1] - 1} are needed "
                    f"but the layer has sequence_length={self.sequence_length}. "
                    f"Received: inputs.shape={tuple(inputs.shape)}, "
                    f"start_index={start_index}"
                )
        # A gather, not `ops.slice`: slicing `seq_len` rows needs `seq_len <= table
        # size` proven while tracing, which a symbolic length (JAX export) cannot be.
        positions = backend.positions(seq_len) + ops.cast(start_index, "int32")
        rows = ops.take(ops.convert_to_tensor(self.position_embeddings), positions, axis=0)
        if self.quantization_mode == "int8":  # int8 rows, one scale a position
            scale = ops.take(self.position_embeddings_scale, positions, axis=0)
            rows = ops.divide(ops.cast(rows, "float32"), ops.expand_dims(scale, -1))
        return inputs + ops.cast(rows, inputs.dtype)

    def quantize(self, mode=None, type_check=True, config=None):
        """`"int8"`: the table as int8 rows with one float32 scale a position
        (`round(row * 127 / max|row|)`, Keras' int8 `Embedding`); in the other modes
        it stays float."""
        del type_check, config
        if mode != "int8":
            return
        values, scale = keras.quantizers.abs_max_quantize(
            self.position_embeddings, axis=-1, to_numpy=True
        )
        shape = tuple(self.position_embeddings.shape)
        del self.position_embeddings
        self.position_embeddings = self.add_weight(
            name="embeddings", shape=shape, initializer="zeros", dtype="int8", trainable=False
        )
        self.position_embeddings_scale = self.add_weight(
            name="embeddings_scale", shape=shape[:1], initializer="ones", trainable=False
        )
        self.position_embeddings.assign(values)
        self.position_embeddings_scale.assign(ops.squeeze(scale, -1))
        self._is_quantized = True
        self.dtype_policy = keras.dtype_policies.get(f"int8_from_{self.dtype_policy.name}")

    def _int8_call(self, inputs, start_index=0):
        return self.call(inputs, start_index=start_index)

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "initializer": keras.initializers.serialize(self.initializer),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_attention")
class TokenAndPositionEmbedding(keras.layers.Layer):
    """Token embedding plus position encoding, with an optional tied output projection.

    `x = E[tokens] * (sqrt(embedding_dim) if scale_by_sqrt_dim else 1) + P`, with `E`
    the `(vocabulary_size, embedding_dim)` token table (a
    `keras.layers.ReversibleEmbedding`, held as `token_embedding`) and `P` a
    :class:`PositionEmbedding` or :class:`SinusoidalPositionEncoding` (held as
    `position_embedding`). Called with `reverse=True` on a `(batch, seq,
    embedding_dim)` tensor it returns the logits `x E^T`: the pre-softmax projection
    shares the token table, as in "Attention Is All You Need" (section 3.4). Because
    the same layer holds the one table, a model that calls it both ways saves and
    reloads its tying for free.

    Args:
        vocabulary_size: positive int, number of token ids.
        sequence_length: positive int, the longest sequence; required for
            `position="learned"`, optional (`None`) for `"sinusoidal"`.
        embedding_dim: positive int, size of each embedding.
        mask_zero: if `True`, token id 0 is padding: the output carries the Keras
            mask `tokens != 0`.
        position: `"learned"`, `"sinusoidal"`, or `"none"` (token embeddings only,
            for models whose attention encodes positions, e.g. with RoPE).
        scale_by_sqrt_dim: multiply token embeddings by `sqrt(embedding_dim)` (the
            paper does, so that embeddings initialised small are not drowned by
            the unit-amplitude sinusoidal positions).
        max_wavelength: for `position="sinusoidal"`.
        embeddings_initializer: initializer of the token table.
        position_initializer: initializer of the learned position table.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: integer tokens `(batch, seq)`, or with `reverse=True` hidden states
            `(batch, seq, embedding_dim)`.
        start_index: position of the first token (incremental decoding). Default 0.
        reverse: if `True`, return the tied logits `inputs @ E^T`.

    Returns:
        `(batch, seq, embedding_dim)` embeddings (carrying the mask `tokens != 0`
        when `mask_zero=True`), or with `reverse=True` logits
        `(batch, seq, vocabulary_size)` carrying the input's Keras mask.

    Example:
    >>> import numpy as np
    >>> layer = TokenAndPositionEmbedding(100, 16, 8, mask_zero=True)
    >>> x = layer(np.array([[5, 7, 0]]))
    >>> tuple(x.shape), tuple(layer(x, reverse=True).shape)
    ((1, 3, 8), (1, 3, 100))
    """

    def __init__(
        self,
        vocabulary_size,
        sequence_length,
        embedding_dim,
        mask_zero=False,
        position="learned",
        scale_by_sqrt_dim=False,
        max_wavelength=10000,
        embeddings_initializer="uniform",
        position_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        _validation.check_positive_int(vocabulary_size, "vocabulary_size")
        _validation.check_positive_int(embedding_dim, "embedding_dim")
        _validation.check_bool(mask_zero, "mask_zero")
        _validation.check_bool(scale_by_sqrt_dim, "scale_by_sqrt_dim")
        _validation.check_one_of(position, "position", _POSITION_KINDS)
        _validation.check_positive_int(
            sequence_length, "sequence_length", allow_none=position != "learned"
        )
        self.vocabulary_size = vocabulary_size
        self.sequence_length = sequence_length
        self.embedding_dim = embedding_dim
        self.mask_zero = mask_zero
        self.position = position
        self.scale_by_sqrt_dim = scale_by_sqrt_dim
        self.max_wavelength = max_wavelength
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.position_initializer = keras.initializers.get(position_initializer)
        self.supports_masking = True
        self.token_embedding = keras.layers.ReversibleEmbedding(
            vocabulary_size,
            embedding_dim,
            tie_weights=True,
            embeddings_initializer=keras.initializers.get(
                keras.initializers.serialize(self.embeddings_initializer)
            ),
            mask_zero=mask_zero,
            name="token_embedding",
            dtype=self.dtype_policy,
        )
        if position == "learned":
            self.position_embedding = PositionEmbedding(
                sequence_length,
                initializer=keras.initializers.get(
                    keras.initializers.serialize(self.position_initializer)
                ),
                name="position_embedding",
                dtype=self.dtype_policy,
            )
        elif position == "none":
            self.position_embedding = None  # positions come from the attention (RoPE)
        else:
            self.position_embedding = SinusoidalPositionEncoding(
                max_wavelength, name="position_embedding", dtype=self.dtype_policy
            )

    def build(self, inputs_shape):
        # The layer is first built on tokens; a later `reverse=True` call reuses it.
        if len(inputs_shape) == 3:
            tokens_shape = tuple(inputs_shape[:-1])
        else:
            _validation.check_rank(inputs_shape, 2, "inputs", "integer tokens (batch, seq)")
            tokens_shape = tuple(inputs_shape)
        self.token_embedding.build(tokens_shape)
        if self.position_embedding is not None:
            self.position_embedding.build(tokens_shape + (self.embedding_dim,))
        self.built = True

    def call(self, inputs, start_index=0, reverse=False):
        if reverse:
            if len(inputs.shape) != 3 or inputs.shape[-1] != self.embedding_dim:
                raise ValueError(
                    "With reverse=True, `inputs` must be hidden states (batch, seq, "
                    f"embedding_dim={self.embedding_dim}). "
                    f"Received: inputs.shape={tuple(inputs.shape)}"
                )
            return self.token_embedding(inputs, reverse=True)
        if len(inputs.shape) != 2:
            raise ValueError(
                "`inputs` must be integer tokens of shape (batch, seq). "
                f"Received: inputs.shape={tuple(inputs.shape)}"
            )
        x = self.token_embedding(inputs)
        if self.scale_by_sqrt_dim:
            x = x * ops.cast(math.sqrt(self.embedding_dim), x.dtype)
        if self.position_embedding is None:
            return x
        return self.position_embedding(x, start_index=start_index)

    def compute_mask(self, inputs, mask=None):
        # Tokens: the padding mask; hidden states (reverse=True): pass the mask on.
        if len(inputs.shape) == 3:
            return mask
        if not self.mask_zero:
            return None
        return ops.not_equal(inputs, 0)

    def compute_output_shape(self, inputs_shape, reverse=False):
        if reverse:
            return tuple(inputs_shape[:-1]) + (self.vocabulary_size,)
        return tuple(inputs_shape) + (self.embedding_dim,)

    def compute_output_spec(self, inputs, start_index=0, reverse=False):
        return keras.KerasTensor(
            self.compute_output_shape(inputs.shape, reverse=reverse),
            dtype=self.compute_dtype,
        )

    @property
    def embeddings(self):
        """The `(vocabulary_size, embedding_dim)` token table (tied to the logits)."""
        return self.token_embedding.embeddings

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "sequence_length": self.sequence_length,
                "embedding_dim": self.embedding_dim,
                "mask_zero": self.mask_zero,
                "position": self.position,
                "scale_by_sqrt_dim": self.scale_by_sqrt_dim,
                "max_wavelength": self.max_wavelength,
                "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
                "position_initializer": keras.initializers.serialize(self.position_initializer),
            }
        )
        return config

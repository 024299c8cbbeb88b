"""`_TransformerBlock`: the constructor, sublayer factories, residual step and checks
shared by `TransformerEncoder` and `TransformerDecoder`.

Each block is "attention, then a position-wise feed-forward network", with a residual
connection and layer normalization around every sublayer (after it, before it, or
both: `normalize_first`, `post_norm`), or the two sublayers side by side on the same
input (`parallel_residual`). The attention is this package's `MultiHeadAttention`; the
masks of every kind are merged into one boolean mask by
`keras_attention.masks.merge_attention_masks` before it is handed over.
"""

import keras

from keras_attention import _validation, masks
from keras_attention.layers import _attention_options, _common
from keras_attention.layers._layer_normalization import LayerNormalization
from keras_attention.layers.feed_forward import (
    FeedForward,
    resolve_activation,
    serialize_activation,
)
from keras_attention.layers.mixture_of_experts import MixtureOfExperts
from keras_attention.layers.multi_head_attention import MultiHeadAttention
from keras_attention.layers.rms_norm import RMSNorm
from keras_attention.layers.rotary_embedding import RotaryEmbedding

_NORMALIZATIONS = ("layer_norm", "rms_norm")
# The parts `use_bias` may name: the attention projections, the feed-forward's two (or
# three) Dense layers, and the LayerNorms' offsets (`center`).
BIAS_PARTS = (*_attention_options.BIAS_PARTS, "feedforward", "norm")
# A sublayer's norms: before or after it (`normalize_first`), and after it (`post_norm`).
_NORM_KINDS = ("layer_norm", "post_norm")


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
        attention_scale=None,
        qk_norm_epsilon=1e-6,
        score_bias=None,
        post_norm=False,
        parallel_residual=False,
        num_experts=None,
        num_experts_per_token=None,
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
        self.use_bias, self._with_bias = _common.bias_parts(use_bias, BIAS_PARTS)
        self.normalization = normalization
        self._check_residual_options(post_norm, parallel_residual)
        self.post_norm = post_norm
        self.parallel_residual = parallel_residual
        self._check_experts(num_experts, num_experts_per_token)
        self.num_experts = num_experts
        self.num_experts_per_token = num_experts_per_token
        # Not copied: blocks given one instance share its weights (T5's one table).
        self.score_bias = _attention_options.score_bias_layer(score_bias, num_heads)
        if isinstance(position_embedding, keras.layers.Layer):
            # A template each attention copies (and builds): kept as its config, so
            # the block holds no unbuilt layer (`model.quantize` refuses those).
            position_embedding = keras.saving.serialize_keras_object(position_embedding)
        # Passed to every MultiHeadAttention of the block (validated there).
        self.attention_options = {
            "num_key_value_heads": num_key_value_heads,
            "position_embedding": position_embedding,
            "sliding_window": sliding_window,
            "soft_cap": soft_cap,
            "query_norm": query_norm,
            "key_norm": key_norm,
            "attention_scale": attention_scale,
            "qk_norm_epsilon": qk_norm_epsilon,
        }
        self._check_attention_options(num_heads, key_dim)
        # Only the initializers reach the Dense layers inside (as in keras-hub).
        self.projection = _common.ProjectionSettings.from_arguments(locals(), self.dtype_policy)
        self.kernel_initializer = self.projection.kernel_initializer
        self.bias_initializer = self.projection.bias_initializer
        self.seed = seed
        self.supports_masking = True
        self._seed_offset = 0
        self.feedforward = self._make_feedforward()
        self.feedforward_dropout = self._dropout("feedforward_dropout")
        self.feedforward_layer_norm = self._layer_norm("feedforward_layer_norm")
        self.feedforward_post_norm = self._post_norm("feedforward_post_norm")
        self.self_attention = None  # a MultiHeadAttention, made in `build`
        self.self_attention_dropout = self._dropout("self_attention_dropout")
        self.self_attention_layer_norm = self._layer_norm("self_attention_layer_norm")
        self.self_attention_post_norm = self._post_norm("self_attention_post_norm")

    def _make_feedforward(self):
        """The feed-forward sublayer, `self.feedforward`: a :class:`FeedForward`, or
        with `num_experts` a :class:`MixtureOfExperts` (same call and shape). A
        subclass may return another layer called as `layer(inputs, training=None)`
        with the input's shape."""
        if self.num_experts is not None:
            return MixtureOfExperts(
                self.num_experts,
                self.num_experts_per_token,
                self.intermediate_dim,
                activation=self.activation,
                kernel_initializer=self.projection.kernel_initializer,
                name="feedforward",
                dtype=self.dtype_policy,
            )
        return FeedForward(
            self.intermediate_dim,
            activation=self.activation,
            use_bias="feedforward" in self._with_bias,
            name="feedforward",
            dtype=self.dtype_policy,
            **self.projection.dense_kwargs(_common.INITIALIZER_KEYS),
        )

    def _check_experts(self, num_experts, num_experts_per_token):
        if (num_experts is None) != (num_experts_per_token is None):
            raise ValueError(
                "`num_experts` and `num_experts_per_token` go together (a mixture of "
                f"experts feed-forward). Received: num_experts={num_experts}, "
                f"num_experts_per_token={num_experts_per_token}"
            )
        if num_experts is not None and "feedforward" in self._with_bias:
            raise ValueError(
                "The experts of a mixture have no biases: `use_bias` must leave out "
                f"'feedforward' with `num_experts`. Received: use_bias={self.use_bias!r}"
            )

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
            center="norm" in self._with_bias,
            name=name,
            dtype=self.dtype_policy,
        )

    def _post_norm(self, name):
        """The norm after a sublayer with `post_norm` (sandwich norms), else None."""
        return self._layer_norm(name) if self.post_norm else None

    def _check_residual_options(self, post_norm, parallel_residual):
        _validation.check_bool(post_norm, "post_norm")
        _validation.check_bool(parallel_residual, "parallel_residual")
        for name, value in (("post_norm", post_norm), ("parallel_residual", parallel_residual)):
            if value and not self.normalize_first:
                raise ValueError(
                    f"`{name}=True` needs pre-norm sublayers (`normalize_first=True`). "
                    f"Received: {name}=True, normalize_first=False"
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
        if options["attention_scale"] is not None:
            _validation.check_positive_float(options["attention_scale"], "attention_scale")
        _validation.check_positive_float(options["qk_norm_epsilon"], "qk_norm_epsilon")
        position = options["position_embedding"]
        if not (position in (None, "rotary") or isinstance(position, (dict, RotaryEmbedding))):
            raise ValueError(
                "`position_embedding` must be None, 'rotary' or a RotaryEmbedding "
                f"instance. Received: position_embedding={position!r}"
            )

    def _attention_options(self, self_attention):
        # (a position embedding is a config: each attention deserializes its own copy)
        options = dict(self.attention_options)
        if self_attention:
            options["score_bias"] = self.score_bias  # the same instance, shared
        else:
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
            use_bias=self.use_bias
            if isinstance(self.use_bias, bool)
            else tuple(part for part in self.use_bias if part in _attention_options.BIAS_PARTS),
            **self._attention_options(name == "self_attention"),
            **self.projection.dense_kwargs(_common.INITIALIZER_KEYS),
        )

    def _residual(self, x, sublayer, name, training):
        """`LayerNorm(x + Dropout(sublayer(x)))` (paper), or with `normalize_first`
        `x + Dropout(sublayer(LayerNorm(x)))` (pre-norm, easier to train deep); the
        norms are the sublayers `{name}_layer_norm` (and `{name}_post_norm`)."""
        if self.normalize_first:
            return x + self._branch(x, sublayer, name, training)
        dropout = getattr(self, f"{name}_dropout")
        return getattr(self, f"{name}_layer_norm")(x + dropout(sublayer(x), training=training))

    def _branch(self, x, sublayer, name, training):
        """The pre-norm residual branch `Dropout(sublayer(LayerNorm(x)))`, followed
        by `{name}_post_norm` with `post_norm` (Gemma 2's sandwich norms)."""
        x = getattr(self, f"{name}_layer_norm")(x)
        x = getattr(self, f"{name}_dropout")(sublayer(x), training=training)
        post_norm = getattr(self, f"{name}_post_norm")
        return x if post_norm is None else post_norm(x)

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
        if self.parallel_residual and name == "self_attention":
            # GPT-NeoX: the feed-forward reads the block's input too, and both
            # branches add to it (`_feedforward_residual` then adds nothing).
            attention_branch = self._branch(x, sublayer, name, training)
            feedforward_branch = self._branch(
                x, lambda y: self.feedforward(y, training=training), "feedforward", training
            )
            return x + attention_branch + feedforward_branch
        return self._residual(x, sublayer, name, training)

    def _feedforward_residual(self, x, training):
        """The feed-forward sublayer with its residual connection and normalization
        (with `parallel_residual`, already added by the self-attention's step)."""
        if self.parallel_residual:
            return x
        return self._residual(
            x, lambda y: self.feedforward(y, training=training), "feedforward", training
        )

    def _layer_norms(self):
        """Every norm of the block (the cross-attention's once built)."""
        names = ("self_attention", "cross_attention", "feedforward")
        norms = [getattr(self, f"{name}_{kind}", None) for name in names for kind in _NORM_KINDS]
        return tuple(norm for norm in norms if norm is not None)

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
                "score_bias": _common.serialize_shared_layer(self.score_bias),
                "post_norm": self.post_norm,
                "parallel_residual": self.parallel_residual,
                "num_experts": self.num_experts,
                "num_experts_per_token": self.num_experts_per_token,
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

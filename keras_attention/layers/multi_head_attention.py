"""`MultiHeadAttention`: self-, cross- and grouped-query attention with a decoding cache."""

import math
import numbers

import keras
from keras import ops

from keras_attention import _validation, masks
from keras_attention import ops as attention_ops
from keras_attention.layers import _common
from keras_attention.layers._layer_normalization import LayerNormalization
from keras_attention.layers.rms_norm import RMSNorm
from keras_attention.layers.rotary_embedding import RotaryEmbedding

# The per-head query/key normalizations (`query_norm`, `key_norm`).
_QK_NORMS = (None, "rms_norm", "layer_norm")


@keras.saving.register_keras_serializable(package="keras_attention")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention: `num_heads` attentions over learned projections, concatenated.

    For each head `h`: `head_h = softmax(Q_h K_h^T / sqrt(key_dim) + mask) V_h`, and
    the output is `concat(head_1, ..., head_H) W_o`. Dividing by `sqrt(key_dim)`
    keeps the softmax out of saturation (see `keras_attention.ops`). The attention
    math is `keras_attention.ops.scaled_dot_product_attention`; masks are merged by
    `keras_attention.masks.merge_attention_masks`.

    The call signature is the one of `keras.layers.MultiHeadAttention`, so one can be
    swapped for the other.

    Kernel layout (for porting weights): four `keras.layers.Dense` sublayers,
    `query_dense` with kernel `(query_features, num_heads * key_dim)`,
    `key_dense` `(key_features, num_key_value_heads * key_dim)`,
    `value_dense` `(value_features, num_key_value_heads * value_dim)` and
    `output_dense` `(num_heads * value_dim, output_dim)`. Head `h` uses the columns
    `h * key_dim:(h + 1) * key_dim` (the projection reshaped to
    `(batch, seq, heads, dim)`), and rows `h * value_dim:(h + 1) * value_dim` of the
    output kernel. A `keras.layers.MultiHeadAttention` kernel of shape
    `(features, heads, dim)` becomes ours with `kernel.reshape(features, heads * dim)`;
    its output kernel `(heads, dim, *output_shape)` with
    `kernel.reshape(heads * dim, -1)`; its biases with `bias.reshape(-1)`. With
    `use_gate`, `gate_dense` has a kernel `(query_features, num_heads * value_dim)`
    (Keras' `gate` kernel `(features, heads, dim)` reshaped the same way).

    Grouped-query attention (GQA; multi-query attention for `num_key_value_heads=1`):
    query heads come in contiguous groups of `num_heads // num_key_value_heads`, and
    group `g` (query heads `g * group:(g + 1) * group`) shares key/value head `g`, as
    in `keras.layers.GroupedQueryAttention`. It equals ordinary multi-head attention
    whose key/value kernels repeat each shared head `group` times.

    Incremental decoding: a cache is ONE tensor of shape
    `(batch, max_length, num_key_value_heads * key_dim + num_key_value_heads * value_dim)`
    holding, per position, the projected keys (the `key_dense` output) followed by the
    projected values (the `value_dense` output), before the head split.
    `get_initial_cache(batch_size, max_length)` returns an empty (zero) one. Called
    with `cache` and `cache_index`, the layer writes the keys/values of the new
    token(s) at positions `[cache_index, cache_index + new_len)` and the new queries
    attend causally to all cached positions `<= cache_index + i`.

    Args:
        num_heads: positive int, number of query heads.
        key_dim: positive int, size of each query/key head.
        value_dim: positive int, size of each value head; defaults to `key_dim`.
        num_key_value_heads: positive int dividing `num_heads`, number of key/value
            heads; defaults to `num_heads` (ordinary multi-head attention).
        dropout: float in `[0, 1)`, dropout on the attention probabilities.
        use_bias: whether the four projections have biases.
        output_dim: positive int, size of the output; defaults to the query's feature
            size.
        output_shape: Keras' name: a positive int (the same as `output_dim`) or a
            tuple of them, the trailing output axes (the output projection is one
            `Dense` to `prod(output_shape)` units, reshaped). Give at most one of
            `output_dim` and `output_shape`.
        attention_axes: int or tuple of ints, the axes of rank-`r` inputs
            `(batch, ..., features)` attended over, negative axes counted from the
            end (`-2` is the last non-feature axis); `None` (default) attends over
            every axis but the batch and the features. The other axes act as batch
            axes. As in `keras.layers.MultiHeadAttention`; internally the other axes
            move next to the batch axis and the attention axes are flattened
            (row-major) into one sequence axis.
        use_gate: if `True`, gated attention (Qiu et al., 2025, as in Keras):
            each head's output is multiplied by `sigmoid(query W_g + b_g)`, from a
            `Dense(num_heads * value_dim)` sublayer `gate_dense`, before the output
            projection.
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer,
        kernel_constraint, bias_constraint: passed to the four `Dense` projections.
        activity_regularizer: regularizer on the layer's output.
        seed: int, seed for dropout.
        implementation: how the attention core runs (see
            `keras_attention.ops.scaled_dot_product_attention`): `None` (default)
            uses the plain path and switches by itself to an exact,
            memory-efficient path (`"flash"` on TensorFlow, `"chunked"` elsewhere)
            when the score tensor `(batch, num_heads, q_len, kv_len)` would exceed
            `keras_attention.ops.CHUNKED_THRESHOLD` (2**28) elements and neither
            scores nor dropout are needed (on TensorFlow to `"flash"` already above
            `keras_attention.ops.FLASH_THRESHOLD`, 2**23, where it is faster than
            plain: docs/performance.md); `"plain"`, `"chunked"`, `"flash"` or
            `"fused"` force a path (calls that need the scores or dropout always use
            `"plain"`).
        sliding_window: optional positive int `w`, local attention as in
            `keras.layers.GroupedQueryAttention`: query `i` sees only keys `j` with
            `|i - j| < w`; with `use_causal_mask=True` (and with a cache) that is
            the `w` most recent keys, `i - w < j <= i`. The decoding cache is then
            a ring of `min(max_length, w)` positions (see `get_initial_cache`).
        position_embedding: `None`, `"rotary"` (a default
            :class:`RotaryEmbedding`) or a `RotaryEmbedding` instance: queries and
            keys are rotated per head at their positions (with a cache, the new
            tokens at `cache_index + i`); the cache holds rotated keys.
        score_bias: `None` or a position bias layer (:class:`ALiBiBias`,
            :class:`RelativePositionBias`, or any layer
            `bias(query_positions, key_positions) -> (num_heads, q_len, kv_len)`)
            added to the scores; pass one instance to several layers to share it.
        soft_cap: optional positive float `c`: scores become `c * tanh(scores / c)`
            before the bias and the mask (Gemma 2). Not on the `"fused"` path.
        query_norm, key_norm: `None`, `"rms_norm"` or `"layer_norm"`:
            normalize each query (key) head over its `key_dim` features, with a
            learned scale shared by the heads, before the dot product (QK-norm).
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        query: `(batch, q_len, query_features)`, or with more axes (see
            `attention_axes`).
        value: `(batch, kv_len, value_features)`, the rank of `query`.
        key: optional `(batch, kv_len, key_features)`; defaults to `value`.
        query_mask, value_mask, key_mask: Keras masks `(batch, len)`, filled in by
            Keras (e.g. from `Embedding(mask_zero=True)`). Padded keys get no weight;
            padded queries attend nothing: their attention part is zero, so their
            output rows equal the output projection's bias (zeros only with
            `use_bias=False`), in every implementation path. The query's mask
            travels on.
        attention_mask: boolean (or 0/1) `(q_len, kv_len)`, `(batch, q_len, kv_len)`
            or `(batch, num_heads, q_len, kv_len)`, `True` = may attend; size-1 axes
            broadcast. With `attention_axes` / rank > 3, as in Keras:
            `(batch, other axes..., num_heads, query axes..., key axes...)`, leading
            axes optional. Keras masks then are refused (pass this instead).
        use_causal_mask: if `True`, query `i` attends only keys `j <= i` (with
            several attention axes: positions in row-major order).
        return_attention_scores: if `True`, also return the attention weights.
        training: whether dropout is active.
        cache: optional cache tensor (see above); `value` (and `key`) are then the new
            token(s) `(batch, new_len, features)`. The cache implies causal
            attention over the cached positions. `value_mask`/`key_mask` then mask
            only the new positions; mask earlier cached positions with an
            `attention_mask` of shape `(batch, new_len, max_length)`.
        cache_index: int or scalar int tensor, position of the first new token in
            the cache; required with `cache`.
        key_value_cache: optional projected keys and values of `key`/`value` from
            :meth:`compute_key_value_cache`, used instead of projecting them again
            (a cross-attention cache: the encoder's keys/values, computed once for
            a whole generation). Not combined with `cache`.

    Returns:
        `(batch, q_len, output_dim)` (`query.shape[:-1] + output_shape` in general);
        with `return_attention_scores=True` also the weights
        `(batch, num_heads, q_len, kv_len)` (with `attention_axes`:
        `(batch, other axes..., num_heads, query axes..., key axes...)`); with `cache`, the updated cache
        comes last: `(output, new_cache)` or `(output, scores, new_cache)` (scores then
        cover all `max_length` positions; with a `sliding_window`, the ring's slots
        followed by the new tokens). The output carries the query's Keras mask.

    Example:
    >>> import numpy as np
    >>> layer = MultiHeadAttention(num_heads=4, key_dim=8, num_key_value_heads=2)
    >>> x = np.random.rand(2, 5, 16).astype("float32")
    >>> out, scores = layer(x, x, use_causal_mask=True, return_attention_scores=True)
    >>> tuple(out.shape), tuple(scores.shape)
    ((2, 5, 16), (2, 4, 5, 5))
    >>> cache = layer.get_initial_cache(batch_size=2, max_length=5)
    >>> step, cache = layer(x[:, :1], x[:, :1], cache=cache, cache_index=0)
    >>> tuple(step.shape), tuple(cache.shape)
    ((2, 1, 16), (2, 5, 32))
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        value_dim=None,
        num_key_value_heads=None,
        dropout=0.0,
        use_bias=True,
        output_dim=None,
        output_shape=None,
        attention_axes=None,
        use_gate=False,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        seed=None,
        implementation=None,
        sliding_window=None,
        position_embedding=None,
        score_bias=None,
        soft_cap=None,
        query_norm=None,
        key_norm=None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.projection = _common.ProjectionSettings(
            use_bias=use_bias,
            dtype=self.dtype_policy,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
        )
        _validation.check_positive_int(num_heads, "num_heads")
        _validation.check_positive_int(key_dim, "key_dim")
        _validation.check_positive_int(value_dim, "value_dim", allow_none=True)
        _validation.check_positive_int(num_key_value_heads, "num_key_value_heads", allow_none=True)
        _validation.check_positive_int(output_dim, "output_dim", allow_none=True)
        output_shape = _check_output_shape(output_shape, output_dim)
        attention_axes = _check_attention_axes(attention_axes)
        _validation.check_bool(use_gate, "use_gate")
        _validation.check_rate(dropout, "dropout")
        _validation.check_bool(use_bias, "use_bias")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise ValueError(f"`seed` must be an integer or None. Received: seed={seed!r}")
        if num_key_value_heads is not None and num_heads % num_key_value_heads:
            raise ValueError(
                "`num_heads` must be divisible by `num_key_value_heads`. Received: "
                f"num_heads={num_heads}, num_key_value_heads={num_key_value_heads}"
            )
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = value_dim
        self.num_key_value_heads = num_key_value_heads
        self.dropout = dropout
        self.use_bias = use_bias
        self.output_dim = output_dim
        # Keras' name; kept private because `Layer.output_shape`-like attributes clash
        # with `Functional.summary()` (as in `keras.layers.MultiHeadAttention`).
        self._output_shape = output_shape
        self.attention_axes = attention_axes
        self.use_gate = use_gate
        attention_ops.check_implementation(implementation)
        self.seed = seed
        self.implementation = implementation
        _validation.check_positive_int(sliding_window, "sliding_window", allow_none=True)
        self.sliding_window = sliding_window
        self._init_score_options(position_embedding, score_bias, soft_cap, query_norm, key_norm)
        self.supports_masking = True
        self.seed_generator = keras.random.SeedGenerator(seed) if dropout > 0 else None

        self._value_dim = value_dim or key_dim
        self._kv_heads = num_key_value_heads or num_heads
        self.query_dense = self.projection.dense(num_heads * key_dim, "query")
        self.key_dense = self.projection.dense(self._kv_heads * key_dim, "key")
        self.value_dense = self.projection.dense(self._kv_heads * self._value_dim, "value")
        # The gate of gated attention: sigmoid(query W_g + b_g) multiplies each
        # head's output before the output projection (Qiu et al., 2025).
        self.gate_dense = None
        if use_gate:
            self.gate_dense = self.projection.dense(
                num_heads * self._value_dim, "gate", activation="sigmoid"
            )
        # The output size depends on the query's features when output_dim and
        # output_shape are None, so this Dense gets its units in build().
        self.output_dense = None
        if output_shape is not None or output_dim is not None:
            units = output_dim or int(math.prod(output_shape))
            self.output_dense = self.projection.dense(units, "attention_output")

    def build(self, query_shape, value_shape, key_shape=None):
        query_shape, value_shape = tuple(query_shape), tuple(value_shape)
        key_shape = value_shape if key_shape is None else tuple(key_shape)
        self._check_shapes(query_shape, value_shape, key_shape)
        for name, shape in (("query", query_shape), ("value", value_shape), ("key", key_shape)):
            _validation.check_known_features(shape, name)
        if self.output_dense is None:
            self.output_dense = self.projection.dense(query_shape[-1], "attention_output")
        self.query_dense.build(query_shape)
        self.key_dense.build(key_shape)
        for norm in (self.query_norm_layer, self.key_norm_layer):
            if norm is not None:
                norm.build((None, None, None, self.key_dim))
        if self.score_bias is not None and not self.score_bias.built:
            self.score_bias.build((None,), (None,))
        self.value_dense.build(value_shape)
        if self.gate_dense is not None:
            self.gate_dense.build(query_shape)
        self.output_dense.build(tuple(query_shape[:-1]) + (self.num_heads * self._value_dim,))
        self.built = True

    def _output_features(self, query_shape):
        """The trailing output axes: `output_shape`, `output_dim` or the query's features."""
        return self._output_shape or (self.output_dim or query_shape[-1],)

    def _attention_axes_for(self, rank):
        """The attention axes for inputs of `rank` as non-negative ints, in order."""
        if self.attention_axes is None:
            return tuple(range(1, rank - 1))
        axes = tuple(axis + rank if axis < 0 else axis for axis in self.attention_axes)
        if any(not 1 <= axis <= rank - 2 for axis in axes) or len(set(axes)) != len(axes):
            raise ValueError(
                "`attention_axes` must be distinct axes of the inputs other than the "
                f"batch axis (0) and the features axis (-1), i.e. in [1, {rank - 2}] "
                f"or [{1 - rank}, -2] for inputs of rank {rank}. Received: "
                f"attention_axes={self.attention_axes}"
            )
        return axes

    def _check_shapes(self, query_shape, value_shape, key_shape):
        """The shape checks of `build`, `call` and the symbolic shapes, in one place:
        ranks, attention axes, key/value lengths and the batch (non-attention) axes."""
        rank = len(query_shape)
        if rank < 3:
            raise ValueError(
                "`query` must be rank 3 (batch, seq, features) or higher. "
                f"Received: query.shape={query_shape}"
            )
        for name, shape in (("value", value_shape), ("key", key_shape)):
            if len(shape) != rank:
                raise ValueError(
                    f"`{name}` must be rank {rank}, the rank of `query`. Received: "
                    f"query.shape={query_shape}, {name}.shape={shape}"
                )
        axes = self._attention_axes_for(rank)
        if not _validation.compatible(key_shape[1:-1], value_shape[1:-1]):
            raise ValueError(
                "`key` and `value` must have the same length (the same shape except "
                "for the last axis, features). Received: "
                f"key.shape={key_shape}, value.shape={value_shape}"
            )
        batch_axes = [axis for axis in range(rank - 1) if axis not in axes]
        query_batch = tuple(query_shape[axis] for axis in batch_axes)
        value_batch = tuple(value_shape[axis] for axis in batch_axes)
        if not _validation.compatible(query_batch, value_batch):
            raise ValueError(
                "`query` and `value` must agree on the batch axis and the axes that "
                f"are not attention axes ({tuple(batch_axes)}). Received: "
                f"query.shape={query_shape}, value.shape={value_shape}"
            )

    @property
    def _cache_features(self):
        return self._kv_heads * (self.key_dim + self._value_dim)

    def compute_key_value_cache(self, value, key=None):
        """The projected keys and values of `value` (and `key`, default `value`),
        `(batch, kv_len, num_key_value_heads * (key_dim + value_dim))` in the layout
        of the decoding cache: pass it as `key_value_cache` to attend to the same
        keys/values many times (cross-attention during generation)."""
        key = value if key is None else key
        keys = self._project_keys(key, start_index=0)
        return ops.concatenate([keys, self.value_dense(value)], axis=-1)

    def get_initial_cache(self, batch_size, max_length, dtype=None):
        """An empty decoding cache: zeros of shape
        `(batch_size, max_length, num_key_value_heads * (key_dim + value_dim))`.

        With a `sliding_window` `w` it holds `min(max_length, w)` positions, used as a
        ring (position `p` in slot `p % size`): a query never sees further back than
        `w` positions, so memory stays fixed however long decoding runs. Calls then
        take an `attention_mask` over absolute positions, `(batch, new_len, L)`.

        Args:
            batch_size: positive int (or scalar int tensor).
            max_length: positive int, the number of positions the cache holds.
            dtype: cache dtype; defaults to the layer's compute dtype.
        """
        if not self.built:
            raise ValueError(
                f"Layer '{self.name}' is not built yet: call it on inputs or call "
                "`build(query_shape, value_shape)` first, so that the projections "
                "exist before a cache is made."
            )
        batch_size = _validation.check_index(batch_size, "batch_size", positive=True)
        max_length = _validation.check_index(max_length, "max_length", positive=True)
        if self.sliding_window is not None and isinstance(max_length, int):
            # a ring: only the `sliding_window` most recent positions are ever seen
            max_length = min(max_length, self.sliding_window)
        elif self.sliding_window is not None:
            max_length = ops.minimum(max_length, self.sliding_window)
        return ops.zeros(
            (batch_size, max_length, self._cache_features),
            dtype=dtype or self.compute_dtype,
        )

    def call(
        self,
        query,
        value,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        use_causal_mask=False,
        return_attention_scores=False,
        training=None,
        cache=None,
        cache_index=None,
        key_value_cache=None,
    ):
        if key is None:
            key = value
            key_mask = None
        self._check_call_shapes(query, value, key)
        if self._needs_flattening(len(query.shape)):
            if cache is not None or key_value_cache is not None:
                raise ValueError(
                    "`cache` and `key_value_cache` need rank-3 inputs attending over "
                    f"axis 1. Received: query.shape={tuple(query.shape)}, "
                    f"attention_axes={self.attention_axes}"
                )
            return self._call_flattened(
                query,
                value,
                key,
                (query_mask, value_mask, key_mask),
                attention_mask,
                use_causal_mask,
                return_attention_scores,
                training,
            )
        if key_value_cache is not None and cache is not None:
            raise ValueError(
                "`key_value_cache` (fixed keys/values) and `cache` (a growing decoding "
                "cache) cannot be combined. Received both."
            )
        if (cache is None) != (cache_index is None):
            raise ValueError(
                "`cache` and `cache_index` must be given together. Received: "
                f"cache={'None' if cache is None else 'a tensor'}, "
                f"cache_index={cache_index!r}"
            )
        start_index = 0 if cache is None else cache_index
        queries = self._query_heads(query, start_index)
        if cache is None:
            keys, values, mask = self._uncached_keys_values(
                query,
                key,
                value,
                key_value_cache,
                query_mask=query_mask,
                value_mask=value_mask,
                key_mask=key_mask,
                attention_mask=attention_mask,
                use_causal_mask=use_causal_mask,
            )
            bias, window, new_cache = self._bias_with_offset(0), self.sliding_window, None
        else:
            keys, values, mask, bias, new_cache = self._cached_keys_values(
                key,
                value,
                cache,
                cache_index,
                q_len=ops.shape(query)[1],
                query_mask=query_mask,
                key_padding=masks.combine_masks(value_mask, key_mask),
                attention_mask=attention_mask,
            )
            window = None  # the cache's mask holds the window
        heads, scores = self._attention(
            queries, keys, values, mask, bias, window, return_attention_scores, training
        )
        outputs = (self._output(heads, query),)
        if return_attention_scores:
            outputs += (scores,)
        if new_cache is not None:
            outputs += (new_cache,)
        return outputs[0] if len(outputs) == 1 else outputs

    # The rank-3 path in steps: the heads of the projections, the keys/values/mask of
    # each cache mode, the attention, the output projection. Keys and values stay in
    # the heads layout `(batch, heads, seq, dim)` from the projection to the attention
    # when there is no cache: a head merge and split around the rotated/normalized keys
    # would be fused by the LiteRT converter into one reshape with two dynamic sizes,
    # which it refuses. The cache's `(batch, seq, features)` layout is used only with
    # a cache.

    def _heads(self, projected, num_heads, norm, start_index):
        """`(batch, seq, num_heads * dim)` projections as `(batch, num_heads, seq, dim)`
        heads, normalized (QK-norm) then rotated (RoPE) when the layer asks for it."""
        heads = attention_ops.split_heads(projected, num_heads)
        if norm is not None:
            heads = norm(heads)
        if self.rotary_embedding is not None:
            rope = self.rotary_embedding
            heads = attention_ops.apply_rotary_embedding(
                heads,
                start_index=start_index,
                max_wavelength=rope.max_wavelength,
                scaling_factor=rope.scaling_factor,
                rotary_fraction=rope.rotary_fraction,
                layout=rope.layout,
            )
        return heads

    def _query_heads(self, query, start_index):
        return self._heads(
            self.query_dense(query), self.num_heads, self.query_norm_layer, start_index
        )

    def _key_heads(self, key, start_index):
        return self._heads(self.key_dense(key), self._kv_heads, self.key_norm_layer, start_index)

    def _uncached_keys_values(self, query, key, value, key_value_cache=None, **mask_arguments):
        """A call without a decoding cache: the key and value heads (projected, or
        taken from a `key_value_cache` made by `compute_key_value_cache`) and the mask
        (`masks.merge_attention_masks` of `mask_arguments`)."""
        if key_value_cache is None:
            keys = self._key_heads(key, start_index=0)
            values = attention_ops.split_heads(self.value_dense(value), self._kv_heads)
        else:
            split = self._kv_heads * self.key_dim
            keys = attention_ops.split_heads(key_value_cache[..., :split], self._kv_heads)
            values = attention_ops.split_heads(key_value_cache[..., split:], self._kv_heads)
        mask = masks.merge_attention_masks(
            q_len=ops.shape(query)[1], kv_len=ops.shape(keys)[2], **mask_arguments
        )
        return keys, values, mask

    def _project_keys(self, key, start_index):
        """`key_dense(key)`, normalized and rotated per head when asked, in the
        cache's `(batch, seq, num_key_value_heads * key_dim)` layout."""
        if self.key_norm_layer is None and self.rotary_embedding is None:
            return self.key_dense(key)
        return attention_ops.merge_heads(self._key_heads(key, start_index))

    def _cached_keys_values(
        self, key, value, cache, cache_index, q_len, query_mask, key_padding, attention_mask
    ):
        """A call with a decoding cache: write the new tokens' keys and values into it
        (a ring with a `sliding_window`); return all the cached key and value heads,
        the mask of the new queries over them, the score bias and the new cache."""
        keys, values = self._project_keys(key, cache_index), self.value_dense(value)
        cache, cache_index = _check_cache(
            cache, cache_index, keys.shape, self._cache_features, window=self.sliding_window
        )
        if self.sliding_window is None:
            new_cache, keys, values = _write_cache(cache, cache_index, keys, values)
            mask = _cached_key_mask(
                cache_index,
                ops.shape(cache)[1],
                q_len,
                query_mask=query_mask,
                key_padding=key_padding,
                attention_mask=attention_mask,
            )
            bias = self._bias_with_offset(cache_index)
        else:
            new_cache, keys, values, mask, key_positions = _rolling_cache_step(
                cache,
                cache_index,
                keys,
                values,
                self.sliding_window,
                query_mask=query_mask,
                key_padding=key_padding,
                attention_mask=attention_mask,
            )
            bias = None
            if self.score_bias is not None:
                query_positions = ops.arange(q_len, dtype="int32") + cache_index
                bias = self.score_bias(query_positions, key_positions)
        keys = attention_ops.split_heads(keys, self._kv_heads)
        values = attention_ops.split_heads(values, self._kv_heads)
        return keys, values, mask, bias, new_cache

    def _bias_with_offset(self, offset):
        """The score bias (None without one) as the callable of positions that the
        attention function evaluates a block at a time; queries start at `offset`."""
        score_bias = self.score_bias
        if score_bias is None:
            return None

        def bias(query_positions, key_positions):
            return score_bias(query_positions + ops.cast(offset, "int32"), key_positions)

        return bias

    def _attention(
        self, queries, keys, values, mask, bias, sliding_window, return_attention_scores, training
    ):
        """The attention of the query heads over the key/value heads: `(heads, scores)`,
        scores None unless asked for."""
        if mask is not None and len(mask.shape) == 3:
            mask = ops.expand_dims(mask, 1)  # the head axis of the scores
        # Grouped-query heads: the attention function shares each key/value head with
        # its group of query heads (the flash path without copying them).
        result = attention_ops.scaled_dot_product_attention(
            queries,
            keys,
            values,
            mask=mask,
            dropout_rate=self.dropout,
            seed=self.seed_generator,
            training=bool(training),
            return_attention_scores=return_attention_scores,
            implementation=self._implementation_for(return_attention_scores, training),
            sliding_window=sliding_window,
            bias=bias,
            soft_cap=self.soft_cap,
        )
        return result if return_attention_scores else (result, None)

    def _output(self, heads, query):
        """The heads concatenated, gated (`use_gate`) and projected to the output."""
        heads = attention_ops.merge_heads(heads)
        if self.gate_dense is not None:
            heads = heads * self.gate_dense(query)
        output = self.output_dense(heads)
        if self._output_shape is not None and len(self._output_shape) > 1:
            output = ops.reshape(output, tuple(ops.shape(output)[:-1]) + self._output_shape)
        return output

    def _init_score_options(self, position_embedding, score_bias, soft_cap, query_norm, key_norm):
        if isinstance(position_embedding, dict):
            position_embedding = keras.saving.deserialize_keras_object(position_embedding)
        if position_embedding == "rotary":
            self.rotary_embedding = RotaryEmbedding(name="rotary_embedding")
        elif position_embedding is None or isinstance(position_embedding, RotaryEmbedding):
            self.rotary_embedding = position_embedding
        else:
            raise ValueError(
                "`position_embedding` must be None, 'rotary' or a RotaryEmbedding "
                f"instance. Received: position_embedding={position_embedding!r}"
            )
        if self.rotary_embedding is not None:
            self.rotary_embedding.rotated_dim(self.key_dim)  # odd rotated dims raise
        self.position_embedding = position_embedding
        if isinstance(score_bias, dict):
            score_bias = keras.saving.deserialize_keras_object(score_bias)
        if score_bias is not None:
            if not isinstance(score_bias, keras.layers.Layer) or not callable(score_bias):
                raise ValueError(
                    "`score_bias` must be None or a position bias layer such as "
                    f"ALiBiBias or RelativePositionBias. Received: score_bias={score_bias!r}"
                )
            heads = getattr(score_bias, "num_heads", self.num_heads)
            if heads != self.num_heads:
                raise ValueError(
                    "`score_bias` must give one bias per query head: its num_heads "
                    f"must be {self.num_heads}. Received: score_bias.num_heads={heads}"
                )
        self.score_bias = score_bias
        if soft_cap is not None:
            _validation.check_positive_float(soft_cap, "soft_cap")
        self.soft_cap = soft_cap
        _validation.check_one_of(query_norm, "query_norm", _QK_NORMS)
        _validation.check_one_of(key_norm, "key_norm", _QK_NORMS)
        self.query_norm = query_norm
        self.key_norm = key_norm
        self.query_norm_layer = self._qk_norm(query_norm, "query_norm")
        self.key_norm_layer = self._qk_norm(key_norm, "key_norm")

    def _qk_norm(self, kind, name):
        if kind == "rms_norm":
            return RMSNorm(name=name, dtype=self.dtype_policy)
        if kind == "layer_norm":
            return LayerNormalization(
                epsilon=1e-6, center=False, name=name, dtype=self.dtype_policy
            )
        return None

    def _needs_flattening(self, rank):
        return rank > 3 or self._attention_axes_for(rank) != (1,)

    def _call_flattened(
        self,
        query,
        value,
        key,
        keras_masks,
        attention_mask,
        use_causal_mask,
        return_attention_scores,
        training,
    ):
        """Attention over `attention_axes` of inputs of any rank: the other axes move
        next to the batch axis, the attention axes become one sequence axis, the
        rank-3 path runs, and the result is put back in place."""
        if any(mask is not None for mask in keras_masks):
            raise ValueError(
                "Keras masks (`query_mask`, `value_mask`, `key_mask`) are only used "
                "with rank-3 inputs attending over axis 1; for other inputs pass an "
                "`attention_mask`. Received a Keras mask with "
                f"query.shape={tuple(query.shape)}, attention_axes={self.attention_axes}"
            )
        rank = len(query.shape)
        axes = self._attention_axes_for(rank)
        others = [axis for axis in range(1, rank - 1) if axis not in axes]
        perm = [0] + others + list(axes) + [rank - 1]
        q_shape, kv_shape = ops.shape(query), ops.shape(value)
        batch_dims = [q_shape[axis] for axis in [0] + others]
        q_dims = [q_shape[axis] for axis in axes]
        kv_dims = [kv_shape[axis] for axis in axes]

        flat_query = ops.reshape(ops.transpose(query, perm), (-1, _prod(q_dims), query.shape[-1]))
        flat_value = ops.reshape(ops.transpose(value, perm), (-1, _prod(kv_dims), value.shape[-1]))
        flat_key = ops.reshape(ops.transpose(key, perm), (-1, _prod(kv_dims), key.shape[-1]))
        if attention_mask is not None:
            attention_mask = masks.flatten_attention_mask(
                attention_mask, batch_dims, q_dims, kv_dims, name="attention_mask"
            )
        keys, values, mask = self._uncached_keys_values(
            flat_query,
            flat_key,
            flat_value,
            attention_mask=attention_mask,
            use_causal_mask=use_causal_mask,
        )
        heads, scores = self._attention(
            self._query_heads(flat_query, 0),
            keys,
            values,
            mask,
            self._bias_with_offset(0),
            self.sliding_window,
            return_attention_scores,
            training,
        )
        output = self._output(heads, flat_query)
        out_features = self._output_features(query.shape)
        output = ops.reshape(output, tuple(batch_dims) + tuple(q_dims) + tuple(out_features))
        # Inverse permutation of the non-feature axes; output axes stay last.
        inverse = [perm[:-1].index(axis) for axis in range(rank - 1)]
        inverse += list(range(rank - 1, rank - 1 + len(out_features)))
        output = ops.transpose(output, inverse)
        if not return_attention_scores:
            return output
        # Scores in Keras' layout: (batch, other axes..., heads, query axes..., key axes...).
        scores = ops.reshape(
            scores, tuple(batch_dims) + (self.num_heads,) + tuple(q_dims) + tuple(kv_dims)
        )
        return output, scores

    def _check_call_shapes(self, query, value, key):
        self._check_shapes(tuple(query.shape), tuple(value.shape), tuple(key.shape))
        built = (
            ("query", query, self.query_dense),
            ("value", value, self.value_dense),
            ("key", key, self.key_dense),
        )
        for name, tensor, dense in built:
            expected = dense.kernel.shape[0]
            if tensor.shape[-1] is not None and tensor.shape[-1] != expected:
                raise ValueError(
                    f"The last dimension (features) of `{name}` must be {expected}, "
                    f"as when the layer was built. Received: "
                    f"{name}.shape={tuple(tensor.shape)}"
                )

    def compute_output_shape(self, query_shape, value_shape, key_shape=None):
        query_shape, value_shape = tuple(query_shape), tuple(value_shape)
        key_shape = value_shape if key_shape is None else tuple(key_shape)
        self._check_shapes(query_shape, value_shape, key_shape)
        return query_shape[:-1] + tuple(self._output_features(query_shape))

    def compute_output_spec(
        self,
        query,
        value,
        key=None,
        return_attention_scores=False,
        cache=None,
        **kwargs,
    ):
        key = value if key is None else key
        output_shape = self.compute_output_shape(query.shape, value.shape, key.shape)
        rank = len(query.shape)
        axes = self._attention_axes_for(rank)
        others = [axis for axis in range(rank - 1) if axis not in axes]
        kv_shape = key.shape if cache is None else (None, cache.shape[1])
        if cache is not None and self.sliding_window is not None:
            # the ring of cached keys, then the new ones
            ring = cache.shape[1]
            kv_shape = (None, None if ring is None or key.shape[1] is None else ring + key.shape[1])
        scores_shape = (
            tuple(query.shape[axis] for axis in others)
            + (self.num_heads,)
            + tuple(query.shape[axis] for axis in axes)
            + tuple(kv_shape[axis] for axis in axes)
        )
        output = _common.attention_output_spec(
            self, output_shape, scores_shape, return_attention_scores
        )
        if cache is None:
            return output
        output = output if isinstance(output, tuple) else (output,)
        return output + (keras.KerasTensor(cache.shape, dtype=cache.dtype),)

    def _implementation_for(self, return_attention_scores, training):
        # The attention weights and attention dropout need the full score matrix.
        if return_attention_scores or (training and self.dropout > 0):
            return "plain"
        return self.implementation

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "value_dim": self.value_dim,
                "num_key_value_heads": self.num_key_value_heads,
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "output_dim": self.output_dim,
                "output_shape": self._output_shape,
                "attention_axes": self.attention_axes,
                "use_gate": self.use_gate,
                "seed": self.seed,
                "implementation": self.implementation,
                "sliding_window": self.sliding_window,
                "position_embedding": self.position_embedding
                if self.position_embedding in (None, "rotary")
                else keras.saving.serialize_keras_object(self.position_embedding),
                "score_bias": None
                if self.score_bias is None
                else keras.saving.serialize_keras_object(self.score_bias),
                "soft_cap": self.soft_cap,
                "query_norm": self.query_norm,
                "key_norm": self.key_norm,
                **self.projection.get_config(),
            }
        )
        return config


def _prod(dims):
    """The product of static ints and/or scalar tensors (a size of a merged axis)."""
    result = 1
    for dim in dims:
        result = result * dim
    return result


def _check_output_shape(output_shape, output_dim):
    """`output_shape` (Keras' name: an int or a tuple of ints) as a tuple, or None."""
    if output_shape is None:
        return None
    if output_dim is not None:
        raise ValueError(
            "Pass `output_dim` or `output_shape` (Keras' name), not both. Received: "
            f"output_dim={output_dim!r}, output_shape={output_shape!r}"
        )
    shape = (output_shape,) if _validation._is_int(output_shape) else output_shape
    if (
        not isinstance(shape, (tuple, list))
        or not shape
        or not all(_validation._is_int(dim) and dim > 0 for dim in shape)
    ):
        raise ValueError(
            "`output_shape` must be a positive integer or a non-empty tuple of "
            f"positive integers. Received: output_shape={output_shape!r}"
        )
    return tuple(int(dim) for dim in shape)


def _check_attention_axes(attention_axes):
    """`attention_axes` (an int or a tuple of ints) as a tuple, or None."""
    if attention_axes is None:
        return None
    axes = (attention_axes,) if _validation._is_int(attention_axes) else attention_axes
    if (
        not isinstance(axes, (tuple, list))
        or not axes
        or not all(_validation._is_int(axis) for axis in axes)
        or 0 in axes
        or len(set(axes)) != len(axes)
    ):
        raise ValueError(
            "`attention_axes` must be None, an int or a tuple of distinct ints "
            "(axes of the inputs, neither the batch axis 0 nor the features axis). "
            f"Received: attention_axes={attention_axes!r}"
        )
    return tuple(int(axis) for axis in axes)


# Incremental decoding, in three steps: check the cache and its index, write the new
# keys/values into it, and build the mask over all the cached keys.


def _check_cache(cache, cache_index, keys_shape, features, window=None):
    """Check `cache` against the projected new keys `(batch, new_len, ...)` and the
    cache's `features`; return the cache as a tensor and `cache_index` as an int or an
    int32 scalar tensor."""
    cache = ops.convert_to_tensor(cache)
    expected = (keys_shape[0], None, features)
    if len(cache.shape) != 3 or not _validation.compatible(tuple(cache.shape), expected):
        raise ValueError(
            "`cache` must have shape (batch, max_length, num_key_value_heads * "
            f"(key_dim + value_dim)) = {expected}, as made by "
            f"`get_initial_cache`. Received: cache.shape={tuple(cache.shape)}"
        )
    cache_index = _validation.check_index(cache_index, "cache_index")
    new_len, max_length = keys_shape[1], cache.shape[1]
    # A ring of `window` slots may wrap around; a shorter cache (max_length < window)
    # must not, or it would drop positions the window still sees.
    if (
        (window is None or (max_length is not None and max_length < window))
        and isinstance(cache_index, int)
        and new_len is not None
        and max_length is not None
        and cache_index + new_len > max_length
    ):
        raise ValueError(
            f"`cache_index` + the number of new tokens ({new_len}) must not "
            f"exceed the cache length max_length={max_length}. "
            f"Received: cache_index={cache_index}"
        )
    return cache, cache_index


def _write_cache(cache, cache_index, keys, values):
    """Write `concat(keys, values)` of the new tokens at positions
    `[cache_index, cache_index + new_len)`; return the new cache and all the cached
    keys and values (in the dtypes of `keys` and `values`)."""
    update = ops.cast(ops.concatenate([keys, values], axis=-1), cache.dtype)
    zero = ops.zeros((), "int32")
    new_cache = ops.slice_update(cache, [zero, ops.cast(cache_index, "int32"), zero], update)
    split = keys.shape[-1]
    all_keys = ops.cast(new_cache[..., :split], keys.dtype)
    all_values = ops.cast(new_cache[..., split:], values.dtype)
    return new_cache, all_keys, all_values


def _cached_key_mask(
    cache_index, max_length, q_len, query_mask=None, key_padding=None, attention_mask=None
):
    """The mask of `q_len` new queries over the `max_length` cached keys.

    New query `i` sees the cached keys `j <= cache_index + i` (causal). The padding
    mask `key_padding` `(batch, new_len)` of the new tokens covers only their own
    cache positions; earlier positions stay allowed (an `attention_mask`
    `(batch, q_len, max_length)` can mask them).
    """
    if key_padding is not None:
        key_padding = ops.cast(masks.validate_mask(key_padding), "int32")
        zero = ops.zeros((), "int32")
        key_padding = ops.slice_update(
            ops.ones((ops.shape(key_padding)[0], max_length), "int32"),
            [zero, ops.cast(cache_index, "int32")],
            key_padding,
        )
    mask = masks.merge_attention_masks(
        query_mask=query_mask,
        value_mask=key_padding,
        attention_mask=attention_mask,
        q_len=q_len,
        kv_len=max_length,
    )
    return masks.combine_masks(mask, masks.causal_mask(q_len, max_length, offset=cache_index))


def _rolling_cache_step(
    cache,
    cache_index,
    keys,
    values,
    window,
    query_mask=None,
    key_padding=None,
    attention_mask=None,
):
    """One call with a sliding-window ring cache of `S` slots.

    Slot `s` holds the most recent position `p < cache_index` with `p % S == s`. The
    new queries attend to the ring (before this write) followed by the new keys; key
    at position `p` is visible to query position `t` when `t - window < p <= t`.
    `attention_mask` `(batch, q_len, total_length)` is over absolute positions and
    is gathered at the keys' positions. Return the new ring, all keys and values,
    the mask and the keys' positions.
    """
    slots = ops.shape(cache)[1]
    new_len = ops.shape(keys)[1]
    index = ops.cast(cache_index, "int32")
    slot = ops.arange(slots, dtype="int32")
    slot_positions = index - 1 - ops.mod(index - 1 - slot + slots, slots)
    new_positions = index + ops.arange(new_len, dtype="int32")
    key_positions = ops.concatenate([slot_positions, new_positions], axis=0)
    query_positions = new_positions[:, None]
    visible = (
        (key_positions[None, :] >= 0)
        & (key_positions[None, :] <= query_positions)
        & (query_positions - key_positions[None, :] < window)
    )
    if key_padding is not None:
        key_padding = masks.validate_mask(key_padding)
        batch = ops.shape(key_padding)[0]
        key_padding = ops.concatenate([ops.ones((batch, slots), "bool"), key_padding], axis=1)
    if attention_mask is not None:
        attention_mask = masks.validate_mask(attention_mask, "attention_mask")
        columns = ops.clip(key_positions, 0, ops.shape(attention_mask)[-1] - 1)
        if attention_mask.shape[-1] == 1:
            columns = ops.zeros_like(columns)
        attention_mask = ops.take(attention_mask, columns, axis=-1)
    mask = masks.merge_attention_masks(
        query_mask=query_mask,
        value_mask=key_padding,
        attention_mask=attention_mask,
        q_len=new_len,
        kv_len=slots + new_len,
    )
    mask = masks.combine_masks(mask, visible)

    # Write the last `min(new_len, S)` new tokens (distinct slots) into the ring.
    update = ops.cast(ops.concatenate([keys, values], axis=-1), cache.dtype)
    written = (ops.mod(new_positions, slots)[:, None] == slot[None, :]) & (
        ops.arange(new_len, dtype="int32")[:, None] >= new_len - slots
    )
    written = ops.cast(written, cache.dtype)
    kept = 1 - ops.max(written, axis=0)
    new_cache = cache * kept[None, :, None] + ops.einsum("ns,bnf->bsf", written, update)
    split = keys.shape[-1]
    all_keys = ops.concatenate([ops.cast(cache[..., :split], keys.dtype), keys], axis=1)
    all_values = ops.concatenate([ops.cast(cache[..., split:], values.dtype), values], axis=1)
    return new_cache, all_keys, all_values, mask, key_positions

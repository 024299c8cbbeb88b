"""`MultiHeadAttention`: self-, cross- and grouped-query attention with a decoding cache."""

import numbers

import keras
from keras import ops

from keras_attention import _validation, masks
from keras_attention import ops as attention_ops
from keras_attention.layers import _common


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
    its output kernel `(heads, dim, out)` with `kernel.reshape(heads * dim, out)`; its
    biases `(heads, dim)` with `bias.reshape(-1)`.

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
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer,
        kernel_constraint, bias_constraint: passed to the four `Dense` projections.
        activity_regularizer: regularizer on the layer's output.
        seed: int, seed for dropout.
        implementation: how the attention core runs (see
            `keras_attention.ops.scaled_dot_product_attention`): `None` (default)
            uses the plain path and switches by itself to the exact,
            memory-efficient `"chunked"` path when the score tensor
            `(batch, num_heads, q_len, kv_len)` would exceed
            `keras_attention.ops.CHUNKED_THRESHOLD` (2**28) elements and neither
            scores nor dropout are needed; `"plain"`, `"chunked"` or `"fused"` force
            a path (calls that need the scores or dropout always use `"plain"`).
        sliding_window: optional positive int `w`, local attention as in
            `keras.layers.GroupedQueryAttention`: query `i` sees only keys `j` with
            `|i - j| < w`; with `use_causal_mask=True` (and with a cache) that is
            the `w` most recent keys, `i - w < j <= i`.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        query: `(batch, q_len, query_features)`.
        value: `(batch, kv_len, value_features)`.
        key: optional `(batch, kv_len, key_features)`; defaults to `value`.
        query_mask, value_mask, key_mask: Keras masks `(batch, len)`, filled in by
            Keras (e.g. from `Embedding(mask_zero=True)`). Padded keys get no weight;
            padded queries attend nothing: their attention part is zero, so their
            output rows equal the output projection's bias (zeros only with
            `use_bias=False`). (`keras.layers.MultiHeadAttention` gives them the
            projected mean of the values instead.) The query's mask travels on.
        attention_mask: boolean `(batch, q_len, kv_len)` or
            `(batch, num_heads, q_len, kv_len)`, `True` = may attend.
        use_causal_mask: if `True`, query `i` attends only keys `j <= i`.
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
        `(batch, q_len, output_dim)`; with `return_attention_scores=True` also the
        weights `(batch, num_heads, q_len, kv_len)`; with `cache`, the updated cache
        comes last: `(output, new_cache)` or `(output, scores, new_cache)` (scores then
        cover all `max_length` positions). The output carries the query's Keras mask.

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
        attention_ops.check_implementation(implementation)
        self.seed = seed
        self.implementation = implementation
        _validation.check_positive_int(sliding_window, "sliding_window", allow_none=True)
        self.sliding_window = sliding_window
        self.supports_masking = True
        self.seed_generator = keras.random.SeedGenerator(seed) if dropout > 0 else None

        self._value_dim = value_dim or key_dim
        self._kv_heads = num_key_value_heads or num_heads
        self.query_dense = self.projection.dense(num_heads * key_dim, "query")
        self.key_dense = self.projection.dense(self._kv_heads * key_dim, "key")
        self.value_dense = self.projection.dense(self._kv_heads * self._value_dim, "value")
        # The output size depends on the query's features when output_dim is None,
        # so this Dense gets its units in build().
        self.output_dense = None
        if output_dim is not None:
            self.output_dense = self.projection.dense(output_dim, "attention_output")

    def build(self, query_shape, value_shape, key_shape=None):
        _validation.check_rank(query_shape, 3, "query", "rank 3 (batch, q_len, features)")
        _validation.check_rank(value_shape, 3, "value", "rank 3 (batch, kv_len, features)")
        if key_shape is None:
            key_shape = value_shape
        _validation.check_rank(key_shape, 3, "key", "rank 3 (batch, kv_len, features)")
        for name, shape in (("query", query_shape), ("value", value_shape), ("key", key_shape)):
            _validation.check_known_features(shape, name)
        if self.output_dense is None:
            self.output_dense = self.projection.dense(query_shape[-1], "attention_output")
        self.query_dense.build(query_shape)
        self.key_dense.build(key_shape)
        self.value_dense.build(value_shape)
        self.output_dense.build(tuple(query_shape[:-1]) + (self.num_heads * self._value_dim,))
        self.built = True

    @property
    def _cache_features(self):
        return self._kv_heads * (self.key_dim + self._value_dim)

    def compute_key_value_cache(self, value, key=None):
        """The projected keys and values of `value` (and `key`, default `value`),
        `(batch, kv_len, num_key_value_heads * (key_dim + value_dim))` in the layout
        of the decoding cache: pass it as `key_value_cache` to attend to the same
        keys/values many times (cross-attention during generation)."""
        key = value if key is None else key
        return ops.concatenate([self.key_dense(key), self.value_dense(value)], axis=-1)

    def get_initial_cache(self, batch_size, max_length, dtype=None):
        """An empty decoding cache: zeros of shape
        `(batch_size, max_length, num_key_value_heads * (key_dim + value_dim))`.

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

        queries = attention_ops.split_heads(self.query_dense(query), self.num_heads)
        if key_value_cache is None:
            keys = self.key_dense(key)
            values = self.value_dense(value)
        else:
            split = self._kv_heads * self.key_dim
            keys, values = key_value_cache[..., :split], key_value_cache[..., split:]
        q_len = ops.shape(query)[1]
        new_cache = None
        if cache is None:
            kv_len = ops.shape(keys)[1]
            mask = masks.merge_attention_masks(
                query_mask=query_mask,
                value_mask=value_mask,
                key_mask=key_mask,
                attention_mask=attention_mask,
                use_causal_mask=use_causal_mask,
                q_len=q_len,
                kv_len=kv_len,
            )
        else:
            cache, cache_index = _check_cache(cache, cache_index, keys.shape, self._cache_features)
            new_cache, keys, values = _write_cache(cache, cache_index, keys, values)
            mask = _cached_key_mask(
                cache_index,
                ops.shape(cache)[1],
                q_len,
                query_mask=query_mask,
                key_padding=masks.combine_masks(value_mask, key_mask),
                attention_mask=attention_mask,
            )
            if self.sliding_window is not None:
                window = masks.sliding_window_mask(
                    q_len, ops.shape(cache)[1], self.sliding_window, offset=cache_index
                )
                mask = masks.combine_masks(mask, window)
        if mask is not None and len(mask.shape) == 3:
            mask = ops.expand_dims(mask, 1)  # the head axis of the scores

        keys = self._repeat_kv_heads(attention_ops.split_heads(keys, self._kv_heads))
        values = self._repeat_kv_heads(attention_ops.split_heads(values, self._kv_heads))
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
            sliding_window=self.sliding_window if cache is None else None,
        )
        heads, scores = result if return_attention_scores else (result, None)
        output = self.output_dense(attention_ops.merge_heads(heads))
        outputs = (output,)
        if return_attention_scores:
            outputs += (scores,)
        if new_cache is not None:
            outputs += (new_cache,)
        return outputs[0] if len(outputs) == 1 else outputs

    def _repeat_kv_heads(self, x):
        # Contiguous groups: repeat(axis=1) turns heads [k0, k1] into [k0, k0, k1, k1],
        # so query head h uses key/value head h // group.
        group = self.num_heads // self._kv_heads
        return x if group == 1 else ops.repeat(x, group, axis=1)

    def _check_call_shapes(self, query, value, key):
        for name, tensor in (("query", query), ("value", value), ("key", key)):
            _validation.check_rank(tensor.shape, 3, name, "rank 3 (batch, seq, features)")
        k_len, v_len = key.shape[1], value.shape[1]
        if k_len is not None and v_len is not None and k_len != v_len:
            raise ValueError(
                "`key` and `value` must have the same length (axis 1). Received: "
                f"key.shape={tuple(key.shape)}, value.shape={tuple(value.shape)}"
            )
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
        output_dim = self.output_dim or query_shape[-1]
        return tuple(query_shape[:-1]) + (output_dim,)

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
        batch, q_len = query.shape[0], query.shape[1]
        kv_len = key.shape[1] if cache is None else cache.shape[1]
        output = _common.attention_output_spec(
            self,
            self.compute_output_shape(query.shape, value.shape, key.shape),
            (batch, self.num_heads, q_len, kv_len),
            return_attention_scores,
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
                "seed": self.seed,
                "implementation": self.implementation,
                "sliding_window": self.sliding_window,
                **self.projection.get_config(),
            }
        )
        return config


# Incremental decoding, in three steps: check the cache and its index, write the new
# keys/values into it, and build the mask over all the cached keys.


def _check_cache(cache, cache_index, keys_shape, features):
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
    if (
        isinstance(cache_index, int)
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

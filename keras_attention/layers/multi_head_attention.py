"""`MultiHeadAttention`: self-, cross- and grouped-query attention with a decoding cache."""

import functools
import math
import numbers

import keras
from keras import ops

from keras_attention import _validation, masks
from keras_attention import ops as attention_ops
from keras_attention.layers import (
    _attention_axes,
    _attention_options,
    _common,
    _decoding_cache,
    _keras_hook,
)


@keras.saving.register_keras_serializable(package="keras_attention")
class MultiHeadAttention(_common.LoraMixin, keras.layers.Layer):
    """Multi-head attention: `num_heads` attentions over learned projections, concatenated.

    For each head `h`: `head_h = softmax(Q_h K_h^T / sqrt(key_dim) + mask) V_h`, and
    the output is `concat(head_1, ..., head_H) W_o`. Dividing by `sqrt(key_dim)`
    keeps the softmax out of saturation (see `keras_attention.ops`). The attention
    math is `keras_attention.ops.scaled_dot_product_attention`; masks are merged by
    `keras_attention.masks.merge_attention_masks`.

    The call signature is `keras.layers.MultiHeadAttention`'s: one swaps for the other.

    Weights: `keras.layers.Dense` sublayers `query_dense`, `key_dense`, `value_dense`,
    `output_dense` (and `gate_dense` with `use_gate`); head `h` uses columns
    `h * key_dim:(h + 1) * key_dim` of a projection. Porting weights from
    `keras.layers.MultiHeadAttention`, and what else differs from it: docs/guide.md,
    "Moving from Keras' layers".

    Grouped-query attention (GQA; multi-query attention for `num_key_value_heads=1`):
    query heads come in contiguous groups of `num_heads // num_key_value_heads`, and
    group `g` (query heads `g * group:(g + 1) * group`) shares key/value head `g`, as
    in `keras.layers.GroupedQueryAttention`. It equals ordinary multi-head attention
    whose key/value kernels repeat each shared head `group` times.

    Incremental decoding: `get_initial_cache(batch_size, max_length)` returns an empty
    cache, ONE tensor `(batch, max_length, num_key_value_heads * (key_dim + value_dim))`
    holding per position the projected keys, then values (its layout, the ring of a
    `sliding_window`, the int8 cache of `dtype="int8"`: `layers/_decoding_cache.py`).
    Called with `cache` and `cache_index`, the layer writes the new token(s) at
    positions `[cache_index, cache_index + new_len)`, and new query `i` attends
    causally to the cached positions `<= cache_index + i`.

    Extending: a subclass may override Keras' hook `_compute_attention(query, key,
    value, attention_mask=None, training=None)`; it then replaces the attention core on
    every path. It gets the projected heads in Keras' layout `(batch, seq, heads, dim)`
    (each key/value head repeated for its query heads; with a cache, the keys/values of
    every cache slot, or of the ring's slots then the new tokens; with `attention_axes`,
    the flattened rank-3 form) and the call's one boolean mask (padding, causal, cache
    and window merged); it returns `(output (batch, q_len, heads, value_dim), scores)`.

    Args:
        num_heads: positive int, number of query heads.
        key_dim: positive int, size of each query/key head.
        value_dim: positive int, size of each value head; defaults to `key_dim`.
        num_key_value_heads: positive int dividing `num_heads`, number of key/value
            heads; defaults to `num_heads` (ordinary multi-head attention).
        dropout: float in `[0, 1)`, dropout on the attention probabilities.
        use_bias: whether the four projections have biases, or a tuple of those
            that do, from `("query", "key", "value", "output")` (Qwen2: the first
            three); the gate's bias follows `"query"`.
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
        implementation: how the attention core runs: `None` (default) uses the plain
            path and switches by itself to an exact, memory-efficient one (`"flash"`
            on TensorFlow, `"chunked"` elsewhere) for large score tensors when neither
            scores nor dropout are needed (thresholds: `implementation` of
            `keras_attention.ops.scaled_dot_product_attention`); `"plain"`,
            `"chunked"`, `"flash"` or `"fused"` force a path (calls that need the
            scores or dropout use `"plain"`, except with `"fused"`, which refuses
            dropout and `return_attention_scores=True` with a `ValueError`, as Keras'
            `flash_attention=True` does).
        flash_attention: Keras' argument: `True` is `implementation="fused"` (the
            backend's fused kernel), `False` is `implementation="plain"`, `None`
            (default) leaves `implementation` to choose.
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
        attention_scale: `None` (`1 / sqrt(key_dim)`) or a positive float
            multiplying `Q K^T` instead (T5: 1.0; Gemma: `query_pre_attn_scalar ** -0.5`).
        qk_norm_epsilon: positive float, the epsilon of `query_norm`/`key_norm`.
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
        cache_write_length: optional int or scalar int tensor `n` (with `cache`):
            keep only the first `n` new tokens in the returned cache, as if the
            call had ended at position `cache_index + n`; the new queries still
            attend to all of them. A prefill of prompts of different lengths keeps
            the positions every row has, where the decoding loop resumes (a ring
            filled past them would have lost keys the window still needs).
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
        flash_attention=None,
        sliding_window=None,
        position_embedding=None,
        score_bias=None,
        soft_cap=None,
        query_norm=None,
        key_norm=None,
        attention_scale=None,
        qk_norm_epsilon=1e-6,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.projection = _common.ProjectionSettings.from_arguments(locals(), self.dtype_policy)
        _attention_options.check_sizes(
            num_heads, key_dim, value_dim, num_key_value_heads, output_dim
        )
        output_shape = _attention_axes.check_output_shape(output_shape, output_dim)
        attention_axes = _attention_axes.check_attention_axes(attention_axes)
        _validation.check_bool(use_gate, "use_gate")
        _validation.check_rate(dropout, "dropout")
        use_bias, with_bias = _common.bias_parts(use_bias, _attention_options.BIAS_PARTS)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise ValueError(f"`seed` must be an integer or None. Received: seed={seed!r}")
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
        self.flash_attention = flash_attention
        self.implementation = _attention_options.implementation(
            implementation, flash_attention, dropout
        )
        self.seed = seed
        _validation.check_positive_int(sliding_window, "sliding_window", allow_none=True)
        self.sliding_window = sliding_window
        _attention_options.set_score_options(
            self,
            position_embedding,
            score_bias,
            soft_cap,
            query_norm,
            key_norm,
            qk_norm_epsilon,
            attention_scale,
        )
        self.supports_masking = True
        self.seed_generator = keras.random.SeedGenerator(seed) if dropout > 0 else None

        self._value_dim = value_dim or key_dim
        self._kv_heads = num_key_value_heads or num_heads
        self._with_bias = with_bias  # the projections with a bias (`use_bias`)
        self.query_dense = self._dense(num_heads * key_dim, "query")
        self.key_dense = self._dense(self._kv_heads * key_dim, "key")
        self.value_dense = self._dense(self._kv_heads * self._value_dim, "value")
        # The gate of gated attention: sigmoid(query W_g + b_g) multiplies each
        # head's output before the output projection (Qiu et al., 2025).
        self.gate_dense = None
        if use_gate:
            self.gate_dense = self._dense(num_heads * self._value_dim, "gate", "sigmoid")
        # The output size depends on the query's features when output_dim and
        # output_shape are None, so this Dense gets its units in build().
        self.output_dense = None
        if output_shape is not None or output_dim is not None:
            units = output_dim or int(math.prod(output_shape))
            self.output_dense = self._dense(units, "attention_output")

    def build(self, query_shape, value_shape, key_shape=None):
        query_shape, value_shape = tuple(query_shape), tuple(value_shape)
        key_shape = value_shape if key_shape is None else tuple(key_shape)
        self._check_shapes(query_shape, value_shape, key_shape)
        for name, shape in (("query", query_shape), ("value", value_shape), ("key", key_shape)):
            _validation.check_known_features(shape, name)
        if self.output_dense is None:
            self.output_dense = self._dense(query_shape[-1], "attention_output")
        self.query_dense.build(query_shape)
        self.key_dense.build(key_shape)
        for norm in (self.query_norm_layer, self.key_norm_layer):
            if norm is not None:
                norm.build((None, None, None, self.key_dim))
        if self.rotary_embedding is not None and not self.rotary_embedding.built:
            rank = 3 + abs(self.rotary_embedding.sequence_axis)  # a rank its axis fits
            self.rotary_embedding.build((None,) * (rank - 1) + (self.key_dim,))
        if self.score_bias is not None and not self.score_bias.built:
            self.score_bias.build((None,), (None,))
        self.value_dense.build(value_shape)
        if self.gate_dense is not None:
            self.gate_dense.build(query_shape)
        self.output_dense.build(tuple(query_shape[:-1]) + (self.num_heads * self._value_dim,))
        self.built = True

    def _dense(self, units, name, activation=None):
        """A projection; its bias follows its part in `use_bias` (the gate's: "query")."""
        part = {"attention_output": "output", "gate": "query"}.get(name, name)
        return self.projection.dense(
            units, name, use_bias=part in self._with_bias, activation=activation
        )

    def _output_features(self, query_shape):
        """The trailing output axes: `output_shape`, `output_dim` or the query's features."""
        return self._output_shape or (self.output_dim or query_shape[-1],)

    def _check_shapes(self, query_shape, value_shape, key_shape):
        """The shape checks of `build`, `call` and the symbolic shapes, in one place."""
        _attention_axes.check_shapes(query_shape, value_shape, key_shape, self.attention_axes)

    @property
    def _cache_layout(self):  # a position's features, the key/value heads
        return self._kv_heads * (self.key_dim + self._value_dim), self._kv_heads

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
            dtype: the cache's float dtype (default: the layer's compute dtype), or
                `"int8"`: a `QuantizedCache` (int8 keys/values and a float32 scale per
                position and head, `layers/_decoding_cache.py`), 0.28x the float32
                bytes at `key_dim` 32, its keys and values within half a scale.
        """
        if not self.built:
            raise ValueError(
                f"Layer '{self.name}' is not built yet: call it on inputs or call "
                "`build(query_shape, value_shape)` first, so that the projections "
                "exist before a cache is made."
            )
        layout, window = self._cache_layout, self.sliding_window
        dtype = dtype or self.compute_dtype
        return _decoding_cache.initial_cache(batch_size, max_length, layout, window, dtype)

    def call(
        self,
        query,
        value,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
        cache=None,
        cache_index=None,
        key_value_cache=None,
        cache_write_length=None,
    ):
        if key is None:
            key = value
            key_mask = None
        self._check_call_shapes(query, value, key)
        _decoding_cache.check_call_arguments(
            cache, cache_index, key_value_cache, cache_write_length
        )
        if _attention_axes.needs_flattening(self.attention_axes, len(query.shape)):
            if cache is not None or key_value_cache is not None:
                raise ValueError(
                    "`cache` and `key_value_cache` need rank-3 inputs attending over "
                    f"axis 1. Received: query.shape={tuple(query.shape)}, "
                    f"attention_axes={self.attention_axes}"
                )

            attend = functools.partial(
                self._attend,
                use_causal_mask=use_causal_mask,
                return_attention_scores=return_attention_scores,
                training=training,
            )
            return _attention_axes.attend_over_axes(
                attend,
                query,
                value,
                key,
                (query_mask, value_mask, key_mask),
                attention_mask,
                self.attention_axes,
                self._output_features(query.shape),
                self.num_heads,
            )
        if cache is not None:
            return self._attend_cached(
                query,
                key,
                value,
                cache,
                cache_index,
                return_attention_scores,
                training,
                write_length=cache_write_length,
                query_mask=query_mask,
                key_padding=masks.combine_masks(value_mask, key_mask),
                attention_mask=attention_mask,
            )
        output, scores = self._attend(
            query,
            key,
            value,
            key_value_cache,
            query_mask=query_mask,
            value_mask=value_mask,
            key_mask=key_mask,
            attention_mask=attention_mask,
            use_causal_mask=use_causal_mask,
            return_attention_scores=return_attention_scores,
            training=training,
        )
        return (output, scores) if return_attention_scores else output

    # The rank-3 path in steps: the heads of the projections, the keys/values/mask of
    # each cache mode, the attention, the output projection. Keys and values stay in
    # the heads layout `(batch, heads, seq, dim)` from the projection to the attention
    # when there is no cache: a head merge and split around the rotated/normalized keys
    # would be fused by the LiteRT converter into one reshape with two dynamic sizes,
    # which it refuses. The cache's `(batch, seq, features)` layout is used only with
    # a cache.

    def _attend(
        self,
        query,
        key,
        value,
        key_value_cache=None,
        return_attention_scores=False,
        training=None,
        **mask_arguments,
    ):
        """Rank-3 attention without a decoding cache: `(output, scores)`, scores None
        unless asked for. The key and value heads are projected, or taken from a
        `key_value_cache` made by `compute_key_value_cache`; the mask is
        `masks.merge_attention_masks` of `mask_arguments`."""
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
        heads, scores = self._attend_heads(
            self._query_heads(query, 0),
            keys,
            values,
            mask,
            self._bias_with_offset(0),
            self.sliding_window,
            return_attention_scores,
            training,
        )
        return self._output(heads, query), scores

    def _attend_cached(
        self,
        query,
        key,
        value,
        cache,
        cache_index,
        return_attention_scores,
        training,
        write_length=None,
        **mask_arguments,
    ):
        """Rank-3 attention with a decoding cache: the new tokens' keys and values are
        written into it (`_decoding_cache.update`; the first `write_length` of them
        when given) and the new queries attend over all cached ones. Returns `(output, new_cache)` or `(output, scores, new_cache)`."""
        q_len = ops.shape(query)[1]
        queries = self._query_heads(query, cache_index)
        keys, values = self._project_keys(key, cache_index), self.value_dense(value)
        new_cache, keys, values, mask, cache_index, key_positions = _decoding_cache.update(
            cache,
            cache_index,
            keys,
            values,
            self._cache_layout,
            self.sliding_window,
            q_len,
            write_length,
            **mask_arguments,
        )
        if key_positions is None:
            bias = self._bias_with_offset(cache_index)
        elif self.score_bias is not None:
            query_positions = ops.arange(q_len, dtype="int32") + cache_index
            bias = self.score_bias(query_positions, key_positions)
        else:
            bias = None
        keys = attention_ops.split_heads(keys, self._kv_heads)
        values = attention_ops.split_heads(values, self._kv_heads)
        # No `sliding_window` here: the cache's mask holds the window.
        heads, scores = self._attend_heads(
            queries, keys, values, mask, bias, None, return_attention_scores, training
        )
        output = self._output(heads, query)
        return (output, scores, new_cache) if return_attention_scores else (output, new_cache)

    def _heads(self, projected, num_heads, norm, start_index):
        """`(batch, seq, num_heads * dim)` projections as `(batch, num_heads, seq, dim)`
        heads, normalized (QK-norm) then rotated (RoPE) when the layer asks for it."""
        heads = attention_ops.split_heads(projected, num_heads)
        if norm is not None:
            heads = norm(heads)
        if self.rotary_embedding is not None:
            heads = self.rotary_embedding.rotate(heads, start_index=start_index)
        return heads

    def _query_heads(self, query, start_index):
        return self._heads(
            self.query_dense(query), self.num_heads, self.query_norm_layer, start_index
        )

    def _key_heads(self, key, start_index):
        return self._heads(self.key_dense(key), self._kv_heads, self.key_norm_layer, start_index)

    def _project_keys(self, key, start_index):
        """`key_dense(key)`, normalized and rotated per head when asked, in the
        cache's `(batch, seq, num_key_value_heads * key_dim)` layout."""
        if self.key_norm_layer is None and self.rotary_embedding is None:
            return self.key_dense(key)
        return attention_ops.merge_heads(self._key_heads(key, start_index))

    def _bias_with_offset(self, offset):
        """The score bias (None without one) as the callable of positions that the
        attention function evaluates a block at a time; queries start at `offset`."""
        score_bias = self.score_bias
        if score_bias is None:
            return None

        def bias(query_positions, key_positions):
            return score_bias(query_positions + ops.cast(offset, "int32"), key_positions)

        return bias

    def _attend_heads(
        self, queries, keys, values, mask, bias, sliding_window, return_attention_scores, training
    ):
        """The attention of the query heads over the key/value heads `(batch, heads,
        seq, dim)`: `(heads, scores)`, scores None unless asked for. Runs a subclass'
        `_compute_attention` (Keras' hook) when it overrides it, else the core."""
        if type(self)._compute_attention is MultiHeadAttention._compute_attention:
            return self._attention_core(
                queries, keys, values, mask, bias, sliding_window, return_attention_scores, training
            )
        query, key, value, mask = _keras_hook.hook_inputs(
            queries, keys, values, mask, sliding_window, self.num_heads // self._kv_heads
        )
        # Only what Keras' signature lacks is passed by name, and only when needed, so
        # overrides with Keras' signature keep working.
        extra = {"return_attention_scores": True} if return_attention_scores else {}
        if bias is not None:
            extra["score_bias"] = bias
        output, scores = self._compute_attention(
            query, key, value, attention_mask=mask, training=training, **extra
        )
        return _keras_hook.swap_seq_and_heads(output), scores

    def _compute_attention(
        self,
        query,
        key,
        value,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
        score_bias=None,
    ):
        """Keras' extension point: the attention of projected heads, in Keras'
        layout. Override it to change the attention; see the class docstring for
        what it receives on each path.

        Args:
            query: `(batch, q_len, num_heads, key_dim)`, normalized and rotated
                when the layer does so.
            key: `(batch, kv_len, num_heads, key_dim)` (key/value heads repeated
                for their query heads).
            value: `(batch, kv_len, num_heads, value_dim)`.
            attention_mask: boolean `(batch or 1, q_len, kv_len)`, or
                `(batch or 1, num_heads or 1, q_len, kv_len)`, `True` = may
                attend; `None` when nothing is masked.
            training: whether dropout is active.
            return_attention_scores: whether the scores are needed.
            score_bias: the layer's `score_bias` as a callable of positions
                (passed only when the layer has one).

        Returns:
            `(output (batch, q_len, num_heads, value_dim), scores)`, scores
            `(batch, num_heads, q_len, kv_len)` or None.
        """
        swap = _keras_hook.swap_seq_and_heads
        heads, scores = self._attention_core(
            swap(query),
            swap(key),
            swap(value),
            attention_mask,
            score_bias,
            None,
            return_attention_scores,
            training,
        )
        return swap(heads), scores

    def _attention_core(
        self, queries, keys, values, mask, bias, sliding_window, return_attention_scores, training
    ):
        """`keras_attention.ops.scaled_dot_product_attention` of the heads with the
        layer's options: `(heads, scores)`, scores None unless asked for."""
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
            scale=self.attention_scale,
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

    def _check_call_shapes(self, query, value, key):
        self._check_shapes(tuple(query.shape), tuple(value.shape), tuple(key.shape))
        denses = (self.query_dense, self.value_dense, self.key_dense)
        _attention_axes.check_built_features(
            zip(("query", "value", "key"), (query, value, key), denses)
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
        axes = _attention_axes.attention_axes_for(self.attention_axes, len(query.shape))
        key_shape = key.shape
        if cache is not None:
            key_shape = (
                None,
                _decoding_cache.key_length(cache.shape[1], key.shape[1], self.sliding_window),
            )
        scores_shape = _attention_axes.scores_shape(query.shape, key_shape, axes, self.num_heads)
        output = _common.attention_output_spec(
            self, output_shape, scores_shape, return_attention_scores
        )
        if cache is None:
            return output
        output = output if isinstance(output, tuple) else (output,)
        return output + (_decoding_cache.output_spec(cache),)

    def _implementation_for(self, return_attention_scores, training):
        return _attention_options.implementation_for_call(
            self.implementation, self.dropout, return_attention_scores, training
        )

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
                "flash_attention": self.flash_attention,
                "sliding_window": self.sliding_window,
                **_attention_options.score_options_config(self),
                **self.projection.get_config(),
            }
        )
        return config

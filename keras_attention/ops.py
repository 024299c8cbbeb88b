"""The attention math: `softmax(Q K^T * scale + bias) V`, written once with `keras.ops`.

Every layer of the package projects its inputs and calls
:func:`scaled_dot_product_attention`; none re-implements the math. The head
reshapes shared by the multi-head layers live here too.
"""

import copy
import math
import numbers
import warnings

import keras
from keras import ops

from keras_attention import _validation
from keras_attention import backend as backend_lib
from keras_attention import masks as masks_lib

__all__ = [
    "scaled_dot_product_attention",
    "attention_from_scores",
    "split_heads",
    "merge_heads",
    "apply_rotary_embedding",
    "alibi_slopes",
    "relative_position_buckets",
]

_LOW_PRECISION = ("float16", "bfloat16")


def scaled_dot_product_attention(
    query,
    key,
    value,
    mask=None,
    causal=False,
    scale=None,
    dropout_rate=0.0,
    seed=None,
    training=False,
    return_attention_scores=False,
    implementation=None,
    chunk_size=None,
    bias=None,
    soft_cap=None,
    sliding_window=None,
):
    """Scaled dot-product attention: `softmax(Q K^T * scale + bias) V`.

    Each query is compared with every key by a dot product; the scores become
    probabilities with a softmax over the keys, and the output is the probability-
    weighted sum of the values. Dot products of `d_k`-dimensional vectors with unit-
    variance entries have variance `d_k`, so without `scale = 1/sqrt(d_k)` the
    softmax saturates for large `d_k` and its gradients vanish.

    Args:
        query: `(..., q_len, d_k)`.
        key: `(..., kv_len, d_k)`. For `(batch, heads, seq, dim)` inputs, keys
            and values may have fewer heads than the queries, a divisor of them
            (grouped-query attention): query head `h` uses key/value head
            `h // (heads / kv_heads)`.
        value: `(..., kv_len, d_v)`.
        mask: optional boolean tensor broadcastable to `(..., q_len, kv_len)`,
            `True` where the query may attend the key (0/1 integers are accepted).
        causal: if `True`, query `i` attends only keys `j <= i` (top-left aligned,
            as in Keras and PyTorch). Combined with `mask` by logical AND.
        scale: positive float multiplying the scores; default `1 / sqrt(d_k)`.
        dropout_rate: float in `[0, 1)`, dropout on the attention probabilities
            (applied only when `training` is true).
        seed: int or `keras.random.SeedGenerator` for dropout.
        training: whether dropout is active.
        return_attention_scores: if `True`, also return the attention probabilities
            (after softmax and masking, before dropout).
        implementation: `None` (choose), `"plain"`, `"chunked"`, `"flash"` or
            `"fused"`.
            `"plain"` materialises the `(..., q_len, kv_len)` scores. `"chunked"` is
            exact and memory-efficient: queries are processed `chunk_size` rows at a
            time and the backward pass recomputes each chunk's scores instead of
            storing them, so memory grows with `chunk_size * kv_len`, not
            `q_len * kv_len`. `"flash"` is exact and memory-efficient too, and
            faster: FlashAttention-2 tiles of `FLASH_BLOCK_Q` queries by
            `FLASH_BLOCK_K` keys with an online softmax, a hand-written backward
            pass from the saved log-sum-exp, and the tiles the causal mask or the
            sliding window hide skipped (time and memory `O(q_len * window)`);
            keys and values with fewer heads than the queries (grouped-query
            attention) are shared without copies. It runs TensorFlow's kernel
            (`keras_attention.backend.flash_tensorflow`; inside a traced function
            with static lengths its passes are compiled by XLA on the first call
            of a shape); on JAX and PyTorch, and for a tensor `bias` or a callable
            one with trainable weights, it runs the chunked path. `"fused"` calls `keras.ops.dot_product_attention` (the
            backend's fused kernel where it has one) and keeps this function's
            semantics (fully masked rows give zeros; where the backend's kernel needs
            `d_k == d_v`, as JAX's does, the smaller of the two is zero-padded, which
            changes no number). `None` picks `"flash"` (`"chunked"` where the
            backend has no flash kernel) when the scores would exceed
            `CHUNKED_THRESHOLD` elements and neither weights nor dropout are
            requested; on TensorFlow also above `FLASH_THRESHOLD` elements where
            the flash kernel runs (measured faster than plain there); else the
            backend's fastest path (measured:
            `keras_attention.backend.default_implementation()`; `"fused"` only for
            `(batch, heads, seq, dim)` inputs). The weights and dropout need the full
            scores, so `"chunked"`/`"flash"`/`"fused"` refuse them.
        chunk_size: query rows per chunk for `"chunked"`; by default chosen so one
            chunk's scores hold about `CHUNK_ELEMENTS` numbers.
        bias: optional additive score bias (ALiBi, T5 relative positions, ...):
            either a tensor broadcastable to the scores `(..., q_len, kv_len)`
            (each of its dimensions 1 or equal to the scores'), or a callable
            `bias(query_positions, key_positions)` taking two int32 vectors of
            0-based positions and returning a tensor broadcastable to
            `(..., len(query_positions), len(key_positions))`. A callable lets the
            chunked path compute the bias a block at a time instead of
            materialising `(q_len, kv_len)`. Added after the soft cap.
        soft_cap: optional positive float `c`: the scaled scores become
            `c * tanh(scores / c)` (logit soft-capping, as in Gemma 2) before the
            bias and the mask. Not available on `"fused"` (no backend kernel has it).
        sliding_window: optional positive int `w`: query `i` sees only keys `j`
            with `|i - j| < w` (`keras_attention.masks.sliding_window_mask`);
            with `causal=True` that is the `w` most recent keys, `i - w < j <= i`.
            Combined with `mask` by logical AND.

        The logits are therefore
        `mask(bias + soft_cap(scale * Q K^T))`, computed in float32 under
        mixed precision.

    Returns:
        `(..., q_len, d_v)`, or `(output, weights)` with weights
        `(..., q_len, kv_len)` when `return_attention_scores=True`.
        A query row whose keys are all masked gets zero weights and a zero output,
        with zero (finite) gradients, rather than a uniform average or NaN.

    Example:
    >>> import numpy as np
    >>> q = np.random.rand(2, 4, 8).astype("float32")
    >>> kv = np.random.rand(2, 6, 8).astype("float32")
    >>> tuple(scaled_dot_product_attention(q, kv, kv).shape)
    (2, 4, 8)
    """
    query = ops.convert_to_tensor(query)
    key = ops.convert_to_tensor(key, dtype=query.dtype)
    value = ops.convert_to_tensor(value, dtype=query.dtype)
    _check_qkv_shapes(query.shape, key.shape, value.shape)
    _validation.check_rate(dropout_rate, "dropout_rate")
    if scale is None:
        scale = _default_scale(query)
    else:
        _validation.check_positive_float(scale, "scale")

    if soft_cap is not None:
        _validation.check_positive_float(soft_cap, "soft_cap")
    _validation.check_positive_int(sliding_window, "sliding_window", allow_none=True)

    scores_shape = tuple(query.shape[:-1]) + (key.shape[-2],)
    mask = _check_mask(mask, scores_shape)
    bias = _check_bias(bias, scores_shape)
    implementation = _choose_implementation(
        implementation,
        scores_shape,
        return_attention_scores,
        training and dropout_rate > 0,
        soft_cap is not None,
        flash_kernel=lambda: _runs_flash_kernel(len(query.shape), bias),
    )
    if implementation == "fused" and len(query.shape) != 4:
        raise ValueError(
            "implementation='fused' needs (batch, heads, seq, dim) inputs. "
            f"Received: query.shape={tuple(query.shape)}"
        )
    if implementation != "flash":
        # The flash path reads grouped-query keys without this copy.
        key, value = _repeat_kv_heads(query, key, value)
    score_mod = _ScoreModifier(bias, soft_cap, sliding_window, causal)
    if implementation == "fused" and isinstance(scale, numbers.Real):
        # The kernel scales inside; a separate pass over the queries costs ~5 %.
        return _fused_attention(query, key, value, mask, score_mod, float(scale))
    # Scaling the queries (q_len * d_k numbers) is cheaper than scaling the scores
    # (q_len * kv_len) and keeps float16 products further from overflow.
    query = query * ops.cast(scale, query.dtype)
    if implementation == "chunked":
        return _chunked_attention(query, key, value, mask, score_mod, chunk_size)
    if implementation == "flash":
        return _flash_attention(query, key, value, mask, score_mod)
    if implementation == "fused":
        return _fused_attention(query, key, value, mask, score_mod, 1.0)

    q_len, kv_len = ops.shape(query)[-2], ops.shape(key)[-2]
    mask = masks_lib.combine_masks(mask, score_mod.mask(q_len, kv_len))
    bias = score_mod.block_bias(q_len, kv_len, scores_shape=scores_shape)
    scores = score_mod.apply(ops.einsum("...qd,...kd->...qk", query, key), bias)
    return attention_from_scores(
        scores,
        value,
        mask=mask,
        dropout_rate=dropout_rate,
        seed=seed,
        training=training,
        return_attention_scores=return_attention_scores,
    )


def attention_from_scores(
    scores,
    value,
    mask=None,
    dropout_rate=0.0,
    seed=None,
    training=False,
    return_attention_scores=False,
):
    """Masked softmax of raw scores, then the weighted sum of values.

    The second half of every attention in the package: dot-product attention computes
    `scores = Q K^T * scale`, additive attention `v^T tanh(W_q q + W_k k)`, and both
    finish here, so masking, the float32 softmax and the zero rows live in one place.

    Args:
        scores: `(..., q_len, kv_len)` attention logits.
        value: `(..., kv_len, d_v)`.
        mask: optional boolean, broadcastable to `scores`, `True` = may attend.
        dropout_rate, seed, training, return_attention_scores: as in
            :func:`scaled_dot_product_attention`.

    Returns:
        `(..., q_len, d_v)`, or `(output, weights)` with `return_attention_scores`.
    """
    _validation.check_rate(dropout_rate, "dropout_rate")
    mask = _check_mask(mask, tuple(scores.shape))
    weights = ops.cast(_masked_softmax(scores, mask), value.dtype)

    probabilities = weights
    if training and dropout_rate > 0.0:
        probabilities = keras.random.dropout(weights, rate=dropout_rate, seed=seed)
    output = ops.matmul(probabilities, value)
    if return_attention_scores:
        return output, weights
    return output


def _masked_softmax(scores, mask, in_loop=False):
    """The float32 softmax of `scores` over the keys, exactly 0 where `mask` is False.

    `in_loop`: the softmax runs inside a loop's body. There, on TensorFlow, it is
    written out (`exp(s - max) / sum`, the same numbers to rounding): the graph
    optimizer cannot see the rank of a `Softmax` op's input inside a loop and prints
    a warning for each (tensorflow/tensorflow#50575).
    """
    # Softmax in float32 even under mixed precision: float16 exp() overflows at 11.
    if keras.backend.standardize_dtype(scores.dtype) in _LOW_PRECISION:
        scores = ops.cast(scores, "float32")
    if mask is not None:
        scores = scores + masks_lib.mask_to_bias(mask, scores.dtype)
    if in_loop and keras.backend.backend() == "tensorflow":
        exp = ops.exp(scores - ops.max(scores, axis=-1, keepdims=True))
        weights = exp / ops.sum(exp, axis=-1, keepdims=True)
    elif scores.shape[-1] == 1:
        # A softmax over one key is 1, and keras.ops.softmax warns about the axis.
        # Still the softmax, not ones: a graph traced with one key (PyTorch's ONNX
        # and OpenVINO exports trace at size 1) must stay right for more keys.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="You are using a softmax over axis")
            weights = ops.softmax(scores, axis=-1)
    else:
        weights = ops.softmax(scores, axis=-1)
    if mask is not None:
        # Exact zeros for masked keys; a fully masked row (where the softmax of equal
        # biases is uniform) becomes all zeros, so its output is 0 and its gradient
        # is 0, instead of the mean of the values.
        weights = weights * ops.cast(mask, weights.dtype)
    return weights


# Above this many score elements (batch * heads * q_len * kv_len; 2**28 float32
# numbers are 1 GiB, and the plain path keeps several such tensors for the backward
# pass) the default implementation switches to the chunked one. Below it the plain
# path is faster: the chunked one recomputes the scores in the backward pass.
CHUNKED_THRESHOLD = 2**28
# Above this many score elements the default runs the flash path where the backend has
# a flash kernel (TensorFlow) and the kernel covers the call (see `_runs_flash_kernel`):
# measured there (forward+backward of `MultiHeadAttention` at batch 8, 8 heads of 32,
# `benchmarks/bench_attention.py --implementation plain flash`, and of the core at
# batch 1, 8 heads of 64; docs/performance.md), flash is faster than plain from
# 2**24 scores (batch 8, N = 512) up, level at 2**22 and slower at 2**20.
FLASH_THRESHOLD = 2**23
# Target size of one chunk's scores in the chunked implementation.
CHUNK_ELEMENTS = 2**23
# Number of chunks when the query length is only known at run time.
DYNAMIC_NUM_CHUNKS = 32
_IMPLEMENTATIONS = (None, "plain", "chunked", "flash", "fused")


def check_implementation(implementation):
    """Raise `ValueError` unless `implementation` names an attention implementation."""
    _validation.check_one_of(implementation, "implementation", _IMPLEMENTATIONS)


def _choose_implementation(
    implementation,
    scores_shape,
    need_weights,
    need_dropout,
    need_soft_cap=False,
    flash_kernel=None,
):
    """The path to run. `flash_kernel()` says whether the flash kernel would run."""
    check_implementation(implementation)
    if implementation in ("chunked", "flash", "fused") and (need_weights or need_dropout):
        raise ValueError(
            f"implementation={implementation!r} cannot return attention weights or "
            "apply attention dropout (both need the full score matrix); use "
            "implementation='plain' or None."
        )
    if implementation == "fused" and need_soft_cap:
        raise ValueError(
            "implementation='fused' cannot apply `soft_cap` (no backend's fused kernel "
            "computes `c * tanh(scores / c)`); use implementation='plain', 'chunked' "
            "or None."
        )
    if implementation is not None:
        return implementation
    if need_weights or need_dropout:
        return "plain"
    # Only Python ints are compared: a symbolic dimension (JAX export with dynamic
    # shapes) cannot be compared with a number while tracing.
    if _all_static(scores_shape):
        size = math.prod(scores_shape)
        if size > CHUNKED_THRESHOLD:
            return "flash" if backend_lib.has_flash_attention() else "chunked"
        if (
            size > FLASH_THRESHOLD
            and backend_lib.has_flash_attention()
            and (flash_kernel is None or flash_kernel())
        ):
            return "flash"
    default = backend_lib.default_implementation()
    if default == "fused" and (len(scores_shape) != 4 or need_soft_cap):
        return "plain"  # the fused kernel wants (batch, heads, seq, dim), no soft cap
    return default


def _all_static(shape):
    return all(_static(d) for d in shape)


def _static(dim):
    return isinstance(dim, int) and not isinstance(dim, bool)


class _ScoreModifier:
    """The position-dependent parts of the logits: soft cap, bias, causal and window.

    Every path asks it for one block of queries `[q_offset, q_offset + q_len)`
    against all `kv_len` keys, so the chunked path never builds a `(q_len, kv_len)`
    bias or mask for the whole sequence.
    """

    def __init__(self, bias, soft_cap, sliding_window, causal):
        self.bias = bias
        self.soft_cap = soft_cap
        self.sliding_window = sliding_window
        self.causal = causal

    @property
    def bias_has_rows(self):
        """Whether a tensor bias varies along the query axis (must be chunked)."""
        return (
            self.bias is not None
            and not callable(self.bias)
            and len(self.bias.shape) >= 2
            and self.bias.shape[-2] != 1
        )

    def mask(self, q_len, kv_len, q_offset=0, k_offset=0):
        """Causal and sliding-window mask of the block, or `None`.

        The block holds queries `[q_offset, q_offset + q_len)` and keys
        `[k_offset, k_offset + kv_len)`; both masks depend only on the difference.
        """
        if not (self.causal or self.sliding_window is not None):
            return None
        offset = q_offset - k_offset
        causal = masks_lib.causal_mask(q_len, kv_len, offset) if self.causal else None
        window = None
        if self.sliding_window is not None:
            window = masks_lib.sliding_window_mask(q_len, kv_len, self.sliding_window, offset)
        return masks_lib.combine_masks(causal, window)

    def block_bias(self, q_len, kv_len, q_offset=0, scores_shape=None, k_offset=0):
        """The bias of the block (`None` without one); a callable is evaluated here."""
        if not callable(self.bias):
            return self.bias
        q_positions = backend_lib.positions(q_len) + ops.cast(q_offset, "int32")
        k_positions = backend_lib.positions(kv_len) + ops.cast(k_offset, "int32")
        bias = ops.convert_to_tensor(self.bias(q_positions, k_positions))
        if scores_shape is not None:
            _check_bias(bias, scores_shape)
        return bias

    def cap(self, scores):
        """`soft_cap * tanh(scores / soft_cap)`, or `scores` without a cap."""
        if self.soft_cap is None:
            return scores
        cap = ops.cast(self.soft_cap, scores.dtype)
        return cap * ops.tanh(scores / cap)

    def apply(self, scores, bias=None):
        """Soft cap, then `bias`, on raw scaled scores (float32 under mixed precision)."""
        if self.soft_cap is None and bias is None:
            return scores
        if keras.backend.standardize_dtype(scores.dtype) in _LOW_PRECISION:
            scores = ops.cast(scores, "float32")
        scores = self.cap(scores)
        if bias is not None:
            scores = scores + ops.cast(bias, scores.dtype)
        return scores


# Flash attention: one tile at a time -------------------------------------------

# Tile sizes of the flash path (`implementation="flash"`), measured on this project's
# 2-core AVX-512 machine (docs/performance.md): key blocks of FLASH_BLOCK_K keys, and
# query blocks of at most FLASH_BLOCK_Q queries, fewer when there are many (batch,
# head) pairs, so one tile's scores (batch * heads * block_q * block_k numbers) stay
# near FLASH_TILE_ELEMENTS: 256 x 512 was fastest for 8 heads at batch 1, 64 x 512
# for 8 heads at batch 8 (1.3x and 1.7x faster than 128 x 256 and 256 x 512).
# Re-measured with the compiled passes (batch 1, 8 heads of 64, N = 4096): 256 x 512
# and 256 x 256 equal, 128 x 512, 512 x 512 and 256 x 1024 5-11 % slower.
FLASH_BLOCK_Q = 256
FLASH_BLOCK_K = 512
FLASH_TILE_ELEMENTS = 2**21
# A finite "minus infinity" for masked logits and the initial running maximum:
# exp(_FLASH_NEG - _FLASH_NEG) = 1 keeps a fully masked row free of NaN (its
# probabilities are zeroed by `where`, not by the exponent).
_FLASH_NEG = -1e30


class _FlashTile:
    """The math of one (query block, key block) tile of flash attention, in keras.ops.

    FlashAttention-2 (Dao, 2023): the forward pass visits the key blocks of a query
    block with an online softmax (a running maximum `m`, sum `l` and unnormalised
    output), and keeps only the output and the log-sum-exp `m + log(l)` per query;
    the backward pass recomputes a tile's probabilities `P = exp(logits - lse)` from
    it, so no score matrix is ever stored. The backend module runs the loops.

    Layout: queries `(B, Hk, G, q_len, d)`, keys and values `(B, Hk, 1, kv_len, d)`
    (`Hk` key/value heads, `G` query heads per key/value head, so grouped-query
    heads share their keys without a copy); masks are 5-D and broadcast the same way.
    Queries arrive scaled. All softmax math is float32.
    """

    def __init__(self, score_mod, mask, num_heads, num_kv_heads, kv_len, pad_keys):
        self.score_mod = score_mod
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.kv_len = kv_len
        self.pad_keys = pad_keys
        self.head_range = None
        self.mask = None if mask is None else self.to_5d(mask)

    def heads(self, start, count):
        """The same tile for key/value heads `start ... start + count - 1` only (the
        backend may run groups of heads side by side; `start` may be a tensor, so
        that the groups share one compiled pass)."""
        part = copy.copy(self)
        if self.mask is not None and self.mask.shape[1] != 1:
            part.mask = _slice_heads(self.mask, start, count)
        part.head_range = (start, count)
        return part

    def to_5d(self, x):
        """A mask or bias broadcastable to `(B, H, q, k)` as `(B, Hk|1, G|1, q, k)`,
        restricted to `head_range` (along the key/value heads) when there is one."""
        x = ops.reshape(x, (1,) * (4 - len(x.shape)) + tuple(ops.shape(x)))
        shape = tuple(ops.shape(x))
        if x.shape[1] == 1 or self.num_heads == self.num_kv_heads:
            x = ops.expand_dims(x, 2)
        else:
            group = self.num_heads // self.num_kv_heads
            x = ops.reshape(x, (shape[0], self.num_kv_heads, group) + shape[2:])
        if self.head_range is not None and x.shape[1] != 1:
            x = _slice_heads(x, *self.head_range)
        return x

    def block(self, x, q_offset, k_offset, q_size, k_size):
        """The tile of a 5-D mask or bias, sliced only along its non-broadcast axes."""
        start = [0, 0, 0, 0, 0]
        size = list(ops.shape(x))
        if x.shape[3] != 1:
            start[3], size[3] = q_offset, q_size
        if x.shape[4] != 1:
            start[4], size[4] = k_offset, k_size
        return ops.slice(x, start, size)

    def logits(self, q, k, q_offset, k_offset, keys_first=False):
        """`(logits, capped scores, allowed)` of a tile, float32.

        Queries by keys, or keys by queries with `keys_first` (the backward pass's
        layout: its products then need no transposed probability tile).
        """
        q_size, k_size = q.shape[-2], k.shape[-2]
        if keys_first:
            scores = ops.einsum("...kd,...qd->...kq", k, q)
        else:
            scores = ops.einsum("...qd,...kd->...qk", q, k)
        orient = (lambda x: ops.swapaxes(x, -1, -2)) if keys_first else (lambda x: x)
        scores = ops.cast(scores, "float32")
        capped = self.score_mod.cap(scores)
        logits = capped
        if self.score_mod.bias is not None:
            bias = self.score_mod.block_bias(q_size, k_size, q_offset, k_offset=k_offset)
            logits = logits + orient(ops.cast(self.to_5d(bias), "float32"))
        allowed = self.score_mod.mask(q_size, k_size, q_offset, k_offset)
        if self.mask is not None:
            allowed = masks_lib.combine_masks(
                allowed, self.block(self.mask, q_offset, k_offset, q_size, k_size)
            )
        if self.pad_keys:
            keys = backend_lib.positions(k_size) + ops.cast(k_offset, "int32")
            allowed = masks_lib.combine_masks(allowed, ops.less(keys, self.kv_len))
        if keys_first and allowed is not None:
            if len(allowed.shape) == 1:  # the key padding alone: `(k_size,)`
                allowed = ops.expand_dims(allowed, 0)
            allowed = orient(allowed)
        return logits, capped, allowed

    def forward(self, state, q, k, v, q_offset, k_offset):
        """One online-softmax step: fold key block `k, v` into `(max, sum, acc)`."""
        m, total, acc = state
        logits, _, allowed = self.logits(q, k, q_offset, k_offset)
        if allowed is not None:
            logits = ops.where(allowed, logits, _FLASH_NEG)
        m_new = ops.maximum(m, ops.max(logits, axis=-1))
        p = ops.exp(logits - ops.expand_dims(m_new, -1))
        if allowed is not None:
            p = ops.where(allowed, p, 0.0)
        alpha = ops.exp(m - m_new)
        total = alpha * total + ops.sum(p, axis=-1)
        pv = ops.matmul(ops.cast(p, v.dtype), v)
        acc = ops.expand_dims(alpha, -1) * acc + ops.cast(pv, "float32")
        return m_new, total, acc

    @staticmethod
    def initial_state(q, d_v):
        """`(max, sum, acc)` before the first key block of query block `q`."""
        rows = tuple(ops.shape(q)[:-1])
        return (
            ops.full(rows, _FLASH_NEG, "float32"),
            ops.zeros(rows, "float32"),
            ops.zeros(rows + (d_v,), "float32"),
        )

    @staticmethod
    def finish(state, dtype):
        """`(output, lse)` of a query block; rows that saw no key give zeros."""
        m, total, acc = state
        seen = ops.greater(total, 0.0)
        safe = ops.where(seen, total, 1.0)
        output = ops.cast(acc / ops.expand_dims(safe, -1), dtype)
        return output, ops.where(seen, m + ops.log(safe), 0.0)

    def backward(self, q, k, v, d_out, lse, delta, q_offset, k_offset):
        """`(P^T, dS^T)` of a tile, keys by queries: `dS = P * (dO V^T - delta)`
        through the soft cap.

        `delta = rowsum(dO * O)`; the gradient with respect to the scaled scores is
        `dS`, with respect to the queries `dS K`, the keys `dS^T Q`, the values `P^T dO`.
        Keys by queries, the key and value gradients are plain products and the query
        gradient `(K^T dS^T)^T` transposes only `K`: a product that transposes the
        probability tile instead runs at about 60 % of this CPU's matmul speed.
        """
        logits, capped, allowed = self.logits(q, k, q_offset, k_offset, keys_first=True)
        p = ops.exp(logits - ops.expand_dims(lse, -2))
        if allowed is not None:
            p = ops.where(allowed, p, 0.0)
        dp = ops.cast(ops.einsum("...kd,...qd->...kq", v, d_out), "float32")
        ds = p * (dp - ops.expand_dims(delta, -2))
        if self.score_mod.soft_cap is not None:
            # d/ds [c tanh(s / c)] = 1 - tanh(s / c)^2
            ds = ds * (1.0 - ops.square(capped / self.score_mod.soft_cap))
        return p, ds


def _slice_heads(x, start, count):
    """Heads `start ... start + count - 1` (axis 1) of a 5-D `x`; `start` may be a
    tensor (the size stays static)."""
    size = list(ops.shape(x))
    size[1] = count
    return ops.slice(x, [0, start, 0, 0, 0], size)


def _chunked_attention(query, key, value, mask, score_mod, chunk_size):
    """Exact attention, `chunk_size` query rows at a time, recomputed in the backward.

    Each chunk sees every key, so its softmax is exact; a scan runs the
    chunks one after another (no two chunks' scores are alive at once) and
    `keras.remat` makes the backward pass recompute a chunk's scores instead of
    keeping them, so memory is O(chunk_size * kv_len) instead of O(q_len * kv_len).
    With a `sliding_window` w (static lengths), a chunk scores only the
    `chunk_size + w - 1` keys its queries can reach (`chunk_size + 2 (w - 1)`
    without `causal`), so time and memory grow as `q_len * w`, on every backend.
    """
    batch_shape = tuple(query.shape[:-2])
    kv_len = key.shape[-2]
    _validation.check_positive_int(chunk_size, "chunk_size", allow_none=True)
    q_len = query.shape[-2]
    if not _static(q_len):
        # Keras' scan needs a static number of steps: with a length unknown while
        # tracing, split the queries into a fixed number of chunks instead.
        q_len = ops.shape(query)[-2]
        num_chunks = DYNAMIC_NUM_CHUNKS
        chunk_size = (q_len + num_chunks - 1) // num_chunks
    else:
        if chunk_size is None:
            rows = math.prod(d for d in batch_shape if _static(d))
            rows *= kv_len if _static(kv_len) else 1024
            chunk_size = min(q_len, max(16, CHUNK_ELEMENTS // max(rows, 1)))
        num_chunks = -(-q_len // chunk_size)
    padded = num_chunks * chunk_size

    def to_chunks(x):
        # (..., q_len, f) -> (num_chunks, ..., chunk_size, f), x padded to query rank
        x = ops.reshape(x, (1,) * (len(query.shape) - len(x.shape)) + tuple(ops.shape(x)))
        pad = [(0, 0)] * (len(x.shape) - 2) + [(0, padded - q_len), (0, 0)]
        x = ops.pad(x, pad)
        x = ops.reshape(x, ops.shape(x)[:-2] + (num_chunks, chunk_size, ops.shape(x)[-1]))
        return backend_lib.moveaxis(x, -3, 0)

    chunked_mask = None
    if mask is not None:
        mask = ops.reshape(
            mask, (1,) * (len(query.shape) - len(mask.shape)) + tuple(ops.shape(mask))
        )
        if mask.shape[-2] != 1:
            chunked_mask = to_chunks(ops.cast(mask, "int8"))
            mask = None
    chunked_bias = to_chunks(score_mod.bias) if score_mod.bias_has_rows else None
    has_row_mask = chunked_mask is not None
    has_row_bias = chunked_bias is not None

    # With a sliding window a chunk's queries see at most `span` consecutive keys:
    # only those are sliced out and scored, so the work grows as q_len * window.
    span = None
    window = score_mod.sliding_window
    if window is not None and _static(kv_len) and _static(chunk_size):
        span = chunk_size + (window - 1) * (1 if score_mod.causal else 2)
        span = span if span < kv_len else None

    def key_slice(x, start):
        """`x[..., start:start + span]` (the last axis), or `x` when it has length 1."""
        if span is None or x is None or x.shape[-1] == 1:
            return x
        starts = [0] * (len(x.shape) - 1) + [start]
        return ops.slice(x, starts, tuple(ops.shape(x)[:-1]) + (span,))

    def attend_chunk(q_chunk, offset, mask_chunk, bias_chunk):
        k_start = 0
        chunk_key, chunk_value, row_mask, row_bias = key, value, mask, score_mod.bias
        if span is not None:
            k_start = ops.clip(offset - (window - 1), 0, kv_len - span)
            starts = [0] * (len(key.shape) - 2) + [k_start, 0]
            chunk_key = ops.slice(key, starts, tuple(ops.shape(key)[:-2]) + (span, key.shape[-1]))
            chunk_value = ops.slice(
                value, starts, tuple(ops.shape(value)[:-2]) + (span, value.shape[-1])
            )
            row_mask = key_slice(mask, k_start)
            mask_chunk = key_slice(mask_chunk, k_start) if has_row_mask else mask_chunk
            bias_chunk = key_slice(bias_chunk, k_start) if has_row_bias else bias_chunk
            if row_bias is not None and not callable(row_bias) and not has_row_bias:
                row_bias = key_slice(row_bias, k_start)

        # Only floating tensors enter the recomputed function (TensorFlow's
        # `recompute_grad` warns for every integer or boolean input it watches); the
        # offset and the mask chunk are constants of the recomputation, closed over.
        @keras.remat
        def attend(q_chunk, key, value, *bias_chunk):
            kv = ops.shape(key)[-2]
            chunk_mask = masks_lib.combine_masks(
                row_mask,
                ops.cast(mask_chunk, "bool") if has_row_mask else None,
                score_mod.mask(chunk_size, kv, offset, k_offset=k_start),
            )
            if has_row_bias:
                bias = bias_chunk[0]
            elif callable(row_bias):
                bias = score_mod.block_bias(chunk_size, kv, offset, k_offset=k_start)
            else:
                bias = row_bias
            scores = score_mod.apply(ops.einsum("...qd,...kd->...qk", q_chunk, key), bias)
            chunk_mask = _check_mask(chunk_mask, tuple(scores.shape))
            weights = _masked_softmax(scores, chunk_mask, in_loop=True)
            return ops.matmul(ops.cast(weights, value.dtype), value)

        return attend(q_chunk, chunk_key, chunk_value, *((bias_chunk,) if has_row_bias else ()))

    offsets = ops.arange(num_chunks, dtype="int32") * chunk_size
    placeholder = ops.zeros((num_chunks,), "int8")
    output_zeros = ops.zeros(
        tuple(ops.shape(query)[:-2]) + (chunk_size, value.shape[-1]), value.dtype
    )
    outputs = backend_lib.map_sequentially(
        lambda xs: attend_chunk(*xs),
        (
            to_chunks(query),
            offsets,
            chunked_mask if has_row_mask else placeholder,
            chunked_bias if has_row_bias else placeholder,
        ),
        output_zeros,
    )
    # (num_chunks, ..., chunk_size, d_v) -> (..., q_len, d_v)
    outputs = backend_lib.moveaxis(outputs, 0, -3)
    outputs = ops.reshape(outputs, ops.shape(outputs)[:-3] + (padded, value.shape[-1]))
    return outputs[..., :q_len, :]


def _runs_flash_kernel(rank, bias):
    """Whether `"flash"` runs the backend's flash kernel for inputs of this rank and
    this `bias` (else it runs the chunked path)."""
    return (
        backend_lib.has_flash_attention()
        and rank <= 4
        and (bias is None or callable(bias))
        and not (callable(bias) and backend_lib.reads_trainable_variables(bias))
    )


def _flash_attention(query, key, value, mask, score_mod):
    """Exact attention a (query block, key block) tile at a time (FlashAttention-2).

    Runs the backend's kernel (`keras_attention.backend.flash_attention`, around
    :class:`_FlashTile`); where there is none (JAX, PyTorch), or for what the
    kernel's hand-written gradient does not cover (a tensor `bias`, a callable
    `bias` with trainable weights, or inputs of rank above 4), the chunked path,
    which is exact too and differentiates by autodiff.
    """
    rank = len(query.shape)
    if not _runs_flash_kernel(rank, score_mod.bias):
        key, value = _repeat_kv_heads(query, key, value)
        return _chunked_attention(query, key, value, mask, score_mod, None)
    # (q_len, d) and (batch, q_len, d) become (1, 1, q_len, d) and (1, batch, q_len,
    # d): masks and biases broadcast from the right, so they need no change.
    to_4d = lambda x: ops.reshape(x, (1,) * (4 - rank) + tuple(ops.shape(x)))  # noqa: E731
    tile = _FlashTile(
        score_mod,
        mask,
        num_heads=query.shape[-3] if rank == 4 else None,
        num_kv_heads=key.shape[-3] if rank == 4 else None,
        kv_len=ops.shape(key)[-2],
        pad_keys=True,
    )
    pairs = math.prod(d for d in ops.shape(query)[:-2] if _static(d))
    block_q = FLASH_TILE_ELEMENTS // (pairs * FLASH_BLOCK_K)
    block_q = min(FLASH_BLOCK_Q, 2 ** max(4, block_q.bit_length() - 1))
    output = backend_lib.flash_attention(
        to_4d(query), to_4d(key), to_4d(value), tile, block_q, FLASH_BLOCK_K
    )
    return ops.reshape(output, tuple(ops.shape(query)[:-1]) + (value.shape[-1],))


def _fused_attention(query, key, value, mask, score_mod, scale):
    """`keras.ops.dot_product_attention` with this package's semantics.

    `scale` multiplies `Q K^T` in the kernel (1.0 when the queries arrive scaled). Keras' function wants `(batch, seq, heads,
    dim)`; its fully masked rows average the values, so they are zeroed here. A
    score bias is passed as Keras' `bias`, with the mask folded into it (Keras'
    PyTorch backend takes one or the other).
    """
    d_k, d_v = query.shape[-1], value.shape[-1]
    if not backend_lib.fused_supports(query.shape, key.shape, value.shape):
        # The kernel needs one head size: zero features change no dot product (the
        # scale is explicit) and zero value features give zero outputs, sliced off
        # below.
        size = max(d_k, d_v)
        query, key, value = (
            ops.pad(x, [(0, 0)] * 3 + [(0, size - x.shape[-1])]) for x in (query, key, value)
        )
    q_len, kv_len = ops.shape(query)[-2], ops.shape(key)[-2]
    mask = masks_lib.combine_masks(mask, score_mod.mask(q_len, kv_len))
    to_bshd = lambda x: ops.transpose(x, (0, 2, 1, 3))  # noqa: E731
    scores_shape = tuple(ops.shape(query)[:-1]) + (kv_len,)
    full_mask = None
    if mask is not None:
        full_mask = ops.broadcast_to(mask, scores_shape)
    bias = score_mod.block_bias(q_len, kv_len)
    if bias is not None:
        bias = ops.cast(bias, query.dtype)
        if full_mask is not None:
            bias = bias + masks_lib.mask_to_bias(full_mask, query.dtype)
        bias = ops.broadcast_to(bias, scores_shape)
    output = ops.dot_product_attention(
        to_bshd(query),
        to_bshd(key),
        to_bshd(value),
        bias=bias,
        mask=full_mask if bias is None else None,
        scale=scale,
    )
    output = to_bshd(output)
    if output.shape[-1] != d_v:
        output = output[..., :d_v]
    if full_mask is not None:
        has_key = ops.any(full_mask, axis=-1, keepdims=True)
        output = output * ops.cast(has_key, output.dtype)
    return output


def split_heads(x, num_heads):
    """`(batch, seq, num_heads * head_dim)` -> `(batch, num_heads, seq, head_dim)`.

    Head `h` takes features `h * head_dim:(h + 1) * head_dim`.
    """
    if len(x.shape) != 3:
        raise ValueError(
            "`x` must be rank 3 (batch, seq, num_heads * head_dim). "
            f"Received: x.shape={tuple(x.shape)}"
        )
    if x.shape[-1] is not None and x.shape[-1] % num_heads:
        raise ValueError(
            f"The last dimension of `x` must be divisible by `num_heads`. Received: "
            f"x.shape={tuple(x.shape)}, num_heads={num_heads}"
        )
    shape = ops.shape(x)
    head_dim = x.shape[-1] // num_heads
    # Through (batch * seq, heads, head_dim): tf2onnx (1.17) rewrites a reshape whose
    # sizes come from its own input's shape with "copy this dimension" zeros, then
    # merges it into the 2-D reshape inside TensorFlow's Dense on sequences, where the
    # zeros copy the wrong dimensions (ONNX Runtime fails; see docs/deployment.md).
    # Both reshapes are free (views) on every backend. JAX splits in place: jax2onnx
    # cannot follow the detour (`backend.splits_heads_through_rows`).
    if backend_lib.splits_heads_through_rows():
        x = ops.reshape(x, (-1, num_heads, head_dim))
    x = ops.reshape(x, (shape[0], shape[1], num_heads, head_dim))
    return ops.transpose(x, (0, 2, 1, 3))


def merge_heads(x):
    """`(batch, num_heads, seq, head_dim)` -> `(batch, seq, num_heads * head_dim)`."""
    if len(x.shape) != 4:
        raise ValueError(
            "`x` must be rank 4 (batch, num_heads, seq, head_dim). "
            f"Received: x.shape={tuple(x.shape)}"
        )
    shape = ops.shape(x)
    x = ops.transpose(x, (0, 2, 1, 3))
    return ops.reshape(x, (shape[0], shape[2], x.shape[2] * x.shape[3]))


def _check_bias(bias, scores_shape):
    """Validate a score bias: a callable, or a tensor each of whose dimensions is 1 or
    the scores' (a bias never broadcasts the scores to a larger shape)."""
    if bias is None or callable(bias):
        return bias
    bias = ops.convert_to_tensor(bias)
    if not keras.backend.is_float_dtype(bias.dtype):
        raise TypeError(
            "`bias` must be a float tensor (or a callable returning one). "
            f"Received: bias.dtype={keras.backend.standardize_dtype(bias.dtype)}"
        )
    shape = tuple(bias.shape)
    fits = len(shape) <= len(scores_shape) and all(
        b in (None, 1) or s is None or b == s
        for b, s in zip(reversed(shape), reversed(scores_shape))
    )
    if not fits:
        raise ValueError(
            "`bias` must broadcast to the attention scores of shape "
            f"{tuple(scores_shape)} (each dimension 1 or equal). "
            f"Received: bias.shape={shape}"
        )
    return bias


def _check_mask(mask, scores_shape):
    """Validate a boolean mask against the static scores shape; return it as bool."""
    mask = masks_lib.validate_mask(mask)
    if mask is None:
        return None
    if len(mask.shape) > len(scores_shape):
        raise ValueError(
            f"`mask` of shape {tuple(mask.shape)} has more dimensions than the "
            f"attention scores of shape {scores_shape}."
        )
    masks_lib.check_broadcastable(scores_shape, tuple(mask.shape), "scores", "mask")
    return mask


def _default_scale(query):
    d_k = query.shape[-1]
    if not _static(d_k):
        return 1.0 / ops.sqrt(ops.cast(ops.shape(query)[-1], "float32"))
    return 1.0 / math.sqrt(d_k)


def _check_qkv_shapes(q_shape, k_shape, v_shape):
    ranks = (len(q_shape), len(k_shape), len(v_shape))
    if min(ranks) < 2 or len(set(ranks)) != 1:
        raise ValueError(
            "`query`, `key` and `value` must have the same rank, at least 2: "
            "(..., q_len, d_k), (..., kv_len, d_k), (..., kv_len, d_v). Received: "
            f"query.shape={tuple(q_shape)}, key.shape={tuple(k_shape)}, "
            f"value.shape={tuple(v_shape)}"
        )
    if _differ(q_shape[-1], k_shape[-1]):
        raise ValueError(
            "The last dimension (d_k) of `query` and `key` must be equal. Received: "
            f"query.shape={tuple(q_shape)}, key.shape={tuple(k_shape)}"
        )
    if _differ(k_shape[-2], v_shape[-2]):
        raise ValueError(
            "`key` and `value` must have the same length (axis -2, kv_len). "
            f"Received: key.shape={tuple(k_shape)}, value.shape={tuple(v_shape)}"
        )
    for axis in range(len(q_shape) - 2):
        dims = (q_shape[axis], k_shape[axis], v_shape[axis])
        if axis == 1 and len(q_shape) == 4 and _kv_heads_divide(q_shape, k_shape, v_shape):
            continue  # grouped-query heads
        known = {d for d in dims if _static(d)}
        if len(known) > 1:
            raise ValueError(
                "`query`, `key` and `value` must have the same leading (batch/head) "
                f"dimensions. Received: query.shape={tuple(q_shape)}, "
                f"key.shape={tuple(k_shape)}, value.shape={tuple(v_shape)}"
            )


def _repeat_kv_heads(query, key, value):
    """Grouped-query keys and values repeated to the queries' heads: query head `h`
    uses key/value head `h // group` (contiguous groups)."""
    if len(query.shape) != 4 or not _kv_heads_divide(query.shape, key.shape, value.shape):
        return key, value
    group = query.shape[1] // key.shape[1]
    return ops.repeat(key, group, axis=1), ops.repeat(value, group, axis=1)


def _kv_heads_divide(q_shape, k_shape, v_shape):
    """Whether `(batch, heads, seq, dim)` keys and values have fewer heads than the
    queries, a divisor of them (grouped-query attention)."""
    heads, kv_heads = q_shape[1], k_shape[1]
    return (
        _static(heads)
        and _static(kv_heads)
        and v_shape[1] == kv_heads
        and kv_heads < heads
        and heads % kv_heads == 0
    )


def _differ(a, b):
    return _static(a) and _static(b) and a != b


# Positions: rotary embeddings and the ALiBi / T5 score biases.

ROTARY_LAYOUTS = ("rotate_half", "interleaved")


def apply_rotary_embedding(
    x,
    positions=None,
    start_index=0,
    max_wavelength=10000,
    scaling_factor=1.0,
    rotary_fraction=1.0,
    layout="rotate_half",
):
    """Rotary position embedding (RoPE, Su et al. 2021) of `x` `(..., seq, dim)`.

    Feature pairs `(a, b)` of the first `r = rotary_fraction * dim` features are
    rotated by the angle `theta_k = (p / scaling_factor) * max_wavelength^(-2k / r)`
    at position `p`: `(a cos - b sin, b cos + a sin)`. A dot product of a rotated
    query at `p` and a rotated key at `q` then depends on `p - q` only. The other
    features pass through unchanged (partial rotary, as in GPT-NeoX/Phi).

    Layouts (which features form pair `k`): `"rotate_half"` (default; GPT-NeoX,
    Llama in Hugging Face and keras-hub): features `k` and `k + r/2`;
    `"interleaved"` (the paper, GPT-J, Meta's Llama): features `2k` and `2k + 1`.

    Args:
        x: `(..., seq, dim)` (e.g. `(batch, heads, seq, head_dim)`).
        positions: optional int vector `(seq,)` (or broadcastable to `x`'s leading
            dimensions plus `seq`) of positions; default `start_index + arange(seq)`.
        start_index: int or scalar int tensor, position of the first row (cached
            decoding rotates the new token at its true position).
        max_wavelength: positive float, the base (10000 in the paper).
        scaling_factor: float >= 1, linear position interpolation (positions are
            divided by it to extend the context).
        rotary_fraction: float in (0, 1], the fraction of `dim` that is rotated.
        layout: `"rotate_half"` or `"interleaved"`.

    Returns:
        Same shape and dtype as `x`.

    Example:
    >>> import numpy as np
    >>> x = np.ones((1, 2, 4, 8), "float32")
    >>> tuple(apply_rotary_embedding(x).shape)
    (1, 2, 4, 8)
    """
    x = ops.convert_to_tensor(x)
    rotary_dim = check_rotary_arguments(
        x.shape[-1], max_wavelength, scaling_factor, rotary_fraction, layout
    )
    dtype = x.dtype
    if positions is None:
        positions = backend_lib.positions(ops.shape(x)[-2]) + ops.cast(start_index, "int32")
    positions = ops.cast(positions, "float32") / scaling_factor
    exponents = ops.arange(0, rotary_dim, 2, dtype="float32") / rotary_dim
    inverse_frequencies = ops.power(float(max_wavelength), -exponents)
    angles = ops.expand_dims(positions, -1) * inverse_frequencies  # (..., seq, r/2)
    cos, sin = ops.cos(angles), ops.sin(angles)
    work = ops.cast(x, "float32")
    rotated, rest = work[..., :rotary_dim], work[..., rotary_dim:]
    if layout == "rotate_half":
        first, second = rotated[..., : rotary_dim // 2], rotated[..., rotary_dim // 2 :]
        rotated = ops.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    else:
        pairs = ops.reshape(rotated, tuple(ops.shape(rotated)[:-1]) + (rotary_dim // 2, 2))
        first, second = pairs[..., 0], pairs[..., 1]
        pairs = ops.stack([first * cos - second * sin, second * cos + first * sin], axis=-1)
        rotated = ops.reshape(pairs, ops.shape(rotated))
    if rotary_dim < x.shape[-1]:
        rotated = ops.concatenate([rotated, rest], axis=-1)
    return ops.cast(rotated, dtype)


def check_rotary_arguments(dim, max_wavelength, scaling_factor, rotary_fraction, layout):
    """Validate the rotary settings for a head size `dim`; return the rotated size."""
    _validation.check_positive_float(max_wavelength, "max_wavelength")
    _validation.check_positive_float(scaling_factor, "scaling_factor")
    _validation.check_positive_float(rotary_fraction, "rotary_fraction")
    if rotary_fraction > 1:
        raise ValueError(
            f"`rotary_fraction` must be in (0, 1]. Received: rotary_fraction={rotary_fraction}"
        )
    _validation.check_one_of(layout, "layout", ROTARY_LAYOUTS)
    if dim is None:
        raise ValueError("The last axis (head dim) of `x` must be known for rotary embedding.")
    # int(): PyTorch's ONNX tracer gives sizes as 0-d tensors (the head dim is static).
    rotary_dim = int(round(int(dim) * rotary_fraction))
    if rotary_dim < 2 or rotary_dim % 2:
        raise ValueError(
            "Rotary embedding rotates feature pairs, so the rotated head dim "
            "(head dim * rotary_fraction) must be even and at least 2. Received: "
            f"head dim={dim}, rotary_fraction={rotary_fraction} (rotated dim {rotary_dim})"
        )
    return rotary_dim


def alibi_slopes(num_heads):
    """The ALiBi head slopes (Press et al. 2022) as a list of Python floats.

    For `n` a power of two: `2^(-8/n), 2^(-16/n), ..., 2^(-8)`, the geometric sequence
    starting at and multiplied by `2^(-8/n)`. Otherwise (as in the authors' code): the
    slopes of the largest power of two `m < n`, then every other slope of `2m` (the
    odd-numbered ones) for the remaining `n - m` heads.

    Example:
    >>> alibi_slopes(4)
    [0.25, 0.0625, 0.015625, 0.00390625]
    """
    _validation.check_positive_int(num_heads, "num_heads")

    def power_of_two(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if num_heads & (num_heads - 1) == 0:
        return power_of_two(num_heads)
    closest = 2 ** int(math.floor(math.log2(num_heads)))
    return power_of_two(closest) + power_of_two(2 * closest)[0::2][: num_heads - closest]


def relative_position_buckets(
    relative_position, bidirectional=True, num_buckets=32, max_distance=128
):
    """T5's bucket of each relative position `key_position - query_position`.

    Half the buckets (bidirectional: per direction) hold the exact distances
    `0 ... n/2 - 1`; the others cover `n/2 ... max_distance` logarithmically, and
    farther distances share the last bucket (Raffel et al. 2020, the published
    `_relative_position_bucket`). Unidirectional (causal) keys ahead of the query
    fall in bucket 0.

    Args:
        relative_position: int tensor, `key_position - query_position`.
        bidirectional: whether keys on both sides get their own buckets.
        num_buckets: positive int.
        max_distance: positive int, where the last bucket starts.

    Returns:
        int32 tensor of the same shape, values in `[0, num_buckets)`.
    """
    relative_position = ops.cast(relative_position, "int32")
    buckets = ops.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + ops.cast(relative_position > 0, "int32") * num_buckets
        distance = ops.abs(relative_position)
    else:
        distance = -ops.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # log-spaced buckets for distances in [max_exact, max_distance)
    safe = ops.cast(ops.maximum(distance, 1), "float32")
    large = max_exact + ops.cast(
        ops.log(safe / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact),
        "int32",
    )
    large = ops.minimum(large, num_buckets - 1)
    return buckets + ops.where(is_small, distance, large)

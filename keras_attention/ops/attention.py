"""The attention function: `softmax(Q K^T * scale + bias) V`, written once with
`keras.ops`; it checks its arguments, picks a path by size and runs it (the plain path
is here, the others one a module: `chunked`, `flash`, `fused`)."""

import math
import numbers

import keras
from keras import ops

from keras_attention import _validation
from keras_attention import backend as backend_lib
from keras_attention import masks as masks_lib
from keras_attention.ops import _checks, chunked, flash, fused
from keras_attention.ops import scores as scores_lib

__all__ = ["check_implementation", "scaled_dot_product_attention"]

# Above this many score elements (batch * heads * q_len * kv_len; 2**28 float32
# numbers are 1 GiB, and the plain path keeps several such tensors for the backward
# pass) the default implementation switches to the chunked one (the flash one where
# the backend has a flash kernel). Below it the plain path is faster: the chunked one
# recomputes the scores in the backward pass.
CHUNKED_THRESHOLD = 2**28
# Above this many score elements the default runs the flash path where the backend has
# a flash kernel (TensorFlow) and the kernel covers the call (`flash.runs_kernel`):
# there flash is faster than plain from about this size up (measured;
# docs/performance.md, "Flash path").
FLASH_THRESHOLD = 2**23
_IMPLEMENTATIONS = (None, "plain", "chunked", "flash", "fused")


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
            one with trainable weights, it runs the chunked path. `"fused"` calls
            `keras.ops.dot_product_attention` (the backend's fused kernel where it has one) and keeps this function's
            semantics (fully masked rows give zeros; where the backend's kernel needs
            `d_k == d_v`, as JAX's does, the smaller of the two is zero-padded, which
            changes no number; float16 on JAX's CPU, where the kernel does not
            compile under `jax.jit`, runs the plain path:
            `keras_attention.backend.fused_runs`). `None` picks `"flash"` (`"chunked"` where the
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
    _checks.check_qkv_shapes(query.shape, key.shape, value.shape)
    _validation.check_rate(dropout_rate, "dropout_rate")
    if scale is None:
        scale = _checks.default_scale(query)
    else:
        _validation.check_positive_float(scale, "scale")

    if soft_cap is not None:
        _validation.check_positive_float(soft_cap, "soft_cap")
    _validation.check_positive_int(sliding_window, "sliding_window", allow_none=True)

    scores_shape = tuple(query.shape[:-1]) + (key.shape[-2],)
    mask = _checks.check_mask(mask, scores_shape)
    bias = _checks.check_bias(bias, scores_shape)
    implementation = _choose_implementation(
        implementation,
        scores_shape,
        return_attention_scores,
        training and dropout_rate > 0,
        soft_cap is not None,
        flash_kernel=lambda: flash.runs_kernel(len(query.shape), bias),
    )
    if implementation == "fused" and len(query.shape) != 4:
        raise ValueError(
            "implementation='fused' needs (batch, heads, seq, dim) inputs. "
            f"Received: query.shape={tuple(query.shape)}"
        )
    if implementation == "fused" and not backend_lib.fused_runs(query.dtype):
        implementation = "plain"  # the same numbers from the path fused stands for
    if implementation != "flash":
        # The flash path reads grouped-query keys without this copy.
        key, value = _checks.repeat_kv_heads(query, key, value)
    score_mod = scores_lib.ScoreModifier(bias, soft_cap, sliding_window, causal)
    low_precision = keras.backend.standardize_dtype(query.dtype) in scores_lib.LOW_PRECISION_DTYPES
    if implementation == "fused" and isinstance(scale, numbers.Real) and not low_precision:
        # The kernel takes the scale: no separate pass over the queries. Not in
        # float16/bfloat16: kernels scale after the product, which can overflow first
        # (q . k = 102400 > 65504 where q . k / 8 fits).
        return fused.attend(query, key, value, mask, score_mod, scale=float(scale))
    # Scaling the queries (q_len * d_k numbers) is cheaper than scaling the scores
    # (q_len * kv_len) and keeps float16 products further from overflow.
    query = query * ops.cast(scale, query.dtype)
    if implementation == "chunked":
        return chunked.attend(query, key, value, mask, score_mod, chunk_size=chunk_size)
    if implementation == "flash":
        return flash.attend(query, key, value, mask, score_mod)
    if implementation == "fused":
        return fused.attend(query, key, value, mask, score_mod)
    return _attend_plain(
        query,
        key,
        value,
        mask,
        score_mod,
        dropout_rate=dropout_rate,
        seed=seed,
        training=training,
        return_attention_scores=return_attention_scores,
    )


def _attend_plain(
    query, key, value, mask, score_mod, *, dropout_rate, seed, training, return_attention_scores
):
    """The plain path: the whole `(..., q_len, kv_len)` score matrix, then
    :func:`~keras_attention.ops.scores.attention_from_scores` (the only path that can
    return the weights or apply dropout)."""
    scores_shape = tuple(query.shape[:-1]) + (key.shape[-2],)
    q_len, kv_len = ops.shape(query)[-2], ops.shape(key)[-2]
    mask = masks_lib.combine_masks(mask, score_mod.mask(q_len, kv_len))
    bias = score_mod.block_bias(q_len, kv_len, scores_shape=scores_shape)
    scores = score_mod.apply(ops.einsum("...qd,...kd->...qk", query, key), bias)
    return scores_lib.attention_from_scores(
        scores,
        value,
        mask=mask,
        dropout_rate=dropout_rate,
        seed=seed,
        training=training,
        return_attention_scores=return_attention_scores,
    )


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
    if _checks.all_static(scores_shape):
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

"""The chunked path: exact attention a chunk of queries at a time, each chunk's
scores recomputed in the backward pass instead of stored."""

import math

import keras
from keras import ops

from keras_attention import _validation
from keras_attention import backend as backend_lib
from keras_attention import masks as masks_lib
from keras_attention.ops import _checks
from keras_attention.ops import scores as scores_lib

# Target size of one chunk's scores when `chunk_size` is not given.
CHUNK_ELEMENTS = 2**23
# Number of chunks when the query length is only known at run time.
DYNAMIC_NUM_CHUNKS = 32


def attend(query, key, value, mask, score_mod, chunk_size=None):
    """Exact attention, `chunk_size` query rows at a time, recomputed in the backward.

    Each chunk sees every key, so its softmax is exact; a scan runs the
    chunks one after another (no two chunks' scores are alive at once) and
    `keras.remat` makes the backward pass recompute a chunk's scores instead of
    keeping them, so memory is O(chunk_size * kv_len) instead of O(q_len * kv_len).
    With a `sliding_window` w (static lengths), a chunk scores only the
    `chunk_size + w - 1` keys its queries can reach (`chunk_size + 2 (w - 1)`
    without `causal`), so time and memory grow as `q_len * w`, on every backend.

    Args:
        query: `(..., q_len, d_k)`, already scaled.
        key, value: `(..., kv_len, d_k)`, `(..., kv_len, d_v)`, as many heads as
            `query`.
        mask: `None` or a checked boolean mask broadcastable to the scores.
        score_mod: the call's :class:`~keras_attention.ops.scores.ScoreModifier`.
        chunk_size: query rows per chunk; by default chosen so that one chunk's
            scores hold about `CHUNK_ELEMENTS` numbers.

    Returns:
        `(..., q_len, d_v)`.
    """
    _validation.check_positive_int(chunk_size, "chunk_size", allow_none=True)
    chunks = _Chunks(query, key.shape[-2], chunk_size, score_mod)
    row_mask = None  # a mask that varies along the queries is cut with them
    if mask is not None:
        mask = ops.reshape(mask, (1,) * (chunks.rank - len(mask.shape)) + tuple(ops.shape(mask)))
        if mask.shape[-2] != 1:
            row_mask, mask = chunks.split(ops.cast(mask, "int8")), None
    row_bias = chunks.split(score_mod.bias) if score_mod.bias_has_rows else None
    one_chunk = _OneChunk(
        chunks, key, value, mask, score_mod, row_mask is not None, row_bias is not None
    )
    placeholder = ops.zeros((chunks.count,), "int8")
    output_zeros = ops.zeros(
        tuple(ops.shape(query)[:-2]) + (chunks.size, value.shape[-1]), value.dtype
    )
    outputs = backend_lib.map_sequentially(
        lambda xs: one_chunk(*xs),
        (
            chunks.split(query),
            ops.arange(chunks.count, dtype="int32") * chunks.size,
            placeholder if row_mask is None else row_mask,
            placeholder if row_bias is None else row_bias,
        ),
        output_zeros,
    )
    return chunks.merge(outputs, value.shape[-1])


class _Chunks:
    """How the queries are cut: `count` chunks of `size` rows (the last one padded to
    `padded` rows in all) and, with a sliding window and static lengths, the `span` of
    consecutive keys one chunk's queries can reach (`None`: all the keys)."""

    def __init__(self, query, kv_len, chunk_size, score_mod):
        self.rank = len(query.shape)
        q_len = query.shape[-2]
        if not _checks.is_static_dim(q_len):
            # Keras' scan needs a static number of steps: with a length unknown while
            # tracing, split the queries into a fixed number of chunks instead.
            q_len = ops.shape(query)[-2]
            count = DYNAMIC_NUM_CHUNKS
            chunk_size = (q_len + count - 1) // count
        else:
            if chunk_size is None:
                batch_shape = tuple(query.shape[:-2])
                rows = math.prod(d for d in batch_shape if _checks.is_static_dim(d))
                rows *= kv_len if _checks.is_static_dim(kv_len) else 1024
                chunk_size = min(q_len, max(16, CHUNK_ELEMENTS // max(rows, 1)))
            count = -(-q_len // chunk_size)
        self.q_len, self.size, self.count = q_len, chunk_size, count
        self.padded = count * chunk_size
        self.kv_len, self.window, self.span = kv_len, score_mod.sliding_window, None
        if (
            self.window is not None
            and _checks.is_static_dim(kv_len)
            and _checks.is_static_dim(chunk_size)
        ):
            span = chunk_size + (self.window - 1) * (1 if score_mod.causal else 2)
            self.span = span if span < kv_len else None

    def split(self, x):
        """`(..., q_len, f)` -> `(count, ..., size, f)`; `x` padded to the queries' rank."""
        x = ops.reshape(x, (1,) * (self.rank - len(x.shape)) + tuple(ops.shape(x)))
        pad = [(0, 0)] * (len(x.shape) - 2) + [(0, self.padded - self.q_len), (0, 0)]
        x = ops.pad(x, pad)
        x = ops.reshape(x, ops.shape(x)[:-2] + (self.count, self.size, ops.shape(x)[-1]))
        return backend_lib.moveaxis(x, -3, 0)

    def merge(self, outputs, d_v):
        """`(count, ..., size, d_v)` -> `(..., q_len, d_v)`."""
        outputs = backend_lib.moveaxis(outputs, 0, -3)
        outputs = ops.reshape(outputs, ops.shape(outputs)[:-3] + (self.padded, d_v))
        return outputs[..., : self.q_len, :]

    def key_start(self, offset):
        """The first key of the `span` that the chunk starting at query `offset` reaches."""
        return ops.clip(offset - (self.window - 1), 0, self.kv_len - self.span)

    def key_slice(self, x, start):
        """`x[..., start:start + span]` (the last axis), or `x` when it has length 1."""
        if self.span is None or x is None or x.shape[-1] == 1:
            return x
        starts = [0] * (len(x.shape) - 1) + [start]
        return ops.slice(x, starts, tuple(ops.shape(x)[:-1]) + (self.span,))


class _OneChunk:
    """The attention of one chunk of queries, `__call__(q_chunk, offset, mask_chunk,
    bias_chunk)`: `mask_chunk` and `bias_chunk` are the chunk's rows of a mask or bias
    that varies along the queries (`mask_has_rows`, `bias_has_rows`), else ignored."""

    def __init__(self, chunks, key, value, mask, score_mod, mask_has_rows, bias_has_rows):
        self.chunks, self.key, self.value, self.mask = chunks, key, value, mask
        self.score_mod = score_mod
        self.mask_has_rows, self.bias_has_rows = mask_has_rows, bias_has_rows

    def __call__(self, q_chunk, offset, mask_chunk, bias_chunk):
        chunks, score_mod = self.chunks, self.score_mod
        key, value, mask, bias = self.key, self.value, self.mask, score_mod.bias
        k_start = 0
        if chunks.span is not None:
            # Only the `span` keys the chunk's queries can see are sliced out and
            # scored, so the work grows as q_len * window.
            k_start = chunks.key_start(offset)
            starts = [0] * (len(key.shape) - 2) + [k_start, 0]
            key = ops.slice(key, starts, tuple(ops.shape(key)[:-2]) + (chunks.span, key.shape[-1]))
            value = ops.slice(
                value, starts, tuple(ops.shape(value)[:-2]) + (chunks.span, value.shape[-1])
            )
            mask = chunks.key_slice(mask, k_start)
            if self.mask_has_rows:
                mask_chunk = chunks.key_slice(mask_chunk, k_start)
            if self.bias_has_rows:
                bias_chunk = chunks.key_slice(bias_chunk, k_start)
            elif bias is not None and not callable(bias):
                bias = chunks.key_slice(bias, k_start)

        # Only floating tensors enter the recomputed function (TensorFlow's
        # `recompute_grad` warns for every integer or boolean input it watches); the
        # offset and the mask chunk are constants of the recomputation, closed over.
        bias_argument = self._bias_argument(bias, bias_chunk, offset, k_start, key)

        @keras.remat
        def chunk_output(q_chunk, key, value, *bias_argument):
            kv_len = ops.shape(key)[-2]
            chunk_mask = masks_lib.combine_masks(
                mask,
                ops.cast(mask_chunk, "bool") if self.mask_has_rows else None,
                score_mod.mask(chunks.size, kv_len, offset, k_offset=k_start),
            )
            if bias_argument:
                chunk_bias = bias_argument[0]
            elif callable(bias):
                chunk_bias = score_mod.block_bias(
                    chunks.size, kv_len, offset, k_offset=k_start, q_end=chunks.q_len
                )
            else:
                chunk_bias = None
            scores = score_mod.apply(ops.einsum("...qd,...kd->...qk", q_chunk, key), chunk_bias)
            chunk_mask = _checks.check_mask(chunk_mask, tuple(scores.shape))
            weights = scores_lib.masked_softmax(scores, chunk_mask, in_loop=True)
            return ops.matmul(ops.cast(weights, value.dtype), value)

        return chunk_output(q_chunk, key, value, *bias_argument)

    def _bias_argument(self, bias, bias_chunk, offset, k_start, key):
        """The chunk's bias as an argument of the recomputed function: `()` or a 1-tuple.

        A tensor bias is an argument, never closed over: TensorFlow's `recompute_grad`
        differentiates only its arguments, so a bias read by closure would get no
        gradient. A callable bias is called inside the recomputation, except where
        `keras.remat` cannot differentiate what it reads
        (:func:`keras_attention.backend.remat_differentiates`): then it is called here,
        and the loop keeps the chunk's bias for the backward pass.
        """
        if self.bias_has_rows:
            return (bias_chunk,)
        if bias is None:
            return ()
        if not callable(bias):
            return (bias,)
        if backend_lib.remat_differentiates(bias):
            return ()
        kv_len = ops.shape(key)[-2]
        chunks = self.chunks
        return (
            self.score_mod.block_bias(
                chunks.size, kv_len, offset, k_offset=k_start, q_end=chunks.q_len
            ),
        )

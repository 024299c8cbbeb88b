"""The flash path: exact attention a (query block, key block) tile at a time
(FlashAttention-2), the tile math in `keras.ops`, the loops in the backend's kernel."""

import dataclasses
import math

import keras
from keras import ops

from keras_attention import backend as backend_lib
from keras_attention import masks as masks_lib
from keras_attention.ops import _checks, chunked
from keras_attention.ops import scores as scores_lib

# Tile sizes: key blocks of FLASH_BLOCK_K keys, and query blocks of at most
# FLASH_BLOCK_Q queries, fewer when there are many (batch, head) pairs, so that one
# tile's scores (batch * heads * block_q * block_k numbers) stay near
# FLASH_TILE_ELEMENTS. Chosen by measurement (docs/performance.md, "Flash path").
FLASH_BLOCK_Q = 256
FLASH_BLOCK_K = 512
FLASH_TILE_ELEMENTS = 2**21
# A finite "minus infinity" for masked logits and the initial running maximum:
# exp(_MASKED_LOGIT - _MASKED_LOGIT) = 1 keeps a fully masked row free of NaN (its
# probabilities are zeroed by `where`, not by the exponent).
_MASKED_LOGIT = -1e30


def runs_kernel(rank, bias):
    """Whether the flash path runs the backend's flash kernel for inputs of this rank
    and this `bias` (else it runs the chunked path)."""
    return (
        backend_lib.has_flash_attention()
        and rank <= 4
        and (bias is None or callable(bias))
        and not (callable(bias) and backend_lib.reads_trainable_variables(bias))
    )


def attend(query, key, value, mask, score_mod):
    """Exact attention a (query block, key block) tile at a time (FlashAttention-2).

    Runs the backend's kernel (`keras_attention.backend.flash_attention`, around
    :class:`FlashTile`); where there is none (JAX, PyTorch), or for what the
    kernel's hand-written gradient does not cover (a tensor `bias`, a callable
    `bias` with trainable weights, or inputs of rank above 4), the chunked path,
    which is exact too and differentiates by autodiff.

    Args:
        query: `(..., q_len, d_k)`, already scaled.
        key, value: `(..., kv_len, d_k)`, `(..., kv_len, d_v)`; for `(batch, heads,
            seq, dim)` inputs they may have fewer heads than `query`, a divisor of
            them (read without a copy).
        mask: `None` or a checked boolean mask broadcastable to the scores.
        score_mod: the call's :class:`~keras_attention.ops.scores.ScoreModifier`.

    Returns:
        `(..., q_len, d_v)`.
    """
    rank = len(query.shape)
    if not runs_kernel(rank, score_mod.bias):
        key, value = _checks.repeat_kv_heads(query, key, value)
        return chunked.attend(query, key, value, mask, score_mod)
    # (q_len, d) and (batch, q_len, d) become (1, 1, q_len, d) and (1, batch, q_len,
    # d): masks and biases broadcast from the right, so they need no change.
    to_4d = lambda x: ops.reshape(x, (1,) * (4 - rank) + tuple(ops.shape(x)))  # noqa: E731
    tile = FlashTile.create(
        score_mod,
        mask,
        num_heads=query.shape[-3] if rank == 4 else None,
        num_kv_heads=key.shape[-3] if rank == 4 else None,
        kv_len=ops.shape(key)[-2],
        q_len=ops.shape(query)[-2],
    )
    pairs = math.prod(d for d in ops.shape(query)[:-2] if _checks.is_static_dim(d))
    block_q = FLASH_TILE_ELEMENTS // (pairs * FLASH_BLOCK_K)
    block_q = min(FLASH_BLOCK_Q, 2 ** max(4, block_q.bit_length() - 1))
    output = backend_lib.flash_attention(
        to_4d(query), to_4d(key), to_4d(value), tile, block_q, FLASH_BLOCK_K
    )
    return ops.reshape(output, tuple(ops.shape(query)[:-1]) + (value.shape[-1],))


@dataclasses.dataclass(frozen=True, eq=False)
class FlashTile:
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

    A tile is immutable: :meth:`heads` and :meth:`with_padding` return new tiles.

    Attributes:
        score_mod: the call's :class:`~keras_attention.ops.scores.ScoreModifier`.
        mask: `None` or the 5-D boolean mask (see :meth:`to_5d`).
        num_heads, num_kv_heads: query and key/value heads (`None` below rank 4).
        kv_len: the number of keys (an int or a scalar tensor).
        q_len: the number of queries (an int, a scalar tensor, or `None`): a
            callable bias is called at real positions only (padded rows clipped).
        pad_keys: whether keys at `kv_len` and beyond (padding of the last key
            block) are masked.
        head_range: `None`, or `(start, count)`: the tile covers only those
            key/value heads (see :meth:`heads`).
    """

    score_mod: object
    mask: object
    num_heads: object
    num_kv_heads: object
    kv_len: object
    q_len: object = None
    pad_keys: bool = True
    head_range: object = None

    @classmethod
    def create(cls, score_mod, mask, num_heads, num_kv_heads, kv_len, q_len=None):
        """The tile of a call: `mask` broadcastable to `(B, H, q, k)`, made 5-D."""
        tile = cls(score_mod, None, num_heads, num_kv_heads, kv_len, q_len)
        if mask is None:
            return tile
        return dataclasses.replace(tile, mask=tile.to_5d(mask))

    def heads(self, start, count):
        """The same tile for key/value heads `start ... start + count - 1` only (the
        backend may run groups of heads side by side; `start` may be a tensor, so
        that the groups share one compiled pass)."""
        mask = self.mask
        if mask is not None and mask.shape[1] != 1:
            mask = _slice_heads(mask, start, count)
        return dataclasses.replace(self, mask=mask, head_range=(start, count))

    def with_padding(self, pad_keys, mask):
        """The same tile over blocks padded past the inputs: `pad_keys` says whether
        keys past `kv_len` exist (and are masked); `mask` is this tile's mask padded
        with `False` to the blocks (or `None`)."""
        return dataclasses.replace(self, pad_keys=pad_keys, mask=mask)

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
        if keras.backend.standardize_dtype(q.dtype) in scores_lib.LOW_PRECISION_DTYPES:
            # The backward pass recomputes the forward's logits, keys by queries: in
            # float16 the two products round differently (by a unit of 8 at a logit
            # of 1e4), and `exp(logits - lse)` would be off by up to e^8. In float32
            # both agree to rounding.
            q, k = ops.cast(q, "float32"), ops.cast(k, "float32")
        if keys_first:
            scores = ops.einsum("...kd,...qd->...kq", k, q)
        else:
            scores = ops.einsum("...qd,...kd->...qk", q, k)
        orient = (lambda x: ops.swapaxes(x, -1, -2)) if keys_first else (lambda x: x)
        scores = ops.cast(scores, "float32")
        capped = self.score_mod.cap(scores)
        logits = capped
        if self.score_mod.bias is not None:
            bias = self.score_mod.block_bias(
                q_size, k_size, q_offset, k_offset=k_offset, q_end=self.q_len, k_end=self.kv_len
            )
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
            logits = ops.where(allowed, logits, _MASKED_LOGIT)
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
            ops.full(rows, _MASKED_LOGIT, "float32"),
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
        gradient `(K^T dS^T)^T` transposes only `K`, never the probability tile (such
        products run slower on CPU; docs/performance.md).
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

"""Flash attention on TensorFlow: the loops and the custom gradient around `ops`' tiles.

The tile math (scores, soft cap, bias, masks, the online softmax and the backward
tile) is `keras_attention.ops.flash.FlashTile`, written with `keras.ops`; this module
only adds what TensorFlow needs for itself: `tf.while_loop`s over the blocks (with bounds
that skip the tiles the causal mask or the sliding window hide) and
`tf.custom_gradient` for FlashAttention-2's backward pass. A tile is immutable: the
passes make their own (`tile.with_padding`, `tile.heads`).

Forward: for each query block, an online softmax over its key blocks; only the output
and the log-sum-exp per query are kept. Backward (FlashAttention-2), from the saved
log-sum-exp: one loop over key blocks, each visiting the query blocks that see it,
recomputes each tile's probabilities once and accumulates that key block's `dK`, `dV`
in the loop state and adds each query block's `dQ` into `dQ` in place (read, add,
write back: only that block is touched); its tiles are keys by queries, so that no
product transposes a probability tile.

Memory: the blocks are slices of the passes' own 4-D inputs and the results are
scattered into 4-D loop-state tensors, so besides its inputs a pass holds only its
results and one tile (XLA copies anything else the loops read, such as a reshaped,
padded or head-split input; padding happens only for lengths that are not a multiple
of the blocks).

Speed (docs/performance.md): inside a traced function with static lengths each pass
is compiled whole by XLA (`tf.function(jit_compile=True)`, from `COMPILE_MIN_SCORES`
scores), and the key/value heads run in one group per CPU thread side by side (all
groups share the compiled passes: the group's first head is an argument).
"""

import collections
import math
import os

import tensorflow as tf


def reads_trainable_variables(fn):
    """Whether the callable bias `fn(query_positions, key_positions)` reads a
    trainable variable (such a bias needs autodiff, not the flash gradient)."""
    with tf.GradientTape(watch_accessed_variables=True) as tape:
        fn(tf.range(1), tf.range(1))
    return any(v.trainable for v in tape.watched_variables())


def flash_attention(query, key, value, tile, block_q, block_k):
    """Exact attention of `(B, H, q_len, d)` queries (already scaled) on
    `(B, Hk, kv_len, d)` keys and values, `H` a multiple of `Hk`.

    `tile` is a `keras_attention.ops.flash.FlashTile` holding the masks and score
    modifiers. The key/value heads are split into as many groups as there are CPU
    threads (where they divide evenly), each group an independent computation: TensorFlow runs them side by side,
    while one group's compiled loops use about one core (its tiles' products are too
    small to be split across threads).
    """
    kv_heads = key.shape[1]
    compiles = _compiles(query, key)
    parts = math.gcd(kv_heads or 1, _threads()) if compiles else 1
    count = (kv_heads or 1) // parts
    # One pair of passes for every group, which takes its first key/value head as an
    # argument: XLA compiles each pass once, not once per group.
    passes = _FlashPasses(
        query, key, value, tile, block_q, block_k, compiles, None if parts == 1 else count
    )
    firsts = [tf.constant(n * count) for n in range(parts)]

    # The log-sum-exps are outputs so that the gradient function reads only the
    # inputs and outputs of `attention_with_gradient` (a SavedModel saves that
    # function, and it cannot capture the forward pass's intermediates). Every group's passes read
    # the whole query, key and value and slice their heads themselves: inside the
    # compiled pass that slice is the copy XLA makes of its inputs anyway, where a
    # `tf.split` outside would be one more copy of each, kept for the backward pass.
    @tf.custom_gradient
    def attention_with_gradient(query, key, value):
        # No tape records the passes (they are differentiated by `grad`), so no
        # compiled pass has to return its loops' intermediates.
        inputs = tuple(map(tf.stop_gradient, (query, key, value)))
        results = [passes.forward(*inputs, first) for first in firsts]
        lses = [lse for _, lse in results]
        output = results[0][0] if parts == 1 else tf.concat([o for o, _ in results], 1)

        def grad(d_output, *d_lses):
            del d_lses  # the log-sum-exps are outputs only for the gradient's sake
            args = tuple(map(tf.stop_gradient, (output, d_output)))
            grads = [
                passes.backward(*inputs, args[0], tf.stop_gradient(lse), args[1], first)
                for first, lse in zip(firsts, lses)
            ]
            if parts == 1:
                return grads[0]
            return tuple(tf.concat(g, 1) for g in zip(*grads))

        return (output, *lses), grad

    return attention_with_gradient(query, key, value)[0]


# Below this many scores (`batch * heads * q_len * kv_len`, static dimensions) the
# passes run uncompiled and in one group of heads: compiling them (about a second per
# shape) would cost more than it saves.
COMPILE_MIN_SCORES = 2**22


def _compiles(query, key):
    """Whether XLA compiles the passes: inside a traced function (`model.fit`,
    `predict`, any `tf.function`, which compile each shape once), with static lengths
    and at least `COMPILE_MIN_SCORES` scores. An eager call runs uncompiled: it would
    trace and compile its passes again at every call."""
    if tf.executing_eagerly():
        return False
    q_len, kv_len = query.shape[-2], key.shape[-2]
    if q_len is None or kv_len is None:
        return False
    scores = math.prod(d for d in query.shape[:-1] if d is not None) * kv_len
    return scores >= COMPILE_MIN_SCORES


def _threads():
    """The number of threads TensorFlow runs operations on."""
    threads = tf.config.threading.get_intra_op_parallelism_threads()
    if threads:
        return threads
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class _FlashPasses:
    """The forward and backward passes of `group_heads` key/value heads (all heads
    when `None`) from key/value head `first` (an int32 scalar tensor):
    `forward(query, key, value, first) -> (output, lse)` and `backward(query, key,
    value, output, lse, d_output, first) -> (dq, dk, dv)`, both given all heads and
    returning those of the group.

    With `compiles`, XLA compiles each pass whole (its loops, tiles and block reads),
    which fuses the element-wise tile math into few loops; it needs static lengths (a
    SavedModel serving any length runs the same loops uncompiled).
    """

    def __init__(self, query, key, value, tile, block_q, block_k, compiles, group_heads):
        heads, kv_heads = query.shape[1], key.shape[1]
        self.group = 1 if heads == kv_heads else heads // kv_heads
        self.group_heads = group_heads
        self.kv_heads = kv_heads if group_heads is None else group_heads
        self.d_k, self.d_v = query.shape[-1], value.shape[-1]
        self.q_len, self.kv_len = _length(query), _length(key)
        q_len, kv_len = self.q_len, self.kv_len
        self.bq = min(block_q, q_len) if isinstance(q_len, int) else block_q
        self.bk = min(block_k, kv_len) if isinstance(kv_len, int) else block_k
        self.nq, self.nk = _ceil_div(q_len, self.bq), _ceil_div(kv_len, self.bk)
        mask = tile.mask
        if mask is not None:
            mask = _pad_mask(mask, self.nq * self.bq, self.nk * self.bk)
        pad_keys = not (isinstance(kv_len, int) and kv_len % self.bk == 0)
        self.tile = tile.with_padding(pad_keys, mask)
        self.causal, self.window = tile.score_mod.causal, tile.score_mod.sliding_window
        self.forward, self.backward = self._forward, self._backward
        if compiles:
            self.forward = tf.function(self._forward, jit_compile=True)
            self.backward = tf.function(self._backward, jit_compile=True)

    def key_blocks(self, i):
        """Key blocks `[lo, hi)` that query block `i` can see."""
        bq, bk, causal, window = self.bq, self.bk, self.causal, self.window
        first, last = i * bq, tf.minimum((i + 1) * bq, self.q_len) - 1
        lo, hi = tf.constant(0), tf.cast(self.nk, tf.int32)
        if causal:
            hi = tf.minimum(hi, last // bk + 1)
        if window is not None:
            lo = tf.maximum(first - window + 1, 0) // bk
            if not causal:
                hi = tf.minimum(hi, (last + window - 1) // bk + 1)
        return lo, hi

    def query_blocks(self, j):
        """Query blocks `[lo, hi)` that see key block `j`."""
        bq, bk, causal, window = self.bq, self.bk, self.causal, self.window
        first, last = j * bk, tf.minimum((j + 1) * bk, self.kv_len) - 1
        lo, hi = tf.constant(0), tf.cast(self.nq, tf.int32)
        if causal:
            lo = first // bq
        if window is not None:
            hi = tf.minimum(hi, (last + window - 1) // bq + 1)
            if not causal:
                lo = tf.maximum(first - window + 1, 0) // bq
        return lo, hi

    def _group_tile(self, first):
        """The tile of the group's heads, from key/value head `first`."""
        if self.group_heads is None:
            return self.tile
        return self.tile.heads(first, self.group_heads)

    def _num_kv_heads(self, key):
        """The group's key/value heads (read from `key` when not static)."""
        return self.kv_heads if self.kv_heads is not None else tf.shape(key)[1]

    def _forward(self, query, key, value, first):
        """`(output, lse)` of the group's heads: each query block's online softmax."""
        tile, bq, bk, nq, nk = self._group_tile(first), self.bq, self.bk, self.nq, self.nk
        query = _pad_rows(query, nq * bq)
        key, value = _pad_rows(key, nk * bk), _pad_rows(value, nk * bk)
        hk, batch = self._num_kv_heads(key), tf.shape(query)[0]
        read_q = _reader(query, self.group, bq, hk, first)
        read_k, read_v = _reader(key, 1, bk, hk, first), _reader(value, 1, bk, hk, first)
        write = _writer(batch, hk * self.group, bq)

        def forward_block(i, state):
            out4, lse4 = state
            q = read_q(i * bq)
            lo, hi = self.key_blocks(i)
            acc = _loop(
                lo,
                hi,
                lambda j, acc: tile.forward(acc, q, read_k(j * bk), read_v(j * bk), i * bq, j * bk),
                tile.initial_state(q, self.d_v),
                nk,
            )
            out, lse = tile.finish(acc, value.dtype)
            return write(out4, i * bq, out), write(lse4, i * bq, lse[..., None])

        rows4 = tf.stack([batch, hk * self.group, nq * bq])
        out4, lse4 = _loop(
            0,
            nq,
            forward_block,
            (
                tf.zeros(tf.concat([rows4, [self.d_v]], 0), value.dtype),
                tf.zeros(tf.concat([rows4, [1]], 0), tf.float32),
            ),
            nq,
        )
        return _first_rows(out4, self.q_len), lse4

    def _backward(self, query, key, value, output, lse4, d_output, first):
        """`(dq, dk, dv)` of the group's heads: one loop over the key blocks."""
        tile, bq, bk, nq, nk = self._group_tile(first), self.bq, self.bk, self.nq, self.nk
        query, output, d_output = (_pad_rows(x, nq * bq) for x in (query, output, d_output))
        key, value = _pad_rows(key, nk * bk), _pad_rows(value, nk * bk)
        hk, batch, group = self._num_kv_heads(key), tf.shape(query)[0], self.group
        blocks = _BackwardBlocks(
            *(_reader(x, group, bq, hk, first) for x in (query, output, d_output)),
            read_k=_reader(key, 1, bk, hk, first),
            read_v=_reader(value, 1, bk, hk, first),
            read_lse=_reader(lse4, group, bq, hk, first=0),
            write_q=_writer(batch, hk * group, bq),
            write_k=_writer(batch, hk, bk),
            read_dq=lambda dq4: _reader(dq4, group, bq, hk, first=0),
        )

        def key_block_grads(j, state):
            dk4, dv4, dq4 = state
            dk, dv, dq4 = self._key_block_grads(tile, blocks, j, dq4)
            return blocks.write_k(dk4, j * bk, dk), blocks.write_k(dv4, j * bk, dv), dq4

        dk4, dv4, dq4 = _loop(
            0,
            nk,
            key_block_grads,
            (
                tf.zeros(tf.stack([batch, hk, nk * bk, self.d_k])),
                tf.zeros(tf.stack([batch, hk, nk * bk, self.d_v])),
                tf.zeros(tf.stack([batch, hk * group, nq * bq, self.d_k])),
            ),
            nk,
        )
        return (
            tf.cast(_first_rows(dq4, self.q_len), query.dtype),
            tf.cast(_first_rows(dk4, self.kv_len), key.dtype),
            tf.cast(_first_rows(dv4, self.kv_len), value.dtype),
        )

    def _key_block_grads(self, tile, blocks, j, dq4):
        """`(dK, dV)` of key block `j`, and `dq4` with the block's share of every
        query block's `dQ` added, over the query blocks that see key block `j`."""
        bq, bk = self.bq, self.bk
        k, v = blocks.read_k(j * bk), blocks.read_v(j * bk)

        def add(i, state):
            dk, dv, dq4 = state
            q, d_out = blocks.read_q(i * bq), blocks.read_do(i * bq)
            # delta = rowsum(dO * O), recomputed per tile (block_q * d numbers,
            # against block_q * block_k * d for a product) instead of stored.
            delta_i = tf.reduce_sum(_float32(d_out) * _float32(blocks.read_o(i * bq)), -1)
            lse_i = blocks.read_lse(i * bq)[..., 0]
            # Keys by queries (see `tile.backward`): every product below is a plain
            # or a `K`-transposed one.
            p_t, ds_t = tile.backward(q, k, v, d_out, lse_i, delta_i, i * bq, j * bk)
            dv += tf.reduce_sum(tf.matmul(p_t, _float32(d_out)), 2, keepdims=True)
            dk += tf.reduce_sum(tf.matmul(ds_t, _float32(q)), 2, keepdims=True)
            # dQ of query block i, added in place: one block is read and rewritten,
            # never the whole dQ (the product is dQ^T, transposed here: d x block_q
            # numbers, not a probability tile).
            dq_t = tf.matmul(_float32(k), ds_t, transpose_a=True)
            dq_i = blocks.read_dq(dq4)(i * bq)
            return dk, dv, blocks.write_q(dq4, i * bq, dq_i + tf.linalg.matrix_transpose(dq_t))

        lo, hi = self.query_blocks(j)
        zeros = (tf.zeros_like(_float32(k)), tf.zeros_like(_float32(v)))
        return _loop(lo, hi, add, zeros + (dq4,), self.nq)


# The backward pass's block readers (`read_x(start) -> block`) and writers (`write_x(x,
# start, block) -> x`); `read_dq(dq4)` makes the reader of `dq4`.
_BackwardBlocks = collections.namedtuple(
    "_BackwardBlocks", "read_q read_o read_do read_k read_v read_lse write_q write_k read_dq"
)


def _pad_rows(x, length):
    """A 4-D `x` with rows (axis 2) padded to `length`; itself when none are missing
    (a padded tensor is a copy)."""
    if isinstance(length, int) and x.shape[2] == length:
        return x
    return tf.pad(x, [[0, 0], [0, 0], [0, length - tf.shape(x)[2]], [0, 0]])


def _first_rows(x, length):
    """Rows `0 ... length - 1` of a 4-D `x` (itself when it has no more)."""
    if isinstance(length, int) and x.shape[2] == length:
        return x
    return x[:, :, :length]


def _float32(x):
    return tf.cast(x, tf.float32)


def _reader(x, per_kv_head, size, hk, first):
    """`read(start)`: rows `start ... start + size - 1` of the 4-D `x`'s heads
    `first * per_kv_head ...` (`hk` key/value heads' worth), as a `(B, hk,
    per_kv_head, size, f)` block.

    A slice of `x` itself: XLA reads the block in place. A reshaped, padded or
    head-sliced `x` fed to the loops would be a copy of it (XLA copies whatever the
    loops read that is not a parameter of the compiled pass)."""
    shape = tf.shape(x)
    size_4d = tf.stack([shape[0], hk * per_kv_head, size, shape[3]])
    size_5d = tf.stack([shape[0], hk, per_kv_head, size, shape[3]])

    def read(start):
        block = tf.reshape(
            tf.slice(x, tf.stack([0, first * per_kv_head, start, 0]), size_4d), size_5d
        )
        # The feature size stays static: a loop state updated from a block of unknown
        # size 1 broadcasts to an unknown size, which `tf.while_loop` refuses (a value
        # head size of 1).
        block.set_shape([None] * 4 + [x.shape[3]])
        return block

    return read


def _writer(batch, heads, size):
    """`write(x, start, block)`: the 4-D `x` (`heads` heads) with rows `start ...
    start + size - 1` replaced by the 5-D `block`: a scatter into the loop state,
    which XLA does in place (a `TensorArray` of blocks would need a stack and a
    transpose, two copies of the whole result)."""
    axes = [tf.range(batch), tf.range(heads), tf.range(size)]
    base = tf.stack(tf.meshgrid(*axes, indexing="ij"), -1)

    def write(x, start, block):
        rows = tf.reshape(block, tf.concat([tf.shape(base)[:3], tf.shape(block)[-1:]], 0))
        return tf.tensor_scatter_nd_update(x, base + tf.stack([0, 0, start]), rows)

    return write


def _loop(lo, hi, body, state, most):
    """`for index in range(lo, hi): state = body(index, state)`, at most `most` times.

    One iteration at a time: running several blocks at once (TensorFlow's default
    of 10) multiplies the memory of the tiles in flight and gains nothing (every
    matmul already uses all cores).
    """
    return tf.while_loop(
        lambda index, *_: index < hi,
        lambda index, *state: (index + 1,) + tuple(body(index, state)),
        (lo,) + tuple(state),
        parallel_iterations=1,
        maximum_iterations=most,
    )[1:]


def _length(x):
    """The static length (axis -2) of `x`, or its dynamic length as a tensor."""
    length = x.shape[-2]
    return length if length is not None else tf.shape(x)[-2]


def _ceil_div(a, b):
    return -(-a // b)


def _pad_mask(mask, q_rows, k_columns):
    """Pad the query and key axes of a 5-D mask (where not broadcast) with `False`."""
    pads = [[0, 0]] * 3
    pads.append([0, 0] if mask.shape[3] == 1 else [0, q_rows - tf.shape(mask)[3]])
    pads.append([0, 0] if mask.shape[4] == 1 else [0, k_columns - tf.shape(mask)[4]])
    return tf.pad(mask, pads, constant_values=False)

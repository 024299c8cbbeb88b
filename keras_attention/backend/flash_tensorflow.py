"""Flash attention on TensorFlow: the loops and the custom gradient around `ops`' tiles.

The tile math (scores, soft cap, bias, masks, the online softmax and the backward
tile) is `keras_attention.ops._FlashTile`, written with `keras.ops`; this module only
adds what TensorFlow needs for itself: `tf.while_loop`s over the blocks (with bounds
that skip the tiles the causal mask or the sliding window hide), `tf.TensorArray`s for
the blocks' results, and `tf.custom_gradient` for FlashAttention-2's backward pass.

Forward: for each query block, an online softmax over its key blocks; only the output
and the log-sum-exp per query are kept. Backward (FlashAttention-2), from the saved
log-sum-exp: one loop over key blocks, each visiting the query blocks that see it,
recomputes each tile's probabilities once and accumulates that key block's `dK`, `dV`
in the loop state and each query block's `dQ` in a `TensorArray` of query blocks
(read, add, write back: only that block is touched, never the whole `dQ`); its tiles
are keys by queries, so that no product transposes a probability tile.

Speed (docs/performance.md): with static lengths each pass is compiled whole by XLA
(`tf.function(jit_compile=True)`, from `COMPILE_MIN_SCORES` scores), and the key/value
heads run in one group per CPU thread side by side.
"""

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

    `tile` is an `ops._FlashTile` holding the masks and score modifiers. The key/value
    heads are split into as many groups as there are CPU threads (where they divide
    evenly), each group an independent computation: TensorFlow runs them side by side,
    while one group's compiled loops use about one core (its tiles' products are too
    small to be split across threads).
    """
    kv_heads = key.shape[1]
    parts = math.gcd(kv_heads or 1, _threads()) if _compiles(query, key) else 1
    if parts == 1:
        return _flash_attention(query, key, value, tile, block_q, block_k)
    count = kv_heads // parts
    outputs = [
        _flash_attention(q, k, v, tile.heads(n * count, count), block_q, block_k)
        for n, (q, k, v) in enumerate(
            zip(*(tf.split(x, parts, axis=1) for x in (query, key, value)))
        )
    ]
    return tf.concat(outputs, axis=1)


# Below this many scores (`batch * heads * q_len * kv_len`, static dimensions) the
# passes run uncompiled and in one group of heads: compiling them (about a second per
# shape) would cost more than it saves.
COMPILE_MIN_SCORES = 2**22


def _compiles(query, key):
    """Whether XLA compiles the passes: static lengths and at least
    `COMPILE_MIN_SCORES` scores."""
    q_len, kv_len = query.shape[-2], key.shape[-2]
    if q_len is None or kv_len is None:
        return False
    return math.prod(d for d in query.shape[:-1] if d is not None) * kv_len >= (COMPILE_MIN_SCORES)


def _threads():
    """The number of threads TensorFlow runs operations on."""
    threads = tf.config.threading.get_intra_op_parallelism_threads()
    if threads:
        return threads
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _flash_attention(query, key, value, tile, block_q, block_k):
    """`flash_attention` of one group of heads."""
    heads, kv_heads = query.shape[1], key.shape[1]
    group = 1 if heads == kv_heads else heads // kv_heads
    d_k, d_v = query.shape[-1], value.shape[-1]
    q_len, kv_len = _length(query), _length(key)
    bq = min(block_q, q_len) if isinstance(q_len, int) else block_q
    bk = min(block_k, kv_len) if isinstance(kv_len, int) else block_k
    nq, nk = _ceil_div(q_len, bq), _ceil_div(kv_len, bk)
    tile.pad_keys = not (isinstance(kv_len, int) and kv_len % bk == 0)
    if tile.mask is not None:
        tile.mask = _pad_mask(tile.mask, nq * bq, nk * bk)
    mod = tile.score_mod
    causal, window = mod.causal, mod.sliding_window

    def key_blocks(i):
        """Key blocks `[lo, hi)` that query block `i` can see."""
        first, last = i * bq, tf.minimum((i + 1) * bq, q_len) - 1
        lo, hi = tf.constant(0), tf.cast(nk, tf.int32)
        if causal:
            hi = tf.minimum(hi, last // bk + 1)
        if window is not None:
            lo = tf.maximum(first - window + 1, 0) // bk
            if not causal:
                hi = tf.minimum(hi, (last + window - 1) // bk + 1)
        return lo, hi

    def query_blocks(j):
        """Query blocks `[lo, hi)` that see key block `j`."""
        first, last = j * bk, tf.minimum((j + 1) * bk, kv_len) - 1
        lo, hi = tf.constant(0), tf.cast(nq, tf.int32)
        if causal:
            lo = first // bq
        if window is not None:
            hi = tf.minimum(hi, (last + window - 1) // bq + 1)
            if not causal:
                lo = tf.maximum(first - window + 1, 0) // bq
        return lo, hi

    def pad_rows(x, length):
        """`x` with rows (axis 3) padded to `length`; no copy when none are missing."""
        if isinstance(length, int) and x.shape[3] == length:
            return x
        return tf.pad(x, [[0, 0]] * 3 + [[0, length - tf.shape(x)[3]], [0, 0]])

    def rows(x, start, size):
        """Rows `start ... start + size - 1` of a 5-D tensor: a slice, not a copy of
        `x` (XLA reads the block in place)."""
        shape = tf.shape(x)  # not -1: XLA would pad `x` for a size it does not know
        return tf.slice(x, [0, 0, 0, start, 0], tf.tensor_scatter_nd_update(shape, [[3]], [size]))

    def first_rows(x, length):
        """Rows `0 ... length - 1` of a 5-D tensor (itself when it has no more)."""
        if isinstance(length, int) and x.shape[3] == length:
            return x
        return x[:, :, :, :length]

    def row_writer(shape, size):
        """`write(x, start, block)`: `x` (of 5-D `shape`) with rows `start ... start +
        size - 1` replaced by `block`; a scatter into the loop state, which XLA does
        in place (a `TensorArray` of blocks would need a stack and a transpose,
        two copies of the whole result)."""
        axes = [tf.range(n) for n in tf.unstack(shape[:3])] + [tf.range(size)]
        base = tf.stack(tf.meshgrid(*axes, indexing="ij"), -1)

        def write(x, start, block):
            return tf.tensor_scatter_nd_update(x, base + tf.stack([0, 0, 0, start]), block)

        return write

    def loop(lo, hi, body, state, most):
        """`for index in range(lo, hi): state = body(index, state)`, at most `most` times.

        One iteration at a time: running several blocks at once (TensorFlow's
        default of 10) multiplies the memory of the tiles in flight and gains nothing
        (every matmul already uses all cores).
        """
        return tf.while_loop(
            lambda index, *_: index < hi,
            lambda index, *state: (index + 1,) + tuple(body(index, state)),
            (lo,) + tuple(state),
            parallel_iterations=1,
            maximum_iterations=most,
        )[1:]

    def split(query, key, value):
        """Query `(B, Hk, G, nq * bq, d)`, key and value `(B, Hk, 1, nk * bk, d)`,
        padded only where the lengths are not multiples of the blocks."""
        batch = tf.shape(query)[0]
        q5 = tf.reshape(query, [batch, kv_heads or tf.shape(query)[1], group, q_len, d_k])
        k5, v5 = tf.expand_dims(key, 2), tf.expand_dims(value, 2)
        return pad_rows(q5, nq * bq), pad_rows(k5, nk * bk), pad_rows(v5, nk * bk)

    # The log-sum-exp is a second output so that the gradient function reads only
    # the inputs and outputs of `attend` (a SavedModel saves that function, and it
    # cannot capture the forward pass's intermediates).
    def forward_all(query, key, value):
        batch = tf.shape(query)[0]
        q5, k5, v5 = split(query, key, value)
        rows5 = tf.concat([tf.shape(q5)[:4], [d_v]], 0)
        write_out = row_writer(rows5, bq)

        def forward_block(i, state):
            out5, lse5 = state
            q = rows(q5, i * bq, bq)
            lo, hi = key_blocks(i)
            acc = loop(
                lo,
                hi,
                lambda j, acc: tile.forward(
                    acc, q, rows(k5, j * bk, bk), rows(v5, j * bk, bk), i * bq, j * bk
                ),
                tile.initial_state(q, d_v),
                nk,
            )
            out, lse = tile.finish(acc, value.dtype)
            return write_out(out5, i * bq, out), write_out(lse5, i * bq, lse[..., None])

        out5, lse5 = loop(
            0,
            nq,
            forward_block,
            (tf.zeros(rows5, value.dtype), tf.zeros(tf.concat([rows5[:4], [1]], 0))),
            nq,
        )
        output = tf.reshape(first_rows(out5, q_len), [batch, tf.shape(query)[1], q_len, d_v])
        return output, lse5

    def backward_all(query, key, value, output, lse5, d_output):
        q5, k5, v5 = split(query, key, value)
        out5 = tf.reshape(output, tf.concat([tf.shape(lse5)[:3], [q_len, d_v]], 0))
        d5 = tf.reshape(d_output, tf.shape(out5))
        delta = tf.reduce_sum(tf.cast(d5, tf.float32) * tf.cast(out5, tf.float32), -1)
        d5 = pad_rows(d5, nq * bq)
        delta = pad_rows(delta[..., None], nq * bq)
        float32 = lambda x: tf.cast(x, tf.float32)  # noqa: E731
        write_q = row_writer(tf.shape(q5), bq)
        write_k = row_writer(tf.shape(k5), bk)

        def key_block_grads(j, state):
            dk5, dv5, dq5 = state
            k, v = rows(k5, j * bk, bk), rows(v5, j * bk, bk)

            def add(i, state):
                dk, dv, dq5 = state
                q, d_out = rows(q5, i * bq, bq), rows(d5, i * bq, bq)
                lse_i = rows(lse5, i * bq, bq)[..., 0]
                delta_i = rows(delta, i * bq, bq)[..., 0]
                # Keys by queries (see `tile.backward`): every product below is
                # a plain or a `K`-transposed one.
                p_t, ds_t = tile.backward(q, k, v, d_out, lse_i, delta_i, i * bq, j * bk)
                dv += tf.reduce_sum(tf.matmul(p_t, float32(d_out)), 2, keepdims=True)
                dk += tf.reduce_sum(tf.matmul(ds_t, float32(q)), 2, keepdims=True)
                # dQ of query block i, added in place: one block is read and
                # rewritten, never the whole dQ (the product is dQ^T, transposed
                # here: a block of d x block_q numbers, not a probability tile).
                dq_t = tf.matmul(float32(k), ds_t, transpose_a=True)
                dq_i = rows(dq5, i * bq, bq) + tf.linalg.matrix_transpose(dq_t)
                return dk, dv, write_q(dq5, i * bq, dq_i)

            lo, hi = query_blocks(j)
            dk, dv, dq5 = loop(
                lo, hi, add, (tf.zeros_like(float32(k)), tf.zeros_like(float32(v)), dq5), nq
            )
            return write_k(dk5, j * bk, dk), write_k(dv5, j * bk, dv), dq5

        dk5, dv5, dq5 = loop(
            0,
            nk,
            key_block_grads,
            (
                tf.zeros(tf.shape(k5), tf.float32),
                tf.zeros(tf.shape(v5), tf.float32),
                tf.zeros(tf.shape(q5), tf.float32),
            ),
            nk,
        )
        dq = tf.reshape(first_rows(dq5, q_len), tf.shape(query))
        dk = tf.reshape(first_rows(dk5, kv_len), tf.shape(key))
        dv = tf.reshape(first_rows(dv5, kv_len), tf.shape(value))
        return (
            tf.cast(dq, query.dtype),
            tf.cast(dk, key.dtype),
            tf.cast(dv, value.dtype),
        )

    # XLA compiles each pass whole (its loops, tiles and block reads), which fuses the
    # element-wise tile math into few loops; it needs static lengths (a SavedModel
    # serving any length runs the same loops uncompiled).
    if _compiles(query, key):
        forward_all = tf.function(forward_all, jit_compile=True)
        backward_all = tf.function(backward_all, jit_compile=True)

    @tf.custom_gradient
    def attend(query, key, value):
        # No tape records the passes (they are differentiated by `grad`), so no
        # compiled pass has to return its loops' intermediates.
        output, lse5 = forward_all(*map(tf.stop_gradient, (query, key, value)))

        def grad(d_output, d_lse):
            del d_lse  # the log-sum-exp is an output only for the gradient's sake
            inputs = (query, key, value, output, lse5, d_output)
            return backward_all(*map(tf.stop_gradient, inputs))

        return (output, lse5), grad

    return attend(query, key, value)[0]


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

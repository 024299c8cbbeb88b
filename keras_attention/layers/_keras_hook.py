"""Keras' `_compute_attention` hook of `MultiHeadAttention`: what a subclass that
overrides it receives, in Keras' layout `(batch, seq, heads, dim)` (this package's heads
are `(batch, heads, seq, dim)`)."""

from keras import ops

from keras_attention import masks


def swap_seq_and_heads(tensor):
    """`(batch, heads, seq, dim)` <-> `(batch, seq, heads, dim)` (Keras' layout)."""
    return ops.transpose(tensor, (0, 2, 1, 3))


def hook_inputs(queries, keys, values, mask, sliding_window, group):
    """The heads and the mask as Keras' hook takes them: one key/value head per query
    head (each of the `group` query heads of a key/value head gets a copy), the
    sliding window folded into the boolean mask, the mask at least
    `(1, q_len, kv_len)`."""
    if sliding_window is not None:
        window = masks.sliding_window_mask(
            ops.shape(queries)[2], ops.shape(keys)[2], sliding_window
        )
        mask = masks.combine_masks(mask, window)
    if mask is not None and len(mask.shape) == 2:
        mask = ops.expand_dims(mask, 0)
    if group > 1:
        keys, values = ops.repeat(keys, group, axis=1), ops.repeat(values, group, axis=1)
    query, key, value = (swap_seq_and_heads(x) for x in (queries, keys, values))
    return query, key, value, mask

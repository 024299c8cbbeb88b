"""keras-hub's cache protocol for `TransformerDecoder`: caches in its layout
`(batch, 2, length, heads, head_dim)`, its `self_attention_cache_update_index`, and
the cross-attention cache filled from the encoder sequence or reused, and returned.

keras-hub's `CachedMultiHeadAttention` and Transformer blocks keep keys and values
apart: `(batch, 2, length, heads, head_dim)`, `[:, 0]` the keys and `[:, 1]` the
values. It holds the same numbers as this package's layout (`layers/_decoding_cache.py`)
when `key_dim == value_dim`: `stacked_to_rows` and `rows_to_stacked` convert between
the two. keras-hub's layout holds float keys and values: an int8 cache
(`dtype="int8"`, a `QuantizedCache`) is this package's layout only.
"""

import keras
from keras import ops

from keras_attention import _validation


def is_stacked(cache):
    """Whether `cache` is in keras-hub's layout (rank 5)."""
    return cache is not None and len(cache.shape) == 5


def cache_index(cache_index, update_index):
    """`cache_index`, given under this package's name or keras-hub's."""
    if cache_index is not None and update_index is not None:
        raise ValueError(
            "Pass `cache_index` or keras-hub's name for it, "
            "`self_attention_cache_update_index`, not both. Received: "
            f"cache_index={cache_index!r}, self_attention_cache_update_index={update_index!r}"
        )
    return update_index if cache_index is None else cache_index


def _kv_heads(decoder):
    return decoder.self_attention.num_key_value_heads or decoder.num_heads


def from_stacked(decoder, cache, name):
    """A cache of `decoder` in keras-hub's layout, in this package's."""
    key_dim = decoder.self_attention.key_dim
    return stacked_to_rows(cache, _kv_heads(decoder), key_dim, name)


def to_stacked(decoder, cache):
    """A cache of `decoder` in this package's layout, in keras-hub's."""
    return rows_to_stacked(cache, _kv_heads(decoder))


def unstack(decoder, encoder_sequence, self_cache, cross_cache, cross_update_index):
    """The caches of a `decoder` call: `(stacked, self_cache, cross_key_values,
    new_cross_cache)`, whether the self-attention cache is in keras-hub's layout (and
    so the call follows its protocol), that cache in this package's layout, the
    cross-attention keys/values to use and the cross-attention cache to return (see
    `cross_attention_cache`)."""
    stacked = is_stacked(self_cache)
    if stacked:
        self_cache = from_stacked(decoder, self_cache, "self_attention_cache")
    cross_key_values, new_cross_cache = cross_attention_cache(
        decoder, encoder_sequence, cross_cache, cross_update_index, stacked
    )
    return stacked, self_cache, cross_key_values, new_cross_cache


def cross_attention_cache(decoder, encoder_sequence, cache, update_index, stacked):
    """The cross-attention keys/values for `decoder` (None: project
    `encoder_sequence`) and, in keras-hub's protocol (`stacked`: the self-attention
    cache is in its layout), the cross-attention cache to return: filled from
    `encoder_sequence` at `update_index`, or as given when `update_index` is None."""
    cache_stacked = is_stacked(cache)
    received = f"cross_attention_cache={None if cache is None else tuple(cache.shape)}"
    if decoder.cross_attention is not None and stacked != cache_stacked:
        raise ValueError(
            "With cross-attention, keras-hub's caches `self_attention_cache` and "
            "`cross_attention_cache` (batch, 2, length, heads, head_dim) must both be "
            f"given, or neither. Received: self_attention_cache "
            f"{'in' if stacked else 'not in'} that layout, {received}"
        )
    if update_index is not None and not cache_stacked:
        raise ValueError(
            "`cross_attention_cache_update_index` is used with keras-hub's "
            "`cross_attention_cache` (batch, 2, length, heads, head_dim). Received: "
            f"cross_attention_cache_update_index={update_index!r}, {received}"
        )
    if not cache_stacked:
        return cache, None
    key_values = from_stacked(decoder, cache, "cross_attention_cache")
    if update_index is None:
        return key_values, cache
    update_index = _validation.check_index(update_index, "cross_attention_cache_update_index")
    zero = ops.zeros((), "int32")
    new = decoder.compute_cross_attention_cache(encoder_sequence)
    key_values = ops.slice_update(
        key_values, [zero, ops.cast(update_index, "int32"), zero], ops.cast(new, key_values.dtype)
    )
    return key_values, to_stacked(decoder, key_values)


def stacked_to_rows(cache, num_heads, head_dim, name):
    """keras-hub's cache `(batch, 2, length, num_heads, head_dim)` in this layout,
    `(batch, length, 2 * num_heads * head_dim)`."""
    cache = ops.convert_to_tensor(cache)
    expected = (None, 2, None, num_heads, head_dim)
    if len(cache.shape) != 5 or not _validation.compatible(tuple(cache.shape), expected):
        raise ValueError(
            f"`{name}` in keras-hub's layout must have shape (batch, 2, length, "
            f"num_heads, head_dim) = {expected}. Received: {name}.shape={tuple(cache.shape)}"
        )
    if "float" not in keras.backend.standardize_dtype(cache.dtype):
        raise ValueError(
            f"`{name}` in keras-hub's layout holds float keys and values; an int8 "
            "cache is this package's `get_initial_cache(batch_size, max_length, "
            f"dtype='int8')`. Received: {name}.dtype={cache.dtype}"
        )
    length = ops.shape(cache)[2]
    keys, values = (ops.reshape(cache[:, i], (-1, length, num_heads * head_dim)) for i in (0, 1))
    return ops.concatenate([keys, values], axis=-1)


def rows_to_stacked(cache, num_heads):
    """A cache `(batch, length, 2 * num_heads * head_dim)` in keras-hub's layout,
    `(batch, 2, length, num_heads, head_dim)`."""
    length, features = ops.shape(cache)[1], cache.shape[-1]
    split = features // 2
    shape = (-1, length, num_heads, split // num_heads)
    keys, values = ops.reshape(cache[..., :split], shape), ops.reshape(cache[..., split:], shape)
    return ops.stack([keys, values], axis=1)

"""The decoding cache of `MultiHeadAttention`: its layout, its checks, and one step of
incremental decoding with the full cache and with the sliding-window ring.

Layout. A cache is ONE tensor `(batch, length, num_key_value_heads * key_dim +
num_key_value_heads * value_dim)`. Row `s` (a slot) holds one position's projected
keys (the `key_dense` output, QK-normalized and rotated at that position when the
layer does so) followed by its projected values (the `value_dense` output), before
the head split: key/value head `h` is columns `h * key_dim:(h + 1) * key_dim` of the
keys part. An empty cache is zeros. `cache_index` is the absolute position of the
first new token of a call; a call with `new_len` tokens writes positions
`[cache_index, cache_index + new_len)` and returns the updated cache. With a
`write_length` `n` (the layers' `cache_write_length`) it keeps only the first `n` new
tokens, `[cache_index, cache_index + n)`: the new queries still attend to all the new
tokens, but the cache is left as if the call had ended at position `cache_index + n`.
A prefill of prompt rows of different lengths keeps the part every row shares, so a
decoding loop resuming at the shortest prompt finds the cache at that position: a
ring filled past it would have dropped keys the window still needs.

Full cache (no `sliding_window`): `length = max_length`, slot `p` holds position `p`.
New query `i` (position `cache_index + i`) sees slots `j <= cache_index + i`; slots
not yet written are zero and hidden by that causal mask. The keys of a call are the
`max_length` slots, and an `attention_mask` `(batch, new_len, max_length)` may hide
earlier positions. `cache_index + new_len` must not exceed `max_length`.

Ring (a `sliding_window` `w`): `length = S = min(max_length, w)`, and position `p`
lives in slot `p % S`, so slot `s` holds the most recent position `p < cache_index`
with `p % S == s` (a negative `p`: never written, never visible). A call's keys are
the `S` slots as they were before the call, followed by the `new_len` new tokens;
key position `p` is visible to query position `t` when `t - w < p <= t`. The last
`min(n, S)` of the `n` new tokens kept (all `new_len` by default) are then written.
An `attention_mask` is over absolute positions, `(batch, new_len, total_length)`,
and is gathered at the keys' positions. A ring shorter than the window
(`max_length < w`) must not wrap around, or it would drop positions the window still
sees: there `cache_index + new_len <= max_length`. A call starts where the kept
tokens of the previous one end (or one position before, writing that key again):
positions kept past the next `cache_index` would have evicted keys the window still
sees.

Int8 cache (`dtype="int8"`). A `QuantizedCache(values, scales)`: `values` int8 in the
layout above, `scales` float32 `(batch, length, 2 * num_key_value_heads)`, one scale
per position and key head, then one per position and value head. A head's row `x` is
stored as `round(x / s)` with `s = max|x| / 127` (symmetric, in [-127, 127]) and read
as `q * s`, so the error is at most `s / 2` (llama.cpp's `q8_0`, per head instead of
per 32 values). The new tokens of a call attend to their exact keys and values; only
the positions read back from the cache are quantized. Bytes per position and head:
`2 * head_dim + 8` instead of `8 * head_dim` in float32 (0.28x at `head_dim` 32).
"""

import collections

import keras
from keras import ops

from keras_attention import _validation, masks


class QuantizedCache(collections.namedtuple("QuantizedCache", ["values", "scales"])):
    """An int8 decoding cache (see above): two tensors, a nested structure for
    `while_loop` states and `keras.tree.map_structure` (beam search's reordering);
    `shape` and `dtype` are those of `values`, as for a float cache."""

    __slots__ = ()

    @property
    def shape(self):
        return self.values.shape

    @property
    def dtype(self):
        return self.values.dtype


def rows(cache):
    """The tensor whose rows are the cache's positions (the int8 values of a
    `QuantizedCache`)."""
    return cache.values if isinstance(cache, QuantizedCache) else cache


def output_spec(cache):
    """The symbolic `KerasTensor`(s) of a cache returned by a call."""
    return keras.tree.map_structure(lambda x: keras.KerasTensor(x.shape, dtype=x.dtype), cache)


def quantize(x, heads):
    """`x` `(batch, n, heads * dim)` as int8 `(batch, n, heads * dim)` and float32
    scales `(batch, n, heads)`: each head's row `round(x / s)`, `s = max|x| / 127`."""
    shape = ops.shape(x)
    split = ops.reshape(ops.cast(x, "float32"), (*shape[:2], heads, x.shape[-1] // heads))
    scales = ops.max(ops.abs(split), axis=-1) / 127.0
    # An all-zero row (an empty slot's keys) keeps scale 0 and reads back as zeros.
    safe = ops.where(scales > 0, scales, ops.ones_like(scales))
    q = ops.clip(ops.round(split / ops.expand_dims(safe, -1)), -127, 127)
    return ops.reshape(ops.cast(q, "int8"), shape), scales


def dequantize(values, scales, dtype="float32"):
    """int8 `values` `(batch, n, heads * dim)` and `scales` `(batch, n, heads)` read
    back as `dtype`: each head's row times its scale."""
    shape, heads = ops.shape(values), scales.shape[-1]
    split = ops.reshape(ops.cast(values, "float32"), (*shape[:2], heads, shape[2] // heads))
    x = split * ops.expand_dims(ops.cast(scales, "float32"), -1)  # (LiteRT: no [..., None])
    return ops.cast(ops.reshape(x, shape), dtype)


def _quantized_update(keys, values, heads):
    """The new tokens' keys and values as a `QuantizedCache` update."""
    quantized = [quantize(x, heads) for x in (keys, values)]
    return QuantizedCache(*(ops.concatenate(parts, axis=-1) for parts in zip(*quantized)))


def _read(cache, split, dtype):
    """A cache's keys and values (the first `split` features, the rest) as `dtype`."""
    if not isinstance(cache, QuantizedCache):
        return ops.cast(cache[..., :split], dtype), ops.cast(cache[..., split:], dtype)
    values, scales, heads = cache.values, cache.scales, cache.scales.shape[-1] // 2
    keys = dequantize(values[..., :split], scales[..., :heads], dtype)
    return keys, dequantize(values[..., split:], scales[..., heads:], dtype)


def check_call_arguments(cache, cache_index, key_value_cache, write_length=None):
    """A call takes a decoding cache (`cache` with its `cache_index`, and optionally
    `cache_write_length`) or fixed keys/values (`key_value_cache`), not both."""
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
    if write_length is not None and cache is None:
        raise ValueError(
            "`cache_write_length` is only used with `cache`. Received: "
            f"cache_write_length={write_length!r}, cache=None"
        )


def initial_cache(batch_size, max_length, layout, window, dtype):
    """An empty cache of a layer whose `layout` is `(features, heads)` (the features
    of a position, the key/value heads): zeros `(batch_size, max_length, features)`,
    or `min(max_length, window)` positions for a ring; with `dtype="int8"` a
    `QuantizedCache` of that shape and zero scales `(..., 2 * heads)`."""
    batch_size = _validation.check_index(batch_size, "batch_size", positive=True)
    max_length = _validation.check_index(max_length, "max_length", positive=True)
    if window is not None and isinstance(max_length, int):
        # a ring: only the `window` most recent positions are ever seen
        max_length = min(max_length, window)
    elif window is not None:
        max_length = ops.minimum(max_length, window)
    (features, heads), dtype = layout, keras.backend.standardize_dtype(dtype)
    shape = (batch_size, max_length, features)
    if dtype == "int8":
        scales = ops.zeros((batch_size, max_length, 2 * heads), "float32")
        return QuantizedCache(ops.zeros(shape, "int8"), scales)
    if "float" not in dtype:
        raise ValueError(
            "`dtype` of a decoding cache must be a float dtype or 'int8' (quantized "
            f"keys and values). Received: dtype={dtype!r}"
        )
    return ops.zeros(shape, dtype=dtype)


def key_length(cache_length, new_len, window):
    """The static number of keys a call attends over (None when unknown): the cache's
    slots, and for a ring the new tokens after them."""
    if window is None:
        return cache_length
    return None if cache_length is None or new_len is None else cache_length + new_len


def update(
    cache, cache_index, keys, values, layout, window, q_len, write_length=None, **mask_arguments
):
    """One decoding step: check the cache, write the new tokens' `keys` and `values`
    `(batch, new_len, ...)` (the first `write_length` of them when given), and build
    the mask of the `q_len` new queries. `layout` is `(features, heads)`, as for
    `initial_cache`.

    `mask_arguments` are `query_mask`, `key_padding` (the new tokens' padding) and
    `attention_mask`. Returns `(new_cache, keys, values, mask, cache_index,
    key_positions)`: all the keys and values the queries attend over, `cache_index`
    as an int or an int32 scalar tensor, and the keys' absolute positions for a ring
    (None for the full cache, whose key `j` is at position `j`).
    """
    cache, cache_index = check_cache(cache, cache_index, keys.shape, layout, window=window)
    write_length = check_write_length(write_length, keys.shape[1])
    if window is not None:
        new_cache, keys, values, mask, key_positions = ring_cache_step(
            cache, cache_index, keys, values, window, write_length, **mask_arguments
        )
        return new_cache, keys, values, mask, cache_index, key_positions
    new_cache, keys, values = write_cache(cache, cache_index, keys, values, write_length)
    mask = cached_key_mask(cache_index, ops.shape(rows(cache))[1], q_len, **mask_arguments)
    return new_cache, keys, values, mask, cache_index, None


def check_cache(cache, cache_index, keys_shape, layout, window=None):
    """Check `cache` against the projected new keys `(batch, new_len, ...)` and the
    cache's `layout` `(features, heads)`; return the cache as a tensor (or a
    `QuantizedCache` of tensors) and `cache_index` as an int or an int32 scalar."""
    (features, heads), quantized = layout, isinstance(cache, QuantizedCache)
    convert = ops.convert_to_tensor
    cache = QuantizedCache(*map(convert, cache)) if quantized else convert(cache)
    expected = (keys_shape[0], None, features)
    if len(cache.shape) != 3 or not _validation.compatible(tuple(cache.shape), expected):
        raise ValueError(
            "`cache` must have shape (batch, max_length, num_key_value_heads * "
            f"(key_dim + value_dim)) = {expected}, as made by "
            f"`get_initial_cache`. Received: cache.shape={tuple(cache.shape)}"
        )
    if quantized:
        _check_quantized(cache, heads)
    cache_index = _validation.check_index(cache_index, "cache_index")
    new_len, max_length = keys_shape[1], cache.shape[1]
    # A ring of `window` slots may wrap around; a shorter cache (max_length < window)
    # must not, or it would drop positions the window still sees.
    if (
        (window is None or (max_length is not None and max_length < window))
        and isinstance(cache_index, int)
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


def _check_quantized(cache, heads):
    """A `QuantizedCache`'s dtypes and the shape of its scales."""
    expected = tuple(cache.values.shape[:2]) + (2 * heads,)
    dtypes = [keras.backend.standardize_dtype(x.dtype) for x in cache]
    if dtypes[0] != "int8" or "float" not in dtypes[1]:
        raise ValueError(
            "A `QuantizedCache` holds int8 `values` and float `scales`. Received: "
            f"values.dtype={dtypes[0]}, scales.dtype={dtypes[1]}"
        )
    shape = tuple(cache.scales.shape)
    if len(shape) != 3 or not _validation.compatible(shape, expected):
        raise ValueError(
            "A `QuantizedCache`'s `scales` must have shape (batch, max_length, 2 * "
            f"num_key_value_heads) = {expected}. Received: scales.shape={shape}"
        )


def check_write_length(write_length, new_len):
    """`cache_write_length`: None, or an int in `[0, new_len]` (checked when both are
    known) or an int32 scalar tensor."""
    if write_length is None:
        return None
    write_length = _validation.check_index(write_length, "cache_write_length")
    if isinstance(write_length, int) and new_len is not None and write_length > new_len:
        raise ValueError(
            "`cache_write_length` must be at most the number of new tokens "
            f"({new_len}). Received: cache_write_length={write_length}"
        )
    return write_length


def write_cache(cache, cache_index, keys, values, write_length=None):
    """Write `concat(keys, values)` of the new tokens at positions
    `[cache_index, cache_index + new_len)`; return the new cache and all the cached
    keys and values (in the dtypes of `keys` and `values`). With `write_length`, the
    returned keys and values hold every new token, the new cache only the first
    `write_length`. A `QuantizedCache` stores them quantized; the returned keys and
    values are the cache read back, with the new tokens' exact ones."""
    new = ops.concatenate([keys, values], axis=-1)
    zero = ops.zeros((), "int32")
    start = [zero, ops.cast(cache_index, "int32"), zero]
    split = keys.shape[-1]
    if isinstance(cache, QuantizedCache):
        update = _quantized_update(keys, values, cache.scales.shape[-1] // 2)
        attended = ops.slice_update(ops.concatenate(_read(cache, split, new.dtype), -1), start, new)
    else:
        update = ops.cast(new, cache.dtype)
        attended = ops.slice_update(cache, start, update)
    all_keys = ops.cast(attended[..., :split], keys.dtype)
    all_values = ops.cast(attended[..., split:], values.dtype)
    if write_length is None and not isinstance(cache, QuantizedCache):
        return attended, all_keys, all_values

    def write(part, rows_update):
        if write_length is not None:
            kept = ops.arange(ops.shape(rows_update)[1], dtype="int32")[None, :, None]
            previous = ops.slice(part, start, ops.shape(rows_update))
            rows_update = ops.where(kept < write_length, rows_update, previous)
        return ops.slice_update(part, start, rows_update)

    return keras.tree.map_structure(write, cache, update), all_keys, all_values


def cached_key_mask(
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


def ring_cache_step(
    cache,
    cache_index,
    keys,
    values,
    window,
    write_length=None,
    query_mask=None,
    key_padding=None,
    attention_mask=None,
):
    """One call with a sliding-window ring cache of `S` slots (see the module
    docstring): return the new ring, all keys and values (the ring before the write,
    then the new tokens), their mask and the keys' absolute positions."""
    slots = ops.shape(rows(cache))[1]
    new_len = ops.shape(keys)[1]
    index = ops.cast(cache_index, "int32")
    slot = ops.arange(slots, dtype="int32")
    slot_positions = index - 1 - ops.mod(index - 1 - slot + slots, slots)
    new_positions = index + ops.arange(new_len, dtype="int32")
    key_positions = ops.concatenate([slot_positions, new_positions], axis=0)
    query_positions = new_positions[:, None]
    visible = (
        (key_positions[None, :] >= 0)
        & (key_positions[None, :] <= query_positions)
        & (query_positions - key_positions[None, :] < window)
    )
    if key_padding is not None:
        key_padding = masks.validate_mask(key_padding)
        batch = ops.shape(key_padding)[0]
        key_padding = ops.concatenate([ops.ones((batch, slots), "bool"), key_padding], axis=1)
    if attention_mask is not None:
        attention_mask = masks.validate_mask(attention_mask, "attention_mask")
        columns = ops.clip(key_positions, 0, ops.shape(attention_mask)[-1] - 1)
        if attention_mask.shape[-1] == 1:
            columns = ops.zeros_like(columns)
        attention_mask = ops.take(attention_mask, columns, axis=-1)
    mask = masks.merge_attention_masks(
        query_mask=query_mask,
        value_mask=key_padding,
        attention_mask=attention_mask,
        q_len=new_len,
        kv_len=slots + new_len,
    )
    mask = masks.combine_masks(mask, visible)

    # Write the last `min(n, S)` of the `n` kept new tokens (distinct slots).
    count = new_len if write_length is None else write_length
    token = ops.arange(new_len, dtype="int32")[:, None]
    written = (
        (ops.mod(new_positions, slots)[:, None] == slot[None, :])
        & (token < count)
        & (token >= count - slots)
    )
    split = keys.shape[-1]
    old_keys, old_values = _read(cache, split, keys.dtype)
    if isinstance(cache, QuantizedCache):
        update = _quantized_update(keys, values, cache.scales.shape[-1] // 2)
    else:
        update = ops.cast(ops.concatenate([keys, values], axis=-1), cache.dtype)

    def write(part, rows_update):
        # int8 rows are written in float32, exactly: one token at most goes to a slot
        dtype = "float32" if "int" in keras.backend.standardize_dtype(part.dtype) else part.dtype
        selected = ops.cast(written, dtype)
        kept = 1 - ops.max(selected, axis=0)
        new = ops.cast(part, dtype) * kept[None, :, None]
        new = new + ops.einsum("ns,bnf->bsf", selected, ops.cast(rows_update, dtype))
        return ops.cast(new, part.dtype)

    new_cache = keras.tree.map_structure(write, cache, update)
    all_keys = ops.concatenate([old_keys, keys], axis=1)
    all_values = ops.concatenate([old_values, ops.cast(values, keys.dtype)], axis=1)
    return new_cache, all_keys, all_values, mask, key_positions

"""The three steps of `MultiHeadAttention`'s full decoding cache (check, write,
cached-key mask; `keras_attention.layers._decoding_cache`), each against a numpy
reference written here."""

import keras
import numpy as np
import pytest

from keras_attention.layers._decoding_cache import (
    cached_key_mask,
    check_cache,
    check_write_length,
    ring_cache_step,
    write_cache,
)
from tests.utils import random_normal, to_numpy

B, MAX_LEN, KEY_F, VALUE_F = 2, 6, 4, 3


def test_check_cache_passes_a_good_cache_and_normalizes_the_index():
    cache = np.zeros((B, MAX_LEN, KEY_F + VALUE_F), "float32")
    checked, index = check_cache(cache, np.int64(2), (B, 3, KEY_F), (KEY_F + VALUE_F, 1))
    assert tuple(checked.shape) == cache.shape and index == 2 and type(index) is int
    _, index = check_cache(
        cache, keras.ops.convert_to_tensor(4, "int16"), (B, 1, KEY_F), (KEY_F + VALUE_F, 1)
    )
    assert keras.backend.standardize_dtype(index.dtype) == "int32"
    assert int(to_numpy(index)) == 4


@pytest.mark.parametrize(
    "cache_shape, index, new_len, message",
    [
        ((B, MAX_LEN, 5), 0, 1, r"`cache` must have shape .*Received: cache\.shape=\(2, 6, 5\)"),
        ((B + 1, MAX_LEN, 7), 0, 1, r"Received: cache\.shape=\(3, 6, 7\)"),
        ((B, MAX_LEN), 0, 1, r"Received: cache\.shape=\(2, 6\)"),
        ((B, MAX_LEN, 7), 5, 2, r"\(2\) must not exceed .*max_length=6.*cache_index=5"),
        ((B, MAX_LEN, 7), -1, 1, r"`cache_index` must be a non-negative integer"),
        ((B, MAX_LEN, 7), 1.0, 1, r"`cache_index` must be .*Received: cache_index=1\.0"),
    ],
)
def test_check_cache_refuses(cache_shape, index, new_len, message):
    with pytest.raises(ValueError, match=message):
        check_cache(np.zeros(cache_shape, "float32"), index, (B, new_len, KEY_F), (7, 1))


@pytest.mark.parametrize("as_tensor", [False, True])
def test_write_cache_puts_keys_then_values_at_the_index(as_tensor):
    cache = random_normal(B, MAX_LEN, KEY_F + VALUE_F)
    keys, values = random_normal(B, 2, KEY_F) + 1, random_normal(B, 2, VALUE_F) - 1
    index = keras.ops.convert_to_tensor(3, "int32") if as_tensor else 3
    new_cache, all_keys, all_values = write_cache(cache, index, keys, values)

    expected = cache.copy()
    expected[:, 3:5] = np.concatenate([keys, values], axis=-1)
    np.testing.assert_array_equal(to_numpy(new_cache), expected)
    np.testing.assert_array_equal(to_numpy(all_keys), expected[..., :KEY_F])
    np.testing.assert_array_equal(to_numpy(all_values), expected[..., KEY_F:])


@pytest.mark.parametrize("as_tensor", [False, True])
def test_write_cache_keeps_only_the_first_write_length_tokens(as_tensor):
    cache = random_normal(B, MAX_LEN, KEY_F + VALUE_F)
    keys, values = random_normal(B, 3, KEY_F) + 1, random_normal(B, 3, VALUE_F) - 1
    length = keras.ops.convert_to_tensor(2, "int32") if as_tensor else 2
    new_cache, all_keys, all_values = write_cache(cache, 1, keys, values, length)

    update = np.concatenate([keys, values], axis=-1)
    kept = cache.copy()
    kept[:, 1:3] = update[:, :2]  # position 3 keeps what was there
    np.testing.assert_array_equal(to_numpy(new_cache), kept)
    attended = cache.copy()
    attended[:, 1:4] = update  # this call's queries still see all three new tokens
    np.testing.assert_array_equal(to_numpy(all_keys), attended[..., :KEY_F])
    np.testing.assert_array_equal(to_numpy(all_values), attended[..., KEY_F:])


@pytest.mark.parametrize("length", [0, 2, 5, 7])
def test_ring_keeps_the_last_slots_of_the_first_write_length_tokens(length):
    # A ring of 3 slots, 7 new tokens at positions 0..6: the ring afterwards holds
    # positions length-3 .. length-1 (position p in slot p % 3), the rest untouched.
    slots, new_len = 3, 7
    ring = random_normal(B, slots, KEY_F + VALUE_F)
    keys, values = random_normal(B, new_len, KEY_F) + 1, random_normal(B, new_len, VALUE_F) - 1
    # (a tensor ring, as `update` hands it over after `check_cache`)
    new_ring, all_keys, _, _, positions = ring_cache_step(
        keras.ops.convert_to_tensor(ring), 0, keys, values, 3, length
    )

    expected = ring.copy()
    for position in range(max(0, length - slots), length):
        expected[:, position % slots] = np.concatenate([keys, values], axis=-1)[:, position]
    np.testing.assert_array_equal(to_numpy(new_ring), expected)
    np.testing.assert_array_equal(to_numpy(all_keys)[:, slots:], keys)  # attended: all new
    np.testing.assert_array_equal(to_numpy(positions)[slots:], np.arange(new_len))


def test_write_length_refuses_more_than_the_new_tokens_and_non_integers():
    assert check_write_length(None, 3) is None and check_write_length(3, 3) == 3
    with pytest.raises(ValueError, match=r"at most the number of new tokens \(3\).*=4"):
        check_write_length(4, 3)
    with pytest.raises(ValueError, match=r"`cache_write_length` must be a non-negative"):
        check_write_length(-1, 3)


def test_write_cache_casts_to_the_cache_dtype_and_back():
    cache = np.zeros((1, 3, 2), "float16")
    keys = np.array([[[1.0009765625]]], "float32")  # not a float16 number
    values = np.array([[[2.0]]], "float32")
    new_cache, all_keys, _ = write_cache(cache, 1, keys, values)
    assert keras.backend.standardize_dtype(new_cache.dtype) == "float16"
    assert keras.backend.standardize_dtype(all_keys.dtype) == "float32"
    np.testing.assert_array_equal(to_numpy(all_keys)[0, :, 0], [0.0, np.float16(1.0009765625), 0.0])


def _reference_mask(index, max_length, q_len, query_mask, key_padding, attention_mask):
    """numpy: causal over the cache, the new tokens' padding at their own slots."""
    batch = 2
    mask = np.zeros((batch, q_len, max_length), bool)
    for b in range(batch):
        for i in range(q_len):
            for j in range(max_length):
                allowed = j <= index + i
                if key_padding is not None and index <= j < index + key_padding.shape[1]:
                    allowed &= bool(key_padding[b, j - index])
                if query_mask is not None:
                    allowed &= bool(query_mask[b, i])
                if attention_mask is not None:
                    allowed &= bool(attention_mask[b, i, j])
                mask[b, i, j] = allowed
    return mask


@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize(
    "use_query, use_padding, use_attention",
    [(False, False, False), (False, True, False), (True, True, False), (True, True, True)],
)
def test_cached_key_mask_matches_numpy(as_tensor, use_query, use_padding, use_attention):
    index, q_len = 2, 3
    rng = np.random.default_rng(1)
    query_mask = np.array([[True, False, True], [True, True, True]]) if use_query else None
    key_padding = np.array([[True, False, True], [False, True, True]]) if use_padding else None
    attention_mask = rng.random((2, q_len, MAX_LEN)) > 0.3 if use_attention else None
    mask = cached_key_mask(
        keras.ops.convert_to_tensor(index, "int32") if as_tensor else index,
        MAX_LEN,
        q_len,
        query_mask=query_mask,
        key_padding=key_padding,
        attention_mask=attention_mask,
    )
    expected = _reference_mask(index, MAX_LEN, q_len, query_mask, key_padding, attention_mask)
    got = np.broadcast_to(to_numpy(mask), expected.shape)
    np.testing.assert_array_equal(got, expected)


def test_cached_key_mask_without_masks_is_the_offset_causal_mask():
    mask = to_numpy(cached_key_mask(4, MAX_LEN, 1))
    np.testing.assert_array_equal(
        np.reshape(mask, (-1,))[-MAX_LEN:], [True, True, True, True, True, False]
    )

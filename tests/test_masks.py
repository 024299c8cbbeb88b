"""`keras_attention.masks`."""

import keras
import numpy as np
import pytest

from keras_attention import masks


def test_causal_mask_square_and_offset():
    np.testing.assert_array_equal(masks.causal_mask(3), np.tril(np.ones((3, 3), bool)))
    expected = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], bool)
    np.testing.assert_array_equal(masks.causal_mask(2, 5, offset=2), expected)
    np.testing.assert_array_equal(masks.causal_mask(2, 3), np.array([[1, 0, 0], [1, 1, 0]], bool))


def test_sliding_window_mask():
    got = np.asarray(masks.sliding_window_mask(4, 4, 2))
    i, j = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
    np.testing.assert_array_equal(got, np.abs(i - j) < 2)
    one_sided = np.asarray(masks.combine_masks(got, masks.causal_mask(4)))
    np.testing.assert_array_equal(one_sided, (j <= i) & (i - j < 2))
    with pytest.raises(ValueError, match="window"):
        masks.sliding_window_mask(4, 4, 0)


def test_padding_mask_shapes():
    keep = np.array([[True, True, False], [True, False, False]])
    got = np.asarray(masks.padding_mask(keep))
    assert got.shape == (2, 1, 3)
    np.testing.assert_array_equal(got[:, 0], keep)
    query_keep = np.array([[True, False], [True, True]])
    got = np.asarray(masks.padding_mask(keep, query_mask=query_keep))
    np.testing.assert_array_equal(got, query_keep[:, :, None] & keep[:, None, :])
    with pytest.raises(ValueError, match="mask.shape"):
        masks.padding_mask(np.ones((2, 3, 4), bool))


def test_combine_masks_is_none_aware_and_checks_shapes():
    assert masks.combine_masks(None, None) is None
    a = np.array([[True, False]])
    np.testing.assert_array_equal(masks.combine_masks(None, a), a)
    b = np.array([[True], [False]])
    np.testing.assert_array_equal(masks.combine_masks(a, b), a & b)
    with pytest.raises(ValueError, match=r"masks\[1\].*\(3,\).*not broadcastable"):
        masks.combine_masks(np.ones((2, 4), bool), np.ones((3,), bool))


def test_merge_attention_masks():
    query_keep = np.array([[True, True, False]])
    value_keep = np.array([[True, False, True, True]])
    attention = np.ones((1, 3, 4), bool)
    attention[0, 0, 0] = False
    got = np.asarray(
        masks.merge_attention_masks(
            query_mask=query_keep,
            value_mask=value_keep,
            attention_mask=attention,
            use_causal_mask=True,
            q_len=3,
            kv_len=4,
        )
    )
    causal = np.arange(4)[None, :] <= np.arange(3)[:, None]
    expected = query_keep[:, :, None] & value_keep[:, None, :] & attention & causal
    np.testing.assert_array_equal(got, expected)
    assert masks.merge_attention_masks() is None
    with pytest.raises(ValueError, match="attention_mask"):
        masks.merge_attention_masks(attention_mask=np.ones((1, 3, 5), bool), q_len=3, kv_len=4)
    with pytest.raises(ValueError, match="attention_mask.shape"):
        masks.merge_attention_masks(attention_mask=np.ones((4,), bool), q_len=3, kv_len=4)
    # A (q_len, kv_len) mask is the same for every batch element, as in Keras.
    got = masks.merge_attention_masks(
        value_mask=value_keep, attention_mask=attention[0], q_len=3, kv_len=4
    )
    np.testing.assert_array_equal(np.asarray(got), value_keep[:, None, :] & attention)
    with pytest.raises(ValueError, match="value_mask"):
        masks.merge_attention_masks(value_mask=np.ones((1, 5), bool), q_len=3, kv_len=4)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_mask_to_bias_is_finite_and_blocks(dtype):
    bias = keras.ops.convert_to_numpy(
        keras.ops.cast(masks.mask_to_bias(np.array([True, False]), dtype), "float32")
    )
    assert bias[0] == 0
    assert np.isfinite(bias[1]) and bias[1] <= -3e4
    # Adding the most negative score representable after scaling never overflows.
    assert np.isfinite(np.float32(bias[1]) * 2)


def test_mask_dtypes():
    assert np.asarray(masks.validate_mask(np.array([0, 1, 2]))).tolist() == [False, True, True]
    # Float masks are read as Keras reads them (`mask != 0`), but only 0 and 1 are
    # taken: an additive bias (0 / -1e9) would otherwise be read inverted.
    got = masks.validate_mask(np.array([0.0, 1.0], "float32"))
    assert np.asarray(got).tolist() == [False, True]
    with pytest.raises(ValueError, match="mask.*0.5"):
        masks.validate_mask(np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="mask.*-1000000000.0"):
        masks.validate_mask(np.array([0.0, -1e9], "float32"))
    with pytest.raises(TypeError, match="mask"):
        masks.validate_mask(np.array([1j, 0j], "complex64"))
    with pytest.raises(TypeError, match="dtype"):
        masks.large_negative_number("int32")

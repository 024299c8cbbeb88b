"""The argument checks of `keras_attention._validation`: what passes, what is refused,
and the exact Keras-style message."""

import re

import keras
import numpy as np
import pytest

from keras_attention import _validation as v


def _raises(error, message, check, *args, **kwargs):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        check(*args, **kwargs)


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.int32(1)])
def test_positive_int_accepts(value):
    assert v.check_positive_int(value, "units") is None


@pytest.mark.parametrize("value", [0, -2, 1.0, "3", True, None, np.float32(2)])
def test_positive_int_refuses(value):
    _raises(
        ValueError,
        "Received an invalid value for argument `units`. "
        f"`units` must be a positive integer. Received: units={value!r}",
        v.check_positive_int,
        value,
        "units",
    )


def test_keras_error_leads_with_keras_phrase_then_ours():
    error = v.keras_error(
        "key_value_shapes", "`key` and `value` must ... Received: key.shape=(2, 3, 4)"
    )
    assert isinstance(error, ValueError)
    assert str(error) == (
        "All dimensions of `value` and `key`, except the last one, must be equal. "
        "`key` and `value` must ... Received: key.shape=(2, 3, 4)"
    )
    error = v.keras_error("inputs_list", "ours", error=TypeError, layer="LuongAttention")
    assert isinstance(error, TypeError)
    assert str(error) == "LuongAttention layer must be called on a list of inputs. ours"


def test_positive_int_none_allowed_only_when_asked():
    assert v.check_positive_int(None, "value_dim", allow_none=True) is None
    _raises(
        ValueError,
        "Received an invalid value for argument `value_dim`. "
        "`value_dim` must be a positive integer. Received: value_dim=0",
        v.check_positive_int,
        0,
        "value_dim",
        allow_none=True,
    )


@pytest.mark.parametrize("value", [0, 0.0, 0.5, 0.999, np.float32(0.1)])
def test_rate_accepts(value):
    assert v.check_rate(value, "dropout") is None


@pytest.mark.parametrize("value", [1, 1.0, -0.1, "0.1", True, None])
def test_rate_refuses(value):
    _raises(
        ValueError,
        f"`dropout_rate` must be a float in [0, 1). Received: dropout_rate={value!r}",
        v.check_rate,
        value,
        "dropout_rate",
    )


@pytest.mark.parametrize("value", [1e-6, 2, 0.125])
def test_positive_float_accepts(value):
    assert v.check_positive_float(value, "scale") is None


@pytest.mark.parametrize("value", [0, 0.0, -1.0, True, "1", None])
def test_positive_float_refuses(value):
    _raises(
        ValueError,
        f"`scale` must be a positive float. Received: scale={value!r}",
        v.check_positive_float,
        value,
        "scale",
    )


def test_bool_accepts_only_bools():
    assert v.check_bool(False, "use_bias") is None
    for value in (0, 1, "True", None, np.bool_(True)):
        _raises(
            TypeError,
            f"`use_bias` must be a bool. Received: use_bias={value!r}",
            v.check_bool,
            value,
            "use_bias",
        )


def test_one_of():
    assert v.check_one_of(None, "implementation", (None, "plain")) is None
    _raises(
        ValueError,
        "`implementation` must be one of None, 'plain'. Received: implementation='x'",
        v.check_one_of,
        "x",
        "implementation",
        (None, "plain"),
    )


def test_rank():
    assert v.check_rank((2, 3), (2, 3), "query", "rank 2 or 3") is None
    _raises(
        ValueError,
        "`query` must be rank 3 (batch, seq, features). Received: query.shape=(2, 8)",
        v.check_rank,
        (2, 8),
        3,
        "query",
        "rank 3 (batch, seq, features)",
    )


def test_sequence_needs_rank_3_and_known_features():
    assert v.check_sequence((None, None, 8), "inputs") is None
    _raises(
        ValueError,
        "`inputs` must be rank 3 (batch, seq, features). Received: inputs.shape=(2, 8)",
        v.check_sequence,
        (2, 8),
        "inputs",
    )
    _raises(
        ValueError,
        "The last axis of `inputs` (features) must be known. Received: inputs.shape=(2, 5, None)",
        v.check_sequence,
        (2, 5, None),
        "inputs",
    )


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ((2, 5), (2, 5), True),
        ((None, 5), (2, None), True),
        ((2, 5), (2, 6), False),
        ((2, 5), (2, 5, 1), False),
    ],
)
def test_compatible(a, b, expected):
    assert v.compatible(a, b) is expected


def test_index_returns_python_ints():
    assert v.check_index(0, "cache_index") == 0
    result = v.check_index(np.int64(3), "cache_index")
    assert result == 3 and type(result) is int
    assert v.check_index(1, "max_length", positive=True) == 1


def test_index_tensor_is_cast_to_int32_with_its_value():
    for dtype in ("int32", "int16", "uint8"):
        result = v.check_index(keras.ops.convert_to_tensor(5, dtype), "start_index")
        assert keras.backend.standardize_dtype(result.dtype) == "int32"
        assert int(keras.ops.convert_to_numpy(result)) == 5


@pytest.mark.parametrize("value", [-1, True, 1.0, "0", None])
def test_index_refuses_python_values(value):
    _raises(
        ValueError,
        "`cache_index` must be a non-negative integer or a scalar integer tensor. "
        f"Received: cache_index={value!r}",
        v.check_index,
        value,
        "cache_index",
    )


def test_positive_index_refuses_zero():
    _raises(
        ValueError,
        "`max_length` must be a positive integer or a scalar integer tensor. "
        "Received: max_length=0",
        v.check_index,
        0,
        "max_length",
        positive=True,
    )


@pytest.mark.parametrize(
    "value, shape, dtype",
    [
        (np.array([1], "int32"), (1,), "int32"),
        (np.array(1.0, "float32"), (), "float32"),
        (np.zeros((2, 2), "int16"), (2, 2), "int16"),
    ],
)
def test_index_refuses_tensors_that_are_not_scalar_ints(value, shape, dtype):
    _raises(
        ValueError,
        "`start_index` must be a non-negative integer or a scalar integer tensor. "
        f"Received: start_index with shape {shape} and dtype {dtype}",
        v.check_index,
        keras.ops.convert_to_tensor(value),
        "start_index",
    )

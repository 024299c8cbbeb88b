"""Argument checks shared by every layer and function, raising errors in Keras wording.

Each check names the argument, says what was expected and shows what was received:
``"`num_heads` must be a positive integer. Received: num_heads=0"``. Where Keras'
own layers raise for the same mistake, the message leads with Keras' phrase
(`keras_error`), so code and tests written against Keras' errors still match. Checks
return nothing unless noted; they never change a valid value.

Example:
>>> check_positive_int(4, "num_heads")
>>> check_positive_int(0, "num_heads")
Traceback (most recent call last):
    ...
ValueError: Received an invalid value for argument `num_heads`. `num_heads` must be a positive integer. Received: num_heads=0
>>> check_rate(1.0, "dropout")
Traceback (most recent call last):
    ...
ValueError: `dropout` must be a float in [0, 1). Received: dropout=1.0
"""

import numbers

import keras
from keras import ops

from keras_attention import backend as backend_lib

# Keras' phrases for the mistakes its attention layers refuse too (their messages, and
# the patterns Keras' own tests match), by the name `keras_error` takes.
KERAS_PHRASES = {
    "invalid_argument": "Received an invalid value for argument `{name}`",
    "key_value_shapes": ("All dimensions of `value` and `key`, except the last one, must be equal"),
    "query_value_features": "The last dimension of `query` and `value` must be equal",
    "output_shape": "Invalid `output_shape`",
    "inputs_list": "{layer} layer must be called on a list of inputs",
    "inputs_length": "{layer} layer accepts inputs list of length 2 or 3",
    "mask_list": "{layer} layer mask must be a list",
    "mask_length": "{layer} layer accepts mask list of length 2 or 3",
    "flash_dropout": "Dropout is not supported when flash attention is enabled",
    "flash_scores": ("Returning attention scores is not supported when flash attention is enabled"),
}


def keras_error(phrase, message, error=ValueError, **fields):
    """The `error` for a mistake Keras' layers refuse too: Keras' sentence for it
    (`KERAS_PHRASES[phrase]`, formatted with `fields`), then `message`, ours, which
    names the argument, what was expected and what was received.

    >>> keras_error("invalid_argument", "`key_dim` must be ... Received: key_dim=0", name="key_dim")
    ValueError('Received an invalid value for argument `key_dim`. `key_dim` must be ... Received: key_dim=0')
    """
    return error(f"{KERAS_PHRASES[phrase].format(**fields)}. {message}")


def _is_int(value):
    """A Python or numpy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(value, name, allow_none=False):
    """Raise `ValueError` unless `value` is a positive int (or `None` if allowed)."""
    if value is None and allow_none:
        return
    if not _is_int(value) or value < 1:
        raise keras_error(
            "invalid_argument",
            f"`{name}` must be a positive integer. Received: {name}={value!r}",
            name=name,
        )


def check_positive_float(value, name):
    """Raise `ValueError` unless `value` is a real number greater than 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"`{name}` must be a positive float. Received: {name}={value!r}")


def check_rate(value, name="dropout"):
    """Raise `ValueError` unless `value` is a float in [0, 1) (a dropout rate)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"`{name}` must be a float in [0, 1). Received: {name}={value!r}")


def check_bool(value, name):
    """Raise `TypeError` unless `value` is a bool (not merely truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool. Received: {name}={value!r}")


def check_one_of(value, name, choices):
    """Raise `ValueError` unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(
            f"`{name}` must be one of {', '.join(repr(c) for c in choices)}. "
            f"Received: {name}={value!r}"
        )


def check_rank(shape, expected, name, what):
    """Raise `ValueError` unless the static `shape` has a rank in `expected`.

    `what` describes the expected shape in the message, e.g.
    `"rank 3 (batch, seq, features)"`.
    """
    expected = (expected,) if isinstance(expected, int) else tuple(expected)
    if len(shape) not in expected:
        raise ValueError(f"`{name}` must be {what}. Received: {name}.shape={tuple(shape)}")


def check_known_features(shape, name):
    """Raise `ValueError` unless the last axis (features) of `shape` is known."""
    if shape[-1] is None:
        raise ValueError(
            f"The last axis of `{name}` (features) must be known. "
            f"Received: {name}.shape={tuple(shape)}"
        )


def check_sequence(shape, name):
    """Raise `ValueError` unless `shape` is `(batch, seq, features)` with known features."""
    check_rank(shape, 3, name, "rank 3 (batch, seq, features)")
    check_known_features(shape, name)


def compatible(shape_a, shape_b):
    """Whether two static shapes of the same rank agree where both are known."""
    return len(shape_a) == len(shape_b) and all(
        a is None or b is None or a == b for a, b in zip(shape_a, shape_b)
    )


def check_index(value, name, positive=False):
    """Check an int or a scalar integer tensor: a position, or with `positive` a size.

    A Python/numpy int must be `>= 0` (`>= 1` with `positive`); a tensor must be a
    scalar of an integer dtype (its value is only known when the graph runs).
    Returns the int, or the tensor cast to `int32`.
    """
    kind = "a positive" if positive else "a non-negative"
    expected = f"`{name}` must be {kind} integer or a scalar integer tensor."
    if _is_int(value):
        if value < (1 if positive else 0):
            raise ValueError(f"{expected} Received: {name}={value!r}")
        return int(value)
    if backend_lib.is_symbolic_size(value):
        return value  # a traced size; a tensor would fix it to the example's value
    if value is None or isinstance(value, (bool, numbers.Number, str)):
        raise ValueError(f"{expected} Received: {name}={value!r}")
    tensor = ops.convert_to_tensor(value)
    dtype = keras.backend.standardize_dtype(tensor.dtype)
    if len(tensor.shape) != 0 or not dtype.startswith(("int", "uint")):
        raise ValueError(
            f"{expected} Received: {name} with shape {tuple(tensor.shape)} and dtype {dtype}"
        )
    return ops.cast(tensor, "int32")

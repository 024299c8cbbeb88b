"""What the keras-hub family transplants share: a ledger of the source weights that
makes sure each is used, a checked assignment, and the attention and activation
mappings."""

import keras
import numpy as np


class SourceWeights:
    """The variables of a keras-hub backbone, each to be consumed by a transplant.

    :meth:`take` returns a variable's value as numpy and marks it used;
    :meth:`check_all_used` raises a `ValueError` naming the variables (by path)
    that no rule consumed, so a source weight is never silently dropped.
    """

    def __init__(self, backbone, family):
        self.family = family
        self._left = {id(variable): variable for variable in backbone.weights}

    def take(self, variable):
        self._left.pop(id(variable), None)
        return np.asarray(keras.ops.convert_to_numpy(variable))

    def check_all_used(self):
        if self._left:
            paths = sorted(variable.path for variable in self._left.values())
            raise ValueError(
                f"The {self.family} transplant has no place for these weights of the "
                f"keras-hub backbone: {paths}"
            )


def assign(target, value, source_path):
    """`target.assign(value)` after checking the shapes (`value` reshaped to the
    target when they hold the same number of values in the same order)."""
    value = np.asarray(value)
    shape = tuple(target.shape)
    if value.size != int(np.prod(shape)):
        raise ValueError(
            f"Cannot place the keras-hub weight {source_path} {value.shape} in "
            f"{target.path} {shape}."
        )
    target.assign(value.reshape(shape).astype(keras.backend.standardize_dtype(target.dtype)))


def copy(weights, source, target):
    """Copy the variable `source` into `target` (same values, maybe reshaped)."""
    assign(target, weights.take(source), source.path)


def keras_attention_layer(weights, source, target):
    """A Keras `MultiHeadAttention` (keras-hub's blocks: `EinsumDense` kernels
    `(features, heads, dim)`, output `(heads, dim, features)`) into this package's
    `MultiHeadAttention` (`Dense` kernels `(features, heads * dim)` and
    `(heads * dim, features)`): the same values, row-major."""
    for part in ("query", "key", "value", "output"):
        dense_in, dense_out = getattr(source, f"_{part}_dense"), getattr(target, f"{part}_dense")
        copy(weights, dense_in.kernel, dense_out.kernel)
        if dense_in.bias is not None:
            copy(weights, dense_in.bias, dense_out.bias)


def activation_name(function):
    """The name of a keras-hub activation function in this package's terms."""
    name = keras.activations.serialize(function)
    if isinstance(name, dict):
        name = name.get("config")
    name = str(name).split(">")[-1]
    return {"gelu_approximate": "gelu_tanh"}.get(name, name)

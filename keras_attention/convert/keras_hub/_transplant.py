"""Weight transplants from keras-hub backbones: `Transplant` (the decoder families:
copy by source path and target variable with small named transforms) and
`SourceWeights` with `copy`/`assign` (the encoder-decoder families); either way every
source weight must be consumed, or it raises naming the others."""

import keras
import numpy as np
from keras import ops

# -- named transforms: numpy array in, numpy array out ------------------------------


def plus_one(array):
    """Gemma's RMSNorm scales are stored as `w` and applied as `1 + w`."""
    return array + 1


def heads_first(array):
    """Gemma's `(heads, hidden, head_dim)` query/key/value kernels to
    `(hidden, heads, head_dim)` (then flattened to the target's Dense kernel)."""
    return np.transpose(array, (1, 0, 2))


def split_last(array, parts):
    """Split the last axis of a fused kernel or bias into `parts` equal arrays
    (GPT-NeoX's per-head `[query | key | value]`)."""
    return np.split(array, parts, axis=-1)


class Transplant:
    """Copies weights of `source_weights` (keras-hub variables, found by `path`) into
    the variables of `target_weights`.

    `copy(path, target, transform)` reads the source at `path`, applies `transform`
    (a function of the numpy array), reshapes to the target's shape (only a reshape:
    `(hidden, heads, head_dim)` to `(hidden, heads * head_dim)`) and assigns it.
    `finish()` raises a `ValueError` listing the source weights never read and the
    target weights never set.
    """

    def __init__(self, source_weights, target_weights):
        self.source = {weight.path: weight for weight in source_weights}
        self.unused = set(self.source)
        self.unset = {id(weight): weight for weight in target_weights}

    def has(self, path):
        return path in self.source

    def take(self, path, transform=None):
        """The source weight at `path` as a numpy array (marked as consumed)."""
        if path not in self.source:
            raise ValueError(
                f"The keras-hub model has no weight {path!r}; it has {sorted(self.source)}."
            )
        self.unused.discard(path)
        array = ops.convert_to_numpy(self.source[path])
        return array if transform is None else transform(array)

    def put(self, target, array):
        """Assign `array` (reshaped to its shape when the sizes agree) to `target`."""
        shape = tuple(target.shape)
        if array.size != int(np.prod(shape)):
            raise ValueError(
                f"A weight of the wrong shape for {target.path}: expected {shape}, "
                f"received {array.shape}."
            )
        target.assign(np.reshape(array, shape).astype(target.dtype))
        self.unset.pop(id(target), None)

    def copy(self, path, target, transform=None):
        self.put(target, self.take(path, transform))

    def dense(self, path, target, transform=None):
        """A Dense layer: `path/kernel` (through `transform`) and, when `target` has
        one, `path/bias`."""
        self.copy(f"{path}/kernel", target.kernel, transform)
        if target.bias is not None:
            self.copy(f"{path}/bias", target.bias)

    def norm(self, path, target, transform=None):
        """A normalization layer: `scale` (RMSNorm) or `gamma`/`beta` (LayerNorm),
        the same names on both sides."""
        for weight in target.weights:
            self.copy(f"{path}/{weight.name}", weight, transform)

    def finish(self):
        if self.unused or self.unset:
            raise ValueError(
                "The weight transplant is incomplete. keras-hub weights not mapped: "
                f"{sorted(self.unused)}; weights of the converted model not set: "
                f"{sorted(weight.path for weight in self.unset.values())}."
            )


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

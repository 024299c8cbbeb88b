"""`Transplant`: copy a keras-hub backbone's weights into a model of this package,
by source path and target variable, with small named transforms; every source weight
must be consumed and every target weight set, or it raises naming the others."""

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
        # Two weights may share a path (T5's relative biases, one a stack, are both
        # `self_attention/embeddings`): the later ones are kept as `path (2)`, ...
        self.source = {}
        for weight in source_weights:
            path, count = weight.path, 1
            while path in self.source:
                count += 1
                path = f"{weight.path} ({count})"
            self.source[path] = weight
        self._paths = {id(weight): path for path, weight in self.source.items()}
        self.unused = set(self.source)
        self.unset = {id(weight): weight for weight in target_weights}

    def has(self, path):
        return path in self.source

    def take(self, path, transform=None):
        """The source weight at `path` as a numpy array (marked as consumed);
        `path` may also be the source variable itself (for layers keras-hub leaves
        to Keras' automatic, numbered names, such as T5's `t5_layer_norm_<n>`, and
        for weights that share a path)."""
        if not isinstance(path, str):
            if id(path) not in self._paths:
                raise ValueError(f"{path.path!r} is not a weight of the keras-hub model.")
            path = self._paths[id(path)]
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

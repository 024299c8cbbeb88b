"""What differs between the Keras backends, decided here and nowhere else.

Every other module of the package is `keras.ops` only. The few things one backend
needs for itself live in this package, chosen by `keras.backend.backend()`:

- :func:`default_implementation`: the attention path used when a layer does not
  name one, picked per backend by measurement (`benchmarks/bench_attention.py`,
  tables in `docs/performance.md`).
- :func:`fused_supports`: whether `keras.ops.dot_product_attention` accepts these
  head sizes on this backend (JAX's needs `d_k == d_v`).
- :func:`map_sequentially`: a loop over chunks (`keras.ops.scan`), except on
  TensorFlow where a bounded loop keeps it differentiable under XLA.
- :func:`is_symbolic_size`: a size that is only known when the program runs
  (PyTorch's `SymInt` while `torch.export` traces), kept as is rather than turned
  into a tensor (which would fix it to the example's value).
- :func:`to_numpy`: tensors of any backend (also PyTorch tensors that require
  grad) as numpy arrays.
- :func:`concrete_value`: a tensor's values when they are known now (eager), else
  `None` (inside `tf.function`, `jax.jit`, `torch.compile` or a symbolic model).
- :mod:`keras_attention.backend.generation`: how the decoding loop is compiled
  (`tf.function` + XLA, `jax.jit`, eager PyTorch) and its random numbers.

Public APIs only: no private TensorFlow modules or other private imports.
"""

import keras
import numpy as np
from keras import ops

__all__ = [
    "concrete_value",
    "default_implementation",
    "fused_supports",
    "is_symbolic_size",
    "map_sequentially",
    "to_numpy",
]

# Measured forward+backward of `MultiHeadAttention` (batch 8, d_model 256, 8 heads,
# N = 128 ... 2048) against `keras.layers.MultiHeadAttention` on CPU (tables in
# docs/performance.md): on PyTorch (eager) the plain path is 1.6-2.5x Keras' time and
# the fused one (`torch.nn.functional.scaled_dot_product_attention`) 0.88-1.08x; on
# JAX (`jax.jit`) plain is 0.56-0.93x and fused 0.99-1.03x; on TensorFlow plain is
# 0.85-0.97x and fused slower than plain.
_DEFAULT_IMPLEMENTATION = {"tensorflow": "plain", "jax": "plain", "torch": "fused"}


def default_implementation():
    """The attention path (`"plain"` or `"fused"`) this backend runs fastest."""
    return _DEFAULT_IMPLEMENTATION.get(keras.backend.backend(), "plain")


def fused_supports(query_shape, key_shape, value_shape):
    """Whether the fused kernel handles these `(batch, heads, seq, dim)` shapes here.

    JAX's `dot_product_attention` needs queries, keys and values of one head size
    (`d_k == d_v`); TensorFlow's and PyTorch's do not.
    """
    if keras.backend.backend() == "jax":
        return query_shape[-1] == value_shape[-1] and key_shape[-1] == value_shape[-1]
    return True


def map_sequentially(fn, xs, output_zeros):
    """`fn` applied to each `xs[i]` in turn, outputs stacked on a new first axis.

    One step runs at a time, so no two steps' intermediates are alive at once.
    `output_zeros` is zeros shaped and typed like one output of `fn`. Keras'
    TensorFlow `scan` is a `tf.while_loop` without an iteration bound, which XLA
    cannot differentiate; `tf.scan` bounds its loop by the number of steps, so on
    TensorFlow the loop also compiles and differentiates with `jit_compile=True`.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.scan(lambda _, x: fn(x), xs, initializer=output_zeros)
    _, outputs = ops.scan(lambda carry, x: (carry, fn(x)), output_zeros, xs)
    return outputs


def is_symbolic_size(value):
    """Whether `value` is a traced integer size (PyTorch's `SymInt` under `torch.export`).

    Converting one to a tensor makes `torch.export` specialise the dimension to the
    example input's value, so such sizes are passed on untouched.
    """
    if keras.backend.backend() != "torch":
        return False
    import torch

    return isinstance(value, torch.SymInt)


def to_numpy(x):
    """A numpy array from a numpy array, a list, or a tensor of any backend.

    PyTorch tensors that require grad are detached first (their `.numpy()` raises),
    and device tensors are copied to the host, as `keras.ops.convert_to_numpy` does.
    """
    if isinstance(x, np.ndarray):
        return x
    if ops.is_tensor(x):
        return ops.convert_to_numpy(x)
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a PyTorch tensor, other backend
        x = x.detach().cpu()
    return np.asarray(x)


def concrete_value(x):
    """The values of `x` as a numpy array when they are known now, else `None`.

    They are known for numpy arrays and eager tensors; not for symbolic Keras tensors
    or for tensors being traced (`tf.function`, `jax.jit`, `torch.compile`). Used to
    check values (e.g. that a float mask holds only 0 and 1) where that is possible.
    """
    if isinstance(x, (np.ndarray, np.generic)):
        return np.asarray(x)
    if isinstance(x, keras.KerasTensor):
        return None
    name = keras.backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        if not tf.executing_eagerly():
            return None
    elif name == "jax":
        import jax

        if isinstance(x, jax.core.Tracer):
            return None
    elif name == "torch":
        import torch

        if torch.compiler.is_compiling():
            return None
    return to_numpy(x)

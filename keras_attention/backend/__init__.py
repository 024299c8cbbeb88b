"""What differs between the Keras backends, decided here and nowhere else.

Every other module of the package is `keras.ops` only. The few things one backend
needs for itself live in this package, chosen by `keras.backend.backend()`:

- :func:`default_implementation`: the attention path used when a layer does not
  name one, picked per backend by measurement (`benchmarks/bench_attention.py`,
  tables in `docs/performance.md`).
- :func:`fused_supports`: whether `keras.ops.dot_product_attention` accepts these
  head sizes on this backend (JAX's needs `d_k == d_v`).
- :func:`fused_runs`: whether that function runs for a dtype here (not float16 on
  JAX's CPU under `jax.jit`).
- :func:`map_sequentially`: a loop over chunks (`keras.ops.scan`), except on
  TensorFlow where a bounded loop keeps it differentiable under XLA.
- :func:`has_flash_attention`, :func:`flash_attention`: the flash-attention kernel
  (`tf.custom_gradient` and `tf.while_loop` around `ops`' tile math), TensorFlow only
  (:mod:`keras_attention.backend.flash_tensorflow`).
- :func:`remat_differentiates`: whether `keras.remat` differentiates the variables a
  callable score bias reads (not TensorFlow's `recompute_grad` inside a loop).
- :func:`is_symbolic_size`: a size that is only known when the program runs
  (PyTorch's `SymInt` while `torch.export` traces), kept as is rather than turned
  into a tensor (which would fix it to the example's value).
- :func:`positions`: `0, 1, ..., length - 1` as int32; on JAX through `lax.iota`,
  which jax2onnx converts with a symbolic length (its `jnp.arange` does not).
- :func:`splits_heads_through_rows`: how `ops.split_heads` reshapes, for the ONNX
  converters (tf2onnx needs the detour, jax2onnx cannot follow it).
- :func:`moveaxis`: `keras.ops.moveaxis` with non-negative axes, which PyTorch's
  TorchScript ONNX exporter needs.
- :func:`layer_normalization`: `keras.ops.layer_normalization`, on PyTorch with the
  normalized sizes as Python ints, so TorchScript's ONNX exporter can write it.
- :func:`to_numpy`: tensors of any backend (also PyTorch tensors that require
  grad) as numpy arrays.
- :func:`concrete_value`: a tensor's values when they are known now (eager), else
  `None` (inside `tf.function`, `jax.jit`, `torch.compile` or a symbolic model).
- :mod:`keras_attention.backend.generation`: how the decoding loop is compiled
  (`tf.function` + XLA, `jax.jit`, on PyTorch a Python loop around the step that
  :mod:`keras_attention.backend.torch_step` traces) and its random numbers.
- :mod:`keras_attention.backend.litert_quantized`: a `model.quantize()`d model's
  int8 products traced in float32 (exact) while a LiteRT export is traced.

Public APIs only: no private TensorFlow modules or other private imports (one
exception, `litert_quantized`: Keras has no public hook for what `keras.ops.matmul`
does with int8 operands, so it swaps Keras' backend function while an export traces).
"""

import keras
import numpy as np
from keras import ops

__all__ = [
    "concrete_value",
    "default_implementation",
    "flash_attention",
    "fused_runs",
    "fused_supports",
    "has_flash_attention",
    "is_symbolic_size",
    "layer_normalization",
    "map_sequentially",
    "moveaxis",
    "reads_trainable_variables",
    "remat_differentiates",
    "to_numpy",
]

# The faster of the plain and fused paths per backend, forward+backward of
# `MultiHeadAttention` against `keras.layers.MultiHeadAttention` (docs/performance.md,
# "Per backend").
_DEFAULT_IMPLEMENTATION = {"tensorflow": "plain", "jax": "plain", "torch": "fused"}


def default_implementation():
    """The attention path (`"plain"` or `"fused"`) this backend runs fastest."""
    return _DEFAULT_IMPLEMENTATION.get(keras.backend.backend(), "plain")


def has_flash_attention():
    """Whether this backend has a flash attention kernel (TensorFlow's, in
    :mod:`keras_attention.backend.flash_tensorflow`); elsewhere `implementation="flash"`
    runs the chunked path."""
    return keras.backend.backend() == "tensorflow"


def flash_attention(query, key, value, tile, block_q, block_k):
    """The backend's flash attention kernel around `ops.flash.FlashTile` (TensorFlow only)."""
    from keras_attention.backend import flash_tensorflow

    return flash_tensorflow.flash_attention(query, key, value, tile, block_q, block_k)


def reads_trainable_variables(fn):
    """Whether the callable score bias `fn` reads trainable variables (TensorFlow)."""
    from keras_attention.backend import flash_tensorflow

    return flash_tensorflow.reads_trainable_variables(fn)


def remat_differentiates(fn):
    """Whether a callable score bias `fn(query_positions, key_positions)` can be
    evaluated inside `keras.remat` (within a loop) and differentiated.

    Not on TensorFlow: `recompute_grad` differentiates only its arguments, and inside
    the chunked path's `tf.scan` under `tf.function` the gradient fails for a
    variable (`"... captures ... resource"`) or a tensor from outside the function
    (`"... is in list of internal_captures but not in internal_capture_to_output"`)
    that `fn` reads by closure. JAX and PyTorch differentiate what the function reads.
    """
    del fn  # the same answer for every callable (kept for a backend that could tell)
    return keras.backend.backend() != "tensorflow"


def fused_runs(dtype):
    """Whether `keras.ops.dot_product_attention` runs for `dtype` inputs here.

    Not float16 on JAX's CPU: under `jax.jit`, `jax.nn.dot_product_attention` asks
    for a float16 product accumulated in float32, which XLA's CPU `dot_general` does
    not support ("The precision 'F16_F16_F32' is not supported"); eager calls and
    bfloat16 work, and so does every dtype on GPU and TPU.
    """
    if keras.backend.backend() != "jax" or keras.backend.standardize_dtype(dtype) != "float16":
        return True
    import jax

    return jax.default_backend() != "cpu"


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


def positions(length):
    """The int32 positions `0, 1, ..., length - 1` (`keras.ops.arange(length)`).

    `length` is a Python int, a traced size, or a scalar tensor. On JAX a size
    (an int or a symbolic dimension of `jax.export`) goes through `jax.lax.iota`:
    jax2onnx, which Keras uses to export JAX models to ONNX, converts `iota` with a
    symbolic length but not `jnp.arange`.

    Example:
    >>> keras.ops.convert_to_numpy(positions(3))
    array([0, 1, 2], dtype=int32)
    """
    if keras.backend.backend() == "jax" and not ops.is_tensor(length):
        import jax
        import jax.numpy as jnp

        return jax.lax.iota(jnp.int32, length)
    return ops.arange(length, dtype="int32")


def splits_heads_through_rows():
    """Whether `ops.split_heads` reshapes through `(batch * seq, heads, head_dim)`.

    tf2onnx (TensorFlow's ONNX export) needs that detour (see `ops.split_heads`);
    jax2onnx (JAX's) cannot map the second reshape's sizes back to the input's axes
    ("reshape with symbolic dimensions requires mapping to input axes"), so on JAX the
    features are split in place.
    """
    return keras.backend.backend() != "jax"


def moveaxis(x, source, destination):
    """`keras.ops.moveaxis(x, source, destination)` for int axes, made non-negative
    first: PyTorch's TorchScript ONNX exporter (Keras' `format="onnx"`) writes
    negative `movedim` axes into a `Transpose` as they are, which ONNX Runtime
    refuses to load. The same transpose on every backend.

    Example:
    >>> x = np.zeros((2, 3, 4), "float32")
    >>> tuple(moveaxis(x, -1, 0).shape)
    (4, 2, 3)
    """
    rank = len(x.shape)
    return ops.moveaxis(x, source % rank, destination % rank)


def layer_normalization(x, gamma, beta, axis, epsilon, normalized_shape):
    """`keras.ops.layer_normalization(x, gamma, beta, axis, epsilon)`, exportable.

    On PyTorch, Keras calls `torch.nn.functional.layer_norm` with the normalized sizes
    read from `x.shape`; while TorchScript traces (Keras' `format="onnx"` export with
    dynamic sizes) those are traced values, and the ONNX exporter refuses the node
    ("Failed to export a node onnx::Gather ... because it is not constant"). Here the
    same kernel gets `normalized_shape`, the sizes of the normalized axes known when
    the layer was built, as Python ints: the same values, and a constant in the
    graph. Elsewhere (other backends, axes that are not the last ones, sizes unknown
    at build time) this is Keras' function.

    Args:
        x: the inputs.
        gamma, beta: the scale and offset, or `None`.
        axis: the normalized axes, a sorted list of ints.
        epsilon: added to the variance.
        normalized_shape: the sizes of `axis`, a tuple of ints (or `None`s).

    Example:
    >>> x = np.array([[1.0, 2.0, 3.0]], "float32")
    >>> y = layer_normalization(x, None, None, [-1], 1e-3, (3,))
    >>> [round(float(v), 3) for v in keras.ops.convert_to_numpy(y)[0]]
    [-1.224, 0.0, 1.224]
    """
    if keras.backend.backend() != "torch" or not _last_axes(axis, len(x.shape), normalized_shape):
        return ops.layer_normalization(x, gamma, beta, axis=axis, epsilon=epsilon)
    import torch.nn.functional as F

    # As Keras: computed in at least float32, returned in the input's dtype.
    dtype = keras.backend.standardize_dtype(x.dtype)
    compute_dtype = keras.backend.result_type(dtype, "float32")
    x = ops.cast(x, compute_dtype)
    gamma = None if gamma is None else ops.cast(gamma, compute_dtype)
    beta = None if beta is None else ops.cast(beta, compute_dtype)
    outputs = F.layer_norm(x, tuple(normalized_shape), gamma, beta, epsilon)
    return ops.cast(outputs, dtype)


def _last_axes(axis, rank, normalized_shape):
    """Whether `axis` are the last `len(axis)` axes of a rank-`rank` tensor and their
    sizes are known ints (what `torch.nn.functional.layer_norm` normalizes over)."""
    axes = sorted(a % rank for a in axis)
    return axes == list(range(rank - len(axes), rank)) and all(
        isinstance(size, int) for size in normalized_shape
    )


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

"""LiteRT conversion of a `model.quantize()`d model, TensorFlow only.

Keras' int8 `Dense`, `EinsumDense` and `ReversibleEmbedding` multiply int8 inputs
by int8 kernels into int32 (`tf.matmul(..., output_type=tf.int32)`), an op LiteRT's
built-in `FULLY_CONNECTED`/`BATCH_MATMUL` cannot lower. :func:`int8_products_in_float`
makes the graphs traced inside it do the same product in float32: both int8
operands are cast to float32 and multiplied there. Every product of two values in
[-127, 127] and every partial sum up to 2**24 (a contraction of up to 1040 terms)
is an integer float32 holds exactly, so the float graph computes the same integers
as the int32 matmul, in whatever order it adds them; the quantized layer then
de-scales them exactly as in Keras. The int8 kernels stay int8 constants in the
graph (a `CAST` at run time), so the `.tflite` file keeps their int8 size. An int4
model converts the same way (its kernels unpacked to int8 in the graph), but the
converter folds the unpacking into float32 constants: its file is larger than the
int8 model's (measured in docs/guide.md). float8 has no LiteRT type.
"""

import contextlib

import keras


def _is_int8(x):
    dtype = getattr(x, "dtype", None)
    return dtype is not None and keras.backend.standardize_dtype(dtype) == "int8"


@contextlib.contextmanager
def int8_products_in_float():
    """Within the block, `keras.ops.matmul`/`einsum` of int8 operands on TensorFlow
    cast them to float32 first (an exact float32 result, see the module docstring).
    Only what is traced inside the block changes; the model itself is untouched."""
    import tensorflow as tf

    # The functions `keras.ops.matmul`/`einsum` call on the current backend (Keras'
    # backend module, looked up at each call): the one private hook of the package's
    # exports, used only while tracing a LiteRT export.
    from keras.src.backend import numpy as numpy_ops

    matmul, einsum = numpy_ops.matmul, numpy_ops.einsum

    def as_float(x):
        return tf.cast(x, tf.float32) if _is_int8(x) else x

    def float_matmul(x1, x2):
        return matmul(as_float(x1), as_float(x2))

    def float_einsum(subscripts, *operands, **kwargs):
        return einsum(subscripts, *[as_float(x) for x in operands], **kwargs)

    numpy_ops.matmul, numpy_ops.einsum = float_matmul, float_einsum
    try:
        yield
    finally:
        numpy_ops.matmul, numpy_ops.einsum = matmul, einsum

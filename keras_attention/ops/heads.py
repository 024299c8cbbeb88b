"""The head reshapes of the multi-head layers: `(batch, seq, heads * head_dim)` to
`(batch, heads, seq, head_dim)` and back."""

from keras import ops

from keras_attention import backend as backend_lib

__all__ = ["merge_heads", "split_heads"]


def split_heads(x, num_heads):
    """`(batch, seq, num_heads * head_dim)` -> `(batch, num_heads, seq, head_dim)`.

    Head `h` takes features `h * head_dim:(h + 1) * head_dim`.
    """
    if len(x.shape) != 3:
        raise ValueError(
            "`x` must be rank 3 (batch, seq, num_heads * head_dim). "
            f"Received: x.shape={tuple(x.shape)}"
        )
    if x.shape[-1] is not None and x.shape[-1] % num_heads:
        raise ValueError(
            f"The last dimension of `x` must be divisible by `num_heads`. Received: "
            f"x.shape={tuple(x.shape)}, num_heads={num_heads}"
        )
    shape = ops.shape(x)
    head_dim = x.shape[-1] // num_heads
    # Through (batch * seq, heads, head_dim): tf2onnx (1.17) rewrites a reshape whose
    # sizes come from its own input's shape with "copy this dimension" zeros, then
    # merges it into the 2-D reshape inside TensorFlow's Dense on sequences, where the
    # zeros copy the wrong dimensions (ONNX Runtime fails; see docs/deployment.md).
    # Both reshapes are free (views) on every backend. JAX splits in place: jax2onnx
    # cannot follow the detour (`backend.splits_heads_through_rows`).
    if backend_lib.splits_heads_through_rows():
        x = ops.reshape(x, (-1, num_heads, head_dim))
    x = ops.reshape(x, (shape[0], shape[1], num_heads, head_dim))
    return ops.transpose(x, (0, 2, 1, 3))


def merge_heads(x):
    """`(batch, num_heads, seq, head_dim)` -> `(batch, seq, num_heads * head_dim)`."""
    if len(x.shape) != 4:
        raise ValueError(
            "`x` must be rank 4 (batch, num_heads, seq, head_dim). "
            f"Received: x.shape={tuple(x.shape)}"
        )
    shape = ops.shape(x)
    x = ops.transpose(x, (0, 2, 1, 3))
    return ops.reshape(x, (shape[0], shape[2], x.shape[2] * x.shape[3]))

"""Positions: rotary embeddings (RoPE) and the ALiBi slopes and T5 buckets of the
position score biases."""

import math

from keras import ops

from keras_attention import _validation
from keras_attention import backend as backend_lib

__all__ = [
    "ROTARY_LAYOUTS",
    "alibi_slopes",
    "apply_rotary_embedding",
    "check_rotary_arguments",
    "relative_position_buckets",
]

ROTARY_LAYOUTS = ("rotate_half", "interleaved")


def apply_rotary_embedding(
    x,
    positions=None,
    start_index=0,
    max_wavelength=10000,
    scaling_factor=1.0,
    rotary_fraction=1.0,
    layout="rotate_half",
):
    """Rotary position embedding (RoPE, Su et al. 2021) of `x` `(..., seq, dim)`.

    Feature pairs `(a, b)` of the first `r = rotary_fraction * dim` features are
    rotated by the angle `theta_k = (p / scaling_factor) * max_wavelength^(-2k / r)`
    at position `p`: `(a cos - b sin, b cos + a sin)`. A dot product of a rotated
    query at `p` and a rotated key at `q` then depends on `p - q` only. The other
    features pass through unchanged (partial rotary, as in GPT-NeoX/Phi).

    Layouts (which features form pair `k`): `"rotate_half"` (default; GPT-NeoX,
    Llama in Hugging Face and keras-hub): features `k` and `k + r/2`;
    `"interleaved"` (the paper, GPT-J, Meta's Llama): features `2k` and `2k + 1`.

    Args:
        x: `(..., seq, dim)` (e.g. `(batch, heads, seq, head_dim)`).
        positions: optional int vector `(seq,)` (or broadcastable to `x`'s leading
            dimensions plus `seq`) of positions; default `start_index + arange(seq)`.
        start_index: int or scalar int tensor, position of the first row (cached
            decoding rotates the new token at its true position).
        max_wavelength: positive float, the base (10000 in the paper).
        scaling_factor: float >= 1, linear position interpolation (positions are
            divided by it to extend the context).
        rotary_fraction: float in (0, 1], the fraction of `dim` that is rotated.
        layout: `"rotate_half"` or `"interleaved"`.

    Returns:
        Same shape and dtype as `x`.

    Example:
    >>> import numpy as np
    >>> x = np.ones((1, 2, 4, 8), "float32")
    >>> tuple(apply_rotary_embedding(x).shape)
    (1, 2, 4, 8)
    """
    x = ops.convert_to_tensor(x)
    rotary_dim = check_rotary_arguments(
        x.shape[-1], max_wavelength, scaling_factor, rotary_fraction, layout
    )
    dtype = x.dtype
    if positions is None:
        positions = backend_lib.positions(ops.shape(x)[-2]) + ops.cast(start_index, "int32")
    positions = ops.cast(positions, "float32") / scaling_factor
    exponents = ops.arange(0, rotary_dim, 2, dtype="float32") / rotary_dim
    inverse_frequencies = ops.power(float(max_wavelength), -exponents)
    angles = ops.expand_dims(positions, -1) * inverse_frequencies  # (..., seq, r/2)
    cos, sin = ops.cos(angles), ops.sin(angles)
    work = ops.cast(x, "float32")
    rotated, rest = work[..., :rotary_dim], work[..., rotary_dim:]
    if layout == "rotate_half":
        first, second = rotated[..., : rotary_dim // 2], rotated[..., rotary_dim // 2 :]
        rotated = ops.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    else:
        pairs = ops.reshape(rotated, tuple(ops.shape(rotated)[:-1]) + (rotary_dim // 2, 2))
        first, second = pairs[..., 0], pairs[..., 1]
        pairs = ops.stack([first * cos - second * sin, second * cos + first * sin], axis=-1)
        rotated = ops.reshape(pairs, ops.shape(rotated))
    if rotary_dim < x.shape[-1]:
        rotated = ops.concatenate([rotated, rest], axis=-1)
    return ops.cast(rotated, dtype)


def check_rotary_arguments(dim, max_wavelength, scaling_factor, rotary_fraction, layout):
    """Validate the rotary settings for a head size `dim`; return the rotated size."""
    _validation.check_positive_float(max_wavelength, "max_wavelength")
    _validation.check_positive_float(scaling_factor, "scaling_factor")
    _validation.check_positive_float(rotary_fraction, "rotary_fraction")
    if rotary_fraction > 1:
        raise ValueError(
            f"`rotary_fraction` must be in (0, 1]. Received: rotary_fraction={rotary_fraction}"
        )
    _validation.check_one_of(layout, "layout", ROTARY_LAYOUTS)
    if dim is None:
        raise ValueError("The last axis (head dim) of `x` must be known for rotary embedding.")
    # int(): PyTorch's ONNX tracer gives sizes as 0-d tensors (the head dim is static).
    rotary_dim = int(round(int(dim) * rotary_fraction))
    if rotary_dim < 2 or rotary_dim % 2:
        raise ValueError(
            "Rotary embedding rotates feature pairs, so the rotated head dim "
            "(head dim * rotary_fraction) must be even and at least 2. Received: "
            f"head dim={dim}, rotary_fraction={rotary_fraction} (rotated dim {rotary_dim})"
        )
    return rotary_dim


def alibi_slopes(num_heads):
    """The ALiBi head slopes (Press et al. 2022) as a list of Python floats.

    For `n` a power of two: `2^(-8/n), 2^(-16/n), ..., 2^(-8)`, the geometric sequence
    starting at and multiplied by `2^(-8/n)`. Otherwise (as in the authors' code): the
    slopes of the largest power of two `m < n`, then every other slope of `2m` (the
    odd-numbered ones) for the remaining `n - m` heads.

    Example:
    >>> alibi_slopes(4)
    [0.25, 0.0625, 0.015625, 0.00390625]
    """
    _validation.check_positive_int(num_heads, "num_heads")

    def power_of_two(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if num_heads & (num_heads - 1) == 0:
        return power_of_two(num_heads)
    closest = 2 ** int(math.floor(math.log2(num_heads)))
    return power_of_two(closest) + power_of_two(2 * closest)[0::2][: num_heads - closest]


def relative_position_buckets(
    relative_position, bidirectional=True, num_buckets=32, max_distance=128
):
    """T5's bucket of each relative position `key_position - query_position`.

    Half the buckets (bidirectional: per direction) hold the exact distances
    `0 ... n/2 - 1`; the others cover `n/2 ... max_distance` logarithmically, and
    farther distances share the last bucket (Raffel et al. 2020, the published
    `_relative_position_bucket`). Unidirectional (causal) keys ahead of the query
    fall in bucket 0.

    Args:
        relative_position: int tensor, `key_position - query_position`.
        bidirectional: whether keys on both sides get their own buckets.
        num_buckets: positive int.
        max_distance: positive int, where the last bucket starts.

    Returns:
        int32 tensor of the same shape, values in `[0, num_buckets)`.
    """
    relative_position = ops.cast(relative_position, "int32")
    buckets = ops.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + ops.cast(relative_position > 0, "int32") * num_buckets
        distance = ops.abs(relative_position)
    else:
        distance = -ops.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # log-spaced buckets for distances in [max_exact, max_distance)
    safe = ops.cast(ops.maximum(distance, 1), "float32")
    large = max_exact + ops.cast(
        ops.log(safe / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact),
        "int32",
    )
    large = ops.minimum(large, num_buckets - 1)
    return buckets + ops.where(is_small, distance, large)

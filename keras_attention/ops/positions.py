"""Positions: rotary embeddings (RoPE) with their published frequency scalings, and
the ALiBi slopes and T5 buckets of the position score biases."""

import math

import numpy as np
from keras import ops

from keras_attention import _validation
from keras_attention import backend as backend_lib
from keras_attention.ops._rope_checks import ROPE_SCALING_TYPES, check_rope_scaling, rope_type

__all__ = [
    "ROPE_SCALING_TYPES",
    "ROTARY_LAYOUTS",
    "alibi_slopes",
    "apply_rotary_embedding",
    "check_rope_scaling",
    "check_rotary_arguments",
    "relative_position_buckets",
    "rotary_frequencies",
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
    rope_scaling=None,
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
        rope_scaling: None or a dict of a published frequency scaling (see
            :func:`rotary_frequencies`); `cos` and `sin` are multiplied by its
            attention factor (longrope, yarn). Exclusive with `scaling_factor`.

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
        x.shape[-1], max_wavelength, scaling_factor, rotary_fraction, layout, rope_scaling
    )
    dtype = x.dtype
    if positions is None:
        positions = backend_lib.positions(ops.shape(x)[-2]) + ops.cast(start_index, "int32")
    inverse_frequencies, attention_factor = rotary_frequencies(
        rotary_dim, max_wavelength, rope_scaling, positions
    )
    positions = ops.cast(positions, "float32") / scaling_factor
    angles = ops.expand_dims(positions, -1) * inverse_frequencies  # (..., seq, r/2)
    cos, sin = ops.cos(angles), ops.sin(angles)
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
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


def check_rotary_arguments(
    dim, max_wavelength, scaling_factor, rotary_fraction, layout, rope_scaling=None
):
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
    check_rope_scaling(rope_scaling, rotary_dim, scaling_factor)
    return rotary_dim


def rotary_frequencies(rotary_dim, max_wavelength=10000, rope_scaling=None, positions=None):
    """RoPE's inverse frequencies `inv_k` (float32 `(rotary_dim / 2,)`) and the
    attention factor that multiplies `cos` and `sin`, under `rope_scaling`.

    With `r = rotary_dim`, `b = max_wavelength`, unscaled `inv_k = b^(-2k / r)` and
    `L0 = original_max_position_embeddings`, the types (Hugging Face's
    `rope_scaling` dicts, `"type"` or `"rope_type"` naming the type) are:

    - `"linear"` `{factor}`: `inv_k / factor` (positions divided by `factor`).
    - `"llama3"` `{factor, low_freq_factor, high_freq_factor, L0}` (Llama 3.1-3.3):
      with `s = clip((L0 / wavelength_k - low) / (high - low), 0, 1)`,
      `(1 - s) inv_k / factor + s inv_k`: long wavelengths are interpolated, short
      ones kept, the band between blended.
    - `"longrope"` `{short_factor, long_factor, L0, max_position_embeddings?, factor?,
      attention_factor?}` (Phi-3 "su"): `inv_k / long_factor[k]` when the sequence
      length `L` exceeds `L0`, else `inv_k / short_factor[k]`; attention factor
      `sqrt(1 + ln(s) / ln(L0))` with `s = max_position_embeddings / L0` (else
      `factor`), 1 when `s <= 1`.
    - `"yarn"` `{factor, L0, beta_fast=32, beta_slow=1, attention_factor?,
      truncate=True}` (Peng et al. 2023): a ramp over `k` from the pairs that turn
      `beta_fast` times over `L0` positions (kept) to those that turn `beta_slow`
      times (divided by `factor`); attention factor `0.1 ln(factor) + 1`.
    - `"dynamic"` `{factor, L0}` (dynamic NTK): the base becomes
      `b (factor L / L0 - factor + 1)^(r / (r - 2))` once `L > L0`.

    Args:
        rotary_dim: even int, the rotated features.
        max_wavelength: positive float, the base `b`.
        rope_scaling: None or a dict as above (checked by :func:`check_rope_scaling`).
        positions: the call's int positions; "longrope" and "dynamic" take
            `L = max(positions) + 1`, as Hugging Face's `dynamic_rope_update`
            (so they depend on the largest position of the call).

    Returns:
        `(inverse_frequencies, attention_factor)`: a float32 tensor and a Python
        float.

    Example:
    >>> inverse, factor = rotary_frequencies(4, 100.0, {"type": "linear", "factor": 2.0})
    >>> [round(float(v), 4) for v in inverse], factor
    ([0.5, 0.05], 1.0)
    """
    check_rope_scaling(rope_scaling, rotary_dim)
    kind = None if rope_scaling is None else rope_type(rope_scaling)
    if kind is None:  # float32 ops, so unscaled RoPE stays bit-for-bit as it was
        exponents = ops.arange(0, rotary_dim, 2, dtype="float32") / rotary_dim
        return ops.power(float(max_wavelength), -exponents), 1.0
    # The static frequencies in float64, rounded once to float32.
    inverse = float(max_wavelength) ** -(np.arange(0, rotary_dim, 2) / rotary_dim)
    if kind == "linear":
        return _float32(inverse / rope_scaling["factor"]), 1.0
    if kind == "llama3":
        return _float32(_llama3_frequencies(inverse, rope_scaling)), 1.0
    if kind == "yarn":
        return _yarn_frequencies(inverse, rotary_dim, max_wavelength, rope_scaling)
    if positions is None:
        raise ValueError(
            f"`rope_scaling` of type {kind!r} depends on the sequence length: pass "
            f"`positions`. Received: rope_scaling={rope_scaling!r}, positions=None"
        )
    length = ops.cast(ops.max(positions), "float32") + 1.0
    if kind == "longrope":
        short = _float32(inverse / np.asarray(rope_scaling["short_factor"], "float64"))
        long = _float32(inverse / np.asarray(rope_scaling["long_factor"], "float64"))
        original = rope_scaling["original_max_position_embeddings"]
        return ops.where(length > original, long, short), _longrope_attention(rope_scaling)
    return _dynamic_frequencies(inverse, rotary_dim, length, rope_scaling), 1.0


def _float32(array):
    return ops.convert_to_tensor(np.asarray(array, "float32"))


def _llama3_frequencies(inverse, config):
    factor, original = config["factor"], config["original_max_position_embeddings"]
    low, high = config["low_freq_factor"], config["high_freq_factor"]
    # How many wavelengths fit the original context, mapped to [0, 1]: 0 (fewer than
    # `low`) interpolates by `factor`, 1 (more than `high`) keeps the frequency.
    smooth = np.clip((original * inverse / (2 * math.pi) - low) / (high - low), 0.0, 1.0)
    return (1.0 - smooth) * inverse / factor + smooth * inverse


def _yarn_frequencies(inverse, rotary_dim, max_wavelength, config):
    factor, original = config["factor"], config["original_max_position_embeddings"]

    def pair_turning(turns):  # the pair index that turns `turns` times over `original`
        angle = original / (turns * 2 * math.pi)
        return rotary_dim * math.log(angle) / (2 * math.log(max_wavelength))

    low = pair_turning(config.get("beta_fast", 32.0))
    high = pair_turning(config.get("beta_slow", 1.0))
    if config.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    high = high + 0.001 if high == low else high  # a step instead of a ramp
    ramp = np.clip((np.arange(rotary_dim // 2) - low) / (high - low), 0.0, 1.0)
    inverse = (1.0 - ramp) * inverse + ramp * inverse / factor
    attention = config.get("attention_factor")
    if attention is None:
        attention = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    return _float32(inverse), float(attention)


def _longrope_attention(config):
    if config.get("attention_factor") is not None:
        return float(config["attention_factor"])
    original = config["original_max_position_embeddings"]
    if "max_position_embeddings" in config:
        scale = config["max_position_embeddings"] / original
    else:
        scale = config.get("factor", 1.0)
    return 1.0 if scale <= 1 else math.sqrt(1.0 + math.log(scale) / math.log(original))


def _dynamic_frequencies(inverse, rotary_dim, length, config):
    factor, original = config["factor"], config["original_max_position_embeddings"]
    # 1 while length <= original: inside the trained context the base is unchanged.
    growth = ops.maximum(factor * length / original - (factor - 1.0), 1.0)
    # base * growth^(r / (r - 2)) turns inv_k into inv_k * growth^(-2k / (r - 2)).
    pairs = np.arange(rotary_dim // 2)
    exponents = -2.0 * pairs / (rotary_dim - 2) if rotary_dim > 2 else 0.0 * pairs
    return _float32(inverse) * ops.power(growth, _float32(exponents))


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

"""Every path of `scaled_dot_product_attention` against a float64 numpy reference.

A differential fuzzer: each case draws shapes (batch, heads, grouped key/value heads,
query and key lengths from 1 to a few hundred, head sizes 1-64, a value head size of
its own), a mask (any broadcastable form, fully masked rows, rows with one allowed
key), `causal` with `q_len != kv_len`, a sliding window, a soft cap, a tensor bias
(with or without a query axis) or a callable one (a table lookup, learned ALiBi
slopes), a scale and a dtype (float32, float16, bfloat16, sometimes with logits near
the dtype's range), and runs every path that accepts it (`"plain"`, `"chunked"`,
`"flash"`, `"fused"` and `None`) eagerly or traced (`tf.function`, `jax.jit`; PyTorch
eager). The outputs, the returned weights and the gradients with respect to the
query, key, value and bias (tensor or variables read by the callable) are compared
with :func:`reference`, written here from the function's docstring.

The tiles, chunks and thresholds are made small per case (:func:`_patch_thresholds`)
so that padded blocks, several chunks and the default's switches happen at small
sizes. A case is `np.random.default_rng([FUZZ_SEED, index])`: a failure names its
index, and `pytest tests/test_paths_fuzz.py -k "case_17]"` reruns it.

`FUZZ_EXAMPLES=<n>` (default :data:`DEFAULT_EXAMPLES`, about a minute a backend on two
cores) and `FUZZ_SEED=<int>` set the run; `python -m tests.test_paths_fuzz` prints how
many cases each path gets.

Tolerances (:data:`RTOL`, the same numbers as docs/guide.md, "What each path
guarantees"): an element may differ from the reference by `RTOL[dtype]` times its
magnitude computed without cancellation (the same formula on absolute values), plus
what a rounding of the logits by `LOGIT_ULPS` units of the dtype (the same in every
pass) and of float32 (the softmax, the backward's recomputed weights) can change in
the softmax (large only where logits are large and not well separated).
"""

import collections
import math
import os
import re

import keras
import numpy as np
import pytest
from keras import ops

from keras_attention import ops as attention_ops

BACKEND = keras.backend.backend()
DEFAULT_EXAMPLES = {"tensorflow": 40, "jax": 8, "torch": 150}.get(BACKEND, 40)
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", DEFAULT_EXAMPLES))
SEED = int(os.environ.get("FUZZ_SEED", 0))

# What a path must reach against the float64 reference, per dtype of the inputs:
# relative to each element's cancellation-free magnitude (see module docstring).
RTOL = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 6e-2}
# Unit roundoff of each dtype, and how many units a logit may be off (the scaled
# query, the product's rounding, a bias cast to the inputs' dtype).
EPS = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
LOGIT_ULPS = 4
PATHS = (None, "plain", "chunked", "flash", "fused")


# --- the thresholds, in one place ----------------------------------------------------


_HOMES = {
    "CHUNKED_THRESHOLD": attention_ops.attention,
    "FLASH_THRESHOLD": attention_ops.attention,
    "CHUNK_ELEMENTS": attention_ops.chunked,
    "DYNAMIC_NUM_CHUNKS": attention_ops.chunked,
    "FLASH_BLOCK_Q": attention_ops.flash,
    "FLASH_BLOCK_K": attention_ops.flash,
    "FLASH_TILE_ELEMENTS": attention_ops.flash,
}


def _patch_thresholds(monkeypatch, sizes):
    """Point the tile, chunk and threshold constants at the case's small `sizes`.

    The one place that knows where these constants live: each in its module of
    `keras_attention.ops` (setting one on the package raises)."""
    for name, value in sizes.items():
        monkeypatch.setattr(_HOMES[name], name, value)


# --- the reference --------------------------------------------------------------------


def allowed_keys(q_len, kv_len, mask, causal, window, scores_shape):
    """The boolean `(B, H, q_len, kv_len)` of keys each query may attend, as documented:
    `mask` broadcast, causal top-left aligned (`j <= i`), window `|i - j| < w`."""
    i = np.arange(q_len)[:, None]
    j = np.arange(kv_len)[None, :]
    allowed = np.ones(scores_shape, bool)
    if mask is not None:
        allowed &= np.broadcast_to(np.asarray(mask).astype(bool), scores_shape)
    if causal:
        allowed &= j <= i
    if window is not None:
        allowed &= np.abs(i - j) < window
    return allowed


def _sum_to(x, shape):
    """`x` summed over the axes that broadcasting `shape` to `x.shape` added."""
    while x.ndim > len(shape):
        x = x.sum(0)
    return x.sum(axis=tuple(a for a, s in enumerate(shape) if s == 1), keepdims=True)


def reference(q, k, v, cotangent, scale, allowed, bias=None, soft_cap=None, eps=0.0):
    """float64 attention of 4-D `q (B, H, Lq, d)`, `k (B, Hk, Lk, d)`, `v (B, Hk, Lk, dv)`.

    Returns `(values, bounds)`, dicts with `out`, `weights`, `dq`, `dk`, `dv`, `dlogits`
    (the gradient with respect to the bias, unreduced) for the loss
    `sum(out * cotangent)`. `bounds` holds, per element, the magnitude of each value
    computed without cancellation (the same products on absolute values) and `pert`,
    what logits off by `eps * |logit|` change (see the module docstring).
    """
    group = q.shape[1] // k.shape[1]
    kr, vr = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    raw = scale * q @ np.swapaxes(kr, -1, -2)
    size = scale * np.abs(q) @ np.swapaxes(np.abs(kr), -1, -2)
    capped = raw if soft_cap is None else soft_cap * np.tanh(raw / soft_cap)
    logits = capped if bias is None else capped + bias
    if bias is not None:
        size = size + np.abs(bias)
    logits = np.where(allowed, logits, -np.inf)
    any_key = allowed.any(-1, keepdims=True)
    top = np.where(any_key, logits.max(-1, keepdims=True), 0.0)
    exp = np.exp(logits - top)
    p = exp / np.where(any_key, exp.sum(-1, keepdims=True), 1.0)

    d_out = np.broadcast_to(cotangent, q.shape[:-1] + v.shape[-1:])
    dp = d_out @ np.swapaxes(vr, -1, -2)
    delta = (p * dp).sum(-1, keepdims=True)
    ds = p * (dp - delta)
    cap_slope = 1.0 if soft_cap is None else 1.0 - np.tanh(raw / soft_cap) ** 2
    values = {
        "out": p @ vr,
        "weights": p,
        "dlogits": ds,
        "dq": scale * (ds * cap_slope) @ kr,
        "dk": _sum_groups(scale * np.swapaxes(ds * cap_slope, -1, -2) @ q, group),
        "dv": _sum_groups(np.swapaxes(p, -1, -2) @ d_out, group),
    }

    def propagate(pp, dss):
        """The cancellation-free magnitudes of every value from weights-like `pp` and
        logit-gradient-like `dss` (absolute values throughout)."""
        return {
            "out": pp @ np.abs(vr),
            "weights": pp,
            "dlogits": dss,
            "dq": scale * dss @ np.abs(kr),
            "dk": _sum_groups(scale * np.swapaxes(dss, -1, -2) @ np.abs(q), group),
            "dv": _sum_groups(np.swapaxes(pp, -1, -2) @ np.abs(d_out), group),
        }

    abs_dp = np.abs(d_out) @ np.swapaxes(np.abs(vr), -1, -2)
    magnitude = propagate(p, p * (abs_dp + (p * abs_dp).sum(-1, keepdims=True)))
    # Logits off by at most `delta_i`, the same in every pass (rounded inputs), change
    # each weight by at most min(p, 1 - p) * (exp(2 delta_i) - 1): a ratio of two
    # weights moves by at most exp(2 delta_i), and 1 - p is the sum of the others.
    # The float32 softmax is off by float32 units of the logits, and a backward pass
    # that recomputes `exp(logit - lse)` (flash) is not normalized exactly: there a
    # weight moves by p * (exp(2 delta_32) - 1).
    row_size = np.where(allowed, size, 0.0).max(-1, keepdims=True)
    grow = np.expm1(np.minimum(2 * eps * row_size, 700.0))
    grow_32 = np.expm1(np.minimum(2 * LOGIT_ULPS * EPS["float32"] * row_size, 700.0))
    dp_err = np.minimum(_min_p_complement(logits, p, allowed) * grow + p * grow_32, 1.0)
    d_delta = (dp_err * np.abs(dp)).sum(-1, keepdims=True)
    pert = propagate(dp_err, dp_err * (np.abs(dp) + np.abs(delta)) + p * d_delta)
    return values, {"magnitude": magnitude, "pert": pert}


def _min_p_complement(logits, p, allowed):
    """`min(p, 1 - p)` per weight, with `1 - p` of a row's largest weight computed as
    the sum of the others (exact when that weight is close to 1)."""
    is_top = np.arange(logits.shape[-1]) == logits.argmax(-1)[..., None]
    others = np.where(is_top, -np.inf, logits)
    has_other = np.isfinite(others).any(-1, keepdims=True)
    m = np.where(has_other, others.max(-1, keepdims=True), 0.0)
    top = np.where(allowed.any(-1, keepdims=True), logits.max(-1, keepdims=True), 0.0)
    lse = top + np.log(np.exp(logits - top).sum(-1, keepdims=True) + 1e-300)
    rest = np.exp(others - m).sum(-1, keepdims=True)
    complement_top = np.where(has_other, rest * np.exp(np.minimum(m - lse, 0.0)), 0.0)
    complement = np.where(is_top, complement_top, 1.0 - p)
    return np.where(allowed, np.minimum(p, complement), 0.0)


def _sum_groups(x, group):
    """Gradients of repeated key/value heads summed back to the `Hk` heads."""
    b, h = x.shape[:2]
    return x.reshape((b, h // group, group) + x.shape[2:]).sum(2)


# --- running on the backend -----------------------------------------------------------


def outputs_and_grads(fn, inputs, cotangent, variables=(), traced=False):
    """`fn(*inputs)` (a tuple of tensors) and the gradients of `sum(outputs[0] *
    cotangent)` with respect to `inputs`, then `variables`, on every backend, eagerly
    or traced (`tf.function`, `jax.jit`; PyTorch runs eagerly).

    Returns `(outputs, grads)` as float32 numpy arrays; a gradient is `None` where the
    backend reports no dependence (TensorFlow, PyTorch).
    """
    variables = list(variables)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def run(*xs):
            with tf.GradientTape() as tape:
                tape.watch(xs)
                outs = fn(*xs)
            grads = tape.gradient(
                outs[0], list(xs) + [v.value for v in variables], output_gradients=cotangent
            )
            return outs, grads

        outs, grads = (tf.function(run) if traced else run)(*inputs)
    elif BACKEND == "jax":
        import jax

        def pure(xs, values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return fn(*xs)

        def run(xs, values):
            outs, vjp = jax.vjp(pure, xs, values)
            cotangents = (cotangent,) + tuple(ops.zeros_like(o) for o in outs[1:])
            input_grads, variable_grads = vjp(cotangents)
            return outs, list(input_grads) + list(variable_grads)

        outs, grads = (jax.jit(run) if traced else run)(list(inputs), [v.value for v in variables])
    elif BACKEND == "torch":
        import torch

        inputs = [x.detach().requires_grad_(True) for x in inputs]
        outs = fn(*inputs)
        targets = inputs + [v.value for v in variables]
        grads = torch.autograd.grad(outs[0], targets, grad_outputs=cotangent, allow_unused=True)
    else:
        raise ValueError(f"Unsupported backend: {BACKEND!r}")
    return [_float(o) for o in outs], [None if g is None else _float(g) for g in grads]


def _float(x):
    return ops.convert_to_numpy(ops.cast(x, "float32")).astype("float64")


def _rounded(x, dtype):
    """`x` rounded to `dtype` (by the backend), as float64 numpy."""
    return _float(ops.cast(ops.convert_to_tensor(np.asarray(x, "float32")), dtype))


# --- the cases --------------------------------------------------------------------------

_HEAD_DIMS = (1, 2, 3, 4, 5, 7, 8, 16, 31, 32, 64)


def _length(rng):
    kind = rng.random()
    if kind < 0.4:
        return int(rng.integers(1, 9))
    if kind < 0.85:
        return int(rng.integers(9, 65))
    return int(rng.integers(65, 301))


def _broadcast_shape(rng, full, query_axis=True):
    """A random shape broadcastable to `full` (each axis 1 or equal, leading axes
    sometimes dropped); without `query_axis`, the query axis (-2) is 1 or dropped."""
    shape = [s if rng.random() < 0.6 else 1 for s in full]
    shape[-1] = full[-1] if rng.random() < 0.9 else 1
    if not query_axis:
        shape[-2] = 1
    keep = (
        len(full)
        if rng.random() < 0.6
        else int(rng.integers(1 if not query_axis else 2, len(full) + 1))
    )
    if not query_axis and keep >= 2 and rng.random() < 0.5:
        return (full[-1],)  # a (kv_len,) bias
    return tuple(shape[len(full) - keep :])


def make_case(index, seed=SEED):
    """The `index`-th case of the run: a dict of everything the case needs."""
    rng = np.random.default_rng([seed, index])
    case = {"index": index}
    case["dtype"] = str(rng.choice(["float32"] * 6 + ["float16"] * 2 + ["bfloat16"] * 2))
    rank = int(rng.choice([4] * 8 + [3, 2]))
    heads = int(rng.choice([1, 2, 3, 4, 6, 8])) if rank == 4 else 1
    kv_heads = int(rng.choice([d for d in range(1, heads + 1) if heads % d == 0]))
    batch = int(rng.integers(1, 4)) if rank >= 3 else 1
    q_len, kv_len = _length(rng), _length(rng)
    while batch * heads * q_len * kv_len > 120_000:
        q_len, kv_len = max(1, q_len // 2), max(1, kv_len // 2)
    lead = {4: (batch, heads), 3: (batch,), 2: ()}[rank]
    kv_lead = {4: (batch, kv_heads), 3: (batch,), 2: ()}[rank]
    d_k = int(rng.choice(_HEAD_DIMS))
    d_v = d_k if rng.random() < 0.5 else int(rng.choice(_HEAD_DIMS))
    case.update(q_shape=lead + (q_len, d_k), k_shape=kv_lead + (kv_len, d_k))
    case.update(v_shape=kv_lead + (kv_len, d_v), scores_shape=lead + (q_len, kv_len))
    case["scale"] = None if rng.random() < 0.7 else float(rng.uniform(0.05, 2.0))
    case["causal"] = bool(rng.random() < 0.3)
    case["window"] = int(rng.integers(1, max(q_len, kv_len) + 1)) if rng.random() < 0.25 else None
    case["soft_cap"] = float(rng.uniform(1.0, 50.0)) if rng.random() < 0.2 else None
    case["mask"] = _draw_mask(rng, case["scores_shape"]) if rng.random() < 0.5 else None
    case["bias"] = _draw_bias(rng, rank, heads, q_len, kv_len, case["scores_shape"])
    large = {"float32": 0.1, "float16": 0.35, "bfloat16": 0.35}[case["dtype"]]
    case["logit_size"] = float(rng.choice([1e2, 1e3, 1e4, 2e4])) if rng.random() < large else None
    case["weights"] = bool(rng.random() < 0.5)
    case["chunk_size"] = (
        None if rng.random() < 0.6 else int(rng.integers(max(1, q_len // 12), q_len + 1))
    )
    case["sizes"] = _draw_sizes(rng, case["scores_shape"])
    case["modes"] = {path: bool(rng.random() < 0.5) for path in PATHS}  # traced?
    case["data_seed"] = int(rng.integers(2**31))
    return case


def _draw_mask(rng, scores_shape):
    shape = _broadcast_shape(rng, scores_shape)
    mask = rng.random(shape) < rng.uniform(0.2, 1.0)
    if len(shape) >= 2 and shape[-2] > 1 and rng.random() < 0.4:
        rows = rng.random(shape[-2]) < 0.3
        mask[..., rows, :] = False  # fully masked rows
    if len(shape) >= 2 and shape[-2] > 1 and shape[-1] > 1 and rng.random() < 0.4:
        rows = np.nonzero(rng.random(shape[-2]) < 0.3)[0]
        mask[..., rows, :] = False
        mask[..., rows, rng.integers(shape[-1])] = True  # one allowed key
    return mask.astype("int8") if rng.random() < 0.1 else mask


def _draw_bias(rng, rank, heads, q_len, kv_len, scores_shape):
    """`None`, `("tensor", array)` or `("table"|"alibi", array, is_variable)`."""
    kind = rng.random()
    if kind < 0.55:
        return None
    if kind < 0.8:
        shape = _broadcast_shape(rng, scores_shape, query_axis=rng.random() < 0.5)
        return ("tensor", (2.0 * rng.standard_normal(shape)).astype("float32"))
    if kind < 0.92 or rank != 4:
        table_shape = (q_len, kv_len) if rank != 4 or rng.random() < 0.5 else (heads, q_len, kv_len)
        table = (2.0 * rng.standard_normal(table_shape)).astype("float32")
        return ("table", table, bool(rng.random() < 0.6))
    slopes = rng.uniform(0.01, 1.0, (heads,)).astype("float32")
    return ("alibi", slopes, bool(rng.random() < 0.8))


def _draw_sizes(rng, scores_shape):
    """Small tiles, chunks and thresholds, with at most ~16 blocks along each axis."""
    q_len, kv_len = scores_shape[-2:]
    size = math.prod(scores_shape)
    block_q = int(rng.choice([b for b in (1, 2, 4, 8, 16, 32, 64, 256) if q_len / b <= 16]))
    block_k = int(rng.choice([b for b in (1, 3, 8, 16, 32, 100, 512) if kv_len / b <= 16]))
    rows = max(1, size // q_len)
    chunk_rows = int(rng.choice([r for r in (1, 4, 16, 64, 512) if q_len / max(16, r) <= 16]))
    return {
        "FLASH_BLOCK_Q": block_q,
        "FLASH_BLOCK_K": block_k,
        "CHUNK_ELEMENTS": rows * chunk_rows,
        "CHUNKED_THRESHOLD": int(size * rng.choice([0.5, 2.0, 1e9])),
        "FLASH_THRESHOLD": int(size * rng.choice([0.5, 2.0])),
    }


def case_paths(case):
    """The paths that accept the case (the others refuse it by design)."""
    paths = [None, "plain", "chunked", "flash"]
    if len(case["q_shape"]) == 4 and case["soft_cap"] is None:
        paths.append("fused")
    return paths


def describe(case):
    bias = case["bias"]
    parts = [
        case["dtype"],
        f"q{case['q_shape']} k{case['k_shape']} v{case['v_shape']}",
        f"mask{None if case['mask'] is None else case['mask'].shape}",
        f"bias={None if bias is None else (bias[0], bias[1].shape) + bias[2:]}",
    ]
    for key in ("scale", "causal", "window", "soft_cap", "logit_size", "chunk_size"):
        if case[key] not in (None, False):
            parts.append(f"{key}={case[key]}")
    return ", ".join(parts)


# --- one case ---------------------------------------------------------------------------


def _inputs(case):
    """The case's query, key, value and cotangent, rounded to its dtype (float64)."""
    rng = np.random.default_rng(case["data_seed"])
    dtype = case["dtype"]
    q, k, v = (rng.standard_normal(case[n]) for n in ("q_shape", "k_shape", "v_shape"))
    scale = case["scale"] or 1.0 / math.sqrt(case["q_shape"][-1])
    if case["logit_size"] is not None:
        q4, k4 = _to_4d(q), _to_4d(k)
        group = q4.shape[1] // k4.shape[1]
        largest = np.abs(scale * q4 @ np.swapaxes(np.repeat(k4, group, 1), -1, -2)).max()
        root = math.sqrt(case["logit_size"] / max(largest, 1e-6))
        q, k = q * root, k * root
    cotangent = rng.standard_normal(case["q_shape"][:-1] + case["v_shape"][-1:])
    return [_rounded(x, dtype) for x in (q, k, v, cotangent)]


def _to_4d(x):
    x = np.asarray(x)
    return x.reshape((1,) * (4 - x.ndim) + x.shape)


def _bias_arrays(case):
    """`(bias_4d for the reference, callable or tensor for the call, variables)`."""
    bias = case["bias"]
    q_len, kv_len = case["scores_shape"][-2:]
    if bias is None:
        return None, None, []
    if bias[0] == "tensor":
        return _to_4d(bias[1]).astype("float64"), bias[1], []
    kind, array, is_variable = bias
    source = keras.Variable(array, trainable=True) if is_variable else ops.convert_to_tensor(array)
    if kind == "table":

        def table_bias(query_positions, key_positions):
            rows = ops.take(source, query_positions, axis=-2)
            return ops.take(rows, key_positions, axis=-1)

        return _to_4d(array).astype("float64"), table_bias, [source] if is_variable else []
    distance = np.abs(np.arange(kv_len)[None, :] - np.arange(q_len)[:, None])

    def alibi_bias(query_positions, key_positions):
        d = ops.abs(ops.expand_dims(key_positions, 0) - ops.expand_dims(query_positions, 1))
        return -ops.reshape(source, (-1, 1, 1)) * ops.cast(d, "float32")

    expected = -array.astype("float64")[:, None, None] * distance
    return _to_4d(expected), alibi_bias, [source] if is_variable else []


def _bias_gradient(case, dlogits):
    """The reference gradient of the case's bias (tensor or variable) from `dlogits`."""
    kind, array = case["bias"][:2]
    if kind == "alibi":
        q_len, kv_len = case["scores_shape"][-2:]
        distance = np.abs(np.arange(kv_len)[None, :] - np.arange(q_len)[:, None])
        return -(dlogits * distance).sum(axis=(0, 2, 3))
    return _sum_to(dlogits, (1,) * (4 - array.ndim) + array.shape).reshape(array.shape)


def run_case(case, monkeypatch):
    """Every accepted path of `case` against the reference; a list of failures."""
    q, k, v, cotangent = _inputs(case)
    dtype = case["dtype"]
    q_len, kv_len = case["scores_shape"][-2:]
    bias4, bias_arg, variables = _bias_arrays(case)
    scale = case["scale"] or 1.0 / math.sqrt(case["q_shape"][-1])
    scores4 = (1,) * (4 - len(case["scores_shape"])) + case["scores_shape"]
    allowed = allowed_keys(
        q_len,
        kv_len,
        None if case["mask"] is None else _to_4d(case["mask"]),
        case["causal"],
        case["window"],
        scores4,
    )
    values, bounds = reference(
        _to_4d(q),
        _to_4d(k),
        _to_4d(v),
        _to_4d(cotangent),
        scale,
        allowed,
        bias=bias4,
        soft_cap=case["soft_cap"],
        eps=LOGIT_ULPS * EPS[dtype],
    )
    has_bias_grad = case["bias"] is not None and (case["bias"][0] == "tensor" or variables)
    if has_bias_grad:
        values["dbias"] = _bias_gradient(case, values["dlogits"])
        for b in bounds.values():
            b["dbias"] = _bias_gradient_bound(case, b["dlogits"])
    _patch_thresholds(monkeypatch, case["sizes"])
    tensors = [ops.cast(ops.convert_to_tensor(x.astype("float32")), dtype) for x in (q, k, v)]
    cot = ops.cast(ops.convert_to_tensor(cotangent.astype("float32")), dtype)
    if case["bias"] is not None and case["bias"][0] == "tensor":
        tensors.append(ops.convert_to_tensor(bias_arg))
    failures = []
    for path in case_paths(case):
        failures += _check_path(case, path, tensors, cot, variables, bias_arg, values, bounds)
    return failures


def _check_path(case, path, tensors, cot, variables, bias_arg, values, bounds):
    """One path (eager or traced, as the case says) against the reference."""
    weights = case["weights"] and path in (None, "plain")
    traced = case["modes"][path] and BACKEND != "torch"

    def attend(q, k, v, *rest):
        return _as_tuple(
            attention_ops.scaled_dot_product_attention(
                q,
                k,
                v,
                mask=case["mask"],
                causal=case["causal"],
                scale=case["scale"],
                return_attention_scores=weights,
                implementation=path,
                chunk_size=case["chunk_size"] if path == "chunked" else None,
                bias=rest[0] if rest else bias_arg,
                soft_cap=case["soft_cap"],
                sliding_window=case["window"],
            )
        )

    label = f"{path or 'default'}/{'traced' if traced else 'eager'}"
    try:
        outs, grads = outputs_and_grads(attend, tensors, cot, variables, traced=traced)
    except Exception as error:  # noqa: BLE001 - reported with the case
        return [f"{label}: {type(error).__name__}: {str(error).splitlines()[0][:200]}"]
    got = {"out": outs[0], "dq": grads[0], "dk": grads[1], "dv": grads[2]}
    if weights:
        got["weights"] = outs[1]
    if "dbias" in values:
        got["dbias"] = grads[3]
    return [f"{label}: {f}" for f in _compare(case, got, values, bounds)]


def _bias_gradient_bound(case, dlogits_bound):
    kind, array = case["bias"][:2]
    if kind == "alibi":
        q_len, kv_len = case["scores_shape"][-2:]
        distance = np.abs(np.arange(kv_len)[None, :] - np.arange(q_len)[:, None])
        return (dlogits_bound * distance).sum(axis=(0, 2, 3))
    return _sum_to(dlogits_bound, (1,) * (4 - array.ndim) + array.shape).reshape(array.shape)


def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _compare(case, got, values, bounds):
    """Failures of `got` against the reference `values` within `bounds`."""
    rtol = RTOL[case["dtype"]]
    failures = []
    for name, result in got.items():
        expected = values[name]
        magnitude, pert = bounds["magnitude"][name], bounds["pert"][name]
        if name != "dbias":
            expected, magnitude, pert = (
                _from_4d(x, case, name) for x in (expected, magnitude, pert)
            )
        if result is None:
            if np.any(expected != 0):
                failures.append(
                    f"{name} is None (no gradient), expected max|.| {np.abs(expected).max():.3g}"
                )
            continue
        if result.shape != expected.shape:
            failures.append(f"{name} shape {result.shape}, expected {expected.shape}")
            continue
        # A floor for the elements whose own magnitude is tiny: a small fraction of
        # the tensor's largest magnitude.
        floor = rtol * 1e-2 * magnitude.max()
        bound = rtol * magnitude + pert + floor
        error = np.abs(result - expected)
        if not np.all(np.isfinite(result)) or np.any(error > bound):
            worst = np.unravel_index(
                np.argmax(np.where(np.isfinite(error), error - bound, np.inf)), error.shape
            )
            failures.append(
                f"{name} off by {error[worst]:.3g} at {worst} (bound {bound[worst]:.3g}; "
                f"got {result[worst]:.6g}, expected {expected[worst]:.6g})"
            )
    return failures


def _from_4d(x, case, name):
    """A reference array back in the shape the path returns for `name`."""
    shape = {
        "out": case["q_shape"][:-1] + case["v_shape"][-1:],
        "weights": case["scores_shape"],
        "dq": case["q_shape"],
        "dk": case["k_shape"],
        "dv": case["v_shape"],
    }[name]
    return x.reshape(shape)


@pytest.mark.parametrize("index", range(EXAMPLES), ids=lambda i: f"case_{i}")
def test_paths_agree_with_reference(index, monkeypatch):
    case = make_case(index)
    failures = run_case(case, monkeypatch)
    assert not failures, f"case {index} ({describe(case)}):\n  " + "\n  ".join(failures)


# --- the decoding cache ---------------------------------------------------------------


@pytest.mark.parametrize("index", range(max(2, EXAMPLES // 15)), ids=lambda i: f"cache_{i}")
def test_decoding_cache_equals_recompute(index):
    """`MultiHeadAttention` with RoPE, decoded step by step through its cache (full, or
    a ring with a sliding window), equals the causal pass over the whole sequence."""
    from keras_attention import MultiHeadAttention

    rng = np.random.default_rng([SEED, 10_000 + index])
    heads = int(rng.choice([1, 2, 4]))
    window = None if rng.random() < 0.5 else int(rng.integers(1, 8))
    layer = MultiHeadAttention(
        num_heads=heads,
        key_dim=int(rng.choice([2, 4, 8])),
        num_key_value_heads=int(rng.choice([d for d in (1, 2, 4) if heads % d == 0])),
        position_embedding="rotary",
        sliding_window=window,
        implementation=rng.choice(["plain", "chunked", "flash", "fused"]),
    )
    length, prefill = int(rng.integers(2, 20)), int(rng.integers(1, 4))
    x = rng.standard_normal((2, length, 8)).astype("float32")
    expected = ops.convert_to_numpy(layer(x, x, use_causal_mask=True))
    cache = layer.get_initial_cache(2, length + int(rng.integers(0, 3)))
    steps, start = [], 0
    while start < length:
        stop = min(length, start + (prefill if start == 0 else int(rng.integers(1, 3))))
        out, cache = layer(x[:, start:stop], x[:, start:stop], cache=cache, cache_index=start)
        steps.append(ops.convert_to_numpy(out))
        start = stop
    np.testing.assert_allclose(np.concatenate(steps, axis=1), expected, atol=1e-5, rtol=1e-5)


def test_guide_states_these_tolerances():
    """docs/guide.md ("What each path guarantees") states :data:`RTOL` and :data:`EPS`."""
    with open(os.path.join(os.path.dirname(__file__), os.pardir, "docs", "guide.md")) as f:
        guide = f.read()
    for dtype, rtol in RTOL.items():
        stated = f"{rtol:.0e}".replace("e-0", "e-")
        unit = int(-math.log2(EPS[dtype]))
        assert re.search(rf"\| `{dtype}` +\| `{stated}` +\| 2\^-{unit} of", guide), dtype
    words = ("one", "two", "three", "four", "five", "six", "seven", "eight")
    assert f"logits off by {words[LOGIT_ULPS - 1]} units" in guide


if __name__ == "__main__":
    counts = collections.Counter()
    for i in range(EXAMPLES):
        c = make_case(i)
        for p in case_paths(c):
            traced = c["modes"][p] and BACKEND != "torch"
            counts[(p or "default", "traced" if traced else "eager")] += 1
    print(f"{EXAMPLES} cases (seed {SEED}):")
    for (path, mode), n in sorted(counts.items()):
        print(f"  {path:8s} {mode:6s} {n}")
    features = collections.Counter()
    for i in range(EXAMPLES):
        c = make_case(i)
        features[c["dtype"]] += 1
        features["grouped-query heads"] += c["k_shape"][:-2] != c["q_shape"][:-2]
        features["q_len != kv_len, causal"] += c["causal"] and c["q_shape"][-2] != c["k_shape"][-2]
        for key in ("mask", "window", "soft_cap", "scale", "logit_size"):
            features[key] += c[key] is not None
        features[f"bias: {c['bias'][0] if c['bias'] else None}"] += 1
    print("  " + ", ".join(f"{k}: {n}" for k, n in sorted(features.items())))

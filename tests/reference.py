"""Independent numpy reference implementations used by the tests (not the package)."""

import numpy as np


def softmax(x, axis=-1):
    x = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(x)
    return e / np.sum(e, axis=axis, keepdims=True)


def attention(q, k, v, mask=None, causal=False, scale=None, bias=None, soft_cap=None, window=None):
    """softmax(bias + soft_cap(q k^T * scale)) v in float64 with explicit masking.

    Masked keys get weight exactly 0; a row with no allowed key gets all-zero
    weights (and so a zero output). `soft_cap` is `c * tanh(s / c)`; `window` keeps
    keys with `|i - j| < window`.
    """
    q, k, v = (np.asarray(t, dtype=np.float64) for t in (q, k, v))
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    scores = np.einsum("...qd,...kd->...qk", q, k) * scale
    if soft_cap is not None:
        scores = soft_cap * np.tanh(scores / soft_cap)
    if bias is not None:
        scores = scores + np.asarray(bias, dtype=np.float64)
    allowed = np.ones(scores.shape, dtype=bool)
    if window is not None:
        q_len, kv_len = scores.shape[-2:]
        distance = np.abs(np.arange(q_len)[:, None] - np.arange(kv_len)[None, :])
        allowed = allowed & (distance < window)
    if mask is not None:
        allowed = allowed & np.broadcast_to(np.asarray(mask, dtype=bool), scores.shape)
    if causal:
        q_len, kv_len = scores.shape[-2:]
        allowed = allowed & (np.arange(kv_len)[None, :] <= np.arange(q_len)[:, None])
    scores = np.where(allowed, scores, -np.inf)
    row_max = np.max(scores, axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    e = np.where(allowed, np.exp(scores - row_max), 0.0)
    total = e.sum(axis=-1, keepdims=True)
    weights = np.divide(e, total, out=np.zeros_like(e), where=total > 0)
    return weights @ v, weights

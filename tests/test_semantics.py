"""Attention dropout semantics, checked entry by entry for every layer that has it.

Each layer is set up so that its (projected) values are the identity matrix: the
output then *is* the matrix of attention probabilities after dropout, `D = drop(W)`,
and can be compared with the weights `W` the layer returns. Inverted dropout with
rate `p` must give, entry by entry, `D = 0` (dropped) or `D = W / (1 - p)` (kept);
drop a fraction `p` of the entries; keep the mean (`E[D] = W`); and return the
weights before dropout (equal to the weights of an inference call).
"""

import functools

import keras
import numpy as np
import pytest

import keras_attention as ka
from tests.utils import random_normal, to_numpy

_np64 = functools.partial(to_numpy, dtype="float64")

RATE = 0.3
BATCH = 64  # identical rows: BATCH independent dropout draws of the same weights
KV_LEN = 6


def _eye_batch(n, batch=BATCH):
    return np.broadcast_to(np.eye(n, dtype="float32"), (batch, n, n)).copy()


def _sdpa():
    layer = ka.ScaledDotProductAttention(dropout=RATE, seed=1)
    query = np.broadcast_to(random_normal(1, 4, 5, seed=1), (BATCH, 4, 5)).copy()
    key = np.broadcast_to(random_normal(1, KV_LEN, 5, seed=2), (BATCH, KV_LEN, 5)).copy()

    def run(training):
        out, w = layer(
            query, _eye_batch(KV_LEN), key=key, return_attention_scores=True, training=training
        )
        return _np64(out), _np64(w)

    return run


def _additive():
    layer = ka.AdditiveAttention(units=8, dropout=RATE, seed=1)
    query = np.broadcast_to(random_normal(1, 4, 5, seed=1), (BATCH, 4, 5)).copy()
    key = np.broadcast_to(random_normal(1, KV_LEN, 3, seed=2), (BATCH, KV_LEN, 3)).copy()

    def run(training):
        out, w = layer(
            query, _eye_batch(KV_LEN), key=key, return_attention_scores=True, training=training
        )
        return _np64(out), _np64(w)

    return run


def _luong(score):
    def factory():
        units = 8 if score == "concat" else None
        layer = ka.LuongAttention(score=score, units=units, dropout=RATE, seed=1)
        query = np.broadcast_to(random_normal(1, 4, 5, seed=1), (BATCH, 4, 5)).copy()
        key = np.broadcast_to(random_normal(1, KV_LEN, 5, seed=2), (BATCH, KV_LEN, 5)).copy()

        def run(training):
            out, w = layer(
                query, _eye_batch(KV_LEN), key=key, return_attention_scores=True, training=training
            )
            return _np64(out), _np64(w)

        return run

    return factory


def _pooling(units):
    def factory():
        layer = ka.AttentionPooling(units=units, num_queries=2, dropout=RATE, seed=1)
        # Inputs are the identity: keys = (tanh of a projection of) the identity and
        # the pooled values are the identity, so the output is the weight matrix.
        inputs = _eye_batch(KV_LEN)
        layer.build(inputs.shape)
        layer.query.assign(random_normal(2, layer.query.shape[1], seed=3))

        def run(training):
            out, w = layer(inputs, return_attention_scores=True, training=training)
            return _np64(out), _np64(w)

        return run

    return factory


def _self_attention():
    layer = ka.SelfAttention(units=KV_LEN, use_bias=False, dropout=RATE, seed=1)
    inputs = _eye_batch(KV_LEN)
    layer.build(inputs.shape)
    layer.query_dense.kernel.assign(random_normal(KV_LEN, KV_LEN, seed=4))
    layer.key_dense.kernel.assign(random_normal(KV_LEN, KV_LEN, seed=5))
    layer.value_dense.kernel.assign(np.eye(KV_LEN, dtype="float32"))

    def run(training):
        out, w = layer(inputs, return_attention_scores=True, training=training)
        return _np64(out), _np64(w)

    return run


def _multi_head():
    heads = 2
    layer = ka.MultiHeadAttention(
        num_heads=heads,
        key_dim=4,
        value_dim=KV_LEN,
        output_dim=heads * KV_LEN,
        use_bias=False,
        dropout=RATE,
        seed=1,
    )
    query = np.broadcast_to(random_normal(1, 3, 5, seed=1), (BATCH, 3, 5)).copy()
    value = _eye_batch(KV_LEN)
    layer.build(query.shape, value.shape)
    # Both value heads are the identity; the output projection puts head h in
    # output columns h * KV_LEN:(h + 1) * KV_LEN.
    layer.value_dense.kernel.assign(np.tile(np.eye(KV_LEN, dtype="float32"), (1, heads)))
    layer.output_dense.kernel.assign(np.eye(heads * KV_LEN, dtype="float32"))
    layer.key_dense.kernel.assign(random_normal(KV_LEN, heads * 4, seed=6))

    def run(training):
        out, w = layer(query, value, return_attention_scores=True, training=training)
        out = _np64(out)  # (batch, q, heads * kv) -> (batch, heads, q, kv)
        out = out.reshape(BATCH, out.shape[1], heads, KV_LEN).transpose(0, 2, 1, 3)
        return out, _np64(w)

    return run


LAYERS = {
    "ScaledDotProductAttention": _sdpa,
    "AdditiveAttention": _additive,
    "LuongAttention-dot": _luong("dot"),
    "LuongAttention-general": _luong("general"),
    "LuongAttention-concat": _luong("concat"),
    "AttentionPooling-units": _pooling(8),
    "AttentionPooling-no-units": _pooling(None),
    "SelfAttention": _self_attention,
    "MultiHeadAttention": _multi_head,
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_attention_dropout_semantics(name):
    run = LAYERS[name]()
    inference_out, weights = run(False)
    # Without dropout the output is the weight matrix itself (the setup is right).
    np.testing.assert_allclose(inference_out, weights, atol=1e-5)
    assert np.all(weights[0] == weights), "the batch rows should be identical"
    # Kept entries must stand well clear of the 1e-7 "dropped" threshold below
    # (the initial kernels, and so the weights, differ between backends).
    assert weights.min() > 1e-5, "every weight should be visible after dropout"

    dropped, train_weights = run(True)
    # The returned weights are the ones before dropout.
    np.testing.assert_allclose(train_weights, weights, atol=1e-6)

    # Every entry is either dropped (0) or kept and rescaled by 1 / (1 - p).
    is_dropped = np.abs(dropped) < 1e-7
    kept_ratio = dropped[~is_dropped] / weights[~is_dropped]
    np.testing.assert_allclose(kept_ratio, 1.0 / (1.0 - RATE), rtol=1e-4)

    # The fraction dropped is p: a binomial count of n draws, within 5 standard
    # deviations (a false alarm about once in 3.5 million runs).
    n = is_dropped.size
    sigma = np.sqrt(RATE * (1 - RATE) / n)
    assert abs(is_dropped.mean() - RATE) < 5 * sigma, (is_dropped.mean(), n)

    # The mean is preserved: averaged over the batch draws, sum(D) / sum(W) is 1.
    # Each entry is W / (1 - p) with probability 1 - p, so
    # Var(D) = W^2 p / (1 - p); the total over all entries has standard deviation
    # sqrt(sum(W^2) p / (1 - p)). Five of them again.
    total_sigma = np.sqrt(np.sum(weights**2) * RATE / (1 - RATE))
    assert abs(dropped.sum() - weights.sum()) < 5 * total_sigma

    # Two training calls draw different masks (the seed generator advances).
    dropped_again, _ = run(True)
    assert not np.array_equal(dropped, dropped_again)


def test_ops_dropout_semantics():
    """The same four properties for the function every layer calls."""
    rng = np.random.default_rng(0)
    q = np.broadcast_to(rng.normal(size=(1, 5, 4)), (BATCH, 5, 4)).astype("float32")
    k = np.broadcast_to(rng.normal(size=(1, KV_LEN, 4)), (BATCH, KV_LEN, 4)).astype("float32")
    v = _eye_batch(KV_LEN)
    seed = keras.random.SeedGenerator(7)
    out, w = ka.ops.scaled_dot_product_attention(
        q, k, v, dropout_rate=RATE, seed=seed, training=True, return_attention_scores=True
    )
    out, w = _np64(out), _np64(w)
    reference = ka.ops.scaled_dot_product_attention(q, k, v)
    np.testing.assert_allclose(w, _np64(reference), atol=1e-6)
    is_dropped = out == 0
    np.testing.assert_allclose(out[~is_dropped] / w[~is_dropped], 1 / (1 - RATE), rtol=1e-4)
    assert abs(is_dropped.mean() - RATE) < 5 * np.sqrt(RATE * (1 - RATE) / out.size)


def test_shuffling_key_value_pairs_leaves_the_output_unchanged():
    """The guide's claim (section 8): attention is blind to the order of the key-value
    pairs; shuffling the keys alone (values fixed) changes the output."""
    rng = np.random.default_rng(3)
    q, k, v = (rng.normal(size=s).astype("float32") for s in ((2, 3, 4), (2, 6, 4), (2, 6, 5)))
    order = np.array([4, 0, 5, 2, 1, 3])
    base = _np64(ka.ops.scaled_dot_product_attention(q, k, v))
    pairs = _np64(ka.ops.scaled_dot_product_attention(q, k[:, order], v[:, order]))
    keys_only = _np64(ka.ops.scaled_dot_product_attention(q, k[:, order], v))
    np.testing.assert_allclose(pairs, base, atol=1e-6)
    assert np.max(np.abs(keys_only - base)) > 0.05

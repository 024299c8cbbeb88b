"""Mixed precision gives the float32 values, within the precision of the compute dtype.

Each layer is built twice, under `float32` and under a mixed policy, with the same
(float32) weights; the outputs must agree to a stated tolerance. float16 keeps 11
significant bits (relative step 2**-10 ~ 1e-3), bfloat16 8 (2**-7 ~ 8e-3); a layer
chains a few projections, a softmax and a weighted sum of O(1) numbers, so the
tolerances are a few steps: `atol = rtol = 1e-2` for float16 and `6e-2` for bfloat16.
An all-zero, constant or NaN output fails, as does a softmax done in low precision
that saturates or an additive mask bias that overflows.
"""

import keras
import numpy as np
import pytest

import keras_attention as ka
from tests.utils import normal_sampler

TOLERANCE = {"mixed_float16": 1e-2, "mixed_bfloat16": 6e-2}
RNG = np.random.default_rng(1618)


_rand = normal_sampler(RNG)


def _np32(x):
    return keras.ops.convert_to_numpy(keras.ops.cast(x, "float32"))


Q, V, X = _rand(2, 4, 8), _rand(2, 6, 8), _rand(2, 6, 8)
KEEP = np.ones((2, 6), bool)
KEEP[1, 3:] = False  # padding in the second sequence
TOKENS = np.array([[3, 1, 4, 1, 5, 9], [2, 6, 5, 0, 0, 0]], dtype="int32")

# name -> (factory(dtype), call(layer) -> output)
CASES = {
    "ScaledDotProductAttention": (
        lambda d: ka.ScaledDotProductAttention(dtype=d),
        lambda layer: layer(Q, V, value_mask=KEEP),
    ),
    "ScaledDotProductAttention-large-scores": (
        # Scores of several hundred: a float16 softmax without the float32 upcast
        # or a float16 exp would saturate; the mask bias must stay finite.
        lambda d: ka.ScaledDotProductAttention(scale=1.0, dtype=d),
        lambda layer: layer(Q * 8, V * 8, value_mask=KEEP),
    ),
    "SelfAttention": (
        lambda d: ka.SelfAttention(8, dtype=d),
        lambda layer: layer(X, use_causal_mask=True),
    ),
    "MultiHeadAttention": (
        lambda d: ka.MultiHeadAttention(4, 2, num_key_value_heads=2, dtype=d),
        lambda layer: layer(Q, V, value_mask=KEEP, return_attention_scores=True),
    ),
    "AdditiveAttention": (
        lambda d: ka.AdditiveAttention(6, dtype=d),
        lambda layer: layer(Q, V, value_mask=KEEP, return_attention_scores=True),
    ),
    "LuongAttention-general": (
        lambda d: ka.LuongAttention("general", scale=True, dtype=d),
        lambda layer: layer(Q, V, value_mask=KEEP, return_attention_scores=True),
    ),
    "LuongAttention-concat": (
        lambda d: ka.LuongAttention("concat", units=6, dtype=d),
        lambda layer: layer(Q, V, value_mask=KEEP),
    ),
    "AttentionPooling": (
        lambda d: ka.AttentionPooling(units=6, num_queries=2, dtype=d),
        lambda layer: layer(X, mask=KEEP, return_attention_scores=True),
    ),
    "FeedForward": (
        lambda d: ka.FeedForward(16, dtype=d),
        lambda layer: layer(X),
    ),
    "TransformerEncoder": (
        lambda d: ka.TransformerEncoder(16, 2, dropout=0.0, dtype=d),
        lambda layer: layer(X, padding_mask=KEEP),
    ),
    "TransformerDecoder": (
        lambda d: ka.TransformerDecoder(16, 2, dropout=0.0, dtype=d),
        lambda layer: layer(Q, V, encoder_padding_mask=KEEP),
    ),
    "TokenAndPositionEmbedding": (
        lambda d: ka.TokenAndPositionEmbedding(10, 6, 8, mask_zero=True, dtype=d),
        lambda layer: layer(TOKENS),
    ),
}


def _flat(x):
    return list(x) if isinstance(x, (tuple, list)) else [x]


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", list(CASES))
def test_mixed_precision_matches_float32(name, policy):
    make, call = CASES[name]
    full = make("float32")
    expected = [_np32(t) for t in _flat(call(full))]
    mixed = make(policy)
    call(mixed)  # build
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in mixed.weights)
    mixed.set_weights(full.get_weights())
    outputs = _flat(call(mixed))
    compute = policy.split("_")[1]
    tol = TOLERANCE[policy]
    for out, ref in zip(outputs, expected):
        assert keras.backend.standardize_dtype(out.dtype) == compute
        assert np.std(ref) > 0.05, "the float32 reference should not be constant"
        np.testing.assert_allclose(_np32(out), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype,tol", [("float16", 1e-2), ("bfloat16", 6e-2)])
def test_ops_attention_low_precision_matches_float64(dtype, tol):
    """The function itself on float16/bfloat16 inputs, scores up to ~60, a causal
    mask and a fully masked row, against a float64 numpy reference."""
    from tests import reference

    q, k, v = _rand(2, 5, 16, scale=2), _rand(2, 7, 16, scale=2), _rand(2, 7, 3)
    keep = RNG.random((2, 5, 7)) > 0.3
    keep[0, 2] = False
    q16, k16, v16 = (keras.ops.cast(t, dtype) for t in (q, k, v))
    out, w = ka.ops.scaled_dot_product_attention(
        q16, k16, v16, mask=keep, causal=True, return_attention_scores=True
    )
    # The reference sees the inputs rounded to the low-precision dtype.
    qr, kr, vr = (_np32(t) for t in (q16, k16, v16))
    ref_out, ref_w = reference.attention(qr, kr, vr, mask=keep, causal=True)
    np.testing.assert_allclose(_np32(w), ref_w, atol=tol, rtol=tol)
    np.testing.assert_allclose(_np32(out), ref_out, atol=tol, rtol=tol)
    np.testing.assert_array_equal(_np32(out)[0, 2], 0.0)

"""`FeedForward`, `TransformerEncoder`, `TransformerDecoder`."""

import keras
import numpy as np
import pytest

import keras_attention as ka
from tests import reference
from tests.utils import normal_sampler, run_layer_test, to_numpy

RNG = np.random.default_rng(66)


_rand = normal_sampler(RNG)


# --- independent numpy references, fed with the layers' weights ---------------------


def _dense(layer, x):
    out = x @ to_numpy(layer.kernel)
    return out + to_numpy(layer.bias) if layer.use_bias else out


def _np_layer_norm(layer, x):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + layer.epsilon) * to_numpy(layer.gamma) + to_numpy(layer.beta)


def _np_mha(mha, query, value, mask=None):
    """Per-head attention with the numpy reference, heads contiguous in the kernels."""

    def heads(x):
        b, n, _ = x.shape
        return x.reshape(b, n, mha.num_heads, -1).transpose(0, 2, 1, 3)

    q, k, v = (
        heads(_dense(d, t))
        for d, t in ((mha.query_dense, query), (mha.key_dense, value), (mha.value_dense, value))
    )
    if mask is not None:
        mask = np.asarray(mask)[:, None]
    out, _ = reference.attention(q, k, v, mask=mask)
    b, _, n, _ = out.shape
    return _dense(mha.output_dense, out.transpose(0, 2, 1, 3).reshape(b, n, -1))


def _np_ffn(ffn, x):
    return _dense(ffn.output_dense, np.maximum(_dense(ffn.intermediate_dense, x), 0))


def _np_sublayer(block, x, fn, norm):
    if block.normalize_first:
        return x + fn(_np_layer_norm(norm, x))
    return _np_layer_norm(norm, x + fn(x))


def _np_encoder(block, x, key_keep=None):
    mask = None if key_keep is None else key_keep[:, None, :]
    x = _np_sublayer(
        block,
        x,
        lambda y: _np_mha(block.self_attention, y, y, mask),
        block.self_attention_layer_norm,
    )
    return _np_sublayer(
        block, x, lambda y: _np_ffn(block.feedforward, y), block.feedforward_layer_norm
    )


def _np_decoder(block, x, enc=None):
    n = x.shape[1]
    causal = np.tril(np.ones((n, n), bool))[None]
    x = _np_sublayer(
        block,
        x,
        lambda y: _np_mha(block.self_attention, y, y, causal),
        block.self_attention_layer_norm,
    )
    if enc is not None:
        x = _np_sublayer(
            block,
            x,
            lambda y: _np_mha(block.cross_attention, y, enc),
            block.cross_attention_layer_norm,
        )
    return _np_sublayer(
        block, x, lambda y: _np_ffn(block.feedforward, y), block.feedforward_layer_norm
    )


def _mha_params(d_query, d_kv, heads, key_dim):
    hk = heads * key_dim
    return d_query * hk + hk + 2 * (d_kv * hk + hk) + hk * d_query + d_query


def _ffn_params(d, f):
    return d * f + f + f * d + d


# --- FeedForward -------------------------------------------------------------------


def test_feedforward_matches_numpy_and_counts_params():
    layer = ka.FeedForward(12, bias_initializer="random_normal")
    x = _rand(2, 5, 6)
    np.testing.assert_allclose(to_numpy(layer(x)), _np_ffn(layer, x), atol=1e-5)
    assert layer.count_params() == _ffn_params(6, 12)
    assert ka.FeedForward(12, use_bias=False)(x).shape == (2, 5, 6)


def test_feedforward_layer_helper(tmp_path):
    run_layer_test(
        ka.FeedForward,
        {"intermediate_dim": 16, "activation": "gelu", "dropout": 0.2, "seed": 3},
        {"inputs": _rand(2, 5, 6)},
        tmp_path=tmp_path,
        expected_output_shape=(2, 5, 6),
        expected_num_trainable_weights=4,
        masked_inputs=("inputs",),
    )


def test_feedforward_errors():
    with pytest.raises(ValueError, match="intermediate_dim=0"):
        ka.FeedForward(0)
    with pytest.raises(ValueError, match="dropout=1.5"):
        ka.FeedForward(4, dropout=1.5)
    with pytest.raises(ValueError, match=r"inputs.shape=\(2,\)"):
        ka.FeedForward(4)(np.zeros((2,), "float32"))


# --- TransformerEncoder ------------------------------------------------------------


@pytest.mark.parametrize("normalize_first", [False, True])
def test_encoder_matches_numpy(normalize_first):
    layer = ka.TransformerEncoder(
        16, 2, normalize_first=normalize_first, bias_initializer="random_normal"
    )
    x = _rand(3, 5, 8)
    keep = np.ones((3, 5), bool)
    keep[1, 3:] = False
    out = to_numpy(layer(x, padding_mask=keep))
    # Padded positions are masked downstream; only the real ones have to agree.
    np.testing.assert_allclose(out[keep], _np_encoder(layer, x, keep)[keep], atol=1e-4)
    assert np.all(np.isfinite(out))


def test_encoder_param_count_formula():
    d, h, f = 8, 2, 16
    layer = ka.TransformerEncoder(f, h)
    layer.build((None, None, d))
    assert layer.count_params() == _mha_params(d, d, h, d // h) + _ffn_params(d, f) + 2 * 2 * d
    layer = ka.TransformerEncoder(f, h, key_dim=5)
    layer.build((None, None, d))
    assert layer.count_params() == _mha_params(d, d, h, 5) + _ffn_params(d, f) + 2 * 2 * d


@pytest.mark.parametrize("normalize_first", [False, True])
def test_encoder_layer_helper(tmp_path, normalize_first):
    run_layer_test(
        ka.TransformerEncoder,
        {"num_heads": 2, "intermediate_dim": 12, "normalize_first": normalize_first, "seed": 1},
        {"inputs": _rand(2, 5, 8)},
        tmp_path=tmp_path,
        expected_output_shape=(2, 5, 8),
        expected_num_trainable_weights=8 + 4 + 4,
        masked_inputs=("inputs",),
        atol=1e-5,
    )


def test_encoder_ignores_padded_content():
    """Outputs at real positions do not depend on what the padded positions hold, for
    an explicit padding_mask, a Keras mask, and both."""
    layer = ka.TransformerEncoder(16, 2, dropout=0.0)
    x = _rand(2, 6, 8)
    keep = np.ones((2, 6), bool)
    keep[0, 4:] = False
    keep[1, 5:] = False
    other = x.copy()
    other[~keep] = 100.0 * _rand(int((~keep).sum()), 8)
    for kwargs in ({"padding_mask": keep}, {"padding_mask": keep.astype("int32")}):
        a, b = to_numpy(layer(x, **kwargs)), to_numpy(layer(other, **kwargs))
        np.testing.assert_allclose(a[keep], b[keep], atol=1e-5)
        assert np.all(np.isfinite(b))
    tokens = keras.Input((6, 8))
    mask = keras.Input((6,), dtype="bool")
    from tests.utils import MaskFrom

    outputs = layer(MaskFrom()([tokens, mask]))
    assert outputs._keras_mask is not None
    model = keras.Model([tokens, mask], outputs)
    a = model.predict([x, keep], verbose=0)
    b = model.predict([other, keep], verbose=0)
    np.testing.assert_allclose(a[keep], b[keep], atol=1e-5)
    np.testing.assert_allclose(a[keep], to_numpy(layer(x, padding_mask=keep))[keep], atol=1e-5)


def test_encoder_attention_mask_and_fully_padded_rows():
    layer = ka.TransformerEncoder(16, 2, dropout=0.0)
    x = _rand(2, 4, 8)
    band = np.eye(4, dtype=bool)[None].repeat(2, 0)
    out = layer(x, attention_mask=band)
    np.testing.assert_allclose(to_numpy(out), _np_encoder_band(layer, x, band), atol=1e-4)
    # A fully padded sequence gives finite outputs (no NaN from an empty softmax).
    out = layer(x, padding_mask=np.zeros((2, 4), bool))
    assert np.all(np.isfinite(to_numpy(out)))


def _np_encoder_band(block, x, band):
    x = _np_sublayer(
        block,
        x,
        lambda y: _np_mha(block.self_attention, y, y, band),
        block.self_attention_layer_norm,
    )
    return _np_sublayer(
        block, x, lambda y: _np_ffn(block.feedforward, y), block.feedforward_layer_norm
    )


def test_encoder_errors_name_argument_and_shape():
    with pytest.raises(ValueError, match="num_heads=0"):
        ka.TransformerEncoder(8, 0)
    with pytest.raises(ValueError, match="layer_norm_epsilon=0"):
        ka.TransformerEncoder(8, 2, layer_norm_epsilon=0)
    with pytest.raises(TypeError, match="normalize_first"):
        ka.TransformerEncoder(8, 2, normalize_first="yes")
    with pytest.raises(ValueError, match=r"features \(7\).*num_heads=2"):
        ka.TransformerEncoder(8, 2)(np.zeros((1, 3, 7), "float32"))
    with pytest.raises(ValueError, match=r"inputs.shape=\(1, 7\)"):
        ka.TransformerEncoder(8, 2)(np.zeros((1, 7), "float32"))
    layer = ka.TransformerEncoder(8, 2)
    with pytest.raises(ValueError, match=r"padding_mask.shape=\(1, 4\).*inputs.shape=\(1, 3, 8\)"):
        layer(np.zeros((1, 3, 8), "float32"), padding_mask=np.ones((1, 4), bool))
    with pytest.raises(ValueError, match="padding_mask.*0.5"):
        layer(np.zeros((1, 3, 8), "float32"), padding_mask=np.full((1, 3), 0.5, "float32"))


# --- TransformerDecoder ------------------------------------------------------------


@pytest.mark.parametrize("normalize_first", [False, True])
@pytest.mark.parametrize("cross", [False, True])
def test_decoder_matches_numpy(normalize_first, cross):
    layer = ka.TransformerDecoder(
        16, 2, normalize_first=normalize_first, bias_initializer="random_normal"
    )
    x, enc = _rand(2, 5, 8), (_rand(2, 3, 6) if cross else None)
    out = layer(x, enc)
    np.testing.assert_allclose(to_numpy(out), _np_decoder(layer, x, enc), atol=1e-4)
    assert (layer.cross_attention is not None) == cross


def test_decoder_param_count_formula():
    d, e, h, f = 8, 6, 2, 16
    self_only = ka.TransformerDecoder(f, h)
    self_only.build((None, None, d))
    expected = _mha_params(d, d, h, d // h) + _ffn_params(d, f) + 2 * 2 * d
    assert self_only.count_params() == expected
    with_cross = ka.TransformerDecoder(f, h)
    with_cross.build((None, None, d), (None, None, e))
    assert with_cross.count_params() == expected + _mha_params(d, e, h, d // h) + 2 * d


def test_decoder_is_causal():
    """Changing tokens at positions >= t never changes outputs before t."""
    for enc in (None, _rand(2, 4, 8)):
        layer = ka.TransformerDecoder(16, 2, dropout=0.0)
        x = _rand(2, 6, 8)
        base = to_numpy(layer(x, enc))
        for t in range(1, 6):
            changed = x.copy()
            changed[:, t:] = _rand(2, 6 - t, 8) * 10
            out = to_numpy(layer(changed, enc))
            np.testing.assert_allclose(out[:, :t], base[:, :t], atol=1e-5)
            assert not np.allclose(out[:, t], base[:, t])


@pytest.mark.parametrize("cross", [False, True])
def test_decoder_cache_matches_full_sequence(cross):
    layer = ka.TransformerDecoder(16, 2, dropout=0.0)
    x, enc = _rand(2, 6, 8), (_rand(2, 3, 8) if cross else None)
    full = to_numpy(layer(x, enc))
    cache = layer.get_initial_cache(2, 8)
    # A 2-token prefill, then one token per step (a tensor index, as in a loop).
    out, cache = layer(x[:, :2], enc, self_attention_cache=cache, cache_index=0)
    steps = [to_numpy(out)]
    for i in range(2, 6):
        out, cache = layer(
            x[:, i : i + 1],
            enc,
            self_attention_cache=cache,
            cache_index=keras.ops.convert_to_tensor(i),
        )
        steps.append(to_numpy(out))
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-5)
    assert tuple(cache.shape) == (2, 8, 2 * 8)


def test_decoder_cache_with_padding_over_cache_positions():
    layer = ka.TransformerDecoder(16, 2, dropout=0.0)
    x = _rand(1, 4, 8)
    layer(x)
    keep = np.array([[True, False, True, True]])
    # Reference: the full sequence with cache slot 1 masked as a key for every query.
    full_mask = np.tril(np.ones((4, 4), bool))[None] & keep[:, None, :]
    ref = _np_sublayer(
        layer,
        x,
        lambda y: _np_mha(layer.self_attention, y, y, full_mask),
        layer.self_attention_layer_norm,
    )
    ref = _np_sublayer(
        layer, ref, lambda y: _np_ffn(layer.feedforward, y), layer.feedforward_layer_norm
    )
    cache = layer.get_initial_cache(1, 4)
    outs = []
    for i in range(4):
        out, cache = layer(
            x[:, i : i + 1], decoder_padding_mask=keep, self_attention_cache=cache, cache_index=i
        )
        outs.append(to_numpy(out))
    outs = np.concatenate(outs, 1)
    np.testing.assert_allclose(outs[keep], ref[keep], atol=1e-4)


def test_decoder_layer_helper_self_only(tmp_path):
    run_layer_test(
        ka.TransformerDecoder,
        {"num_heads": 2, "intermediate_dim": 12, "seed": 2},
        {"decoder_sequence": _rand(2, 5, 8)},
        tmp_path=tmp_path,
        expected_output_shape=(2, 5, 8),
        expected_num_trainable_weights=16,
        masked_inputs=("decoder_sequence",),
        atol=1e-5,
    )


def test_decoder_layer_helper_cross(tmp_path):
    run_layer_test(
        ka.TransformerDecoder,
        {"num_heads": 2, "intermediate_dim": 12, "normalize_first": True},
        {"decoder_sequence": _rand(2, 5, 8), "encoder_sequence": _rand(2, 4, 6)},
        tmp_path=tmp_path,
        expected_output_shape=(2, 5, 8),
        expected_num_trainable_weights=16 + 8 + 2,
        masked_inputs=("decoder_sequence", "encoder_sequence"),
        atol=1e-5,
    )


def test_decoder_ignores_padded_encoder_content():
    layer = ka.TransformerDecoder(16, 2, dropout=0.0)
    x, enc = _rand(2, 4, 8), _rand(2, 5, 8)
    keep = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], bool)
    other = enc.copy()
    other[~keep] = 50.0
    a = to_numpy(layer(x, enc, encoder_padding_mask=keep))
    b = to_numpy(layer(x, other, encoder_padding_mask=keep))
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_decoder_symbolic_with_cache():
    layer = ka.TransformerDecoder(16, 2)
    x = keras.Input((1, 8))
    cache = keras.Input((10, 16))
    out, new_cache = layer(x, self_attention_cache=cache, cache_index=3)
    assert out.shape == (None, 1, 8) and new_cache.shape == (None, 10, 16)


def test_decoder_errors_name_argument_and_shape():
    x, enc = np.zeros((1, 3, 8), "float32"), np.zeros((1, 4, 8), "float32")
    self_only = ka.TransformerDecoder(8, 2)
    self_only(x)
    with pytest.raises(ValueError, match="built without cross-attention"):
        self_only(x, enc)
    with_cross = ka.TransformerDecoder(8, 2)
    with_cross(x, enc)
    with pytest.raises(ValueError, match="encoder_sequence=None"):
        with_cross(x)
    # The message names the mask that is wrong and the sequence it must match.
    with pytest.raises(
        ValueError,
        match=r"encoder_padding_mask.shape=\(1, 3\), encoder_sequence.shape=\(1, 4, 8\)",
    ):
        with_cross(x, enc, encoder_padding_mask=np.ones((1, 3), bool))
    with pytest.raises(
        ValueError,
        match=r"decoder_padding_mask.shape=\(1, 4\), decoder_sequence.shape=\(1, 3, 8\)",
    ):
        with_cross(x, enc, decoder_padding_mask=np.ones((1, 4), bool))
    cache = self_only.get_initial_cache(1, 5)
    with pytest.raises(ValueError, match="cache_index=None"):
        self_only(x, self_attention_cache=cache)
    with pytest.raises(ValueError, match=r"decoder_padding_mask.shape=\(1, 3\)"):
        self_only(
            x, self_attention_cache=cache, cache_index=0, decoder_padding_mask=np.ones((1, 3), bool)
        )
    with pytest.raises(ValueError, match="must be built"):
        ka.TransformerDecoder(8, 2).get_initial_cache(1, 5)


def test_blocks_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    x, enc = _rand(2, 4, 8), _rand(2, 3, 8)
    assert keras.backend.standardize_dtype(ka.TransformerEncoder(16, 2)(x).dtype) == "float16"
    decoder = ka.TransformerDecoder(16, 2)
    full = decoder(x, enc)
    cache = decoder.get_initial_cache(2, 4)
    step, cache = decoder(x[:, :1], enc, self_attention_cache=cache, cache_index=0)
    assert keras.backend.standardize_dtype(step.dtype) == "float16"
    np.testing.assert_allclose(to_numpy(step), to_numpy(full)[:, :1], atol=2e-2)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("axis", [-1, [1, 2]])
def test_blocks_layer_norm_equals_keras_layer(policy, axis):
    # The blocks' LayerNormalization (exportable to ONNX on PyTorch) is Keras' layer:
    # the same config, weights and outputs, over one axis and several.
    norm = ka.TransformerEncoder(16, 2)._layer_norm("norm")
    norm = type(norm)(**{**norm.get_config(), "axis": axis, "dtype": policy})
    keras_norm = keras.layers.LayerNormalization(**norm.get_config())
    x = 3.0 * _rand(2, 5, 8) + 1.0
    norm.build(x.shape)
    keras_norm.build(x.shape)
    for variable, keras_variable in zip(norm.weights, keras_norm.weights):
        assert variable.path.split("/")[-1] == keras_variable.path.split("/")[-1]
        keras_variable.assign(_rand(*variable.shape))
        variable.assign(keras_variable)
    got, want = norm(x), keras_norm(x)
    assert keras.backend.standardize_dtype(got.dtype) == norm.compute_dtype
    atol = 1e-6 if policy == "float32" else 0.0
    np.testing.assert_allclose(
        to_numpy(got).astype("float32"), to_numpy(want).astype("float32"), atol=atol
    )
    assert norm.get_config() == keras_norm.get_config()

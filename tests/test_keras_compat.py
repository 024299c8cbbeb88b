"""Moving from Keras' attention layers: the same weights, the same inputs, the same
results.

For each Keras layer (`MultiHeadAttention`, `GroupedQueryAttention`, `Attention`,
`AdditiveAttention`) the Keras layer is built with random weights, they are copied
into this package's layer (`transplant`, the one helper that knows both layouts), and
both are called on the same inputs in the forms Keras accepts. Outputs and attention
scores must agree within 1e-5 (float32), except for the differences documented in
docs/guide.md ("Moving from Keras' layers"), which are asserted as documented.
"""

import inspect

import keras
import numpy as np
import pytest

import keras_attention as ka
from tests.utils import random_normal, run_layer_test, to_numpy

try:
    import keras_hub
except ImportError:  # keras-hub is the `bench` extra
    keras_hub = None
needs_keras_hub = pytest.mark.skipif(keras_hub is None, reason="needs keras-hub")

ATOL = 1e-5
B = 2
IMPLEMENTATIONS = ("plain", "chunked", "fused")


def _randomize(layer, seed):
    """Random values in every weight of `layer` (biases too, which start at zero)."""
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(scale=0.5, size=w.shape) for w in layer.get_weights()])


def transplant(keras_layer, ours):
    """Copy the weights of a built Keras attention layer into ours (built).

    `MultiHeadAttention`/`GroupedQueryAttention`: Keras' `EinsumDense` kernels
    `(features, heads, dim)` become our `Dense` kernels `(features, heads * dim)`,
    the output kernel `(heads, dim, *output_shape)` becomes
    `(heads * dim, prod(output_shape))`, biases are flattened.
    `Attention`/`AdditiveAttention`: their `scale` weight is our `scale`
    (`LuongAttention`, `AdditiveAttention`).
    """
    if isinstance(keras_layer, (keras.layers.MultiHeadAttention, keras.layers.GroupQueryAttention)):
        for name in ("query", "key", "value", "gate", "output"):
            source = getattr(keras_layer, f"_{name}_dense", None)
            target = getattr(ours, f"{name}_dense")
            assert (source is None) == (target is None), name
            if source is None:
                continue
            kernel = to_numpy(source.kernel)
            rows = kernel.shape[0] * kernel.shape[1] if name == "output" else kernel.shape[0]
            weights = [kernel.reshape(rows, -1)]
            if source.bias is not None:
                weights.append(to_numpy(source.bias).reshape(-1))
            target.set_weights(weights)
        return
    if isinstance(keras_layer, keras.layers.AdditiveAttention):
        if keras_layer.scale is not None:
            ours.scale.assign(to_numpy(keras_layer.scale))
        return
    if isinstance(keras_layer, keras.layers.Attention):
        if keras_layer.scale is not None:
            ours.scale.assign(to_numpy(keras_layer.scale))
        return
    raise TypeError(f"No transplant for {type(keras_layer).__name__}")


def _pair(keras_cls, ours_cls, kwargs, build_args, seed=0, ours_kwargs=None):
    """A Keras layer with random weights and ours with the same weights."""
    keras_layer = keras_cls(**kwargs)
    ours = ours_cls(**(kwargs if ours_kwargs is None else ours_kwargs))
    # With the scores Keras runs its einsum path (its fused one refuses
    # key_dim != value_dim on JAX).
    keras_layer(*build_args, return_attention_scores=True)
    ours(*build_args)
    _randomize(keras_layer, seed)
    transplant(keras_layer, ours)
    return keras_layer, ours


def _close(actual, expected, atol=ATOL):
    np.testing.assert_allclose(to_numpy(actual), to_numpy(expected), atol=atol, rtol=0)


# ---------------------------------------------------------------- MultiHeadAttention

# name -> (constructor kwargs, query shape, value shape, key features or None)
MHA_CASES = {
    "self": ({"num_heads": 2, "key_dim": 4}, (B, 5, 8), (B, 5, 8), None),
    "cross_key_value_dim_no_bias": (
        {"num_heads": 3, "key_dim": 4, "value_dim": 5, "use_bias": False},
        (B, 4, 8),
        (B, 6, 7),
        6,
    ),
    "rank4_default_axes": ({"num_heads": 2, "key_dim": 4}, (B, 3, 4, 8), (B, 2, 3, 8), None),
    "rank4_axis2": (
        {"num_heads": 2, "key_dim": 4, "attention_axes": (2,)},
        (B, 3, 4, 8),
        (B, 3, 5, 8),
        None,
    ),
    "rank4_axis_negative": (
        {"num_heads": 2, "key_dim": 4, "attention_axes": -2},
        (B, 3, 4, 8),
        (B, 3, 5, 8),
        None,
    ),
    "rank4_axis1": (
        {"num_heads": 2, "key_dim": 4, "attention_axes": 1},
        (B, 3, 4, 8),
        (B, 5, 4, 8),
        None,
    ),
    "rank5_axes_1_3": (
        {"num_heads": 2, "key_dim": 4, "attention_axes": (1, 3)},
        (B, 2, 3, 4, 8),
        (B, 3, 3, 2, 8),
        None,
    ),
    "rank5_axes_3_2": (
        {"num_heads": 2, "key_dim": 4, "attention_axes": (3, -3)},
        (B, 2, 3, 4, 8),
        (B, 2, 2, 3, 8),
        None,
    ),
    "use_gate": (
        {"num_heads": 2, "key_dim": 4, "value_dim": 3, "use_gate": True},
        (B, 5, 8),
        (B, 6, 8),
        None,
    ),
    "use_gate_rank4": (
        {"num_heads": 2, "key_dim": 4, "use_gate": True, "attention_axes": (2,)},
        (B, 3, 4, 8),
        (B, 3, 4, 8),
        None,
    ),
    "output_shape_int": (
        {"num_heads": 2, "key_dim": 4, "output_shape": 6},
        (B, 5, 8),
        (B, 5, 8),
        None,
    ),
    "output_shape_tuple": (
        {"num_heads": 2, "key_dim": 4, "output_shape": (3, 2)},
        (B, 5, 8),
        (B, 4, 8),
        None,
    ),
    "output_shape_tuple_rank4": (
        {"num_heads": 2, "key_dim": 4, "output_shape": (2, 3)},
        (B, 3, 4, 8),
        (B, 2, 2, 8),
        None,
    ),
}


def _mha_inputs(q_shape, v_shape, key_features):
    query, value = random_normal(*q_shape, seed=1), random_normal(*v_shape, seed=2)
    key = None if key_features is None else random_normal(*v_shape[:-1], key_features, seed=3)
    return query, value, key


def _call(layer, query, value, key, **kwargs):
    if key is None:
        return layer(query, value, **kwargs)
    return layer(query, value, key, **kwargs)


@pytest.mark.parametrize("case", list(MHA_CASES))
def test_multi_head_attention_matches_keras(case):
    kwargs, q_shape, v_shape, key_features = MHA_CASES[case]
    query, value, key = _mha_inputs(q_shape, v_shape, key_features)
    args = (query, value) if key is None else (query, value, key)
    keras_layer, ours = _pair(keras.layers.MultiHeadAttention, ka.MultiHeadAttention, kwargs, args)
    expected, expected_scores = keras_layer(*args, return_attention_scores=True)
    output, scores = ours(*args, return_attention_scores=True)
    assert tuple(output.shape) == tuple(expected.shape)
    assert tuple(scores.shape) == tuple(expected_scores.shape)
    _close(output, expected)
    _close(scores, expected_scores)
    # The symbolic shapes are the eager ones (Keras' own are not, for scores).
    symbolic = ours.compute_output_spec(
        *[keras.KerasTensor(a.shape) for a in args], return_attention_scores=True
    )
    assert tuple(symbolic[0].shape) == tuple(output.shape)
    assert tuple(symbolic[1].shape) == tuple(scores.shape)
    for implementation in IMPLEMENTATIONS:
        ours.implementation = implementation
        _close(ours(*args), expected)


def _mask(shape, seed):
    """A random boolean mask with at least one allowed key in every row."""
    mask = np.random.default_rng(seed).random(shape) < 0.6
    mask[..., 0] = True
    return mask


# name -> (case of MHA_CASES, attention mask shape, mask dtype)
MASK_CASES = {
    "2d_no_batch": ("self", (5, 5), "bool"),
    "3d": ("self", (B, 5, 5), "bool"),
    "3d_batch_broadcast": ("cross_key_value_dim_no_bias", (1, 4, 6), "bool"),
    "4d_heads": ("cross_key_value_dim_no_bias", (B, 3, 4, 6), "bool"),
    "4d_heads_broadcast": ("self", (1, 2, 5, 5), "bool"),
    "float_0_1": ("self", (B, 5, 5), "float32"),
    "int_0_1": ("self", (B, 5, 5), "int32"),
    "rank4_axis2_per_row": ("rank4_axis2", (B, 3, 4, 5), "bool"),
    "rank4_axis2_no_row_axis": ("rank4_axis2", (B, 4, 5), "bool"),
    "rank4_default_axes": ("rank4_default_axes", (B, 3, 4, 2, 3), "bool"),
    "rank5_axes_1_3": ("rank5_axes_1_3", (B, 3, 2, 4, 3, 2), "bool"),
    "rank4_gate": ("use_gate_rank4", (4, 4), "float32"),
}


@pytest.mark.parametrize("case", list(MASK_CASES))
def test_multi_head_attention_masks_match_keras(case):
    layer_case, mask_shape, dtype = MASK_CASES[case]
    kwargs, q_shape, v_shape, key_features = MHA_CASES[layer_case]
    query, value, key = _mha_inputs(q_shape, v_shape, key_features)
    mask = _mask(mask_shape, seed=7).astype(dtype)
    args = (query, value) if key is None else (query, value, key)
    keras_layer, ours = _pair(keras.layers.MultiHeadAttention, ka.MultiHeadAttention, kwargs, args)
    expected, expected_scores = keras_layer(
        *args, attention_mask=mask, return_attention_scores=True
    )
    output, scores = ours(*args, attention_mask=mask, return_attention_scores=True)
    _close(output, expected)
    _close(scores, expected_scores)
    for implementation in IMPLEMENTATIONS:
        ours.implementation = implementation
        _close(ours(*args, attention_mask=mask), expected)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_causal_mask_and_padding_match_keras(implementation):
    query, value = random_normal(B, 5, 8, seed=1), random_normal(B, 5, 8, seed=2)
    keras_layer, ours = _pair(
        keras.layers.MultiHeadAttention,
        ka.MultiHeadAttention,
        {"num_heads": 2, "key_dim": 4},
        (query, value),
    )
    ours.implementation = implementation
    _close(
        ours(query, value, use_causal_mask=True), keras_layer(query, value, use_causal_mask=True)
    )
    value_mask = np.ones((B, 5), bool)
    value_mask[0, 3:] = False
    _close(
        ours(query, value, value_mask=value_mask, use_causal_mask=True),
        keras_layer(query, value, value_mask=value_mask, use_causal_mask=True),
    )


@pytest.mark.parametrize("attention_axes", [(2,), None])
def test_causal_mask_over_attention_axes_is_the_documented_difference(attention_axes):
    """Documented difference: with `attention_axes` (or rank > 3) ours makes the
    causal mask over the attention positions in row-major order; Keras builds it
    from axis 1 whatever the attention axes. Ours equals Keras given that mask."""
    x = random_normal(B, 3, 4, 8, seed=1)
    kwargs = {"num_heads": 2, "key_dim": 4, "attention_axes": attention_axes}
    keras_layer, ours = _pair(
        keras.layers.MultiHeadAttention, ka.MultiHeadAttention, kwargs, (x, x)
    )
    positions = 4 if attention_axes else 12
    causal = np.tril(np.ones((positions, positions), bool))
    if attention_axes is None:
        causal = causal.reshape(3, 4, 3, 4)
    expected = keras_layer(x, x, attention_mask=causal)
    for implementation in IMPLEMENTATIONS:
        ours.implementation = implementation
        _close(ours(x, x, use_causal_mask=True), expected)


def test_query_rows_without_keys_are_the_documented_difference():
    """Documented difference: a query row with no key to attend (an all-False mask
    row) gets zero attention here in every path, so its output is the output bias.
    Keras gives the same with `return_attention_scores=True`, but without it (its
    fused `dot_product_attention` path) the mean of the projected values."""
    query, value = random_normal(B, 4, 8, seed=1), random_normal(B, 4, 8, seed=2)
    keras_layer, ours = _pair(
        keras.layers.MultiHeadAttention,
        ka.MultiHeadAttention,
        {"num_heads": 2, "key_dim": 4},
        (query, value),
    )
    mask = np.ones((B, 4, 4), bool)
    mask[0, 2] = False  # query 2 of batch 0 may attend nothing
    expected, expected_scores = keras_layer(
        query, value, attention_mask=mask, return_attention_scores=True
    )
    output, scores = ours(query, value, attention_mask=mask, return_attention_scores=True)
    _close(output, expected)
    _close(scores, expected_scores)
    np.testing.assert_array_equal(to_numpy(scores)[0, :, 2], 0.0)
    np.testing.assert_allclose(
        to_numpy(output)[0, 2], to_numpy(ours.output_dense.bias), atol=ATOL, rtol=0
    )
    fused = to_numpy(keras_layer(query, value, attention_mask=mask))
    mean = to_numpy(ours.output_dense(keras.ops.mean(ours.value_dense(value), axis=1)))
    np.testing.assert_allclose(fused[0, 2], mean[0], atol=ATOL, rtol=0)
    for implementation in IMPLEMENTATIONS:
        ours.implementation = implementation
        _close(ours(query, value, attention_mask=mask), expected)


def test_symbolic_scores_shape_for_cross_attention():
    """Documented difference: Keras' symbolic score shape uses the query length for
    the keys too; ours gives the eager shape."""
    query, value = keras.Input((5, 8)), keras.Input((7, 8))
    _, scores = ka.MultiHeadAttention(2, 4)(query, value, return_attention_scores=True)
    _, keras_scores = keras.layers.MultiHeadAttention(2, 4)(
        query, value, return_attention_scores=True
    )
    assert tuple(scores.shape) == (None, 2, 5, 7)
    assert tuple(keras_scores.shape) == (None, 2, 5, 5)


def test_functional_model_with_keras_arguments_saves_and_reloads(tmp_path):
    """A model written for Keras' layer, with the import changed: rank 4 inputs,
    attention_axes, use_gate and an output_shape tuple, through .keras."""
    inputs = keras.Input((3, 4, 8))
    layer = ka.MultiHeadAttention(
        num_heads=2, key_dim=4, attention_axes=(2,), use_gate=True, output_shape=(2, 3)
    )
    model = keras.Model(inputs, layer(inputs, inputs))
    x = random_normal(B, 3, 4, 8, seed=5)
    before = model.predict(x, verbose=0)
    assert before.shape == (B, 3, 4, 2, 3)
    path = str(tmp_path / "model.keras")
    model.save(path)
    after = keras.saving.load_model(path).predict(x, verbose=0)
    np.testing.assert_allclose(after, before, atol=1e-6, rtol=0)


def test_lora_and_int8_reach_the_gate():
    """The gate is a `Dense`, so LoRA and int8 quantization apply to it."""
    inputs = keras.Input((5, 8))
    layer = ka.MultiHeadAttention(num_heads=2, key_dim=4, use_gate=True)
    model = keras.Model(inputs, layer(inputs, inputs))
    x = random_normal(B, 5, 8, seed=1)
    before = model.predict(x, verbose=0)
    layer.gate_dense.enable_lora(2)
    assert layer.gate_dense.lora_enabled
    np.testing.assert_allclose(model.predict(x, verbose=0), before, atol=1e-6)  # B = 0
    for dense in (layer.query_dense, layer.key_dense, layer.value_dense, layer.gate_dense):
        dense.quantize("int8")
    assert layer.gate_dense.quantization_mode == "int8"
    np.testing.assert_allclose(model.predict(x, verbose=0), before, atol=0.1)


# ------------------------------------------------------------- GroupedQueryAttention


@pytest.mark.parametrize(
    "heads, use_gate",
    [((4, 2), False), ((4, 1), False), ((4, 4), True), ((6, 2), True)],
)
def test_grouped_query_attention_matches_keras(heads, use_gate):
    num_query_heads, num_key_value_heads = heads
    kwargs = {
        "head_dim": 4,
        "num_query_heads": num_query_heads,
        "num_key_value_heads": num_key_value_heads,
        "use_gate": use_gate,
    }
    query, value = random_normal(B, 5, 8, seed=1), random_normal(B, 6, 8, seed=2)
    keras_layer, ours = _pair(
        keras.layers.GroupQueryAttention, ka.GroupedQueryAttention, kwargs, (query, value)
    )
    mask = _mask((B, 5, 6), seed=3)
    expected, expected_scores = keras_layer(
        query, value, attention_mask=mask, return_attention_scores=True
    )
    output, scores = ours(query, value, attention_mask=mask, return_attention_scores=True)
    _close(output, expected)
    _close(scores, expected_scores)
    for implementation in IMPLEMENTATIONS:
        ours.implementation = implementation
        _close(ours(query, value, attention_mask=mask), expected)


def test_grouped_query_attention_decoding_cache_matches_keras_causal():
    kwargs = {"head_dim": 4, "num_query_heads": 4, "num_key_value_heads": 2, "use_gate": True}
    x = random_normal(B, 5, 8, seed=1)
    keras_layer, ours = _pair(
        keras.layers.GroupQueryAttention, ka.GroupedQueryAttention, kwargs, (x, x)
    )
    expected = to_numpy(keras_layer(x, x, use_causal_mask=True))
    cache = ours.get_initial_cache(B, 5)
    for index in range(5):
        step = x[:, index : index + 1]
        output, cache = ours(step, step, cache=cache, cache_index=index)
        np.testing.assert_allclose(to_numpy(output)[:, 0], expected[:, index], atol=ATOL, rtol=0)


def test_grouped_query_attention_layer_test(tmp_path):
    run_layer_test(
        ka.GroupedQueryAttention,
        {"head_dim": 4, "num_query_heads": 4, "num_key_value_heads": 2, "use_gate": True},
        {"query": random_normal(B, 5, 8, seed=1), "value": random_normal(B, 6, 8, seed=2)},
        tmp_path=tmp_path,
        expected_output_shape=(B, 5, 8),
        expected_num_trainable_weights=10,
        masked_inputs=("query", "value"),
    )


# ------------------------------------------------------ Attention, AdditiveAttention

# Keras layer -> (our class, Keras constructor kwargs, our constructor kwargs)
LIST_CASES = {
    "attention": (keras.layers.Attention, ka.LuongAttention, {}),
    "attention_use_scale": (
        keras.layers.Attention,
        ka.LuongAttention,
        {"use_scale": True, "score_mode": "dot"},
    ),
    "additive": (keras.layers.AdditiveAttention, ka.AdditiveAttention, {}),
    "additive_no_scale": (
        keras.layers.AdditiveAttention,
        ka.AdditiveAttention,
        {"use_scale": False},
    ),
}


@pytest.mark.parametrize("case", list(LIST_CASES))
@pytest.mark.parametrize("with_key", [False, True])
def test_list_calls_match_keras(case, with_key):
    keras_cls, ours_cls, kwargs = LIST_CASES[case]
    query, value, key = (
        random_normal(B, 4, 6, seed=1),
        random_normal(B, 5, 3, seed=2),
        random_normal(B, 5, 6, seed=3),
    )
    inputs = [query, value, key] if with_key else [query, value, random_normal(B, 5, 6, seed=2)][:2]
    if not with_key:
        value = inputs[1] = random_normal(B, 5, 6, seed=2)
    keras_layer, ours = _pair(keras_cls, ours_cls, kwargs, (inputs,))
    expected, expected_scores = keras_layer(inputs, return_attention_scores=True)
    output, scores = ours(inputs, return_attention_scores=True)
    _close(output, expected)
    _close(scores, expected_scores)
    _close(ours(inputs, use_causal_mask=True), keras_layer(inputs, use_causal_mask=True))
    # mask=[query_mask, value_mask]; no query row is left without keys.
    query_mask = np.array([[True, True, True, False], [True, True, True, True]])
    value_mask = np.array([[True, True, False, True, False], [True, False, True, True, True]])
    expected, expected_scores = keras_layer(
        inputs, mask=[query_mask, value_mask], return_attention_scores=True
    )
    output, scores = ours(inputs, mask=[query_mask, value_mask], return_attention_scores=True)
    _close(output, expected)  # zeros at the padded query, in both
    expected_scores, scores = to_numpy(expected_scores), to_numpy(scores)
    # Documented difference: the scores of a padded query are zeros here.
    np.testing.assert_allclose(scores[query_mask], expected_scores[query_mask], atol=ATOL, rtol=0)
    np.testing.assert_array_equal(scores[0, 3], 0.0)
    # The keyword form gives the same as the list form.
    _close(
        ours(query, value, key if with_key else None, query_mask=query_mask, value_mask=value_mask),
        output,
    )


@pytest.mark.parametrize("case", ["attention_use_scale", "additive"])
def test_list_calls_in_functional_models(case, tmp_path):
    keras_cls, ours_cls, kwargs = LIST_CASES[case]
    query_in, value_in = keras.Input((4, 6)), keras.Input((5, 6))
    masked_value = keras.layers.Masking(0.0)(value_in)
    layer = ours_cls(**kwargs)
    output = layer([query_in, masked_value])
    model = keras.Model([query_in, value_in], output)
    query, value = random_normal(B, 4, 6, seed=1), random_normal(B, 5, 6, seed=2)
    value[0, 3:] = 0.0
    keras_layer = keras_cls(**kwargs)
    keras_output = keras_layer([query_in, keras.layers.Masking(0.0)(value_in)])
    keras_model = keras.Model([query_in, value_in], keras_output)
    _randomize(keras_layer, 0)
    transplant(keras_layer, layer)
    np.testing.assert_allclose(
        model.predict([query, value], verbose=0),
        keras_model.predict([query, value], verbose=0),
        atol=ATOL,
        rtol=0,
    )
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        reloaded.predict([query, value], verbose=0),
        model.predict([query, value], verbose=0),
        atol=1e-6,
    )


# ------------------------------------------------------------- Transformer blocks


def test_transformer_blocks_return_attention_scores():
    x, source = random_normal(B, 5, 8, seed=1), random_normal(B, 6, 8, seed=2)
    encoder = ka.TransformerEncoder(intermediate_dim=16, num_heads=2)
    output, scores = encoder(x, return_attention_scores=True)
    _close(output, encoder(x))
    _, expected = encoder.self_attention(x, x, return_attention_scores=True)
    _close(scores, expected)  # post-norm: the block's attention sees its input

    decoder = ka.TransformerDecoder(intermediate_dim=16, num_heads=2)
    output, self_scores, cross_scores = decoder(x, source, return_attention_scores=True)
    _close(output, decoder(x, source))
    assert tuple(self_scores.shape) == (B, 2, 5, 5)
    assert tuple(cross_scores.shape) == (B, 2, 5, 6)
    np.testing.assert_array_equal(np.triu(to_numpy(self_scores)[0, 0], 1), 0.0)  # causal
    np.testing.assert_allclose(to_numpy(cross_scores).sum(-1), 1.0, atol=1e-5)

    symbolic = decoder.compute_output_spec(
        keras.KerasTensor((None, 5, 8)),
        keras.KerasTensor((None, 6, 8)),
        return_attention_scores=True,
    )
    assert [tuple(t.shape) for t in symbolic] == [(None, 5, 8), (None, 2, 5, 5), (None, 2, 5, 6)]
    symbolic = encoder.compute_output_spec(
        keras.KerasTensor((None, 5, 8)), return_attention_scores=True
    )
    assert [tuple(t.shape) for t in symbolic] == [(None, 5, 8), (None, 2, 5, 5)]


def test_transformer_decoder_scores_with_cache():
    x = random_normal(B, 4, 8, seed=1)
    decoder = ka.TransformerDecoder(intermediate_dim=16, num_heads=2)
    full, full_scores = decoder(x, return_attention_scores=True)
    cache = decoder.get_initial_cache(B, 4)
    for index in range(4):
        output, scores, cache = decoder(
            x[:, index : index + 1],
            self_attention_cache=cache,
            cache_index=index,
            return_attention_scores=True,
        )
        _close(output[:, 0], to_numpy(full)[:, index])
        _close(scores[:, :, 0], to_numpy(full_scores)[:, :, index])


# ------------------------------------------------------------------ bad inputs

BAD_CASES = [
    (
        lambda: ka.MultiHeadAttention(2, 4, output_shape=0),
        ValueError,
        r"`output_shape`.*Received: output_shape=0",
    ),
    (
        lambda: ka.MultiHeadAttention(2, 4, output_shape=(3, -1)),
        ValueError,
        r"`output_shape`.*\(3, -1\)",
    ),
    (
        lambda: ka.MultiHeadAttention(2, 4, output_shape=(4,), output_dim=4),
        ValueError,
        r"`output_dim` or `output_shape`",
    ),
    (
        lambda: ka.MultiHeadAttention(2, 4, attention_axes=0),
        ValueError,
        r"`attention_axes`.*Received: attention_axes=0",
    ),
    (lambda: ka.MultiHeadAttention(2, 4, attention_axes="1"), ValueError, r"`attention_axes`.*'1'"),
    (
        lambda: ka.MultiHeadAttention(2, 4, attention_axes=(1, 1)),
        ValueError,
        r"`attention_axes`.*\(1, 1\)",
    ),
    (
        lambda: ka.MultiHeadAttention(2, 4, use_gate=1),
        TypeError,
        r"`use_gate`.*Received: use_gate=1",
    ),
    (
        lambda: ka.MultiHeadAttention(2, 4, attention_axes=3)(
            random_normal(2, 3, 8), random_normal(2, 3, 8)
        ),
        ValueError,
        r"`attention_axes`.*\[1, 1\].*Received: attention_axes=\(3,\)",
    ),
    (
        lambda: ka.MultiHeadAttention(2, 4, attention_axes=-1)(
            random_normal(2, 3, 4, 8), random_normal(2, 3, 4, 8)
        ),
        ValueError,
        r"`attention_axes`.*Received: attention_axes=\(-1,\)",
    ),
    (
        lambda: ka.MultiHeadAttention(2, 4)(random_normal(2, 3, 4, 8), random_normal(2, 3, 8)),
        ValueError,
        r"`value` must be rank 4, the rank of `query`",
    ),
    (
        lambda: ka.MultiHeadAttention(2, 4, attention_axes=2)(
            random_normal(2, 3, 4, 8), random_normal(2, 5, 4, 8)
        ),
        ValueError,
        r"`query` and `value` must agree.*\(0, 1\)",
    ),
    (
        lambda: ka.MultiHeadAttention(2, 4)(
            random_normal(2, 3, 4, 8), random_normal(2, 3, 4, 8), query_mask=np.ones((2, 3), bool)
        ),
        ValueError,
        r"Keras masks.*attention_mask",
    ),
    (
        lambda: ka.MultiHeadAttention(2, 4)(
            random_normal(2, 3, 4, 8), random_normal(2, 3, 4, 8), attention_mask=np.ones((3,), bool)
        ),
        ValueError,
        r"`attention_mask` must have between 4 and 6 axes",
    ),
    (
        lambda: ka.MultiHeadAttention(2, 4)(
            random_normal(2, 3, 4, 8),
            random_normal(2, 3, 4, 8),
            attention_mask=np.ones((2, 3, 4, 3, 5), bool),
        ),
        ValueError,
        r"`attention_mask` of shape \(2, 1, 3, 4, 3, 5\)",
    ),
    (
        lambda: ka.MultiHeadAttention(2, 4)(
            random_normal(2, 3, 8),
            random_normal(2, 5, 8),
            attention_mask=np.full((3, 5), 0.5, "float32"),
        ),
        ValueError,
        r"`attention_mask`.*holding 0.5",
    ),
    (
        lambda: ka.GroupedQueryAttention(4, 6, 4),
        ValueError,
        r"`num_query_heads` must be divisible by `num_key_value_heads`.*num_query_heads=6",
    ),
    (
        lambda: ka.GroupedQueryAttention(0, 4, 2),
        ValueError,
        r"`head_dim` must be a positive integer. Received: head_dim=0",
    ),
    (
        lambda: ka.GroupedQueryAttention(4, 4, 2, num_heads=4),
        TypeError,
        r"not `num_heads`.*num_heads=4",
    ),
    (
        lambda: ka.LuongAttention(score_mode="concat"),
        ValueError,
        r"`score_mode`.*AdditiveAttention.*score_mode='concat'",
    ),
    (
        lambda: ka.LuongAttention(score="general", score_mode="dot"),
        ValueError,
        r"`score` or `score_mode`",
    ),
    (lambda: ka.LuongAttention(use_scale="yes"), TypeError, r"`use_scale`.*'yes'"),
    (
        lambda: ka.AdditiveAttention(units=4, use_scale=True),
        ValueError,
        r"`use_scale` is only used without `units`",
    ),
    (
        lambda: ka.AdditiveAttention()([random_normal(2, 3, 4), random_normal(2, 5, 6)]),
        ValueError,
        r"Without `units`.*query.shape=\(2, 3, 4\)",
    ),
    (
        lambda: ka.LuongAttention()([random_normal(2, 3, 4)]),
        ValueError,
        r"accepts inputs list of length 2 or 3.*`input_shape` must be a list \[query, value\]"
        r".*length 1",
    ),
    (
        lambda: ka.LuongAttention()([random_normal(2, 3, 4)] * 2, mask=np.ones((2, 3), bool)),
        ValueError,
        r"`mask` must be a list \[query_mask, value_mask\]",
    ),
]


@pytest.mark.parametrize(
    "make, error, pattern", BAD_CASES, ids=[str(i) for i in range(len(BAD_CASES))]
)
def test_bad_keras_arguments_raise_clear_errors(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()


def test_features_other_than_built_are_refused():
    layer = ka.MultiHeadAttention(2, 4)
    layer(random_normal(2, 3, 8), random_normal(2, 5, 6))
    with pytest.raises(ValueError, match=r"`value` must be 6, as when the layer was built"):
        layer(random_normal(2, 3, 8), random_normal(2, 5, 8))


def test_symbolic_shape_errors_match_eager():
    """A key of length 1 with a value of length 2 fails when the model is built,
    as in the eager call."""
    layer = ka.MultiHeadAttention(2, 4)
    with pytest.raises(ValueError, match=r"`key` and `value` must have the same length"):
        layer(keras.Input((3, 8)), keras.Input((2, 8)), keras.Input((1, 8)))
    with pytest.raises(ValueError, match=r"`key` and `value` must have the same length"):
        layer.compute_output_shape((None, 3, 8), (None, 2, 8), (None, 1, 8))
    with pytest.raises(ValueError, match=r"`key` and `value` must have the same length"):
        ka.MultiHeadAttention(2, 4)(
            random_normal(2, 3, 8), random_normal(2, 2, 8), random_normal(2, 1, 8)
        )


# ----------------------------------------------------- one tensor, Keras' keywords


CLASSIC = {
    "luong": (ka.LuongAttention, keras.layers.Attention),
    "additive": (ka.AdditiveAttention, keras.layers.AdditiveAttention),
    "scaled_dot_product": (ka.ScaledDotProductAttention, keras.layers.Attention),
}


@pytest.mark.parametrize("case", list(CLASSIC))
@pytest.mark.parametrize("shape", [(2, 4), (1, 2, 2), (2, 3, 4, 4)])
@pytest.mark.parametrize("built", [False, True])
def test_one_tensor_raises_value_error_as_keras(case, shape, built):
    """One tensor where a list [query, value] is expected: a `ValueError` in Keras'
    words and ours, at every rank, before and after the layer is built."""
    ours_cls, keras_cls = CLASSIC[case]
    tensor = random_normal(*shape)
    ours = ours_cls()
    if built:
        ours([random_normal(2, 3, 4), random_normal(2, 5, 4)])
    with pytest.raises(ValueError, match=r"must be called on a list.*Received: one input of shape"):
        ours(tensor)
    with pytest.raises(ValueError, match="must be called on a list"):
        keras_cls()(tensor)


@pytest.mark.parametrize("case", list(CLASSIC))
def test_keras_keyword_names_of_build_compute_output_shape_compute_mask(case):
    """`build(input_shape=...)`, `compute_output_shape(input_shape=...)` and
    `compute_mask(inputs=..., mask=...)` as Keras' layers take them; positional calls
    keep working."""
    ours_cls, keras_cls = CLASSIC[case]
    shapes = [(2, 3, 4), (2, 5, 4)]
    ours, reference = ours_cls(), keras_cls()
    ours.build(input_shape=shapes)
    reference.build(input_shape=shapes)
    assert ours.built
    assert ours.compute_output_shape(input_shape=shapes) == reference.compute_output_shape(
        input_shape=shapes
    )
    assert ours_cls().compute_output_shape(shapes) == (2, 3, 4)
    inputs = [random_normal(2, 3, 4), random_normal(2, 5, 4)]
    query_mask = np.array([[True, False, True], [True, True, False]])
    for mask in (None, [None, np.ones((2, 5), bool)], [query_mask, None]):
        expected = reference.compute_mask(inputs=inputs, mask=mask)
        actual = ours.compute_mask(inputs=inputs, mask=mask)
        assert (actual is None) == (expected is None)
        if expected is not None:
            np.testing.assert_array_equal(to_numpy(actual), to_numpy(expected))
    np.testing.assert_array_equal(
        to_numpy(ours.compute_mask(inputs, [query_mask, None])), query_mask
    )


def test_list_form_call_arguments_by_position():
    """Keras' `layer(inputs, mask)`: the mask by position."""
    inputs = [random_normal(B, 4, 6, seed=1), random_normal(B, 5, 6, seed=2)]
    value_mask = np.array([[True, True, False, True, False], [True] * 5])
    layer = ka.LuongAttention(use_scale=True)
    keras_layer = keras.layers.Attention(use_scale=True)
    keras_layer(inputs)
    layer(inputs)
    transplant(keras_layer, layer)
    _close(layer(inputs, [None, value_mask]), keras_layer(inputs, [None, value_mask]))


# --------------------------------------------------------- the _compute_attention hook


def _sigmoid_attention(query, key, value, attention_mask):
    """A custom attention in Keras' layout: sigmoid weights, no softmax."""
    scores = keras.ops.einsum("btnh,bsnh->bnts", query, key)
    weights = keras.ops.sigmoid(scores)
    if attention_mask is not None:
        mask = keras.ops.cast(attention_mask, weights.dtype)
        weights = weights * (mask if len(mask.shape) == 4 else keras.ops.expand_dims(mask, 1))
    return keras.ops.einsum("bnts,bsnh->btnh", weights, value), weights


class KerasSigmoidAttention(keras.layers.MultiHeadAttention):
    def _compute_attention(
        self, query, key, value, attention_mask=None, training=None, return_attention_scores=False
    ):
        return _sigmoid_attention(query, key, value, attention_mask)


class SigmoidAttention(ka.MultiHeadAttention):
    def _compute_attention(
        self, query, key, value, attention_mask=None, training=None, return_attention_scores=False
    ):
        return _sigmoid_attention(query, key, value, attention_mask)


class ZeroAttention(ka.MultiHeadAttention):
    """Records what the hook receives and returns zeros."""

    def _compute_attention(self, query, key, value, attention_mask=None, training=None):
        self.received = (query.shape, key.shape, value.shape, attention_mask)
        output_shape = tuple(keras.ops.shape(query)[:-1]) + (value.shape[-1],)
        return keras.ops.zeros(output_shape, query.dtype), None


def test_compute_attention_override_matches_keras_override():
    """The same override, written for Keras' layer, gives the same numbers here."""
    query, value = random_normal(B, 5, 8, seed=1), random_normal(B, 6, 8, seed=2)
    mask = _mask((B, 5, 6), seed=3)
    keras_layer, ours = _pair(
        KerasSigmoidAttention, SigmoidAttention, {"num_heads": 2, "key_dim": 4}, (query, value)
    )
    for kwargs in ({}, {"attention_mask": mask}, {"use_causal_mask": True}):
        expected, expected_scores = keras_layer(
            query, value, return_attention_scores=True, **kwargs
        )
        output, scores = ours(query, value, return_attention_scores=True, **kwargs)
        _close(output, expected)
        _close(scores, expected_scores)


@pytest.mark.parametrize("num_key_value_heads", [None, 1])
def test_compute_attention_override_takes_effect_without_and_with_cache(num_key_value_heads):
    """An override runs on the no-cache path and on the cache path (keys and values
    of every cache slot), with key/value heads repeated for their query heads."""
    x = random_normal(B, 4, 8, seed=1)
    layer = ZeroAttention(num_heads=2, key_dim=4, num_key_value_heads=num_key_value_heads)
    layer(x, x)
    _randomize(layer, 0)
    bias = to_numpy(layer.output_dense.bias)
    output = to_numpy(layer(x, x, use_causal_mask=True))
    np.testing.assert_allclose(output, np.broadcast_to(bias, output.shape), atol=1e-6)
    query_shape, key_shape, value_shape, mask = layer.received
    assert (tuple(query_shape), tuple(key_shape), tuple(value_shape)) == (
        (B, 4, 2, 4),
        (B, 4, 2, 4),
        (B, 4, 2, 4),
    )
    np.testing.assert_array_equal(to_numpy(mask)[0], np.tril(np.ones((4, 4), bool)))
    cache = layer.get_initial_cache(B, 6)
    step, cache = layer(x[:, :2], x[:, :2], cache=cache, cache_index=0)
    np.testing.assert_allclose(to_numpy(step), np.broadcast_to(bias, step.shape), atol=1e-6)
    query_shape, key_shape, _, mask = layer.received
    assert tuple(query_shape) == (B, 2, 2, 4) and tuple(key_shape) == (B, 6, 2, 4)
    assert to_numpy(mask).shape[-2:] == (2, 6)
    np.testing.assert_array_equal(to_numpy(mask)[0, 1], [True, True, False, False, False, False])
    # A subclass calling super() gives the layer's own attention.
    plain = ka.MultiHeadAttention(num_heads=2, key_dim=4, num_key_value_heads=num_key_value_heads)
    plain(x, x)
    plain.set_weights(layer.get_weights())

    class Passthrough(ka.MultiHeadAttention):
        def _compute_attention(self, *args, **kwargs):
            return super()._compute_attention(*args, **kwargs)

    wrapped = Passthrough(num_heads=2, key_dim=4, num_key_value_heads=num_key_value_heads)
    wrapped(x, x)
    wrapped.set_weights(layer.get_weights())
    _close(wrapped(x, x, use_causal_mask=True), plain(x, x, use_causal_mask=True))
    cache = wrapped.get_initial_cache(B, 4)
    expected = to_numpy(plain(x, x, use_causal_mask=True))
    for index in range(4):
        step, cache = wrapped(
            x[:, index : index + 1], x[:, index : index + 1], cache=cache, cache_index=index
        )
        np.testing.assert_allclose(to_numpy(step)[:, 0], expected[:, index], atol=ATOL, rtol=0)


def test_compute_attention_override_sees_the_flattened_attention_axes():
    """Documented difference: with `attention_axes`, the hook gets the rank-3 form
    (the attention axes flattened into one), Keras' hook the inputs' rank."""
    x = random_normal(B, 3, 4, 8, seed=1)
    layer = ZeroAttention(num_heads=2, key_dim=4, attention_axes=(1, 2))
    layer(x, x)
    assert tuple(layer.received[0]) == (B, 12, 2, 4)


# --------------------------------------------- shapes, fused, dropout, N-D, scale


def test_grouped_query_attention_refuses_different_query_and_value_features():
    kwargs = {"num_query_heads": 4, "num_key_value_heads": 4, "head_dim": 2}
    for layer in (keras.layers.GroupQueryAttention(**kwargs), ka.GroupQueryAttention(**kwargs)):
        with pytest.raises(ValueError, match=r"must be equal"):
            layer.compute_output_shape((2, 4, 8), (2, 2, 7), 2)
    with pytest.raises(ValueError, match=r"must be equal.*query.shape=\(2, 4, 8\)"):
        ka.GroupQueryAttention(**kwargs)(random_normal(2, 4, 8), random_normal(2, 2, 7))
    # Documented difference: Keras' layer refuses them only symbolically.
    keras.layers.GroupQueryAttention(**kwargs)(random_normal(2, 4, 8), random_normal(2, 2, 7))
    with pytest.raises(ValueError, match=r"must be equal"):
        ka.GroupQueryAttention(**kwargs)(keras.Input((4, 8)), keras.Input((2, 7)))


def test_fused_refuses_dropout_and_scores_as_keras_flash_attention():
    with pytest.raises(ValueError, match="Dropout is not supported when flash attention"):
        keras.layers.MultiHeadAttention(num_heads=2, key_dim=2, flash_attention=True, dropout=0.1)
    for kwargs in ({"flash_attention": True}, {"implementation": "fused"}):
        with pytest.raises(ValueError, match=r"Dropout is not supported.*dropout=0.1"):
            ka.MultiHeadAttention(num_heads=2, key_dim=2, dropout=0.1, **kwargs)
        layer = ka.MultiHeadAttention(num_heads=2, key_dim=2, **kwargs)
        assert layer.implementation == "fused"
        with pytest.raises(ValueError, match="Returning attention scores is not supported when"):
            layer(random_normal(2, 4, 8), random_normal(2, 4, 8), return_attention_scores=True)
    layer = ka.MultiHeadAttention(num_heads=2, key_dim=2, dropout=0.1)
    layer(random_normal(2, 4, 8), random_normal(2, 4, 8))
    layer.implementation = "fused"  # set after construction: refused when it matters
    with pytest.raises(ValueError, match=r"Dropout is not supported.*training=True"):
        layer(random_normal(2, 4, 8), random_normal(2, 4, 8), training=True)
    assert ka.MultiHeadAttention(2, 2, flash_attention=False).implementation == "plain"
    with pytest.raises(ValueError, match=r"flash_attention=True.*implementation='chunked'"):
        ka.MultiHeadAttention(2, 2, flash_attention=True, implementation="chunked")
    config = ka.MultiHeadAttention(2, 2, flash_attention=True).get_config()
    assert ka.MultiHeadAttention.from_config(config).implementation == "fused"


def test_flash_attention_matches_keras():
    query, value = random_normal(B, 5, 8, seed=1), random_normal(B, 5, 8, seed=2)
    keras_layer, ours = _pair(
        keras.layers.MultiHeadAttention,
        ka.MultiHeadAttention,
        {"num_heads": 2, "key_dim": 4},
        (query, value),
        ours_kwargs={"num_heads": 2, "key_dim": 4, "flash_attention": True},
    )
    _close(
        ours(query, value, use_causal_mask=True), keras_layer(query, value, use_causal_mask=True)
    )


@pytest.mark.parametrize("case", ["attention", "additive"])
def test_attention_weights_with_dropout_are_the_documented_difference(case):
    """Documented difference: with dropout in training, Keras' `Attention` and
    `AdditiveAttention` return the weights after dropout (some zero, the others
    scaled up); ours the weights before dropout (each row sums to 1), as Keras'
    `MultiHeadAttention` and every layer here."""
    ours_cls, keras_cls = CLASSIC["luong" if case == "attention" else case]
    inputs = [random_normal(B, 4, 6, seed=1), random_normal(B, 16, 6, seed=2)]
    _, weights = ours_cls(dropout=0.5, seed=1)(inputs, training=True, return_attention_scores=True)
    _, keras_weights = keras_cls(dropout=0.5, seed=1)(
        inputs, training=True, return_attention_scores=True
    )
    np.testing.assert_allclose(to_numpy(weights).sum(-1), 1.0, atol=1e-5)
    assert np.any(to_numpy(keras_weights) == 0.0)
    assert not np.allclose(to_numpy(keras_weights).sum(-1), 1.0, atol=1e-3)


@pytest.mark.parametrize("case", list(LIST_CASES))
def test_n_dimensional_inputs_match_keras(case):
    """Keras' `Attention`/`AdditiveAttention` take `(batch, ..., len, features)`:
    the leading axes are batch axes."""
    keras_cls, ours_cls, kwargs = LIST_CASES[case]
    inputs = [
        random_normal(B, 3, 4, 6, seed=1),
        random_normal(B, 3, 5, 6, seed=2),
        random_normal(B, 3, 5, 6, seed=3),
    ]
    keras_layer, ours = _pair(keras_cls, ours_cls, kwargs, (inputs,))
    for call in ({}, {"use_causal_mask": True}):
        expected, expected_scores = keras_layer(inputs, return_attention_scores=True, **call)
        output, scores = ours(inputs, return_attention_scores=True, **call)
        assert tuple(output.shape) == (B, 3, 4, 6) and tuple(scores.shape) == (B, 3, 4, 5)
        _close(output, expected)
        _close(scores, expected_scores)
    # Keras' masks (batch, ..., len), which Keras' own layers refuse at rank > 3, equal
    # the rank-3 call on the flattened batch axes.
    query_mask = np.random.default_rng(0).random((B, 3, 4)) < 0.7
    value_mask = np.random.default_rng(1).random((B, 3, 5)) < 0.7
    value_mask[..., 0] = True
    # Documented difference: Keras' layers fail (each backend with its own error).
    with pytest.raises(Exception):  # noqa: B017
        keras_layer(inputs, mask=[query_mask, value_mask])
    output = ours(inputs, mask=[query_mask, value_mask])
    flat = ours(
        [x.reshape(-1, *x.shape[2:]) for x in inputs],
        mask=[query_mask.reshape(-1, 4), value_mask.reshape(-1, 5)],
    )
    _close(output, to_numpy(flat).reshape(B, 3, 4, 6))
    symbolic = ours.compute_output_spec(
        [keras.KerasTensor(x.shape) for x in inputs], return_attention_scores=True
    )
    assert [tuple(t.shape) for t in symbolic] == [(B, 3, 4, 6), (B, 3, 4, 5)]


def test_luong_scale_is_keras_learned_weight():
    shapes = [(2, 3, 4), (2, 5, 4)]
    ours, reference = ka.LuongAttention(use_scale=True), keras.layers.Attention(use_scale=True)
    ours.build(shapes)
    reference.build(shapes)
    assert isinstance(ours.scale, keras.Variable)
    assert ours.scale.name == reference.scale.name == "scale"
    assert tuple(ours.scale.shape) == tuple(reference.scale.shape) == ()
    assert ours.score_scale is ours.scale  # the former name
    unscaled = ka.LuongAttention(scale=True)
    unscaled.build(shapes)
    assert unscaled.scale is None and unscaled.scale_by_sqrt_dim is True
    assert unscaled.get_config()["scale"] is True


# ------------------------------------------------------------ Keras' error phrases

KERAS_ERROR_CASES = {
    "num_heads": (lambda m: m.MultiHeadAttention(num_heads=0, key_dim=4), "argument `num_heads`"),
    "num_heads_float": (
        lambda m: m.MultiHeadAttention(num_heads=1.5, key_dim=4),
        "argument `num_heads`",
    ),
    "key_dim": (lambda m: m.MultiHeadAttention(num_heads=4, key_dim=-2), "argument `key_dim`"),
    "value_dim": (
        lambda m: m.MultiHeadAttention(num_heads=4, key_dim=4, value_dim=0),
        "argument `value_dim`",
    ),
    "output_shape": (
        lambda m: m.MultiHeadAttention(num_heads=2, key_dim=16, output_shape=8.0),
        r"Invalid `output_shape`",
    ),
    "sliding_window": (
        lambda m: m.MultiHeadAttention(num_heads=2, key_dim=4, sliding_window=0),
        "sliding_window",
    ),
    "query_value_dim_mismatch": (
        lambda m: m.MultiHeadAttention(4, 2, 2).compute_output_shape((2, 4, 8), (2, 2, 7), (2,)),
        "must be equal",
    ),
    "key_value_dim_mismatch": (
        lambda m: m.MultiHeadAttention(4, 2, 2).compute_output_shape(
            (2, 4, 8), (2, 2, 8), (2, 1, 7)
        ),
        "must be equal",
    ),
    "key_value_dim_mismatch_high_dim_call": (
        lambda m: m.MultiHeadAttention(4, 2, 2)(
            np.ones((2, 4, 2, 3, 8)), np.ones((2, 1, 1, 5, 8)), np.ones((2, 1, 15, 5, 2))
        ),
        "must be equal",
    ),
    "list_of_one": (lambda m: _attention(m)()(random_normal(2, 3, 4)), "must be called on a list"),
    "list_of_four": (lambda m: _attention(m)()([random_normal(2, 3, 4)] * 4), "length 2 or 3"),
    "mask_not_list": (
        lambda m: _attention(m)()([random_normal(2, 3, 4)] * 2, mask=random_normal(2, 3) > 0),
        "layer mask must be a list",
    ),
    "mask_of_one": (
        lambda m: _attention(m)()([random_normal(2, 3, 4)] * 2, mask=[random_normal(2, 3) > 0]),
        "length 2 or 3",
    ),
}


def _attention(module):
    return keras.layers.Attention if module is keras.layers else module.LuongAttention


@pytest.mark.parametrize("case", list(KERAS_ERROR_CASES))
def test_errors_carry_keras_phrases(case):
    """Keras' tests match these phrases; ours carry them before our own message,
    which names the argument and what was received."""
    make, phrase = KERAS_ERROR_CASES[case]
    with pytest.raises(ValueError, match=phrase):
        make(keras.layers)
    with pytest.raises(ValueError, match=phrase) as error:
        make(ka)
    assert "Received" in str(error.value)


def test_positional_constructor_arguments_are_the_documented_difference():
    """Documented difference: past the arguments both share, constructor arguments
    are positioned differently; a Keras positional call raises here, never silently
    means something else."""
    with pytest.raises(ValueError, match="num_key_value_heads"):
        ka.MultiHeadAttention(2, 4, None, 0.1)  # Keras: dropout=0.1
    with pytest.raises(ValueError, match="score"):
        ka.LuongAttention(True)  # Keras: use_scale=True
    with pytest.raises(ValueError, match="units"):
        ka.AdditiveAttention(True)  # Keras: use_scale=True


# ------------------------------------------------------ keras-hub's Transformer blocks


def transplant_block(hub_block, ours):
    """Copy the weights of a built keras-hub `TransformerEncoder`/`TransformerDecoder`
    into ours: its `_self_attention_layer` (a Keras `MultiHeadAttention`) is our
    `self_attention`, `_feedforward_intermediate_dense`/`_feedforward_output_dense`
    our `feedforward.intermediate_dense`/`output_dense`, and the LayerNorms keep
    their names."""
    for name in ("self_attention", "cross_attention"):
        source = getattr(hub_block, f"_{name}_layer", None)
        if source is None:
            assert getattr(ours, name, None) is None
            continue
        transplant(source, getattr(ours, name))
        getattr(ours, f"{name}_layer_norm").set_weights(
            getattr(hub_block, f"_{name}_layer_norm").get_weights()
        )
    ours.feedforward.intermediate_dense.set_weights(
        hub_block._feedforward_intermediate_dense.get_weights()
    )
    ours.feedforward.output_dense.set_weights(hub_block._feedforward_output_dense.get_weights())
    ours.feedforward_layer_norm.set_weights(hub_block._feedforward_layer_norm.get_weights())


def _block_pair(name, build_args, seed=0, **kwargs):
    hub_block = getattr(keras_hub.layers, name)(16, 2, **kwargs)
    ours = getattr(ka, name)(16, 2, **kwargs)
    hub_block(*build_args)
    ours(*build_args)
    _randomize(hub_block, seed)
    transplant_block(hub_block, ours)
    return hub_block, ours


@needs_keras_hub
@pytest.mark.parametrize("name", ["TransformerEncoder", "TransformerDecoder"])
def test_blocks_take_keras_hub_argument_order_and_defaults(name):
    """`TransformerEncoder(64, 4)` is `intermediate_dim=64, num_heads=4` in both, with
    keras-hub's defaults (dropout 0); all eight keras-hub arguments by position."""
    hub_cls, ours_cls = getattr(keras_hub.layers, name), getattr(ka, name)
    names = list(inspect.signature(hub_cls.__init__).parameters)[1:-1]
    block = ours_cls(64, 4)
    assert (block.intermediate_dim, block.num_heads, block.dropout) == (64, 4, 0)
    positional = (64, 4, 0.2, "gelu", 1e-6, "he_normal", "ones", True)
    hub_config = hub_cls(*positional).get_config()
    config = ours_cls(*positional).get_config()
    for argument in names:
        assert config[argument] == hub_config[argument], argument
    hub_config, config = hub_cls(64, 4).get_config(), block.get_config()
    for argument in names:
        assert config[argument] == hub_config[argument], argument


@needs_keras_hub
def test_old_block_configs_load_unchanged():
    """Configs name their arguments, so a block saved before the order changed (its
    dropout 0.1 then the default) loads with the same values."""
    old = {
        "name": "encoder",
        "num_heads": 4,
        "intermediate_dim": 32,
        "key_dim": None,
        "dropout": 0.1,
        "activation": "relu",
        "layer_norm_epsilon": 1e-05,
        "normalize_first": False,
        "seed": None,
    }
    for cls in (ka.TransformerEncoder, ka.TransformerDecoder):
        block = keras.saving.deserialize_keras_object(
            {"module": None, "class_name": f"keras_attention>{cls.__name__}", "config": old}
        )
        assert isinstance(block, cls)
        assert (block.num_heads, block.intermediate_dim, block.dropout) == (4, 32, 0.1)


@needs_keras_hub
@pytest.mark.parametrize("normalize_first", [False, True])
def test_encoder_matches_keras_hub(normalize_first):
    x = random_normal(B, 5, 8, seed=1)
    hub_block, ours = _block_pair("TransformerEncoder", (x,), normalize_first=normalize_first)
    padding = np.array([[True] * 5, [True, True, True, False, False]])
    band = np.tril(np.ones((5, 5), bool), 1)[None].repeat(B, 0)
    for kwargs in ({}, {"attention_mask": band}):
        expected, expected_scores = hub_block(x, return_attention_scores=True, **kwargs)
        output, scores = ours(x, return_attention_scores=True, **kwargs)
        _close(output, expected)
        _close(scores, expected_scores)
    # Documented difference: padded positions attend nothing here (keras-hub: the
    # real keys); the real positions agree.
    expected = to_numpy(hub_block(x, padding_mask=padding))
    output = to_numpy(ours(x, padding_mask=padding))
    np.testing.assert_allclose(output[padding], expected[padding], atol=ATOL, rtol=0)
    assert not np.allclose(output[~padding], expected[~padding], atol=1e-3)


@needs_keras_hub
@pytest.mark.parametrize("normalize_first", [False, True])
@pytest.mark.parametrize("cross", [False, True])
def test_decoder_matches_keras_hub(normalize_first, cross):
    x, source = random_normal(B, 5, 8, seed=1), random_normal(B, 6, 8, seed=2)
    args = (x, source) if cross else (x,)
    hub_block, ours = _block_pair("TransformerDecoder", args, normalize_first=normalize_first)
    masks = {"decoder_attention_mask": np.tril(np.ones((5, 5), bool), 1)[None].repeat(B, 0)}
    if cross:
        masks["encoder_padding_mask"] = np.array([[True] * 6, [True] * 4 + [False] * 2])
        masks["encoder_attention_mask"] = _mask((B, 5, 6), seed=3)
    for kwargs in ({}, masks, {"use_causal_mask": False}):
        _close(ours(*args, **kwargs), hub_block(*args, **kwargs))


def _stacked_cache(length, heads=2, head_dim=4):
    return np.zeros((B, 2, length, heads, head_dim), "float32")


@needs_keras_hub
def test_decoder_cache_protocol_of_keras_hub_gpt():
    """A keras-hub GPT-style loop (its cache layout and argument names) after the
    import changes: the same outputs and the same caches as keras-hub's block."""
    x = random_normal(B, 6, 8, seed=1)
    hub_block, ours = _block_pair("TransformerDecoder", (x,))
    caches = {}
    for name, block in (("hub", hub_block), ("ours", ours)):
        cache = _stacked_cache(6)
        prefill, cache = block(
            x[:, :3], self_attention_cache=cache, self_attention_cache_update_index=0
        )
        steps = [prefill]
        for index in range(3, 6):
            step, cache = block(
                x[:, index : index + 1],
                self_attention_cache=cache,
                self_attention_cache_update_index=index,
            )
            steps.append(step)
        caches[name] = (np.concatenate([to_numpy(s) for s in steps], axis=1), to_numpy(cache))
    _close(caches["ours"][0], caches["hub"][0])
    _close(caches["ours"][1], caches["hub"][1])
    _close(caches["ours"][0], hub_block(x))
    assert caches["ours"][1].shape == (B, 2, 6, 2, 4)


@needs_keras_hub
def test_decoder_cross_attention_cache_protocol_of_keras_hub_bart():
    """keras-hub's seq2seq protocol: both caches, the cross-attention cache filled at
    index 0 on the first call and reused (index None) afterwards, and returned."""
    x, source = random_normal(B, 4, 8, seed=1), random_normal(B, 6, 8, seed=2)
    hub_block, ours = _block_pair("TransformerDecoder", (x, source))
    results = {}
    for name, block in (("hub", hub_block), ("ours", ours)):
        self_cache, cross_cache = _stacked_cache(4), _stacked_cache(6)
        outputs = []
        for index in range(4):
            step, self_cache, cross_cache = block(
                x[:, index : index + 1],
                source,
                self_attention_cache=self_cache,
                self_attention_cache_update_index=index,
                cross_attention_cache=cross_cache,
                cross_attention_cache_update_index=0 if index == 0 else None,
            )
            outputs.append(to_numpy(step))
        results[name] = (np.concatenate(outputs, 1), to_numpy(self_cache), to_numpy(cross_cache))
    for ours_result, hub_result in zip(results["ours"], results["hub"]):
        _close(ours_result, hub_result)
    _close(results["ours"][0], hub_block(x, source))
    # keras-hub's rule: with cross-attention, both caches or neither.
    with pytest.raises(ValueError, match="must both be given, or neither"):
        ours(x[:, :1], source, self_attention_cache=_stacked_cache(4), cache_index=0)
    symbolic = ours.compute_output_spec(
        keras.KerasTensor((B, 1, 8)),
        keras.KerasTensor((B, 6, 8)),
        self_attention_cache=keras.KerasTensor((B, 2, 4, 2, 4)),
        cross_attention_cache=keras.KerasTensor((B, 2, 6, 2, 4)),
    )
    assert [tuple(t.shape) for t in symbolic] == [(B, 1, 8), (B, 2, 4, 2, 4), (B, 2, 6, 2, 4)]


@needs_keras_hub
def test_decoder_protocol_differences_are_documented():
    """Documented differences of the decoder's keras-hub protocol: a cache is causal
    (`use_causal_mask=False` with a cache is refused, keras-hub drops the causal
    mask); `self_attention_cache_update_index=None` with a cache (keras-hub: use the
    cache as it is) is refused; both index names at once are refused."""
    x = random_normal(B, 4, 8, seed=1)
    decoder = ka.TransformerDecoder(16, 2)
    decoder(x)
    with pytest.raises(ValueError, match="use_causal_mask=False"):
        decoder(x, self_attention_cache=_stacked_cache(4), cache_index=0, use_causal_mask=False)
    with pytest.raises(ValueError, match="self_attention_cache_update_index.*is required"):
        decoder(x, self_attention_cache=_stacked_cache(4))
    with pytest.raises(ValueError, match="not both"):
        decoder(
            x,
            self_attention_cache=_stacked_cache(4),
            cache_index=0,
            self_attention_cache_update_index=0,
        )
    with pytest.raises(ValueError, match=r"keras-hub's layout.*\(None, 2, None, 2, 4\)"):
        decoder(x, self_attention_cache=np.zeros((B, 2, 4, 4, 2), "float32"), cache_index=0)
    # A padding mask with a cache covers the cache positions, not the new tokens.
    with pytest.raises(ValueError, match=r"decoder_padding_mask.*\(batch, max_length\)"):
        decoder(
            x[:, :1],
            self_attention_cache=_stacked_cache(4),
            cache_index=0,
            decoder_padding_mask=np.ones((B, 1), bool),
        )
    # keras-hub's head size is hidden_dim // num_heads; here the features must divide.
    with pytest.raises(ValueError, match=r"features \(7\).*divisible"):
        ka.TransformerEncoder(16, 2)(random_normal(B, 3, 7))
    keras_hub.layers.TransformerEncoder(16, 2)(random_normal(B, 3, 7))

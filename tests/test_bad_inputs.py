"""Every bad input to the public API gets a ValueError/TypeError that names the
argument and shows what was received (issue 9)."""

import re

import keras
import numpy as np
import pytest

import keras_attention as ka
from keras_attention import masks
from keras_attention import ops as aops

B, T, S, D = 2, 4, 5, 8


def _x(*shape, dtype="float32"):
    return np.ones(shape, dtype)


def _mha_call(**kwargs):
    layer = ka.MultiHeadAttention(num_heads=2, key_dim=4)
    query = kwargs.pop("query", _x(B, T, D))
    value = kwargs.pop("value", _x(B, S, D))
    return layer(query, value, **kwargs)


def _mha_cached(cache_index, max_length=4, new=1):
    layer = ka.MultiHeadAttention(num_heads=2, key_dim=4)
    layer.build((B, new, D), (B, new, D))
    cache = layer.get_initial_cache(batch_size=B, max_length=max_length)
    x = _x(B, new, D)
    return layer(x, x, cache=cache, cache_index=cache_index)


def _sdpa(**kwargs):
    q = kwargs.pop("query", _x(B, T, D))
    k = kwargs.pop("key", _x(B, S, D))
    v = kwargs.pop("value", _x(B, S, D))
    return aops.scaled_dot_product_attention(q, k, v, **kwargs)


def _not_a_keras_file(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"this is not a zip archive")
    return keras.saving.load_model(str(path))


def _export_onto_file(tmp_path):
    inputs = keras.Input((T, D))
    model = keras.Model(inputs, ka.SelfAttention(units=D)(inputs))
    path = tmp_path / "existing_file"
    path.write_text("x")
    return ka.export.export_saved_model(model, str(path))


# (id, function of tmp_path, exception type(s), regex the message must match)
CASES = [
    # --- constructor arguments -------------------------------------------------
    (
        "mha_num_heads_zero",
        lambda p: ka.MultiHeadAttention(num_heads=0, key_dim=4),
        ValueError,
        r"`num_heads`.*Received: num_heads=0",
    ),
    (
        "mha_num_heads_float",
        lambda p: ka.MultiHeadAttention(num_heads=2.0, key_dim=4),
        ValueError,
        r"`num_heads`.*Received: num_heads=2\.0",
    ),
    (
        "mha_num_heads_bool",
        lambda p: ka.MultiHeadAttention(num_heads=True, key_dim=4),
        ValueError,
        r"`num_heads`.*Received: num_heads=True",
    ),
    (
        "mha_key_dim_negative",
        lambda p: ka.MultiHeadAttention(num_heads=2, key_dim=-3),
        ValueError,
        r"`key_dim`.*Received: key_dim=-3",
    ),
    (
        "mha_key_dim_str",
        lambda p: ka.MultiHeadAttention(num_heads=2, key_dim="4"),
        ValueError,
        r"`key_dim`.*Received: key_dim='4'",
    ),
    (
        "mha_value_dim_zero",
        lambda p: ka.MultiHeadAttention(num_heads=2, key_dim=4, value_dim=0),
        ValueError,
        r"`value_dim`.*Received: value_dim=0",
    ),
    (
        "mha_output_dim_float",
        lambda p: ka.MultiHeadAttention(num_heads=2, key_dim=4, output_dim=1.5),
        ValueError,
        r"`output_dim`.*Received: output_dim=1\.5",
    ),
    (
        "mha_gqa_not_divisible",
        lambda p: ka.MultiHeadAttention(num_heads=4, key_dim=4, num_key_value_heads=3),
        ValueError,
        r"`num_heads`.*`num_key_value_heads`.*num_heads=4.*num_key_value_heads=3",
    ),
    (
        "mha_dropout_one",
        lambda p: ka.MultiHeadAttention(2, 4, dropout=1.0),
        ValueError,
        r"`dropout`.*\[0, 1\).*Received: dropout=1\.0",
    ),
    (
        "mha_dropout_negative",
        lambda p: ka.MultiHeadAttention(2, 4, dropout=-0.1),
        ValueError,
        r"`dropout`.*Received: dropout=-0\.1",
    ),
    (
        "mha_use_bias_str",
        lambda p: ka.MultiHeadAttention(2, 4, use_bias="yes"),
        TypeError,
        r"`use_bias`.*Received: use_bias='yes'",
    ),
    (
        "mha_seed_float",
        lambda p: ka.MultiHeadAttention(2, 4, seed=1.5),
        ValueError,
        r"`seed`.*Received: seed=1\.5",
    ),
    (
        "mha_unknown_implementation",
        lambda p: ka.MultiHeadAttention(2, 4, implementation="flash9"),
        ValueError,
        r"`implementation`.*flash9",
    ),
    (
        "self_attention_units_zero",
        lambda p: ka.SelfAttention(units=0),
        ValueError,
        r"`units`.*Received: units=0",
    ),
    (
        "self_attention_units_float",
        lambda p: ka.SelfAttention(units=8.0),
        ValueError,
        r"`units`.*Received: units=8\.0",
    ),
    (
        "self_attention_dropout_big",
        lambda p: ka.SelfAttention(units=8, dropout=1.5),
        ValueError,
        r"`dropout`.*Received: dropout=1\.5",
    ),
    (
        "sdpa_layer_dropout_str",
        lambda p: ka.ScaledDotProductAttention(dropout="0.1"),
        ValueError,
        r"`dropout`.*Received: dropout='0\.1'",
    ),
    (
        "sdpa_layer_scale_zero",
        lambda p: ka.ScaledDotProductAttention(scale=0.0),
        ValueError,
        r"`scale`.*Received: scale=0\.0",
    ),
    (
        "additive_units_negative",
        lambda p: ka.AdditiveAttention(units=-1),
        ValueError,
        r"`units`.*Received: units=-1",
    ),
    (
        "luong_unknown_score",
        lambda p: ka.LuongAttention(score="cosine"),
        ValueError,
        r"`score`.*cosine",
    ),
    (
        "luong_units_zero",
        lambda p: ka.LuongAttention(score="concat", units=0),
        ValueError,
        r"`units`.*Received: units=0",
    ),
    (
        "pooling_num_queries_zero",
        lambda p: ka.AttentionPooling(num_queries=0),
        ValueError,
        r"`num_queries`.*Received: num_queries=0",
    ),
    (
        "feedforward_intermediate_zero",
        lambda p: ka.FeedForward(intermediate_dim=0),
        ValueError,
        r"`intermediate_dim`.*Received: intermediate_dim=0",
    ),
    (
        "feedforward_unknown_activation",
        lambda p: ka.FeedForward(intermediate_dim=8, activation="no_such_activation"),
        ValueError,
        r"no_such_activation",
    ),
    (
        "encoder_num_heads_zero",
        lambda p: ka.TransformerEncoder(intermediate_dim=8, num_heads=0),
        ValueError,
        r"`num_heads`.*Received: num_heads=0",
    ),
    (
        "position_embedding_length_zero",
        lambda p: ka.PositionEmbedding(sequence_length=0),
        ValueError,
        r"`sequence_length`.*Received: sequence_length=0",
    ),
    (
        "token_position_vocab_zero",
        lambda p: ka.TokenAndPositionEmbedding(0, sequence_length=4, embedding_dim=8),
        ValueError,
        r"`vocabulary_size`.*Received: vocabulary_size=0",
    ),
    (
        "token_position_unknown_position",
        lambda p: ka.TokenAndPositionEmbedding(10, 4, 8, position="rotary9"),
        ValueError,
        r"`position`.*rotary9",
    ),
    # --- call-time shapes and masks -------------------------------------------
    (
        "mha_query_rank2",
        lambda p: _mha_call(query=_x(B, D)),
        ValueError,
        r"`query`.*rank 3.*Received: query\.shape=\(2, 8\)",
    ),
    (
        "mha_key_value_length_mismatch",
        lambda p: _mha_call(key=_x(B, S + 1, D)),
        ValueError,
        r"`key` and `value`.*key\.shape=\(2, 6, 8\).*value\.shape=\(2, 5, 8\)",
    ),
    (
        "mha_attention_mask_rank1",
        lambda p: _mha_call(attention_mask=_x(S, dtype=bool)),
        ValueError,
        r"attention_mask.*\(5,\)",
    ),
    (
        "mha_attention_mask_wrong_length",
        lambda p: _mha_call(attention_mask=_x(B, T, S + 2, dtype=bool)),
        ValueError,
        r"attention_mask.*\(2, 4, 7\)",
    ),
    (
        "mha_value_mask_wrong_length",
        lambda p: _mha_call(value_mask=_x(B, S + 1, dtype=bool)),
        ValueError,
        r"value_mask.*\(2, 6\)",
    ),
    (
        "mha_value_mask_float_not_01",
        lambda p: _mha_call(value_mask=np.full((B, S), 0.5, "float32")),
        (ValueError, TypeError),
        r"value_mask.*(float|0\.5|boolean|bool)",
    ),
    (
        "mha_cache_index_beyond_cache",
        lambda p: _mha_cached(cache_index=4),
        ValueError,
        r"`cache_index`.*max_length=4.*Received: cache_index=4",
    ),
    (
        "mha_cache_index_negative",
        lambda p: _mha_cached(cache_index=-1),
        ValueError,
        r"`cache_index`.*Received: cache_index=-1",
    ),
    (
        "mha_cache_without_index",
        lambda p: _mha_call(cache=np.zeros((B, 4, 16), "float32")),
        ValueError,
        r"`cache` and `cache_index`.*cache_index=None",
    ),
    (
        "mha_query_features_changed",
        lambda p: (lambda l: (l(_x(B, T, D), _x(B, S, D)), l(_x(B, T, D + 1), _x(B, S, D))))(
            ka.MultiHeadAttention(2, 4)
        ),
        ValueError,
        r"`query`.*must be 8.*Received: query\.shape=\(2, 4, 9\)",
    ),
    (
        "sdpa_layer_query_key_feature_mismatch",
        lambda p: ka.ScaledDotProductAttention()(_x(B, T, D), _x(B, S, D + 2)),
        ValueError,
        r"(query|key|value).*\(2, 5, 10\)",
    ),
    (
        "self_attention_rank2",
        lambda p: ka.SelfAttention(units=8)(_x(B, D)),
        ValueError,
        r"`inputs`.*Received: inputs\.shape=\(2, 8\)",
    ),
    (
        "pooling_rank4",
        lambda p: ka.AttentionPooling()(_x(B, T, D, 1)),
        ValueError,
        r"`inputs`.*\(2, 4, 8, 1\)",
    ),
    (
        "token_position_too_long",
        lambda p: ka.TokenAndPositionEmbedding(10, sequence_length=4, embedding_dim=8)(
            np.ones((B, 6), "int32")
        ),
        ValueError,
        r"sequence_length.*4.*6",
    ),
    # --- ops and masks ----------------------------------------------------------
    (
        "ops_key_value_length_mismatch",
        lambda p: _sdpa(value=_x(B, S + 1, D)),
        ValueError,
        r"`key`.*`value`.*\(2, 5, 8\).*\(2, 6, 8\)",
    ),
    (
        "ops_query_key_feature_mismatch",
        lambda p: _sdpa(key=_x(B, S, D + 1)),
        ValueError,
        r"`query`.*`key`.*\(2, 4, 8\).*\(2, 5, 9\)",
    ),
    ("ops_scale_zero", lambda p: _sdpa(scale=0.0), ValueError, r"`scale`.*Received: scale=0\.0"),
    (
        "ops_scale_negative",
        lambda p: _sdpa(scale=-1.0),
        ValueError,
        r"`scale`.*Received: scale=-1\.0",
    ),
    (
        "ops_dropout_rate_one",
        lambda p: _sdpa(dropout_rate=1.0),
        ValueError,
        r"`dropout_rate`.*Received: dropout_rate=1\.0",
    ),
    (
        "ops_unknown_implementation",
        lambda p: _sdpa(implementation="magic"),
        ValueError,
        r"`implementation`.*magic",
    ),
    (
        "ops_mask_wrong_length",
        lambda p: _sdpa(mask=_x(B, T, S + 3, dtype=bool)),
        ValueError,
        r"mask.*\(2, 4, 8\)",
    ),
    ("ops_query_rank2", lambda p: _sdpa(query=_x(B, D)), ValueError, r"`query`.*\(2, 8\)"),
    (
        "ops_split_heads_not_divisible",
        lambda p: aops.split_heads(_x(B, T, 7), 2),
        ValueError,
        r"num_heads.*x\.shape=\(2, 4, 7\).*num_heads=2",
    ),
    (
        "masks_causal_q_len_negative",
        lambda p: masks.causal_mask(-1),
        ValueError,
        r"`q_len`.*Received: q_len=-1",
    ),
    (
        "masks_sliding_window_zero",
        lambda p: masks.sliding_window_mask(4, 4, 0),
        ValueError,
        r"`window`.*Received: window=0",
    ),
    (
        "masks_validate_float",
        lambda p: masks.validate_mask(np.full((2, 3), 0.5, "float32"), name="my_mask"),
        (ValueError, TypeError),
        r"my_mask.*(float|0\.5)",
    ),
    (
        "ops_split_heads_rank2",
        lambda p: aops.split_heads(_x(B, D), 2),
        ValueError,
        r"`x`.*rank 3.*Received: x\.shape=\(2, 8\)",
    ),
    (
        "ops_merge_heads_rank3",
        lambda p: aops.merge_heads(_x(B, T, D)),
        ValueError,
        r"`x`.*rank 4.*Received: x\.shape=\(2, 4, 8\)",
    ),
    (
        "masks_sliding_window_float",
        lambda p: masks.sliding_window_mask(4, 4, 1.5),
        ValueError,
        r"`window`.*Received: window=1\.5",
    ),
    (
        "masks_padding_mask_rank3",
        lambda p: masks.padding_mask(_x(B, T, T, dtype=bool)),
        ValueError,
        r"`mask`.*Received: mask\.shape=\(2, 4, 4\)",
    ),
    # --- more layers at call time ---------------------------------------------
    (
        "additive_query_rank4",
        lambda p: ka.AdditiveAttention(4)(_x(B, T, D, 1), _x(B, S, D)),
        ValueError,
        r"`query`.*Received: query\.shape=\(2, 4, 8, 1\)",
    ),
    (
        "luong_value_rank2",
        lambda p: ka.LuongAttention("general")(_x(B, T, D), _x(B, D)),
        ValueError,
        r"`value`.*rank 3.*Received: value\.shape=\(2, 8\)",
    ),
    (
        "luong_dot_feature_mismatch",
        lambda p: ka.LuongAttention("dot")(_x(B, T, D), _x(B, S, 6)),
        ValueError,
        r"score='dot'.*query\.shape=\(2, 4, 8\).*key\.shape=\(2, 5, 6\)",
    ),
    (
        "luong_concat_scale",
        lambda p: ka.LuongAttention("concat", units=4, scale=True),
        ValueError,
        r"`scale=True`.*Received: scale=True with score='concat'",
    ),
    (
        "pooling_mask_wrong_length",
        lambda p: ka.AttentionPooling()(_x(B, S, D), mask=_x(B, S + 1, dtype=bool)),
        ValueError,
        r"mask.*\(2, 6\)",
    ),
    (
        "self_attention_mask_wrong_length",
        lambda p: ka.SelfAttention(8)(_x(B, T, D), mask=_x(B, T + 2, dtype=bool)),
        ValueError,
        r"mask.*\(2, 6\)",
    ),
    (
        "self_attention_attention_mask_rank1",
        lambda p: ka.SelfAttention(8)(_x(B, T, D), attention_mask=_x(T, dtype=bool)),
        ValueError,
        r"`attention_mask`.*Received: attention_mask\.shape=\(4,\)",
    ),
    (
        "sdpa_layer_query_mask_wrong_length",
        lambda p: ka.ScaledDotProductAttention()(
            _x(B, T, D), _x(B, S, D), query_mask=_x(B, T - 1, dtype=bool)
        ),
        ValueError,
        r"`query_mask`.*\(2, 3\)",
    ),
    (
        "mha_initial_cache_max_length_zero",
        lambda p: (lambda l: (l.build((B, 1, D), (B, 1, D)), l.get_initial_cache(B, 0)))(
            ka.MultiHeadAttention(2, 4)
        ),
        ValueError,
        r"`max_length`.*Received: max_length=0",
    ),
    (
        "mha_cache_wrong_features",
        lambda p: (
            lambda l: (
                l.build((B, 1, D), (B, 1, D)),
                l(_x(B, 1, D), _x(B, 1, D), cache=_x(B, 4, 7), cache_index=0),
            )
        )(ka.MultiHeadAttention(2, 4)),
        ValueError,
        r"`cache`.*Received: cache\.shape=\(2, 4, 7\)",
    ),
    (
        "position_embedding_too_long",
        lambda p: ka.PositionEmbedding(4)(_x(B, 6, D)),
        ValueError,
        r"sequence_length=4.*Received: inputs\.shape=\(2, 6, 8\)",
    ),
    (
        "token_position_start_index_beyond",
        lambda p: ka.TokenAndPositionEmbedding(10, 4, 8)(np.ones((B, 3), "int32"), start_index=3),
        ValueError,
        r"sequence_length=4.*start_index=3",
    ),
    (
        "sinusoidal_max_wavelength_zero",
        lambda p: ka.SinusoidalPositionEncoding(max_wavelength=0),
        ValueError,
        r"`max_wavelength`.*Received: max_wavelength=0",
    ),
    (
        "encoder_heads_do_not_divide_features",
        lambda p: ka.TransformerEncoder(8, 3)(_x(B, T, D)),
        ValueError,
        r"\(8\).*num_heads=3",
    ),
    (
        "encoder_padding_mask_wrong_length",
        lambda p: ka.TransformerEncoder(8, 2)(_x(B, T, D), padding_mask=_x(B, T + 1, dtype=bool)),
        ValueError,
        r"`padding_mask`.*Received: padding_mask\.shape=\(2, 5\)",
    ),
    (
        "export_save_model_bad_suffix",
        lambda p: ka.export.save_model(
            keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), str(p / "m.h5")
        ),
        ValueError,
        r"`path`.*\.keras.*Received: path=.*m\.h5",
    ),
    (
        "export_load_missing_saved_model",
        lambda p: ka.export.load_saved_model(str(p / "nope")),
        (ValueError, OSError),
        r"`path`.*Received: path=.*nope",
    ),
    # --- files --------------------------------------------------------------
    ("load_not_a_keras_file", _not_a_keras_file, (ValueError, OSError), r"(model\.keras|zip)"),
    (
        "export_onto_existing_file",
        _export_onto_file,
        (ValueError, OSError, FileExistsError),
        r"existing_file",
    ),
]


@pytest.mark.parametrize("make, error, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_clear_error(make, error, pattern, tmp_path):
    with pytest.raises(error) as info:
        make(tmp_path)
    assert re.search(pattern, str(info.value), flags=re.S), str(info.value)


def test_case_table_is_large_and_distinct():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 30


def _in_tf_function(fn, *args):
    import tensorflow as tf

    return tf.function(fn)(*args)


def _tf_function(fn):
    import tensorflow as tf

    return tf.function(fn)


TF_FUNCTION_CASES = [
    (
        "mha_key_value_length_mismatch",
        lambda: _in_tf_function(
            lambda q, v, k: ka.MultiHeadAttention(2, 4)(q, v, key=k),
            _x(B, T, D),
            _x(B, S, D),
            _x(B, S + 1, D),
        ),
        r"`key` and `value`.*key\.shape=\(2, 6, 8\)",
    ),
    (
        "mha_query_rank2",
        lambda: _in_tf_function(
            lambda q, v: ka.MultiHeadAttention(2, 4)(q, v), _x(B, D), _x(B, S, D)
        ),
        r"`query`.*Received: query\.shape=\(2, 8\)",
    ),
    (
        "mha_attention_mask_wrong_length",
        lambda: _in_tf_function(
            lambda q, v, m: ka.MultiHeadAttention(2, 4)(q, v, attention_mask=m),
            _x(B, T, D),
            _x(B, S, D),
            _x(B, T, S + 2, dtype=bool),
        ),
        r"attention_mask.*\(2, 4, 7\)",
    ),
    (
        "ops_key_value_length_mismatch",
        lambda: _in_tf_function(
            aops.scaled_dot_product_attention, _x(B, T, D), _x(B, S, D), _x(B, S + 1, D)
        ),
        r"`key`.*`value`.*\(2, 5, 8\).*\(2, 6, 8\)",
    ),
    (
        "self_attention_rank2",
        lambda: _in_tf_function(lambda x: ka.SelfAttention(units=8)(x), _x(B, D)),
        r"`inputs`.*Received: inputs\.shape=\(2, 8\)",
    ),
    (
        "mha_cache_index_beyond_cache",
        lambda: _tf_function(lambda: _mha_cached(cache_index=4))(),
        r"`cache_index`.*max_length=4.*Received: cache_index=4",
    ),
]


@pytest.mark.parametrize(
    "make, pattern",
    [c[1:] for c in TF_FUNCTION_CASES],
    ids=[c[0] for c in TF_FUNCTION_CASES],
)
@pytest.mark.tensorflow_only("errors raised while tracing a tf.function")
def test_bad_input_raises_same_error_in_tf_function(make, pattern):
    with pytest.raises(ValueError) as info:
        make()
    assert re.search(pattern, str(info.value), flags=re.S), str(info.value)

"""`keras_attention.models`: the builders, `transformer_base` and `generate`."""

import keras
import numpy as np
import pytest

from keras_attention import models

RNG = np.random.default_rng(606)
TINY = dict(
    vocabulary_size=23,
    sequence_length=12,
    num_layers=2,
    embedding_dim=16,
    num_heads=2,
    intermediate_dim=24,
    dropout=0.1,
)


def _tokens(batch, length, low=1):
    return RNG.integers(low, TINY["vocabulary_size"], (batch, length)).astype("int32")


def _fit_save_reload(model, inputs, targets, tmp_path, loss):
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    history = model.fit(inputs, targets, batch_size=4, epochs=2, verbose=0)
    assert all(np.isfinite(history.history["loss"]))
    before = model.predict(inputs, verbose=0)
    path = str(tmp_path / f"{model.name}.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(reloaded.predict(inputs, verbose=0), before, atol=1e-5)
    assert reloaded.count_params() == model.count_params()
    return reloaded


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_classifier_fits_saves_reloads(tmp_path):
    model = models.transformer_classifier(**TINY, num_classes=3)
    tokens = _tokens(8, 10)
    tokens[:4, 7:] = 0  # padding
    labels = RNG.integers(0, 3, (8,))
    _fit_save_reload(model, tokens, labels, tmp_path, LOSS)
    assert model.output_shape == (None, 3)
    # Padding is invisible: trailing padding gives the logits of the unpadded tokens.
    np.testing.assert_allclose(
        model.predict(tokens[:4], verbose=0), model.predict(tokens[:4, :7], verbose=0), atol=1e-5
    )


@pytest.mark.parametrize("tie", [False, True])
def test_causal_lm_fits_saves_reloads(tmp_path, tie):
    model = models.causal_language_model(
        **TINY, tie_embeddings=tie, position="sinusoidal" if tie else "learned"
    )
    tokens = _tokens(8, 9)
    tokens[:2, 6:] = 0
    reloaded = _fit_save_reload(model, tokens[:, :-1], tokens[:, 1:], tmp_path, LOSS)
    assert model.output_shape == (None, None, TINY["vocabulary_size"])
    assert ("lm_head" in [layer.name for layer in reloaded.layers]) is not tie
    # Generation through the reloaded model works with its cache.
    out = models.generate(reloaded, tokens[:2, :3], max_new_tokens=3)
    np.testing.assert_array_equal(out, models.generate(model, tokens[:2, :3], 3))


def test_seq2seq_fits_saves_reloads(tmp_path):
    model = models.transformer_seq2seq(
        **TINY, share_embeddings=True, tie_embeddings=True, scale_embeddings=True
    )
    source, target = _tokens(8, 7), _tokens(8, 6)
    source[:3, 5:] = 0
    names = [layer.name for layer in model.layers]
    assert "shared_embedding" in names and "lm_head" not in names
    _fit_save_reload(model, [source, target[:, :-1]], target[:, 1:], tmp_path, LOSS)


def test_builders_return_model_classes_that_own_their_parts(tmp_path):
    lm = models.causal_language_model(**TINY)
    assert isinstance(lm, models.CausalLanguageModel)
    assert lm.decoder_embedding is lm.get_layer("token_embedding")
    assert [layer.name for layer in lm.decoder_layers] == ["decoder_layer_0", "decoder_layer_1"]
    assert lm.lm_head is lm.get_layer("lm_head")
    s2s = models.transformer_seq2seq(**TINY, share_embeddings=True, tie_embeddings=True)
    assert isinstance(s2s, models.Seq2SeqTransformer)
    assert s2s.encoder_embedding is s2s.decoder_embedding and s2s.lm_head is None
    assert len(s2s.encoder_layers) == 2
    for model in (lm, s2s):
        clone = type(model).from_config(model.get_config())
        assert clone.get_config() == model.get_config()
        assert clone.count_params() == model.count_params()
    lines = []
    lm.summary(print_fn=lines.append)
    assert any("decoder_layer_1" in line for line in lines)


@pytest.mark.tensorflow_only("loads the SavedModel with tf.saved_model.load")
def test_causal_lm_keras_export(tmp_path):
    lm = models.causal_language_model(**TINY)
    tokens = _tokens(2, 5)
    lm.export(str(tmp_path / "lm"), verbose=False)
    import tensorflow as tf

    loaded = tf.saved_model.load(str(tmp_path / "lm"))
    served = loaded.serve(tokens)
    np.testing.assert_allclose(
        np.asarray(served), keras.ops.convert_to_numpy(lm(tokens)), atol=1e-5
    )


def test_seq2seq_untied_param_count():
    d, f, v, n, L = 16, 24, 23, 2, 12
    model = models.transformer_seq2seq(**TINY)
    mha = 4 * d * d + 4 * d
    ffn = 2 * d * f + f + d
    embeddings = 2 * (v * d + L * d)  # two token tables with learned positions
    encoder = n * (mha + ffn + 4 * d)
    decoder = n * (2 * mha + ffn + 6 * d)
    lm_head = d * v + v
    assert model.count_params() == embeddings + encoder + decoder + lm_head


def test_transformer_base_parameter_count():
    """63,082,496 = 512 V + 44,138,496 for V = 37000 (the docstring's formula); the
    paper rounds to 65M."""
    d, f, v, n = 512, 2048, 37000, 6
    mha = 4 * d * d + 4 * d
    ffn = 2 * d * f + f + d
    expected = v * d + n * (mha + ffn + 2 * 2 * d) + n * (2 * mha + ffn + 3 * 2 * d)
    assert expected == 512 * v + 44_138_496 == 63_082_496
    model = models.transformer_base()
    assert model.count_params() == expected
    layer = model.get_layer("decoder_layer_5")
    assert layer.self_attention.num_heads == 8 and layer.self_attention.key_dim == 64
    assert layer.dropout == 0.1 and not layer.normalize_first
    embedding = model.get_layer("shared_embedding")
    assert embedding.scale_by_sqrt_dim and embedding.position == "sinusoidal"


def test_cached_generation_costs_one_position_per_step(monkeypatch):
    """One call over the prompt, then one position per new token (eager loop)."""
    lm = models.causal_language_model(**TINY)
    layer = lm.get_layer("decoder_layer_0")
    lengths = []
    original = type(layer).call

    def spy(self, decoder_sequence, *args, **kwargs):
        if self is layer:
            lengths.append(decoder_sequence.shape[1])
        return original(self, decoder_sequence, *args, **kwargs)

    monkeypatch.setattr(type(layer), "call", spy)
    lm.generate(_tokens(2, 5), max_new_tokens=4, compile=False)
    assert lengths == [5, 1, 1, 1, 1]


def test_sampling():
    lm = models.causal_language_model(**TINY)
    prompt = _tokens(2, 3)
    a = models.generate(lm, prompt, 6, strategy="sample", seed=1, temperature=1.5)
    b = models.generate(lm, prompt, 6, strategy="sample", seed=1, temperature=1.5)
    np.testing.assert_array_equal(a, b)
    greedy = models.generate(lm, prompt, 6)
    top1 = models.generate(lm, prompt, 6, strategy="sample", top_k=1, seed=3)
    np.testing.assert_array_equal(top1, greedy)


def test_generate_errors():
    lm = models.causal_language_model(**TINY)
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        models.generate(lm, [[1]], 0)
    with pytest.raises(ValueError, match="strategy='beam'"):
        models.generate(lm, [[1]], 2, strategy="beam")
    with pytest.raises(ValueError, match="temperature=0"):
        models.generate(lm, [[1]], 2, strategy="sample", temperature=0)
    with pytest.raises(ValueError, match=r"prompt.shape=\(3,\)"):
        models.generate(lm, [1, 2, 3], 2)
    with pytest.raises(ValueError, match="sequence_length=12"):
        models.generate(lm, [[1, 2, 3]], 10)
    with pytest.raises(ValueError, match="must be None"):
        models.generate(lm, [[1]], 2, encoder_tokens=[[1, 2]])
    s2s = models.transformer_seq2seq(**TINY)
    with pytest.raises(ValueError, match="encoder_tokens=None"):
        models.generate(s2s, [[1]], 2)
    classifier = models.transformer_classifier(**TINY)
    with pytest.raises(ValueError, match="use_cache=False"):
        models.generate(classifier, [[1]], 2)


def test_builder_errors():
    with pytest.raises(ValueError, match="num_layers=0"):
        models.causal_language_model(**{**TINY, "num_layers": 0})
    with pytest.raises(ValueError, match="embedding_dim=16, num_heads=3"):
        models.transformer_seq2seq(**{**TINY, "num_heads": 3})
    with pytest.raises(ValueError, match="num_classes=0"):
        models.transformer_classifier(**TINY, num_classes=0)
    with pytest.raises(ValueError, match="position='rope'"):
        models.causal_language_model(**TINY, position="rope")


def test_builders_are_the_classes_with_their_defaults():
    # The shorthands pass every argument on: same config as the class, same defaults.
    pairs = [
        (models.causal_language_model, models.CausalLanguageModel),
        (models.transformer_seq2seq, models.Seq2SeqTransformer),
    ]
    required = dict(vocabulary_size=11, sequence_length=8)
    for builder, cls in pairs:
        assert builder(**required).get_config() == cls(**required).get_config()
        with pytest.raises(TypeError, match="takes 0 positional arguments"):
            builder(11, 8)


@pytest.mark.parametrize(
    "make",
    [
        models.causal_language_model,
        models.CausalLanguageModel,
        models.transformer_seq2seq,
        models.Seq2SeqTransformer,
    ],
)
def test_unknown_keyword_arguments_are_refused(make):
    # A functional keras.Model ignores unknown keywords; the model classes do not.
    with pytest.raises(TypeError, match=r"Unrecognized keyword arguments.*\['nmu_heads'\]"):
        make(**TINY, nmu_heads=4)
    assert make(**TINY, name="named", trainable=False).name == "named"


def _from_config(**kwargs):
    config = models.CausalLanguageModel(vocabulary_size=50, sequence_length=16).get_config()
    return models.CausalLanguageModel.from_config({**config, **kwargs})


@pytest.mark.parametrize(
    "make",
    [
        models.CausalLanguageModel,
        models.causal_language_model,
        models.Seq2SeqTransformer,
        models.transformer_seq2seq,
        models.transformer_classifier,
        models.transformer_base,
        _from_config,
    ],
    ids=lambda make: make.__name__,
)
@pytest.mark.parametrize("option", ["bogus_option", "num_kv_heads"])
def test_misspelt_options_are_named_by_every_model_and_builder(make, option):
    # Issue 28: `num_kv_heads` for `num_key_value_heads` must not build another model.
    with pytest.raises(TypeError, match=option):
        make(vocabulary_size=50, sequence_length=16, **{option: 2})

"""BART and T5 through `Seq2SeqTransformer`, exact against keras-hub (issue 28).

keras-hub's `BartBackbone`/`T5Backbone` are built from small configs with random
weights (norm scales and biases moved off 1 and 0 so that each weight matters), the
weights are transplanted with `keras_attention.convert.keras_hub`, and:

- the logits of padded batches (the step API `generate()` runs: `encode` then a
  prefill through the cache) match keras-hub's `*Seq2SeqLM` to 1e-4 at every real
  position, and the functional forward matches on unpadded ones;
- greedy tokens of `generate()` from mixed-length sources and prompts equal a greedy
  loop that reruns keras-hub's whole model on each row alone.
"""

import re

import keras
import numpy as np
import pytest

from keras_attention import TransformerDecoder, TransformerEncoder
from keras_attention.convert import keras_hub as conversion
from keras_attention.layers.positional import TokenAndPositionEmbedding
from keras_attention.models import Seq2SeqTransformer

# keras-hub's T5 layers warn that they drop Keras masks, and its softmax over one key.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*T5MultiHeadAttention.*:UserWarning"),
    pytest.mark.filterwarnings("ignore:You are using a softmax over axis -1:UserWarning"),
]

VOCABULARY, HIDDEN, HEADS, LAYERS, INTERMEDIATE = 96, 32, 4, 2, 48
ATOL = 1e-4
NEW_TOKENS = 5
# Sources and decoder prompts of different lengths (0 is an ordinary token here:
# both models are built with mask_zero=False and get explicit padding masks).
SOURCES = [[5, 17, 0, 33, 41, 8, 60], [9, 12, 2], [70, 3, 3, 45, 11]]
PROMPTS = [[2], [2, 31, 7], [2, 0]]


@pytest.fixture
def keras_hub():
    return pytest.importorskip("keras_hub")


def _randomize(backbone, seed):
    """Norm scales near 1 (not 1), biases and norm offsets off 0, kernels and tables
    of unit-scale activations, every value seeded."""
    rng = np.random.default_rng(seed)
    for variable in backbone.weights:
        shape, name = tuple(variable.shape), variable.path.split("/")[-1]
        if name in ("gamma", "weight"):  # LayerNorm / T5LayerNorm scales
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name in ("beta", "bias"):
            value = 0.2 * rng.standard_normal(shape)
        elif name == "embeddings" or len(shape) == 1:
            value = rng.standard_normal(shape)
        else:
            value = rng.standard_normal(shape) / np.sqrt(shape[0])
        variable.assign(value.astype("float32"))


def small_backbone(backbone_class, seed=0, **backbone_kwargs):
    """A small `BartBackbone`/`T5Backbone` with random weights (see `_randomize`);
    also the builder of tests/test_from_keras_hub_families.py."""
    backbone = backbone_class(
        vocabulary_size=VOCABULARY,
        num_layers=LAYERS,
        num_heads=HEADS,
        hidden_dim=HIDDEN,
        intermediate_dim=INTERMEDIATE,
        dropout=0.0,
        **backbone_kwargs,
    )
    _randomize(backbone, seed)
    return backbone


def _pair(backbone_class, seed=0, **backbone_kwargs):
    backbone = small_backbone(backbone_class, seed, **backbone_kwargs)
    model = conversion.convert(backbone)
    assert isinstance(model, Seq2SeqTransformer)
    return backbone, model


def _padded(rows, width):
    tokens = np.zeros((len(rows), width), "int32")
    mask = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
        tokens[i, : len(row)], mask[i, : len(row)] = row, True
    return tokens, mask


def _hub_logits(lm, encoder_tokens, encoder_mask, decoder_tokens, decoder_mask):
    inputs = {
        "encoder_token_ids": encoder_tokens,
        "encoder_padding_mask": encoder_mask.astype("int32"),
        "decoder_token_ids": decoder_tokens,
        "decoder_padding_mask": decoder_mask.astype("int32"),
    }
    return np.asarray(lm(inputs))


def _our_cached_logits(model, encoder_tokens, encoder_mask, decoder_tokens, decoder_mask):
    """The prefill `generate()` runs: `encode`, then the decoder through the cache."""
    state = model.encode(encoder_tokens, encoder_mask)
    cache = model.initial_cache(*decoder_tokens.shape)
    logits, _ = model.call_with_cache(
        decoder_tokens, cache, 0, key_mask=decoder_mask, encoder_state=state
    )
    return np.asarray(logits)


def _check_logits(lm, model):
    sources, source_mask = _padded(SOURCES, 8)
    targets, target_mask = _padded([[2, 40, 0, 7, 19, 23], [2, 6], [2, 50, 51, 1]], 6)
    expected = _hub_logits(lm, sources, source_mask, targets, target_mask)
    ours = _our_cached_logits(model, sources, source_mask, targets, target_mask)
    error = np.max(np.abs(ours - expected)[target_mask])
    assert error <= ATOL, error
    # The functional forward (no padding: all rows full length).
    sources, targets = sources[:, :3], targets[:, :2]
    expected = _hub_logits(
        lm, sources, np.ones(sources.shape, bool), targets, np.ones(targets.shape, bool)
    )
    ours = np.asarray(model([sources, targets]))
    assert np.max(np.abs(ours - expected)) <= ATOL
    return error


def _greedy_reference(lm, source, prompt):
    """Greedy decoding of one row by rerunning keras-hub's whole model each step."""
    tokens = list(prompt)
    source = np.array([source], "int32")
    for _ in range(NEW_TOKENS):
        decoder = np.array([tokens], "int32")
        logits = _hub_logits(
            lm, source, np.ones(source.shape, bool), decoder, np.ones(decoder.shape, bool)
        )
        tokens.append(int(np.argmax(logits[0, -1])))
    return tokens


def _check_generate(lm, model, compile):
    sources, source_mask = _padded(SOURCES, 8)
    output = model.generate(
        sources,
        PROMPTS,
        NEW_TOKENS,
        encoder_padding_mask=source_mask,
        compile=compile,
    )
    for i, (source, prompt) in enumerate(zip(SOURCES, PROMPTS)):
        expected = _greedy_reference(lm, source, prompt)
        assert output[i, : len(expected)].tolist() == expected, i


def test_bart_matches_keras_hub(keras_hub):
    backbone, model = _pair(keras_hub.models.BartBackbone, max_sequence_length=24)
    assert model.encoder_embedding.table is model.decoder_embedding.table
    lm = keras_hub.models.BartSeq2SeqLM(backbone=backbone, preprocessor=None)
    _check_logits(lm, model)
    _check_generate(lm, model, compile=False)


@pytest.mark.parametrize(
    "variant",
    [
        {"activation": "relu", "use_gated_activation": False},  # T5 v1.0
        {"activation": "gelu", "use_gated_activation": True},  # gated, exact GELU
        {"activation": "keras_hub>gelu_approximate", "use_gated_activation": True},  # v1.1
        {"activation": "relu", "use_gated_activation": True},  # keras-hub's default
    ],
    ids=["v1_0_relu", "gated_gelu", "v1_1_gated_gelu_tanh", "gated_relu"],
)
def test_t5_matches_keras_hub(keras_hub, variant):
    if "approximate" in variant["activation"]:
        from keras_hub.src.utils.keras_utils import gelu_approximate

        variant = dict(variant, activation=gelu_approximate)
    backbone, model = _pair(keras_hub.models.T5Backbone, seed=1, **variant)
    bias = model.encoder_layers[1].self_attention.score_bias
    assert bias is model.encoder_position_bias
    assert model.decoder_layers[1].self_attention.score_bias is model.decoder_position_bias
    lm = keras_hub.models.T5Seq2SeqLM(backbone=backbone, preprocessor=None)
    _check_logits(lm, model)
    if variant["activation"] != "gelu":  # the exact-GELU gate: logits suffice
        compile = variant["activation"] == "relu" and not variant["use_gated_activation"]
        _check_generate(lm, model, compile=compile)


def test_t5_untied_head_matches_keras_hub(keras_hub):
    from keras_hub.src.utils.keras_utils import gelu_approximate

    # T5 v1.1's shape: gated tanh-GELU, untied head (no output scale).
    backbone, model = _pair(
        keras_hub.models.T5Backbone,
        seed=2,
        tie_embedding_weights=False,
        activation=gelu_approximate,
        key_value_dim=12,  # heads of 12 features, not hidden_dim // num_heads = 8
    )
    assert model.lm_head is not None and model.output_scale is None
    assert model.encoder_layers[0].self_attention.key_dim == 12
    lm = keras_hub.models.T5Seq2SeqLM(backbone=backbone, preprocessor=None)
    _check_logits(lm, model)


def test_transplant_names_unplaced_weights(keras_hub):
    backbone, model = _pair(keras_hub.models.BartBackbone, max_sequence_length=24)
    backbone.extra = backbone.add_weight(name="extra_weight", shape=(3,))
    with pytest.raises(ValueError, match="extra_weight"):
        conversion.transplant(backbone, model)


# ---------------------------------------------------------------- the options alone


def test_defaults_build_the_paper_model():
    """No option given: the layers, blocks and weights of the model before the
    options (post-norm LayerNorm blocks with biases, ReLU, separate learned tables,
    a biased `lm_head`, no norms outside the blocks)."""
    model = Seq2SeqTransformer(vocabulary_size=50, sequence_length=16)
    assert type(model.encoder_embedding) is TokenAndPositionEmbedding
    assert type(model.decoder_embedding) is TokenAndPositionEmbedding
    assert model.encoder_embedding is not model.decoder_embedding
    assert model.encoder_final_norm is None and model.decoder_final_norm is None
    assert model.encoder_position_bias is None and model.decoder_position_bias is None
    assert model.lm_head.use_bias
    reference = {
        TransformerEncoder: TransformerEncoder(128, 4, dropout=0.1).get_config(),
        TransformerDecoder: TransformerDecoder(128, 4, dropout=0.1).get_config(),
    }
    for block in model.encoder_layers + model.decoder_layers:
        config = block.get_config()
        expected = dict(reference[type(block)], name=config["name"])
        assert config == expected
    # 2 token + 2 position tables, 2 x (encoder 16, decoder 26) block weights, head.
    assert len(model.weights) == 4 + 2 * 16 + 2 * 26 + 2


def _bart_like(**overrides):
    kwargs = dict(
        vocabulary_size=40,
        sequence_length=12,
        embedding_dim=16,
        num_heads=2,
        intermediate_dim=24,
        dropout=0.0,
        share_embeddings="tokens",
        tie_embeddings=True,
        mask_zero=False,
        activation="gelu",
        embedding_norm=True,
    )
    return Seq2SeqTransformer(**dict(kwargs, **overrides))


def test_shared_token_table_with_own_position_tables_saves_and_reloads(tmp_path):
    model = _bart_like()
    table = model.encoder_embedding.table
    assert table is model.decoder_embedding.table
    assert model.encoder_embedding.positions is not model.decoder_embedding.positions
    tables = [w for w in model.weights if tuple(w.shape) == (40, 16)]
    assert len(tables) == 1
    sources, targets = np.array([[4, 9, 1, 7]]), np.array([[2, 5]])
    path = str(tmp_path / "bart_like.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.encoder_embedding.table is loaded.decoder_embedding.table
    np.testing.assert_allclose(
        np.asarray(loaded([sources, targets])), np.asarray(model([sources, targets])), atol=1e-6
    )


# Keras warns that the model and the token table (inside the embedding) do not take a
# mask themselves; the embedding layer around the table keeps it.
@pytest.mark.filterwarnings("ignore:.*passed an input with a mask attached")
def test_padding_mask_given_with_the_tokens_reaches_the_blocks():
    """With `mask_zero=False` (BART pads with id 1), a mask passed with the tokens
    hides the padding: the output equals that of the unpadded sources."""
    model = _bart_like()
    sources, targets = np.array([[4, 9, 6, 1, 1]]), np.array([[2, 5, 3]])
    masked = model([sources, targets], mask=[sources != 1, None])
    np.testing.assert_allclose(
        np.asarray(masked), np.asarray(model([sources[:, :3], targets])), atol=1e-5
    )


def test_shared_relative_biases_save_reload_and_generate(tmp_path):
    """T5's options without keras-hub: one bias per stack, still shared after a
    `.keras` reload, and the compiled and eager `generate()` agree."""
    model = Seq2SeqTransformer(
        vocabulary_size=40,
        sequence_length=12,
        embedding_dim=16,
        num_heads=2,
        intermediate_dim=24,
        dropout=0.0,
        position="relative",
        relative_num_buckets=8,
        relative_max_distance=16,
        share_embeddings=True,
        tie_embeddings=True,
        mask_zero=False,
        activation="geglu_tanh",
        normalize_first=True,
        normalization="rms_norm",
        layer_norm_epsilon=1e-6,
        use_bias=False,
        attention_scale=1.0,
        final_norm=True,
        output_scale=16**-0.5,
    )
    path = str(tmp_path / "t5_like.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for ours in (model, loaded):
        for side in ("encoder", "decoder"):
            bias = getattr(ours, f"{side}_position_bias")
            for layer in getattr(ours, f"{side}_layers"):
                assert layer.self_attention.score_bias is bias
    sources, targets = np.array([[4, 9, 1, 7], [3, 0, 8, 8]]), np.array([[0, 5], [0, 2]])
    np.testing.assert_allclose(
        np.asarray(loaded([sources, targets])), np.asarray(model([sources, targets])), atol=1e-6
    )
    prompts = [[0], [0, 6, 1]]
    compiled = loaded.generate(sources, prompts, 4)
    np.testing.assert_array_equal(compiled, model.generate(sources, prompts, 4, compile=False))


@pytest.mark.parametrize(
    "argument, value, error",
    [
        ("position", "rotary", ValueError),
        ("share_embeddings", "positions", ValueError),
        ("share_embeddings", 1, ValueError),
        ("activation", "swishglu", ValueError),
        ("normalization", "batch_norm", ValueError),
        ("layer_norm_epsilon", 0.0, ValueError),
        ("use_bias", ("query", "gate"), ValueError),
        ("use_bias", "query", ValueError),
        ("head_dim", 0, ValueError),
        ("attention_scale", -1.0, ValueError),
        ("output_scale", 0, ValueError),
        ("embedding_norm", "yes", TypeError),
        ("final_norm", 1, TypeError),
        ("normalize_first", None, TypeError),
    ],
)
def test_bad_options_name_the_argument_and_value(argument, value, error):
    with pytest.raises(error, match=re.escape(f"{argument}={value!r}")):
        Seq2SeqTransformer(vocabulary_size=20, sequence_length=8, **{argument: value})


def test_bad_relative_buckets_name_both_arguments():
    with pytest.raises(ValueError, match="relative_max_distance=8"):
        Seq2SeqTransformer(
            vocabulary_size=20,
            sequence_length=8,
            position="relative",
            relative_num_buckets=16,
            relative_max_distance=8,
        )

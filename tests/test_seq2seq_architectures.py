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

import numpy as np
import pytest

from keras_attention.models import Seq2SeqTransformer

keras_hub = pytest.importorskip("keras_hub")
from keras_attention.convert.keras_hub import bart, t5  # noqa: E402

VOCABULARY, HIDDEN, HEADS, LAYERS, INTERMEDIATE = 96, 32, 4, 2, 48
ATOL = 1e-4
NEW_TOKENS = 5
# Sources and decoder prompts of different lengths (0 is an ordinary token here:
# both models are built with mask_zero=False and get explicit padding masks).
SOURCES = [[5, 17, 0, 33, 41, 8, 60], [9, 12, 2], [70, 3, 3, 45, 11]]
PROMPTS = [[2], [2, 31, 7], [2, 0]]


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


def _pair(family, backbone_class, seed=0, **backbone_kwargs):
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
    model = Seq2SeqTransformer(**family.config(backbone))
    family.weights(backbone, model)
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


def test_bart_matches_keras_hub():
    backbone, model = _pair(bart, keras_hub.models.BartBackbone, max_sequence_length=24)
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
    ],
    ids=["v1_0_relu", "gated_gelu", "v1_1_gated_gelu_tanh"],
)
def test_t5_matches_keras_hub(variant):
    if "approximate" in variant["activation"]:
        from keras_hub.src.utils.keras_utils import gelu_approximate

        variant = dict(variant, activation=gelu_approximate)
    backbone, model = _pair(t5, keras_hub.models.T5Backbone, seed=1, **variant)
    bias = model.encoder_layers[1].self_attention.score_bias
    assert bias is model.encoder_position_bias
    assert model.decoder_layers[1].self_attention.score_bias is model.decoder_position_bias
    lm = keras_hub.models.T5Seq2SeqLM(backbone=backbone, preprocessor=None)
    _check_logits(lm, model)
    _check_generate(lm, model, compile=variant["activation"] == "relu")


def test_t5_untied_head_matches_keras_hub():
    backbone, model = _pair(t5, keras_hub.models.T5Backbone, seed=2, tie_embedding_weights=False)
    assert model.lm_head is not None and model.output_scale is None
    lm = keras_hub.models.T5Seq2SeqLM(backbone=backbone, preprocessor=None)
    _check_logits(lm, model)


def test_transplant_names_unplaced_weights():
    backbone, model = _pair(bart, keras_hub.models.BartBackbone, max_sequence_length=24)
    backbone.extra = backbone.add_weight(name="extra_weight", shape=(3,))
    with pytest.raises(ValueError, match="extra_weight"):
        bart.weights(backbone, model)

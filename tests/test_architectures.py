"""Published decoder architectures rebuilt by `CausalLanguageModel`'s options, exact
against keras-hub's reference implementations.

Each test builds a small keras-hub backbone with every non-size setting of the
architecture (vocabulary 96, 2 layers, hidden 32, 4 query / 2 key-value heads),
gives it random weights with norm scales and biases moved off 1 and 0 (so each
weight matters), converts it with `keras_attention.convert.keras_hub`, and checks:

- float32 logits of a right-padded batch at the real positions (max |diff| <= 1e-4),
  against keras-hub's `CausalLM` forward pass;
- greedy tokens of our compiled `generate()` on mixed-length prompts, against greedy
  decoding by repeated full forward passes of keras-hub's `CausalLM` (no cache, so
  it is independent of either library's cache and of keras-hub's `generate`).
"""

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

from keras_attention.convert import keras_hub as convert  # noqa: E402

SIZE = {"vocabulary_size": 96, "num_layers": 2, "hidden_dim": 32, "intermediate_dim": 48}
GQA = {"num_query_heads": 4, "num_key_value_heads": 2}
PROMPTS = ([5, 17, 3, 88, 41, 9, 60], [12, 7, 30])  # mixed lengths, ids > 0
NEW_TOKENS = 5


def _llama_like(cls, **options):
    return lambda: getattr(keras_hub.models, cls)(**SIZE, **GQA, **options)


# name -> (backbone factory, keras-hub CausalLM class name)
ARCHITECTURES = {
    "llama1": (
        lambda: keras_hub.models.LlamaBackbone(
            **SIZE, num_query_heads=4, num_key_value_heads=4, layer_norm_epsilon=1e-6
        ),
        "LlamaCausalLM",
    ),
    "llama2": (
        _llama_like("LlamaBackbone", layer_norm_epsilon=1e-5, rope_max_wavelength=500),
        "LlamaCausalLM",
    ),
    "mistral": (
        _llama_like(
            "MistralBackbone", layer_norm_epsilon=1e-5, sliding_window=4, rope_max_wavelength=1e4
        ),
        "MistralCausalLM",
    ),
    "llama3.1": (
        _llama_like(
            "Llama3Backbone",
            layer_norm_epsilon=1e-5,
            rope_max_wavelength=500,
            rope_frequency_adjustment_factor=8.0,
            rope_low_freq_factor=1.0,
            rope_high_freq_factor=4.0,
            rope_pretraining_sequence_length=16,
            tie_word_embeddings=True,
        ),
        "Llama3CausalLM",
    ),
    "phi3_4k": (
        _llama_like("Phi3Backbone", layer_norm_epsilon=1e-5, max_sequence_length=64),
        "Phi3CausalLM",
    ),
    # LongRoPE with a 2-token "pretraining" context, so that every call here (the
    # shortest prompt has 3 tokens) takes the long factors and the attention factor
    # sqrt(1 + ln(32/2) / ln 2). The factors depend on the length of a call: keras-hub
    # takes the whole sequence's, a cached step (ours, Hugging Face's) its largest
    # position + 1, so a prefill shorter than the pretraining context gives
    # short-factor keys that a full pass recomputes with the long ones.
    "phi3_128k": (
        _llama_like(
            "Phi3Backbone",
            layer_norm_epsilon=1e-5,
            max_sequence_length=32,
            pretraining_sequence_length=2,
            rope_scaling_type="su",
            rope_scaling_short_factor=[1.0, 1.3, 1.7, 2.9],
            rope_scaling_long_factor=[1.2, 2.5, 5.0, 9.5],
        ),
        "Phi3CausalLM",
    ),
    "gpt2": (
        lambda: keras_hub.models.GPT2Backbone(**SIZE, num_heads=4, max_sequence_length=16),
        "GPT2CausalLM",
    ),
    "gemma": (
        lambda: keras_hub.models.GemmaBackbone(**SIZE, **GQA, head_dim=16),
        "GemmaCausalLM",
    ),
    "gemma2": (
        lambda: keras_hub.models.GemmaBackbone(
            **SIZE,
            **GQA,
            head_dim=16,
            use_post_ffw_norm=True,
            use_post_attention_norm=True,
            attention_logit_soft_cap=3.0,
            final_logit_soft_cap=4.0,
            use_sliding_window_attention=True,
            sliding_window_size=4,
        ),
        "GemmaCausalLM",
    ),
    "gemma3": (
        lambda: keras_hub.models.Gemma3Backbone(
            **{**SIZE, "num_layers": 6},
            **GQA,
            image_size=16,
            vision_encoder=None,
            head_dim=16,
            # keras-hub 0.32's attention ignores this (it keeps 1/sqrt(head_dim)); the
            # conversion follows what the model computes.
            query_head_dim_normalize=False,
            use_query_key_norm=True,
            use_post_ffw_norm=True,
            use_post_attention_norm=True,
            use_sliding_window_attention=True,
            sliding_window_size=4,
            global_rope_scaling_factor=2.0,
        ),
        "Gemma3CausalLM",
    ),
    "gpt_neox": (
        lambda: keras_hub.models.GPTNeoXBackbone(
            **SIZE, num_heads=4, rotary_percentage=0.5, max_sequence_length=16
        ),
        "GPTNeoXCausalLM",
    ),
    "bloom": (
        lambda: keras_hub.models.BloomBackbone(**SIZE, num_heads=4),
        "BloomCausalLM",
    ),
    "qwen2.5": (
        _llama_like("QwenBackbone", layer_norm_epsilon=1e-6, rope_max_wavelength=1e6),
        "QwenCausalLM",
    ),
    "qwen3": (
        _llama_like("Qwen3Backbone", head_dim=16, layer_norm_epsilon=1e-5),
        "Qwen3CausalLM",
    ),
    "mixtral": (
        _llama_like(
            "MixtralBackbone", num_experts=4, top_k=2, sliding_window=4, layer_norm_epsilon=1e-5
        ),
        "MixtralCausalLM",
    ),
}


def _randomize(model, seed=0):
    """Random weights everywhere; norm scales around 1, biases around 0, not equal."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        shape = tuple(weight.shape)
        if weight.name in ("scale", "gamma"):
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        elif weight.name in ("bias", "beta"):
            value = 0.2 * rng.standard_normal(shape)
        else:
            value = 0.3 * rng.standard_normal(shape)
        weight.assign(value.astype("float32"))


def _padded(prompts, width=None):
    width = width or max(map(len, prompts))
    tokens = np.zeros((len(prompts), width), "int32")
    for row, prompt in enumerate(prompts):
        tokens[row, : len(prompt)] = prompt
    return tokens, tokens != 0


def _reference_logits(causal_lm, tokens, mask):
    inputs = {"token_ids": tokens, "padding_mask": mask.astype("int32")}
    return keras.ops.convert_to_numpy(causal_lm(inputs, training=False))


def _reference_greedy(causal_lm, prompts, new_tokens):
    """Greedy decoding by a full forward pass per token (right padding, causal)."""
    rows = [list(prompt) for prompt in prompts]
    for _ in range(new_tokens):
        tokens, mask = _padded(rows)
        logits = _reference_logits(causal_lm, tokens, mask)
        for i, row in enumerate(rows):
            row.append(int(np.argmax(logits[i, len(row) - 1])))
    return rows


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def converted(request):
    make_backbone, causal_lm_class = ARCHITECTURES[request.param]
    keras.utils.set_random_seed(0)
    backbone = make_backbone()
    _randomize(backbone)
    causal_lm = getattr(keras_hub.models, causal_lm_class)(backbone=backbone, preprocessor=None)
    return causal_lm, convert.convert(causal_lm)


def test_logits_match_keras_hub(converted):
    causal_lm, model = converted
    tokens, mask = _padded(PROMPTS)
    expected = _reference_logits(causal_lm, tokens, mask)
    actual = keras.ops.convert_to_numpy(model(tokens))
    diff = np.abs(actual - expected)[mask].max()
    assert diff <= 1e-4, diff


def test_greedy_tokens_match_keras_hub(converted):
    causal_lm, model = converted
    expected = _reference_greedy(causal_lm, PROMPTS, NEW_TOKENS)
    generated = model.generate([list(p) for p in PROMPTS], max_new_tokens=NEW_TOKENS)
    actual = [generated[i, : len(p) + NEW_TOKENS].tolist() for i, p in enumerate(PROMPTS)]
    assert actual == expected


def test_transplant_names_unmapped_and_misshapen_weights():
    make_backbone, _ = ARCHITECTURES["llama2"]
    backbone = make_backbone()
    untied = convert.config(backbone)
    # A tied target leaves keras-hub's separate output table unmapped.
    tied = convert.CausalLanguageModel(**{**untied, "tie_embeddings": True})
    with pytest.raises(ValueError, match="token_embedding/reverse_embeddings"):
        convert.transplant(backbone, tied)
    with pytest.raises(ValueError, match="wrong shape"):
        convert.convert(backbone, intermediate_dim=24)
    with pytest.raises(ValueError, match="keras-hub CausalLM, Seq2SeqLM or Backbone"):
        convert.convert(keras.Sequential())

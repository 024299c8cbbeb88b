"""`CausalLanguageModel`'s architecture options: `style` as a shorthand, bad values
refused by name, and the cached `generate()` equal to greedy decoding by full forward
passes for every option (the options' math against keras-hub is in
tests/test_architectures.py)."""

import keras
import numpy as np
import pytest

from keras_attention.models import CausalLanguageModel

SMALL = {
    "vocabulary_size": 40,
    "sequence_length": 24,
    "num_layers": 2,
    "embedding_dim": 16,
    "num_heads": 4,
    "intermediate_dim": 24,
    "dropout": 0.0,
}
LLAMA = {**SMALL, "style": "llama", "num_key_value_heads": 2}
PROMPTS = [[5, 9, 3, 30, 12, 7], [11, 2]]


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign((0.4 * rng.standard_normal(tuple(weight.shape)) + 0.1).astype("float32"))


def _greedy_by_full_passes(model, prompt, new_tokens):
    row = list(prompt)
    for _ in range(new_tokens):
        logits = keras.ops.convert_to_numpy(model(np.array([row], "int32")))
        row.append(int(np.argmax(logits[0, -1])))
    return row


OPTION_SETS = {
    "scales_and_caps": {
        **LLAMA,
        "embedding_scale": 4.0,
        "logit_scale": 0.5,
        "final_logit_soft_cap": 2.0,
        "soft_cap": 3.0,
        "tie_embeddings": True,
    },
    "layer_types": {
        **LLAMA,
        "num_layers": 3,
        "layer_types": ["sliding", "full", "sliding"],
        "sliding_window": 3,
        "max_wavelength": 1000.0,
        "sliding_max_wavelength": 50.0,
    },
    "rope_options": {
        **LLAMA,
        "head_dim": 8,
        "rotary_fraction": 0.5,
        "rope_scaling": {
            "type": "llama3",
            "factor": 4.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 2.0,
            "original_max_position_embeddings": 8,
        },
        "layer_norm_epsilon": 1e-5,
    },
    "sandwich_norms_qk_norm": {
        **LLAMA,
        "post_norm": True,
        "activation": "geglu_tanh",
        "query_norm": "rms_norm",
        "key_norm": "rms_norm",
        "qk_norm_epsilon": 1e-5,
        "attention_scale": 0.2,
    },
    "parallel_alibi_embedding_norm": {
        **SMALL,
        "position": "none",
        "score_bias": "alibi",
        "embedding_norm": True,
        "normalize_first": True,
        "parallel_residual": True,
        "final_norm": True,
    },
    "mixture_of_experts": {
        **LLAMA,
        "num_experts": 4,
        "num_experts_per_token": 2,
        "sliding_window": 3,
    },
    "gpt_pre_norm": {
        **SMALL,
        "normalize_first": True,
        "final_norm": True,
        "activation": "gelu_tanh",
        "use_bias": ("query", "value", "output", "feedforward", "norm"),
        "mask_zero": False,
    },
}


@pytest.mark.parametrize("name", sorted(OPTION_SETS))
def test_generate_equals_full_passes_for_every_option(name):
    keras.utils.set_random_seed(0)
    model = CausalLanguageModel(**OPTION_SETS[name])
    _randomize(model)
    generated = model.generate(PROMPTS, max_new_tokens=4)
    for row, prompt in zip(generated, PROMPTS):
        assert row[: len(prompt) + 4].tolist() == _greedy_by_full_passes(model, prompt, 4)


def test_options_survive_get_config_and_a_keras_file(tmp_path):
    model = CausalLanguageModel(**OPTION_SETS["layer_types"], embedding_scale=2.0)
    _randomize(model)
    clone = CausalLanguageModel.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    tokens = np.array([[3, 4, 5, 6]], "int32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reloaded(tokens)),
        keras.ops.convert_to_numpy(model(tokens)),
        atol=1e-6,
    )


def test_style_fills_only_the_options_left_unset():
    explicit = dict(
        normalization="rms_norm",
        layer_norm_epsilon=1e-6,
        normalize_first=True,
        final_norm=True,
        activation="swiglu",
        use_bias=False,
        position="rotary",
    )
    keras.utils.set_random_seed(0)
    llama = CausalLanguageModel(**LLAMA)
    gpt_with_llama_options = CausalLanguageModel(**{**LLAMA, "style": "gpt", **explicit})
    assert [w.shape for w in llama.weights] == [w.shape for w in gpt_with_llama_options.weights]
    gpt_with_llama_options.set_weights(llama.get_weights())
    tokens = np.array([[1, 2, 3]], "int32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(llama(tokens)),
        keras.ops.convert_to_numpy(gpt_with_llama_options(tokens)),
        atol=1e-6,
    )
    # An explicit option wins over the style's.
    layer_norm_llama = CausalLanguageModel(**LLAMA, normalization="layer_norm")
    assert type(layer_norm_llama.final_norm_layer).__name__ == "LayerNormalization"


@pytest.mark.parametrize(
    "options, named",
    [
        ({"layer_types": ["full"]}, "layer_types"),
        ({"layer_types": ["full", "local"], "sliding_window": 2}, "layer_types"),
        ({"layer_types": ["full", "sliding"]}, "sliding_window"),
        ({"activation": "no_such_activation"}, "activation"),
        ({"rope_scaling": {"type": "llama3", "factor": 8.0}}, "rope_scaling"),
        ({"num_experts": 2, "num_experts_per_token": 3}, "num_experts_per_token"),
        ({"use_bias": ("query", "bogus")}, "use_bias"),
        ({"score_bias": "t5"}, "score_bias"),
        ({"position": "learned", "max_wavelength": 500.0}, "max_wavelength"),
        ({"final_logit_soft_cap": -1.0}, "final_logit_soft_cap"),
        ({"normalization": "batch_norm"}, "normalization"),
    ],
)
def test_bad_options_are_named(options, named):
    with pytest.raises(ValueError, match=named):
        CausalLanguageModel(**{**LLAMA, **options})

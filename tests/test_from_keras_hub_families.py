"""`from_keras_hub` for every supported keras-hub family (issue 29's tests).

One small keras-hub backbone per family, with random weights (norm scales and biases
moved off 1 and 0 so that each weight matters; the builders are those of
tests/test_architectures.py and tests/test_seq2seq_architectures.py), converted once
from its backbone by `CausalLanguageModel.from_keras_hub` or
`Seq2SeqTransformer.from_keras_hub` (`verify=True`: keras-hub's task is found for the
backbone), then:

- float32 logits of a padded batch within 1e-4 of keras-hub's task at the real positions;
- greedy tokens of our compiled `generate()` on mixed-length prompts equal to those of
  keras-hub's own greedy `generate()` on the same right-padded batch (GPT-NeoX and
  Gemma 3: see `_keras_hub_greedy` for why and what replaces it);
- a `.keras` save and reload gives the same logits;
- the task saved with keras-hub's `save_to_preset` and loaded back by its folder (no
  tokenizer: the tasks have none) converts to the same model.

Nothing is downloaded; the references are keras-hub's forward pass and `generate`.
"""

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

from keras_attention.convert import from_keras_hub  # noqa: E402
from keras_attention.models import CausalLanguageModel, Seq2SeqTransformer  # noqa: E402
from tests import test_architectures as decoders  # noqa: E402
from tests import test_seq2seq_architectures as seq2seq  # noqa: E402

# keras-hub's T5 layers warn that they drop Keras masks, and its softmax over one key.
pytestmark = seq2seq.pytestmark

PROMPTS = decoders.PROMPTS  # mixed lengths (7 and 3 tokens), ids > 0
NEW_TOKENS = 4


def _decoder(name):
    """A builder of the randomized backbone `ARCHITECTURES[name]` of
    tests/test_architectures.py, and its task."""
    make_backbone, task = decoders.ARCHITECTURES[name]

    def build():
        backbone = make_backbone()
        decoders._randomize(backbone)
        return backbone

    return build, task


def _seq2seq(backbone_class, task):
    return lambda: seq2seq.small_backbone(getattr(keras_hub.models, backbone_class)), task


# family -> (builder of a small random keras-hub backbone, keras-hub task class name)
FAMILIES = {
    "gpt2": _decoder("gpt2"),
    # Untied: keras-hub 0.32's LlamaBackbone leaves `tie_word_embeddings` out of its
    # config, so a tied Llama's preset reloads untied and fails to load its weights.
    "llama": _decoder("llama2"),
    "mistral": _decoder("mistral"),
    "qwen2": _decoder("qwen2.5"),
    "qwen3": _decoder("qwen3"),
    "phi3": _decoder("phi3_4k"),
    "gemma": _decoder("gemma"),
    "gemma2": _decoder("gemma2"),
    "gemma3": _decoder("gemma3"),
    "gpt_neox": _decoder("gpt_neox"),
    "bloom": _decoder("bloom"),
    "mixtral": _decoder("mixtral"),
    "bart": _seq2seq("BartBackbone", "BartSeq2SeqLM"),
    "t5": _seq2seq("T5Backbone", "T5Seq2SeqLM"),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def converted(request):
    """keras-hub's task (greedy sampler) and our model converted from its backbone."""
    build, task_class = FAMILIES[request.param]
    keras.utils.set_random_seed(0)
    backbone = build()
    task = getattr(keras_hub.models, task_class)(backbone=backbone, preprocessor=None)
    task.compile(sampler="greedy")
    target = Seq2SeqTransformer if "Seq2Seq" in task_class else CausalLanguageModel
    model = target.from_keras_hub(backbone)  # verify=True: a probe batch through both
    assert type(model) is target
    return request.param, task, model


def _batch(model):
    """The padded batch of the model's kind: `(tokens, mask)` for a decoder, and
    `(sources, source_mask, targets, target_mask)` for a `Seq2SeqTransformer`."""
    if isinstance(model, Seq2SeqTransformer):
        return (*seq2seq._padded(seq2seq.SOURCES, 8), *seq2seq._padded(seq2seq.PROMPTS, 4))
    return decoders._padded(PROMPTS)


def _logits(model):
    """Our logits on `_batch(model)`; for a `Seq2SeqTransformer` through the path that
    `generate()` runs (`encode`, then a prefill through the cache)."""
    if isinstance(model, Seq2SeqTransformer):
        return seq2seq._our_cached_logits(model, *_batch(model))
    return keras.ops.convert_to_numpy(model(_batch(model)[0]))


def test_logits_of_a_padded_batch_match_keras_hub(converted):
    _, task, model = converted
    batch = _batch(model)
    if isinstance(model, Seq2SeqTransformer):
        expected = seq2seq._hub_logits(task, *batch)
    else:
        expected = decoders._reference_logits(task, *batch)
    mask = batch[-1]  # the real positions of the logits' rows
    assert np.abs(_logits(model) - expected)[mask].max() <= 1e-4


def _keras_hub_greedy(family, task, prompts):
    """keras-hub's greedy tokens for the right-padded `prompts`, `NEW_TOKENS` more."""
    tokens, mask = decoders._padded(prompts, max(map(len, prompts)) + NEW_TOKENS)
    inputs = {"token_ids": tokens, "padding_mask": mask}
    if family == "gpt_neox":
        # keras-hub 0.32's `generate` is wrong here: its GPT-NeoX attention rotates a
        # cached step's query and key as position 0 (its RotaryEmbedding gets no
        # `start_index`), so it drifts from its own forward pass. The reference is
        # greedy decoding by a full keras-hub forward pass per token.
        return decoders._reference_greedy(task, prompts, NEW_TOKENS)
    if family == "gemma3":
        # keras-hub 0.32's `Gemma3CausalLM.generate` fails on token ids without a
        # preprocessor (it concatenates the `images: None` entry of the output); the
        # loop that `generate` runs, `generate_step`, is called directly.
        tokens = task.generate_step(inputs, stop_token_ids=None)["token_ids"]
    else:
        tokens = task.generate(inputs, stop_token_ids=None)["token_ids"]
    return keras.ops.convert_to_numpy(tokens).tolist()


def test_greedy_tokens_equal_keras_hub_generate(converted):
    family, task, model = converted
    if isinstance(model, Seq2SeqTransformer):
        sources, source_mask = seq2seq._padded(seq2seq.SOURCES, 8)
        width = max(map(len, seq2seq.PROMPTS)) + NEW_TOKENS
        prompts, prompt_mask = seq2seq._padded(seq2seq.PROMPTS, width)
        expected = task.generate(
            {
                "encoder_token_ids": sources,
                "encoder_padding_mask": source_mask,
                "decoder_token_ids": prompts,
                "decoder_padding_mask": prompt_mask,
            },
            stop_token_ids=None,
        )["decoder_token_ids"]
        expected = keras.ops.convert_to_numpy(expected).tolist()
        ours = model.generate(
            sources, seq2seq.PROMPTS, NEW_TOKENS, encoder_padding_mask=source_mask
        )
        rows = seq2seq.PROMPTS
    else:
        expected = _keras_hub_greedy(family, task, PROMPTS)
        ours = model.generate([list(p) for p in PROMPTS], max_new_tokens=NEW_TOKENS)
        rows = PROMPTS
    ours = keras.ops.convert_to_numpy(ours).tolist()
    for i, prompt in enumerate(rows):
        end = len(prompt) + NEW_TOKENS
        assert ours[i][:end] == expected[i][:end], i


def test_keras_file_reloads_the_same_model(converted, tmp_path):
    _, _, model = converted
    model.save(tmp_path / "converted.keras")
    loaded = keras.saving.load_model(tmp_path / "converted.keras")
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(_logits(loaded), _logits(model))


def test_preset_folder_round_trip(converted, tmp_path):
    _, task, model = converted
    task.save_to_preset(str(tmp_path / "preset"))
    # The target class follows from the family; keras-hub loads the task.
    loaded = from_keras_hub(str(tmp_path / "preset"))
    assert type(loaded) is type(model) and loaded.tokenizer is None
    np.testing.assert_allclose(_logits(loaded), _logits(model), atol=1e-6)

"""`keras_attention.models`: model builders, the generative model classes with their
compiled `generate()` and their step API, the samplers, the logits processors, and the
deprecated `export_generate` (`keras_attention.export.export_generator` replaces it)."""

from keras_attention.models import processors, samplers
from keras_attention.models.builders import (
    causal_language_model,
    transformer_base,
    transformer_classifier,
    transformer_seq2seq,
)
from keras_attention.models.causal_language_model import CausalLanguageModel
from keras_attention.models.generation import export_generate, generate
from keras_attention.models.processors import (
    BannedSequences,
    FrequencyPenalty,
    LogitsProcessor,
    MinNewTokens,
    MinP,
    NoRepeatNGram,
    PresencePenalty,
    RepetitionPenalty,
    SuppressTokens,
)
from keras_attention.models.samplers import (
    BeamSampler,
    GreedySampler,
    RandomSampler,
    Sampler,
    TopKSampler,
    TopPSampler,
)
from keras_attention.models.seq2seq_transformer import Seq2SeqTransformer

__all__ = [
    "transformer_classifier",
    "transformer_seq2seq",
    "causal_language_model",
    "transformer_base",
    "generate",
    "export_generate",
    "CausalLanguageModel",
    "Seq2SeqTransformer",
    "samplers",
    "Sampler",
    "GreedySampler",
    "RandomSampler",
    "TopKSampler",
    "TopPSampler",
    "BeamSampler",
    "processors",
    "LogitsProcessor",
    "RepetitionPenalty",
    "PresencePenalty",
    "FrequencyPenalty",
    "NoRepeatNGram",
    "MinP",
    "BannedSequences",
    "MinNewTokens",
    "SuppressTokens",
]

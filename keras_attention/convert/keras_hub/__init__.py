"""keras-hub models to :class:`~keras_attention.models.CausalLanguageModel` (decoder
families) or :class:`~keras_attention.models.Seq2SeqTransformer` (BART, T5: the
family module's `MODEL`).

A registry keyed by the keras-hub backbone class (subclasses resolve through their
bases: `Llama3Backbone` is a `LlamaBackbone`). Each family module gives two
functions: `config(backbone)`, the model class' keyword arguments that build
the same architecture, and `weights(backbone, model, transplant)`, the weight map
(source path -> target variable, with the named transforms of `_transplant`).
keras-hub itself is never imported here: the functions read the objects they get.

Example (with keras-hub installed)::

    backbone = keras_hub.models.LlamaBackbone.from_preset("llama2_7b_en")
    model = convert(backbone)
    model.generate(prompt_ids, max_new_tokens=32)
"""

import importlib

from keras_attention.convert.keras_hub._transplant import Transplant
from keras_attention.models.causal_language_model import CausalLanguageModel

__all__ = ["FAMILIES", "backbone_of", "config", "convert", "family", "transplant"]

# keras-hub backbone class name -> family module (of this package).
FAMILIES = {
    "LlamaBackbone": "llama",
    "MistralBackbone": "llama",
    "QwenBackbone": "llama",
    "Qwen3Backbone": "llama",
    "MixtralBackbone": "llama",
    "Phi3Backbone": "phi3",
    "GPT2Backbone": "gpt2",
    "GPTNeoXBackbone": "gpt_neox",
    "BloomBackbone": "bloom",
    "GemmaBackbone": "gemma",
    "Gemma3Backbone": "gemma",
    "BartBackbone": "bart",
    "T5Backbone": "t5",
}


def backbone_of(model):
    """The keras-hub `Backbone` of `model` (a `CausalLM`, `Seq2SeqLM` or `Backbone`)."""
    backbone = getattr(model, "backbone", model)
    if not any(cls.__module__.startswith("keras_hub") for cls in type(backbone).__mro__):
        raise ValueError(
            "Expected a keras-hub CausalLM, Seq2SeqLM or Backbone. "
            f"Received: an object of type {type(model).__name__}"
        )
    return backbone


def family(backbone):
    """The family module converting `backbone` (by its class or a base class)."""
    for cls in type(backbone).__mro__:
        if cls.__name__ in FAMILIES and cls.__module__.startswith("keras_hub"):
            return importlib.import_module(f"{__name__}.{FAMILIES[cls.__name__]}")
    raise ValueError(
        f"No conversion for the keras-hub backbone {type(backbone).__name__}; "
        f"supported: {sorted(FAMILIES)}."
    )


def config(model):
    """The model class' keyword arguments of a keras-hub model."""
    backbone = backbone_of(model)
    return family(backbone).config(backbone)


def transplant(model, target):
    """Copy the weights of the keras-hub `model` into `target` (a built
    model of :func:`config`); raises a `ValueError` naming every
    weight left unmapped on either side."""
    backbone = backbone_of(model)
    weights = Transplant(backbone.weights, target.weights)
    family(backbone).weights(backbone, target, weights)
    weights.finish()
    return target


def convert(model, **options):
    """A `CausalLanguageModel` (or the family's `MODEL`, `Seq2SeqTransformer` for
    BART and T5) with the architecture and weights of the keras-hub `model`
    (`CausalLM`, `Seq2SeqLM` or `Backbone`); `options` override the converted arguments
    (e.g. `sequence_length`, `mask_zero`, `name`)."""
    model_class = getattr(family(backbone_of(model)), "MODEL", CausalLanguageModel)
    return transplant(model, model_class(**{**config(model), **options}))

"""`from_keras_hub`: one call from a keras-hub task, backbone or preset to this
package's `CausalLanguageModel` or `Seq2SeqTransformer`, with its weights, dtype
policy and preprocessor, checked on a probe batch.

keras-hub is imported here only inside the functions, when a preset name must be
loaded or a reference task built for `verify`.
"""

import importlib

from keras_attention.convert.keras_hub import FAMILIES, backbone_of, transplant
from keras_attention.convert.keras_hub._verify import check_tolerance, verify_conversion
from keras_attention.models import _conversion, _text
from keras_attention.models.causal_language_model import CausalLanguageModel
from keras_attention.models.seq2seq_transformer import Seq2SeqTransformer

DTYPE_POLICIES = ("float32", "bfloat16", "float16", "mixed_bfloat16", "mixed_float16")
_TASKS = {CausalLanguageModel: "CausalLM", Seq2SeqTransformer: "Seq2SeqLM"}


def from_keras_hub(
    model_or_preset, verify=True, tolerance=None, dtype=None, target=None, **options
):
    """A model of this package with the architecture and weights of a keras-hub model.

    Decoder families (GPT-2, Llama 1/2/3.x, Mistral, Qwen2/2.5, Qwen3, Mixtral, Phi-3,
    Gemma 1/2/3 text, GPT-NeoX, BLOOM) become a :class:`CausalLanguageModel`; BART and
    T5 a :class:`Seq2SeqTransformer`. Every weight of the source is consumed and
    every weight of the result set, or a `ValueError` names the others.

    Args:
        model_or_preset: a keras-hub `CausalLM`/`Seq2SeqLM` (its preprocessor is kept
            as `model.preprocessor`: `generate` then takes strings), a `Backbone`,
            or a preset (a name such as `"gpt2_base_en"`, an `hf://` handle or a
            folder written by `save_to_preset`), loaded as a `CausalLM` (or a
            `Seq2SeqLM` when `target` is `Seq2SeqTransformer`).
        verify: run a padded probe batch (two rows, the second half padding) through
            both models and raise a `ValueError` when the largest difference of the
            logits at real positions exceeds `tolerance` times
            `max(1, largest |reference logit|)`.
        tolerance: optional positive float; default 1e-4 for float32 compute, 1e-2
            for float16 and 5e-2 for bfloat16 (both libraries round differently).
        dtype: optional dtype policy (`"float32"`, `"bfloat16"`, `"float16"`,
            `"mixed_bfloat16"`, `"mixed_float16"`); default the source's. The
            result keeps it, and `.keras` files reload with it.
        target: `CausalLanguageModel` or `Seq2SeqTransformer` (default: by family).
        **options: arguments of the target class overriding the converted ones.

    Returns:
        The converted model, built and ready to `generate`.

    Raises:
        ValueError: not a keras-hub object; a backbone or feature this package does
            not convert (one error listing every missing feature); a weight of the
            wrong shape; `tolerance` not positive; `verify` failing.
    """
    check_tolerance(tolerance)
    if target is not None and target not in _TASKS:
        raise ValueError(
            "`target` must be CausalLanguageModel or Seq2SeqTransformer. "
            f"Received: target={target!r}"
        )
    source = _load(model_or_preset, target, dtype)
    backbone = backbone_of(source)
    family, target, config = _family(backbone, target, dtype)
    preprocessor = getattr(source, "preprocessor", None)
    policy = dtype or backbone.dtype_policy.name
    with _conversion.dtype_policy_scope(policy):
        model = target(**{**config, **options})
    transplant(backbone, model)
    if preprocessor is not None and target is CausalLanguageModel:
        _text.attach(model, preprocessor)
    if verify:
        verify_conversion(source, backbone, model, tolerance)
    return model


def _load(model_or_preset, target, dtype):
    """The keras-hub object to convert: `model_or_preset` itself, or the task its
    preset name loads."""
    if not isinstance(model_or_preset, str):
        return model_or_preset
    keras_hub = importlib.import_module("keras_hub")
    names = [_TASKS[target]] if target is not None else ["CausalLM", "Seq2SeqLM"]
    kwargs = {} if dtype is None else {"dtype": dtype}
    errors = []
    for name in names:
        try:
            return getattr(keras_hub.models, name).from_preset(model_or_preset, **kwargs)
        except ValueError as error:  # no task of this kind for the preset's backbone
            errors.append(f"{name}: {error}")
    raise ValueError(
        f"keras-hub could not load the preset {model_or_preset!r} as a "
        f"{' or '.join(names)}: {'; '.join(errors)}"
    )


def _family(backbone, target, dtype):
    """The family module, target class and target arguments of `backbone`; one
    `ValueError` listing every feature of the source this package cannot convert."""
    names = [c.__name__ for c in type(backbone).__mro__ if c.__module__.startswith("keras_hub")]
    name = next((FAMILIES[n] for n in names if n in FAMILIES), None)
    missing = _missing_features(backbone, dtype)
    module = config = None
    if name is None:
        missing.insert(
            0,
            f"the backbone class {type(backbone).__name__} (supported: {sorted(FAMILIES)})",
        )
    else:
        module = importlib.import_module(f"keras_attention.convert.keras_hub.{name}")
        default = getattr(module, "MODEL", CausalLanguageModel)
        target = target or default
        if target is not default:
            missing.append(
                f"a {type(backbone).__name__} as a {target.__name__} (it converts to a "
                f"{default.__name__}: use {default.__name__}.from_keras_hub)"
            )
        try:  # a family's own refusals (e.g. an activation without a gated form)
            config = module.config(backbone)
        except ValueError as error:
            missing.append(str(error))
    if missing:
        raise ValueError(
            f"Cannot convert this keras-hub {type(backbone).__name__}; not supported: "
            + "; ".join(missing)
        )
    return module, target, config


def _missing_features(backbone, dtype):
    """The features of `backbone` (and of the requested `dtype`) that no family
    converts: quantized weights, LoRA adapters, other dtype policies."""
    missing = []
    policy = dtype or backbone.dtype_policy.name
    if policy not in DTYPE_POLICIES:
        missing.append(f"the dtype policy {policy!r} (supported: {list(DTYPE_POLICIES)})")
    layers = backbone._flatten_layers(include_self=False)
    modes = sorted(
        {mode for layer in layers if (mode := getattr(layer, "quantization_mode", None))}
    )
    if modes:
        missing.append(f"quantized weights ({', '.join(modes)}; convert the float model)")
    if any(getattr(layer, "lora_enabled", False) for layer in backbone._flatten_layers()):
        missing.append("LoRA adapters (merge them into the kernels first)")
    return missing


_conversion.register(
    "keras_hub",
    lambda target, source, verify, tolerance, dtype, **options: from_keras_hub(
        source, verify, tolerance, dtype, target=target, **options
    ),
)

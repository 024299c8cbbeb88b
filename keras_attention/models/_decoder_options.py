"""The architecture options of `CausalLanguageModel`: the `style` shorthands, their
checks, and the keyword arguments of each `TransformerDecoder` they give."""

from keras_attention import _validation
from keras_attention.layers.alibi_bias import ALiBiBias
from keras_attention.layers.feed_forward import (
    GATED_ACTIVATIONS,
    NAMED_ACTIVATIONS,
    resolve_activation,
)
from keras_attention.layers.mixture_of_experts import check_expert_counts
from keras_attention.layers.rotary_embedding import RotaryEmbedding

# What `style` fills in for the options left `None`.
STYLES = {
    "gpt": {
        "normalization": "layer_norm",
        "layer_norm_epsilon": 1e-5,
        "normalize_first": False,
        "final_norm": False,
        "activation": "relu",
        "use_bias": True,
        "position": "learned",
    },
    "llama": {
        "normalization": "rms_norm",
        "layer_norm_epsilon": 1e-6,
        "normalize_first": True,
        "final_norm": True,
        "activation": "swiglu",
        "use_bias": False,
        "position": "rotary",
    },
}
POSITIONS = ("learned", "sinusoidal", "rotary", "none")
# `use_bias` parts: those of the blocks, and the model's own output projection.
BLOCK_BIAS_PARTS = ("query", "key", "value", "output", "feedforward", "norm")
BIAS_PARTS = BLOCK_BIAS_PARTS + ("lm_head",)
LAYER_TYPES = ("full", "sliding")
# Options that only mean something with rotary position embeddings.
ROTARY_OPTIONS = (
    "max_wavelength",
    "rotary_fraction",
    "rope_scaling",
    "sliding_max_wavelength",
    "sliding_rope_scaling",
)
# Block options passed on only when set, each with the value that means "off".
OPTIONAL_BLOCK_OPTIONS = {
    "attention_scale": None,
    "qk_norm_epsilon": None,
    "post_norm": False,
    "parallel_residual": False,
    "num_experts": None,
    "num_experts_per_token": None,
}


def resolve(config):
    """Check `config` (the constructor arguments) and fill the options left `None`
    from its `style`; returns the resolved copy."""
    _validation.check_one_of(config["style"], "style", tuple(STYLES))
    options = dict(config)
    position = options["position"]
    if config["style"] == "llama" and position == "none":
        position = "rotary"  # configs saved before `position="rotary"` existed
    options["position"] = position
    for name, value in STYLES[config["style"]].items():
        if options[name] is None:
            options[name] = value
    _check(options)
    return options


def _check(options):
    _validation.check_one_of(options["position"], "position", POSITIONS)
    _validation.check_one_of(options["normalization"], "normalization", ("layer_norm", "rms_norm"))
    for name in ("tie_embeddings", "mask_zero", "normalize_first", "final_norm", "embedding_norm"):
        _validation.check_bool(options[name], name)
    for name in ("post_norm", "parallel_residual"):
        _validation.check_bool(options[name], name)
    _validation.check_positive_int(options["head_dim"], "head_dim", allow_none=True)
    _validation.check_one_of(options["score_bias"], "score_bias", (None, "alibi"))
    for name in ("embedding_scale", "logit_scale", "final_logit_soft_cap", "rotary_fraction"):
        if options[name] is not None:
            _validation.check_positive_float(options[name], name)
    check_activation(options["activation"])
    bias_parts(options["use_bias"])
    _check_rotary(options)
    _check_layer_types(options)
    _check_experts(options["num_experts"], options["num_experts_per_token"])


def check_activation(activation):
    """A name `FeedForward` knows (gated, `"gelu_tanh"`, Keras'), or a callable;
    else `ValueError`."""
    try:
        resolve_activation(activation)
    except (ValueError, TypeError):
        raise ValueError(
            f"`activation` must be a Keras activation (name or callable) or one of "
            f"{sorted({**GATED_ACTIVATIONS, **NAMED_ACTIVATIONS})}. Received: activation={activation!r}"
        ) from None


def bias_parts(use_bias):
    """The parts with a bias: `use_bias` is a bool or a tuple of `BIAS_PARTS`."""
    if isinstance(use_bias, bool):
        return BIAS_PARTS if use_bias else ()
    if not isinstance(use_bias, (tuple, list)) or any(p not in BIAS_PARTS for p in use_bias):
        raise ValueError(
            f"`use_bias` must be a bool or a tuple of parts from {BIAS_PARTS}. "
            f"Received: use_bias={use_bias!r}"
        )
    return tuple(use_bias)


def block_bias(use_bias):
    """The blocks' `use_bias`: a bool when it covers all or none of their parts."""
    parts = tuple(p for p in bias_parts(use_bias) if p in BLOCK_BIAS_PARTS)
    if len(parts) in (0, len(BLOCK_BIAS_PARTS)):
        return bool(parts)
    return parts


def _check_rotary(options):
    if options["position"] == "rotary":
        return
    given = [name for name in ROTARY_OPTIONS if options[name] is not None]
    if given:
        received = ", ".join(f"{name}={options[name]!r}" for name in given)
        raise ValueError(
            f"{given} only apply to rotary position embeddings (position='rotary'). "
            f"Received: position={options['position']!r}, {received}"
        )


def _check_layer_types(options):
    layer_types, num_layers = options["layer_types"], options["num_layers"]
    if layer_types is None:
        if options["sliding_max_wavelength"] is not None or options["sliding_rope_scaling"]:
            raise ValueError(
                "`sliding_max_wavelength` and `sliding_rope_scaling` are the RoPE settings "
                "of the 'sliding' entries of `layer_types`, which is None."
            )
        return
    if (
        not isinstance(layer_types, (list, tuple))
        or len(layer_types) != num_layers
        or any(kind not in LAYER_TYPES for kind in layer_types)
    ):
        raise ValueError(
            f"`layer_types` must be a list of {num_layers} (num_layers) entries, each "
            f"one of {LAYER_TYPES}. Received: layer_types={layer_types!r}"
        )
    if "sliding" in layer_types and options["sliding_window"] is None:
        raise ValueError(
            "`layer_types` with 'sliding' layers needs `sliding_window`. Received: "
            f"layer_types={layer_types!r}, sliding_window=None"
        )


def _check_experts(num_experts, num_experts_per_token):
    if num_experts is not None or num_experts_per_token is not None:
        check_expert_counts(num_experts, num_experts_per_token)


def _rotary(max_wavelength, rotary_fraction, rope_scaling):
    kwargs = {"max_wavelength": 10000 if max_wavelength is None else max_wavelength}
    if rotary_fraction is not None:
        kwargs["rotary_fraction"] = rotary_fraction
    if rope_scaling is not None:
        kwargs["rope_scaling"] = rope_scaling
    return RotaryEmbedding(**kwargs)


def block_arguments(options):
    """The keyword arguments of each `TransformerDecoder`, one dict a layer."""
    common = {
        "intermediate_dim": options["intermediate_dim"],
        "num_heads": options["num_heads"],
        "dropout": options["dropout"],
        "activation": options["activation"],
        "layer_norm_epsilon": options["layer_norm_epsilon"],
        "normalize_first": options["normalize_first"],
        "key_dim": options["head_dim"],
        "normalization": options["normalization"],
        "use_bias": block_bias(options["use_bias"]),
        "num_key_value_heads": options["num_key_value_heads"],
        "soft_cap": options["soft_cap"],
        "query_norm": options["query_norm"],
        "key_norm": options["key_norm"],
    }
    common.update(
        {
            name: options[name]
            for name, off in OPTIONAL_BLOCK_OPTIONS.items()
            if options[name] != off
        }
    )
    if options["score_bias"] == "alibi":
        # One weightless bias layer shared by every block (the blocks do not copy it).
        common["score_bias"] = ALiBiBias(options["num_heads"], name="alibi_bias")
    layer_types = options["layer_types"] or ("full",) * options["num_layers"]
    rotary = {}
    if options["position"] == "rotary":
        rotary["full"] = _rotary(
            options["max_wavelength"], options["rotary_fraction"], options["rope_scaling"]
        )
        rotary["sliding"] = rotary["full"]
        if options["layer_types"] is not None:
            rotary["sliding"] = _rotary(
                options["sliding_max_wavelength"] or options["max_wavelength"],
                options["rotary_fraction"],
                options["sliding_rope_scaling"],
            )
    window = options["sliding_window"]
    return [
        dict(
            common,
            position_embedding=rotary.get(kind),
            sliding_window=window if options["layer_types"] is None or kind == "sliding" else None,
            name=f"decoder_layer_{i}",
        )
        for i, kind in enumerate(layer_types)
    ]

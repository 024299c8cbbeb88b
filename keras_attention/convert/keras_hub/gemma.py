"""Gemma 1, 2 and 3 (text): RMSNorm applied as `1 + w`, embeddings scaled by
`sqrt(hidden_dim)`, tanh-approximate GeGLU, `(heads, hidden, head_dim)` kernels;
Gemma 2/3 add sandwich norms, alternating sliding windows and soft-caps (2) or
QK-norm and per-type RoPE (3)."""

import math

from keras_attention.convert.keras_hub import _common
from keras_attention.convert.keras_hub._transplant import heads_first, plus_one


def _linear(factor):
    return None if factor == 1.0 else {"type": "linear", "factor": factor}


def _unsupported(backbone):
    gemma3 = type(backbone).__name__ == "Gemma3Backbone"
    problems = []
    if backbone.use_post_attention_norm != backbone.use_post_ffw_norm:
        problems.append("use_post_attention_norm != use_post_ffw_norm")
    if gemma3 and getattr(backbone, "vision_encoder", None) is not None:
        problems.append("a vision encoder (only Gemma 3's text model converts)")
    if gemma3 and getattr(backbone, "use_bidirectional_attention", False):
        problems.append("use_bidirectional_attention=True")
    if gemma3 and getattr(backbone, "is_embedding_model", False):
        problems.append("is_embedding_model=True")
    if problems:
        raise ValueError(f"Cannot convert this {type(backbone).__name__}: {'; '.join(problems)}.")
    return gemma3


def config(backbone):
    gemma3 = _unsupported(backbone)
    num_layers, hidden = backbone.num_layers, backbone.hidden_dim
    head_dim = backbone.head_dim
    # Queries scaled by 1/sqrt(head_dim) (our default) or 1/sqrt(hidden // heads).
    # Read from the attention layers: keras-hub 0.32's Gemma 1/2 blocks do not pass
    # the backbone's `query_head_dim_normalize` on (their attention keeps True).
    attention = backbone.transformer_layers[0].attention
    query_scale = None
    if not attention.query_head_dim_normalize:
        query_scale = 1 / math.sqrt(hidden // backbone.num_query_heads)
    options = {
        "style": "llama",
        "activation": "geglu_tanh",
        "num_key_value_heads": backbone.num_key_value_heads,
        "head_dim": head_dim,
        "layer_norm_epsilon": backbone.layer_norm_epsilon,
        "tie_embeddings": True,
        "embedding_scale": math.sqrt(hidden),
        "attention_scale": query_scale,
        "post_norm": bool(backbone.use_post_attention_norm),
        "soft_cap": backbone.attention_logit_soft_cap,
        "final_logit_soft_cap": backbone.final_logit_soft_cap,
        # Gemma 1/2 split `intermediate_dim` between the gate and the up projection.
        "intermediate_dim": backbone.intermediate_dim if gemma3 else backbone.intermediate_dim // 2,
    }
    if backbone.use_sliding_window_attention:
        local = (lambda i: i % 6 < 5) if gemma3 else (lambda i: i % 2 == 0)
        options["layer_types"] = ["sliding" if local(i) else "full" for i in range(num_layers)]
        options["sliding_window"] = backbone.sliding_window_size
    if gemma3:
        options.update(
            query_norm="rms_norm",
            key_norm="rms_norm",
            qk_norm_epsilon=backbone.layer_norm_epsilon,
            max_wavelength=1_000_000.0,
            rope_scaling=_linear(backbone.global_rope_scaling_factor),
        )
        if backbone.use_sliding_window_attention:
            options.update(
                sliding_max_wavelength=10_000.0,
                sliding_rope_scaling=_linear(backbone.local_rope_scaling_factor),
            )
    return _common.base_config(backbone, backbone.num_query_heads, **options)


def weights(backbone, model, transplant):
    _common.embeddings(backbone, model, transplant)
    for i, layer in enumerate(model.decoder_layers):
        path = f"decoder_block_{i}"
        attention = layer.self_attention
        norms = [
            ("pre_attention_norm", layer.self_attention_layer_norm),
            ("pre_ffw_norm", layer.feedforward_layer_norm),
            ("post_attention_norm", getattr(layer, "self_attention_post_norm", None)),
            ("post_ffw_norm", getattr(layer, "feedforward_post_norm", None)),
            ("attention/query_norm", attention.query_norm_layer),
            ("attention/key_norm", attention.key_norm_layer),
        ]
        for name, norm in norms:
            if norm is not None:
                transplant.norm(f"{path}/{name}", norm, plus_one)
        _common.attention(transplant, f"{path}/attention", attention, heads_first)
        names = ("ffw_gating", "ffw_gating_2", "ffw_linear")
        _common.gated_feedforward(transplant, path, layer.feedforward, names)
    transplant.norm("final_normalization", model.final_norm_layer, plus_one)

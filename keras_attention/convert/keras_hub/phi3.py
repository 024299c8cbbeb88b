"""Phi-3 (4k and 128k): the Llama shape, with LongRoPE ("su") for the long-context
models: per-frequency short/long factors and the cos/sin attention factor."""

from keras_attention.convert.keras_hub import _common


def _rope_scaling(backbone):
    if backbone.rope_scaling_type is None:
        return None
    if backbone.rope_scaling_type != "su":
        raise ValueError(
            "Only Phi-3's 'su' (LongRoPE) scaling converts. "
            f"Received: rope_scaling_type={backbone.rope_scaling_type!r}"
        )
    return {
        "type": "longrope",
        "short_factor": list(backbone.rope_scaling_short_factor),
        "long_factor": list(backbone.rope_scaling_long_factor),
        "original_max_position_embeddings": backbone.pretraining_sequence_length,
        "max_position_embeddings": backbone.max_sequence_length,
    }


def config(backbone):
    return _common.base_config(
        backbone,
        backbone.num_query_heads,
        sequence_length=backbone.max_sequence_length,
        style="llama",
        num_key_value_heads=backbone.num_key_value_heads,
        layer_norm_epsilon=backbone.layer_norm_epsilon,
        max_wavelength=backbone.rope_max_wavelength,
        rope_scaling=_rope_scaling(backbone),
    )


def weights(backbone, model, transplant):
    _common.embeddings(backbone, model, transplant)
    for i, layer in enumerate(model.decoder_layers):
        path = f"transformer_layer_{i}"
        transplant.norm(f"{path}/pre_attention_layernorm", layer.self_attention_layer_norm)
        _common.attention(transplant, f"{path}/attention", layer.self_attention)
        transplant.norm(f"{path}/post_attention_layernorm", layer.feedforward_layer_norm)
        _common.gated_feedforward(transplant, path, layer.feedforward)
    transplant.norm("sequence_output_layernorm", model.final_norm_layer)

"""Llama 1/2/3.x, Mistral, Qwen2/2.5, Qwen3 and Mixtral: pre-norm RMSNorm, RoPE,
grouped-query attention, SwiGLU (Mixtral: a mixture of SwiGLU experts)."""

from keras_attention.convert.keras_hub import _common


def _rope_scaling(backbone):
    """Llama 3.1's frequency rescaling, or linear position interpolation."""
    if getattr(backbone, "rope_frequency_adjustment_factor", None) is not None:
        return {
            "type": "llama3",
            "factor": backbone.rope_frequency_adjustment_factor,
            "low_freq_factor": backbone.rope_low_freq_factor,
            "high_freq_factor": backbone.rope_high_freq_factor,
            "original_max_position_embeddings": backbone.rope_pretraining_sequence_length,
        }
    factor = getattr(backbone, "rope_position_scaling_factor", None)
    factor = getattr(backbone, "rope_scaling_factor", 1.0) if factor is None else factor
    return None if factor == 1.0 else {"type": "linear", "factor": factor}


def _sliding_window(backbone):
    """Mistral's and Mixtral's `sliding_window`, Qwen's `sliding_window_size` when
    `use_sliding_window_attention` is on."""
    if getattr(backbone, "use_sliding_window_attention", False):
        return backbone.sliding_window_size
    return getattr(backbone, "sliding_window", None)


def config(backbone):
    name = type(backbone).__name__
    options = {
        "style": "llama",
        "num_key_value_heads": backbone.num_key_value_heads,
        "layer_norm_epsilon": backbone.layer_norm_epsilon,
        "max_wavelength": backbone.rope_max_wavelength,
        "rope_scaling": _rope_scaling(backbone),
        "tie_embeddings": bool(getattr(backbone, "tie_word_embeddings", False)),
        "sliding_window": _sliding_window(backbone),
        "head_dim": getattr(backbone, "head_dim", None),
    }
    if name == "QwenBackbone":
        options["use_bias"] = ("query", "key", "value")
    if name == "Qwen3Backbone":
        options.update(
            query_norm="rms_norm", key_norm="rms_norm", qk_norm_epsilon=backbone.layer_norm_epsilon
        )
    if name == "MixtralBackbone":
        options.update(num_experts=backbone.num_experts, num_experts_per_token=backbone.top_k)
    return _common.base_config(backbone, backbone.num_query_heads, **options)


def weights(backbone, model, transplant):
    _common.embeddings(backbone, model, transplant)
    for i, layer in enumerate(model.decoder_layers):
        path = f"transformer_layer_{i}"
        attention = layer.self_attention
        transplant.norm(f"{path}/self_attention_layernorm", layer.self_attention_layer_norm)
        _common.attention(transplant, f"{path}/self_attention", attention)
        if attention.query_norm_layer is not None:
            for name, norm in (
                ("query", attention.query_norm_layer),
                ("key", attention.key_norm_layer),
            ):
                transplant.norm(f"{path}/self_attention/{name}_dense_layernorm", norm)
        transplant.norm(f"{path}/feedforward_layernorm", layer.feedforward_layer_norm)
        if getattr(layer, "num_experts", None):
            _experts(transplant, backbone.transformer_layers[i], layer.feedforward)
        else:
            _common.gated_feedforward(transplant, path, layer.feedforward)
    transplant.norm("sequence_output_layernorm", model.final_norm_layer)


def _experts(transplant, source, experts):
    """Mixtral's router and stacked expert kernels `(experts, in, out)`, read by
    attribute: keras-hub leaves the block's name to Keras' numbering."""
    block = source._sparse_moe_block
    transplant.copy(block._sparse_feedforward_gate_dense.kernel, experts.router.kernel)
    for name in ("gate", "intermediate", "output"):
        source_kernel = getattr(block.expert_bank, f"_expert_feedforward_{name}_dense")
        transplant.copy(source_kernel, getattr(experts, f"{name}_dense").kernel)

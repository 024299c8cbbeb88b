"""GPT-NeoX (Pythia): parallel residual (`x + attn(ln1(x)) + mlp(ln2(x))`), rotary
embeddings on a fraction of each head, LayerNorm with biases, one fused QKV
projection (per head `[query | key | value]`), tied token table."""

from keras_attention.convert.keras_hub import _common
from keras_attention.convert.keras_hub._transplant import split_last


def config(backbone):
    return _common.base_config(
        backbone,
        backbone.num_heads,
        sequence_length=backbone.max_sequence_length,
        style="llama",
        normalization="layer_norm",
        layer_norm_epsilon=backbone.layer_norm_epsilon,
        activation="gelu_tanh",
        use_bias=True,
        parallel_residual=True,
        rotary_fraction=backbone.rotary_percentage,
        max_wavelength=backbone.rotary_max_wavelength,
        tie_embeddings=True,
    )


def weights(backbone, model, transplant):
    _common.embeddings(backbone, model, transplant)
    for i, layer in enumerate(model.decoder_layers):
        path = f"transformer_layer_{i}"
        attention = layer.self_attention
        fused = f"{path}/self_attention/query_key_value"
        targets = (attention.query_dense, attention.key_dense, attention.value_dense)
        kernels = transplant.take(f"{fused}/kernel", lambda w: split_last(w, 3))
        biases = transplant.take(f"{fused}/bias", lambda w: split_last(w, 3))
        for target, kernel, bias in zip(targets, kernels, biases):
            transplant.put(target.kernel, kernel)
            transplant.put(target.bias, bias)
        transplant.dense(f"{path}/self_attention/attention_output", attention.output_dense)
        transplant.norm(f"{path}/self_attention_layer_norm", layer.self_attention_layer_norm)
        transplant.norm(f"{path}/feedforward_layer_norm", layer.feedforward_layer_norm)
        for name in ("intermediate", "output"):
            target = getattr(layer.feedforward, f"{name}_dense")
            transplant.dense(f"{path}/feedforward_{name}_dense", target)
    transplant.norm("layer_norm", model.final_norm_layer)

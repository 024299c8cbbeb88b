"""BLOOM: no position embeddings but ALiBi score biases, a LayerNorm on the
embeddings, pre-norm LayerNorm blocks with biases, tanh-approximate GELU, tied
token table."""

from keras_attention.convert.keras_hub import _common


def config(backbone):
    return _common.base_config(
        backbone,
        backbone.num_heads,
        style="gpt",
        position="none",
        score_bias="alibi",
        embedding_norm=True,
        normalize_first=True,
        final_norm=True,
        layer_norm_epsilon=backbone.layer_norm_epsilon,
        activation="gelu_tanh",
        tie_embeddings=True,
    )


def weights(backbone, model, transplant):
    _common.embeddings(backbone, model, transplant)
    transplant.norm("embedding_layernorm", model.embedding_norm_layer)
    for i, layer in enumerate(model.decoder_layers):
        path = f"transformer_layer_{i}"
        names = ("query_dense", "key_dense", "value_dense", "output_dense")
        _common.attention(transplant, f"{path}/self_attention", layer.self_attention, names=names)
        transplant.norm(f"{path}/pre_attention_layernorm", layer.self_attention_layer_norm)
        transplant.norm(f"{path}/post_attention_layernorm", layer.feedforward_layer_norm)
        transplant.dense(f"{path}/mlp_intermediate_dense", layer.feedforward.intermediate_dense)
        transplant.dense(f"{path}/mlp_output_dense", layer.feedforward.output_dense)
    transplant.norm("final_layernorm", model.final_norm_layer)

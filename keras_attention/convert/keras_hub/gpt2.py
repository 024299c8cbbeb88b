"""GPT-2: learned positions, pre-norm LayerNorm blocks with biases, tanh-approximate
GELU, a final LayerNorm, the token table tied to the output."""

from keras_attention.convert.keras_hub import _common


def config(backbone):
    return _common.base_config(
        backbone,
        backbone.num_heads,
        sequence_length=backbone.max_sequence_length,
        style="gpt",
        position="learned",
        normalize_first=True,
        final_norm=True,
        activation="gelu_tanh",
        layer_norm_epsilon=1e-5,
        tie_embeddings=True,
    )


def weights(backbone, model, transplant):
    _common.embeddings(backbone, model, transplant)
    transplant.copy(
        "position_embedding/embeddings", model.embedding.position_embedding.position_embeddings
    )
    for i, layer in enumerate(model.decoder_layers):
        path = f"transformer_layer_{i}"
        transplant.norm(f"{path}/self_attention_layer_norm", layer.self_attention_layer_norm)
        _common.attention(transplant, f"{path}/self_attention", layer.self_attention)
        transplant.norm(f"{path}/feedforward_layer_norm", layer.feedforward_layer_norm)
        transplant.dense(
            f"{path}/feedforward_intermediate_dense", layer.feedforward.intermediate_dense
        )
        transplant.dense(f"{path}/feedforward_output_dense", layer.feedforward.output_dense)
    transplant.norm("layer_norm", model.final_norm_layer)

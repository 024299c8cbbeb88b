"""keras-hub's `BartBackbone` -> :class:`Seq2SeqTransformer`.

BART: one token table for the encoder, the decoder and the tied output projection;
each side its own learned position table and a LayerNorm on its embeddings
(`layernorm_embedding`); post-norm blocks with biases everywhere, exact GELU,
LayerNorm epsilon 1e-5; no final norms.

Positions: Hugging Face's BART tables have two extra leading rows (fairseq's
offset of 2 for the padding index); keras-hub drops them when it converts a
checkpoint, so its `max_sequence_length` rows map row for row onto
`sequence_length` here, position `p` reading row `p`.

Token ids: BART's padding id is 1 and its id 0 (`<s>`) is a real token, so the
model is built with `mask_zero=False`: pass `encoder_padding_mask` (and a
`prompt_mask` or token lists) to `generate`.
"""

from keras_attention.convert.keras_hub import _common
from keras_attention.models.seq2seq_transformer import Seq2SeqTransformer

MODEL = Seq2SeqTransformer


def config(backbone):
    """The :class:`Seq2SeqTransformer` keyword arguments of a `BartBackbone`."""
    block = backbone.encoder_transformer_layers[0]
    return _common.base_config(
        backbone,
        backbone.num_heads,
        sequence_length=backbone.max_sequence_length,
        position="learned",
        share_embeddings="tokens",
        tie_embeddings=True,
        activation=_common.activation_name(block.activation),
        layer_norm_epsilon=block.layer_norm_epsilon,
        embedding_norm=True,
    )


def weights(backbone, model, transplant):
    """The weight map of a `BartBackbone` into `model` (built from :func:`config`)."""
    transplant.copy("token_embedding/embeddings", model.encoder_embedding.embeddings)
    for side in ("encoder", "decoder"):
        embedding = getattr(model, f"{side}_embedding")
        transplant.copy(
            f"{side}_position_embedding/embeddings", embedding.positions.position_embeddings
        )
        transplant.norm(f"{side}_embeddings_layer_norm", embedding.norm)
        for i, block in enumerate(getattr(model, f"{side}_layers")):
            path = f"transformer_{side}_layer_{i}"
            attentions = ("self_attention_layer",)
            if side == "decoder":  # keras-hub's decoder names its sublayers otherwise
                attentions = ("self_attention", "cross_attention")
            for name in attentions:
                ours = name.removesuffix("_layer")
                _common.attention(transplant, f"{path}/{name}", getattr(block, ours))
                transplant.norm(f"{path}/{ours}_layer_norm", getattr(block, f"{ours}_layer_norm"))
            feedforward = block.feedforward
            transplant.dense(
                f"{path}/feedforward_intermediate_dense", feedforward.intermediate_dense
            )
            transplant.dense(f"{path}/feedforward_output_dense", feedforward.output_dense)
            transplant.norm(f"{path}/feedforward_layer_norm", block.feedforward_layer_norm)

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

from keras_attention.convert.keras_hub import _transplant


def config(backbone):
    """The :class:`Seq2SeqTransformer` keyword arguments of a `BartBackbone`."""
    block = backbone.encoder_transformer_layers[0]
    return {
        "vocabulary_size": backbone.vocabulary_size,
        "sequence_length": backbone.max_sequence_length,
        "num_layers": backbone.num_layers,
        "embedding_dim": backbone.hidden_dim,
        "num_heads": backbone.num_heads,
        "intermediate_dim": backbone.intermediate_dim,
        "dropout": backbone.dropout,
        "position": "learned",
        "share_embeddings": "tokens",
        "tie_embeddings": True,
        "mask_zero": False,
        "activation": _transplant.activation_name(block.activation),
        "layer_norm_epsilon": block.layer_norm_epsilon,
        "embedding_norm": True,
    }


def weights(backbone, model):
    """Copy every weight of the `BartBackbone` into `model` (built from
    :func:`config`); a `ValueError` names any backbone weight left unplaced."""
    source = _transplant.SourceWeights(backbone, "BART")
    copy = _transplant.copy
    copy(source, backbone.token_embedding.embeddings, model.encoder_embedding.embeddings)
    for side in ("encoder", "decoder"):
        ours = getattr(model, f"{side}_embedding")
        positions = getattr(backbone, f"{side}_position_embedding")
        copy(source, positions.position_embeddings, ours.positions.position_embeddings)
        norm = getattr(backbone, f"{side}_embeddings_layer_norm")
        copy(source, norm.gamma, ours.norm.gamma)
        copy(source, norm.beta, ours.norm.beta)
        for theirs, block in zip(
            getattr(backbone, f"{side}_transformer_layers"), getattr(model, f"{side}_layers")
        ):
            _block(source, theirs, block)
    source.check_all_used()


def _block(source, theirs, ours):
    """A keras-hub `TransformerEncoder`/`TransformerDecoder` into ours."""
    copy = _transplant.copy
    for name in ("self_attention", "cross_attention"):
        attention = getattr(theirs, f"_{name}_layer", None)
        if attention is None:
            continue
        _transplant.keras_attention_layer(source, attention, getattr(ours, name))
        norm, our_norm = getattr(theirs, f"_{name}_layer_norm"), getattr(ours, f"{name}_layer_norm")
        copy(source, norm.gamma, our_norm.gamma)
        copy(source, norm.beta, our_norm.beta)
    for theirs_dense, ours_dense in (
        (theirs._feedforward_intermediate_dense, ours.feedforward.intermediate_dense),
        (theirs._feedforward_output_dense, ours.feedforward.output_dense),
    ):
        copy(source, theirs_dense.kernel, ours_dense.kernel)
        copy(source, theirs_dense.bias, ours_dense.bias)
    copy(source, theirs._feedforward_layer_norm.gamma, ours.feedforward_layer_norm.gamma)
    copy(source, theirs._feedforward_layer_norm.beta, ours.feedforward_layer_norm.beta)

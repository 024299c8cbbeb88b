"""keras-hub's `T5Backbone` -> :class:`Seq2SeqTransformer`.

T5: one token table for both sides and no absolute positions; a learned relative
position bias (32 buckets up to distance 128) computed by the first layer of each
stack and shared by all its self-attentions (bidirectional in the encoder, causal
in the decoder); unscaled attention (`attention_scale=1.0`); pre-norm blocks with
RMSNorm and no biases; a final RMSNorm on each stack; a ReLU feed-forward (v1.0) or
a gated one (v1.1, `use_gated_activation`: `act(x W_in) * (x W_gate)`); with tied
embeddings the decoder output is multiplied by `hidden_dim ** -0.5` before the
tied projection.

Token ids: T5's padding id 0 is also the decoder's start token, so the model is
built with `mask_zero=False`: pass `encoder_padding_mask` (and a `prompt_mask` or
token lists) to `generate`.
"""

from keras_attention.convert.keras_hub import _common
from keras_attention.models.seq2seq_transformer import Seq2SeqTransformer

MODEL = Seq2SeqTransformer
# keras-hub's gated feed-forward `act(x W_in) * (x W_gate)` by `act`, in this
# package's names (the gate's activation first, as `FeedForward` computes it).
_GATED = {"gelu": "geglu", "gelu_tanh": "geglu_tanh", "silu": "swiglu"}
# T5's relative attention buckets and distance (fixed in keras-hub).
_BUCKETS, _MAX_DISTANCE = 32, 128


def config(backbone, sequence_length=512):
    """The :class:`Seq2SeqTransformer` keyword arguments of a `T5Backbone`.

    `sequence_length` is the model's nominal longest sequence (relative positions
    need no table, so it bounds nothing; T5 was trained on 512)."""
    activation = _common.activation_name(backbone.activation)
    if backbone.use_gated_activation:
        if activation not in _GATED:
            raise ValueError(
                "This package has no gated feed-forward with the activation of this "
                f"T5Backbone (use_gated_activation=True). Received: activation="
                f"{activation!r}; supported: {sorted(_GATED)}"
            )
        activation = _GATED[activation]
    tied = backbone.tie_embedding_weights
    return _common.base_config(
        backbone,
        backbone.num_heads,
        sequence_length=sequence_length,
        position="relative",
        share_embeddings=True,
        tie_embeddings=tied,
        activation=activation,
        normalize_first=True,
        normalization="rms_norm",
        layer_norm_epsilon=backbone.layer_norm_epsilon,
        use_bias=False,
        head_dim=backbone.key_value_dim,
        attention_scale=1.0,
        relative_num_buckets=_BUCKETS,
        relative_max_distance=_MAX_DISTANCE,
        final_norm=True,
        output_scale=backbone.hidden_dim**-0.5 if tied else None,
    )


def weights(backbone, model, transplant):
    """The weight map of a `T5Backbone` into `model` (built from :func:`config`).

    By variable, not path: keras-hub numbers T5's norms per process
    (`t5_layer_norm_<n>`) and gives both stacks' biases one path."""
    table = backbone.token_embedding
    transplant.copy(table.embeddings, model.encoder_embedding.embeddings)
    if model.lm_head is not None:
        transplant.copy(table.reverse_embeddings, model.lm_head.kernel)
    for side in ("encoder", "decoder"):
        layers = getattr(backbone, f"{side}_transformer_layers")
        transplant.copy(
            layers[0].self_attention.relative_attention_bias,
            getattr(model, f"{side}_position_bias").embeddings,
        )
        for theirs, ours in zip(layers, getattr(model, f"{side}_layers")):
            _block(transplant, theirs, ours)
        final = getattr(backbone, f"{side}_layer_norm")
        transplant.copy(final.weight, getattr(model, f"{side}_final_norm").scale)


def _block(transplant, theirs, ours):
    """A `T5TransformerLayer` into our `TransformerEncoder`/`TransformerDecoder`."""
    norms = [("self_attention", theirs.self_attention_layer_norm)]
    if theirs.is_decoder:
        norms.append(("cross_attention", theirs.cross_attention_layer_norm))
    for name, norm in norms:
        attention, target = getattr(theirs, name), getattr(ours, name)
        for part in ("query", "key", "value", "output"):
            transplant.copy(
                getattr(attention, f"{part}_projector").kernel,
                getattr(target, f"{part}_dense").kernel,
            )
        transplant.copy(norm.weight, getattr(ours, f"{name}_layer_norm").scale)
    feedforward = ours.feedforward
    if theirs.use_gated_activation:  # act(x W_in) * (x W_gate): W_in is our gate
        transplant.copy(theirs.input_projector.kernel, feedforward.gate_dense.kernel)
        transplant.copy(theirs.gate_projector.kernel, feedforward.intermediate_dense.kernel)
    else:
        transplant.copy(theirs.input_projector.kernel, feedforward.intermediate_dense.kernel)
    transplant.copy(theirs.output_projector.kernel, feedforward.output_dense.kernel)
    transplant.copy(theirs.layer_norm.weight, ours.feedforward_layer_norm.scale)

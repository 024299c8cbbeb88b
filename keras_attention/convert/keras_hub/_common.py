"""What the keras-hub families share: the base config, the token table and output
projection, and the attention and feed-forward weight maps."""

import keras

# keras-hub's names of the query, key, value and output projections (most families).
ATTENTION_NAMES = ("query", "key", "value", "attention_output")
GATED_NAMES = (
    "feedforward_gate_dense",
    "feedforward_intermediate_dense",
    "feedforward_output_dense",
)


def base_config(backbone, num_heads, sequence_length=2048, **options):
    """The arguments every family has. Inference settings: no dropout, and token 0 is
    an ordinary token (`mask_zero=False`: padding is told by `generate`'s prompt mask).
    `sequence_length` only bounds learned position tables."""
    return {
        "vocabulary_size": backbone.vocabulary_size,
        "sequence_length": sequence_length,
        "num_layers": backbone.num_layers,
        "embedding_dim": backbone.hidden_dim,
        "num_heads": num_heads,
        "intermediate_dim": backbone.intermediate_dim,
        "dropout": 0.0,
        "mask_zero": False,
        **options,
    }


def embeddings(backbone, model, transplant):
    """The token table and, for untied models, the output projection (keras-hub's
    `reverse_embeddings`, `(hidden, vocabulary)` like our `lm_head` kernel)."""
    transplant.copy("token_embedding/embeddings", model.embedding.token_embedding.embeddings)
    if model.lm_head is not None:
        transplant.copy("token_embedding/reverse_embeddings", model.lm_head.kernel)


def attention(transplant, path, layer, transform=None, names=ATTENTION_NAMES):
    """Query, key, value and output projections of `layer` (our
    `MultiHeadAttention`) from `path/<name>`; `transform` for the three input
    kernels."""
    targets = (layer.query_dense, layer.key_dense, layer.value_dense, layer.output_dense)
    for name, target, kernel_transform in zip(names, targets, (transform,) * 3 + (None,)):
        transplant.dense(f"{path}/{name}", target, kernel_transform)


def gated_feedforward(transplant, path, feedforward, names=GATED_NAMES):
    """`gate(x) * up(x)` then down: our `gate_dense`, `intermediate_dense`,
    `output_dense` from `path/<name>`."""
    targets = (feedforward.gate_dense, feedforward.intermediate_dense, feedforward.output_dense)
    for name, target in zip(names, targets):
        transplant.dense(f"{path}/{name}", target)


def activation_name(function):
    """The name of a keras-hub activation function (a Keras one, or keras-hub's
    registered `gelu_approximate`) in this package's terms."""
    name = keras.activations.serialize(function)
    if isinstance(name, dict):
        name = name.get("config")
    name = str(name).split(">")[-1]
    return {"gelu_approximate": "gelu_tanh"}.get(name, name)

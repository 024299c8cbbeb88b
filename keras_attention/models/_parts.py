"""Argument checks and layer factories shared by the builders and model classes."""

from keras_attention import _validation
from keras_attention.layers.positional import TokenAndPositionEmbedding
from keras_attention.layers.transformer_encoder import TransformerEncoder


def check_common(
    vocabulary_size,
    sequence_length,
    num_layers,
    embedding_dim,
    num_heads,
    intermediate_dim,
    dropout,
):
    for name, value in (
        ("vocabulary_size", vocabulary_size),
        ("sequence_length", sequence_length),
        ("num_layers", num_layers),
        ("embedding_dim", embedding_dim),
        ("num_heads", num_heads),
        ("intermediate_dim", intermediate_dim),
    ):
        _validation.check_positive_int(value, name)
    _validation.check_rate(dropout, "dropout")
    if embedding_dim % num_heads:
        raise ValueError(
            "`embedding_dim` must be divisible by `num_heads` (each head gets "
            f"embedding_dim // num_heads features). Received: embedding_dim="
            f"{embedding_dim}, num_heads={num_heads}"
        )


def embedding(
    name, vocabulary_size, sequence_length, embedding_dim, position, scale, mask_zero=True
):
    return TokenAndPositionEmbedding(
        vocabulary_size,
        sequence_length,
        embedding_dim,
        mask_zero=mask_zero,
        position=position,
        scale_by_sqrt_dim=scale,
        name=name,
    )


def encoder_layers(num_layers, num_heads, intermediate_dim, dropout):
    return [
        TransformerEncoder(num_heads, intermediate_dim, dropout=dropout, name=f"encoder_layer_{i}")
        for i in range(num_layers)
    ]

"""Model builders: a Transformer classifier, and the generative models
(:class:`CausalLanguageModel`, :class:`Seq2SeqTransformer`) with keyword arguments.

Every builder takes the keyword arguments `vocabulary_size, sequence_length,
num_layers, embedding_dim, num_heads, intermediate_dim, dropout` plus its own;
`causal_language_model` and `transformer_seq2seq` are shorthands of the model
classes and pass every argument on to them (their defaults are the classes'). With
`mask_zero=True` (the default) token id 0 is padding: the Keras mask it produces
flows through the blocks, so padded positions are never attended, and the logits of
the language models carry it, so `fit` leaves padded targets out of the loss.

The layers get stable names (`token_embedding`, `encoder_embedding`,
`decoder_embedding`, `shared_embedding`, `encoder_layer_{i}`, `decoder_layer_{i}`,
`lm_head`) for `summary()` and `get_layer`; generation never looks them up.
"""

import keras

from keras_attention import _validation
from keras_attention.models import _parts
from keras_attention.models.causal_language_model import CausalLanguageModel
from keras_attention.models.seq2seq_transformer import Seq2SeqTransformer

__all__ = [
    "transformer_classifier",
    "transformer_seq2seq",
    "causal_language_model",
    "transformer_base",
]


def transformer_classifier(
    *,
    vocabulary_size,
    sequence_length,
    num_layers=2,
    embedding_dim=64,
    num_heads=4,
    intermediate_dim=128,
    dropout=0.1,
    num_classes=2,
    position="learned",
    name="transformer_classifier",
):
    """A Transformer-encoder text classifier.

    tokens -> `TokenAndPositionEmbedding` -> dropout -> `num_layers` x
    `TransformerEncoder` -> mean over the real (unmasked) tokens -> dropout ->
    `Dense(num_classes)`.

    Args:
        vocabulary_size, sequence_length, num_layers, embedding_dim, num_heads,
        intermediate_dim, dropout: see the module docstring.
        num_classes: positive int.
        position: `"learned"` or `"sinusoidal"` position encoding.
        name: model name.

    Returns:
        A `keras.Model` from int tokens `(batch, seq)` (`seq <= sequence_length`,
        0 = padding) to class logits `(batch, num_classes)`; compile it with
        `SparseCategoricalCrossentropy(from_logits=True)`.

    Example:
    >>> model = transformer_classifier(vocabulary_size=100, sequence_length=16,
    ...                                num_classes=3)
    >>> model.output_shape
    (None, 3)
    """
    config = _parts.config_from_arguments(locals())
    _parts.check_common(config)
    _validation.check_positive_int(num_classes, "num_classes")
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = _parts.embedding("token_embedding", config)(tokens)
    x = keras.layers.Dropout(dropout, name="embedding_dropout")(x)
    for layer in _parts.encoder_layers(config):
        x = layer(x)
    x = keras.layers.GlobalAveragePooling1D(name="pooling")(x)
    x = keras.layers.Dropout(dropout, name="pooled_dropout")(x)
    logits = keras.layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(tokens, logits, name=name)


def causal_language_model(*, vocabulary_size, sequence_length, **kwargs):
    """A decoder-only (GPT-style) language model: `CausalLanguageModel(...)`.

    tokens -> `TokenAndPositionEmbedding` (`token_embedding`) -> dropout ->
    `num_layers` x `TransformerDecoder` without cross-attention
    (`decoder_layer_{i}`) -> `Dense(vocabulary_size)` (`lm_head`), or with
    `tie_embeddings=True` the transposed token table.

    Args:
        vocabulary_size, sequence_length: see the module docstring.
        **kwargs: the other arguments of :class:`CausalLanguageModel`, with its
            defaults: `num_layers`, `embedding_dim`, `num_heads`,
            `intermediate_dim`, `dropout` (see the module docstring); `position`
            (`"learned"`, `"sinusoidal"`, `"rotary"` or `"none"`); `tie_embeddings`;
            `mask_zero` (token id 0 is padding, the default; `False` makes it a
            token); `style` (`"gpt"` or `"llama"`: pre-norm RMSNorm, RoPE, SwiGLU,
            no biases, final RMSNorm), a shorthand for the explicit architecture
            options (`normalization`, `activation`, `use_bias`, `head_dim`,
            `rope_scaling`, `layer_types`, ...; see :class:`CausalLanguageModel`);
            `num_key_value_heads`, `sliding_window`, `soft_cap` (grouped-query heads,
            a Mistral-style window,
            Gemma-2 soft-cap); `name` (default `"causal_language_model"`).

    Returns:
        A :class:`CausalLanguageModel` (a functional `keras.Model` from int tokens
        `(batch, seq)` to next-token logits `(batch, seq, vocabulary_size)`:
        position `t` predicts token `t + 1`) with a compiled `generate()`.

    Example:
    >>> model = causal_language_model(vocabulary_size=50, sequence_length=32)
    >>> model.output_shape
    (None, None, 50)
    >>> llama = causal_language_model(
    ...     vocabulary_size=50, sequence_length=32, style="llama", num_key_value_heads=2
    ... )
    >>> llama.generate([[1, 2, 3]], max_new_tokens=2).shape
    (1, 5)
    """
    return CausalLanguageModel(
        vocabulary_size=vocabulary_size, sequence_length=sequence_length, **kwargs
    )


def transformer_seq2seq(*, vocabulary_size, sequence_length, **kwargs):
    """An encoder-decoder Transformer for sequence-to-sequence tasks:
    `Seq2SeqTransformer(...)`.

    encoder tokens -> embedding -> `num_layers` x `TransformerEncoder`
    (`encoder_layer_{i}`); decoder tokens -> embedding -> `num_layers` x
    `TransformerDecoder` with cross-attention to the encoder output
    (`decoder_layer_{i}`) -> next-token logits (`lm_head`, or the tied table).

    Args:
        vocabulary_size, sequence_length: see the module docstring; the vocabulary
            and the maximum length are those of both sides.
        **kwargs: the other arguments of :class:`Seq2SeqTransformer`, with its
            defaults: `num_layers`, `embedding_dim`, `num_heads`,
            `intermediate_dim`, `dropout` (see the module docstring); `position`
            (`"learned"` or `"sinusoidal"`); `share_embeddings` (one token table,
            `shared_embedding`, for source and target, instead of
            `encoder_embedding` and `decoder_embedding`); `tie_embeddings` (the
            output projection is the decoder's token table, transposed; no
            `lm_head`); `scale_embeddings` (multiply token embeddings by
            `sqrt(embedding_dim)`); `mask_zero` (token id 0 is padding, the
            default); the architecture options of BART and T5 (`activation`,
            `normalize_first`, `normalization`, `layer_norm_epsilon`, `use_bias`,
            `head_dim`, `attention_scale`, `position="relative"` with
            `relative_num_buckets`/`relative_max_distance`,
            `share_embeddings="tokens"`, `embedding_norm`, `final_norm`,
            `output_scale`; see the class); `name` (default
            `"transformer_seq2seq"`).

    Returns:
        A :class:`Seq2SeqTransformer` (with `generate()`): inputs `[encoder_tokens (batch, src_seq),
        decoder_tokens (batch, tgt_seq)]` and output next-token logits
        `(batch, tgt_seq, vocabulary_size)`. Train with teacher forcing: decoder
        tokens `[start, y_1, ..., y_{n-1}]`, targets `[y_1, ..., y_n]`.

    Example:
    >>> model = transformer_seq2seq(vocabulary_size=50, sequence_length=16)
    >>> model.output_shape
    (None, None, 50)
    """
    return Seq2SeqTransformer(
        vocabulary_size=vocabulary_size, sequence_length=sequence_length, **kwargs
    )


def transformer_base(
    vocabulary_size=37000, sequence_length=256, dropout=0.1, name="transformer_base"
):
    """The base Transformer of "Attention Is All You Need" (Vaswani et al., 2017).

    N = 6 encoder and 6 decoder blocks, d_model = 512, d_ff = 2048, h = 8,
    d_k = d_v = 64, P_drop = 0.1, post-norm, sinusoidal positions, one token table
    shared by source, target and the pre-softmax projection, embeddings multiplied
    by sqrt(d_model) (section 3.4). Built with :func:`transformer_seq2seq`.

    Parameters (with `V = vocabulary_size`, `d = 512`, `f = 2048`):
    `V d` (shared table) `+ 6 (4 d^2 + 4 d + 2 d f + f + d + 4 d)` (encoder)
    `+ 6 (8 d^2 + 8 d + 2 d f + f + d + 6 d)` (decoder)
    `= 512 V + 44,138,496`, i.e. **63,082,496** for `V = 37000`.

    The paper's Table 3 gives "65M" without a formula. The difference is mostly
    the vocabulary: each token costs 512 parameters, and 65M would need about
    40,800 tokens, while "37000" is the paper's round number for its shared BPE
    vocabulary. Weight tying matters most: untied source, target and output
    tables would add `2 V d` = 37.9M (101M in total), so the paper's count is for
    a tied model as here. Biases (`4 d` per attention, `f + d` per FFN, 0.2M in
    all) and LayerNorm scales/offsets (`2 d` each, 0.05M) are counted here and
    are too small to explain the gap; sinusoidal positions have no parameters.

    Args:
        vocabulary_size: size of the shared source/target vocabulary.
        sequence_length: longest sequence (only bounds `generate`; sinusoidal
            positions work at any length).
        dropout: `P_drop`.
        name: model name.

    Returns:
        The :class:`Seq2SeqTransformer` of :func:`transformer_seq2seq` (inputs encoder and
        decoder tokens, output next-token logits).
    """
    return transformer_seq2seq(
        vocabulary_size=vocabulary_size,
        sequence_length=sequence_length,
        num_layers=6,
        embedding_dim=512,
        num_heads=8,
        intermediate_dim=2048,
        dropout=dropout,
        position="sinusoidal",
        share_embeddings=True,
        tie_embeddings=True,
        scale_embeddings=True,
        name=name,
    )

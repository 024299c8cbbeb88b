"""Model builders (functional `keras.Model`s made of this package's layers) and `generate`.

Every builder takes the keyword arguments `vocabulary_size, sequence_length,
num_layers, embedding_dim, num_heads, intermediate_dim, dropout` plus its own. Token
id 0 is padding everywhere (`mask_zero=True`): the Keras mask it produces flows
through the blocks, so padded positions are never attended, and the logits of the
language models carry it, so `fit` leaves padded targets out of the loss.

The layers get stable names (`token_embedding`, `encoder_embedding`,
`decoder_embedding`, `shared_embedding`, `encoder_layer_{i}`, `decoder_layer_{i}`,
`lm_head`); :func:`generate` finds them by these names to decode with the
key/value cache.
"""

import numbers

import keras
import numpy as np
from keras import ops

from keras_attention.layers import _common
from keras_attention.layers.positional import TokenAndPositionEmbedding
from keras_attention.layers.transformer import TransformerDecoder, TransformerEncoder

__all__ = [
    "transformer_classifier",
    "transformer_seq2seq",
    "causal_language_model",
    "transformer_base",
    "generate",
]


def _check_common(vocabulary_size, sequence_length, num_layers, embedding_dim,
                  num_heads, intermediate_dim, dropout):
    for name, value in (
        ("vocabulary_size", vocabulary_size),
        ("sequence_length", sequence_length),
        ("num_layers", num_layers),
        ("embedding_dim", embedding_dim),
        ("num_heads", num_heads),
        ("intermediate_dim", intermediate_dim),
    ):
        _common.check_positive_int(value, name)
    _common.check_rate(dropout, "dropout")
    if embedding_dim % num_heads:
        raise ValueError(
            "`embedding_dim` must be divisible by `num_heads` (each head gets "
            f"embedding_dim // num_heads features). Received: embedding_dim="
            f"{embedding_dim}, num_heads={num_heads}"
        )


def _embedding(name, vocabulary_size, sequence_length, embedding_dim, position,
               scale):
    return TokenAndPositionEmbedding(
        vocabulary_size,
        sequence_length,
        embedding_dim,
        mask_zero=True,
        position=position,
        scale_by_sqrt_dim=scale,
        name=name,
    )


def _encoder_stack(x, num_layers, num_heads, intermediate_dim, dropout):
    for i in range(num_layers):
        x = TransformerEncoder(
            num_heads, intermediate_dim, dropout=dropout, name=f"encoder_layer_{i}"
        )(x)
    return x


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
    _check_common(vocabulary_size, sequence_length, num_layers, embedding_dim,
                  num_heads, intermediate_dim, dropout)
    _common.check_positive_int(num_classes, "num_classes")
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = _embedding("token_embedding", vocabulary_size, sequence_length,
                   embedding_dim, position, False)(tokens)
    x = keras.layers.Dropout(dropout, name="embedding_dropout")(x)
    x = _encoder_stack(x, num_layers, num_heads, intermediate_dim, dropout)
    x = keras.layers.GlobalAveragePooling1D(name="pooling")(x)
    x = keras.layers.Dropout(dropout, name="pooled_dropout")(x)
    logits = keras.layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(tokens, logits, name=name)


def causal_language_model(
    *,
    vocabulary_size,
    sequence_length,
    num_layers=2,
    embedding_dim=64,
    num_heads=4,
    intermediate_dim=128,
    dropout=0.1,
    position="learned",
    tie_embeddings=False,
    name="causal_language_model",
):
    """A decoder-only (GPT-style) language model.

    tokens -> `TokenAndPositionEmbedding` (`token_embedding`) -> dropout ->
    `num_layers` x `TransformerDecoder` without cross-attention
    (`decoder_layer_{i}`) -> `Dense(vocabulary_size)` (`lm_head`), or with
    `tie_embeddings=True` the transposed token table.

    Args:
        vocabulary_size, sequence_length, num_layers, embedding_dim, num_heads,
        intermediate_dim, dropout: see the module docstring.
        position: `"learned"` or `"sinusoidal"` position encoding.
        tie_embeddings: reuse the token table as the output projection.
        name: model name.

    Returns:
        A `keras.Model` from int tokens `(batch, seq)` to next-token logits
        `(batch, seq, vocabulary_size)`: position `t` predicts token `t + 1`.

    Example:
    >>> model = causal_language_model(vocabulary_size=50, sequence_length=32)
    >>> model.output_shape
    (None, None, 50)
    """
    _check_common(vocabulary_size, sequence_length, num_layers, embedding_dim,
                  num_heads, intermediate_dim, dropout)
    _common.check_bool(tie_embeddings, "tie_embeddings")
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    embedding = _embedding("token_embedding", vocabulary_size, sequence_length,
                           embedding_dim, position, False)
    x = keras.layers.Dropout(dropout, name="embedding_dropout")(embedding(tokens))
    for i in range(num_layers):
        x = TransformerDecoder(
            num_heads, intermediate_dim, dropout=dropout, name=f"decoder_layer_{i}"
        )(x)
    logits = _output_logits(x, embedding, vocabulary_size, tie_embeddings)
    return keras.Model(tokens, logits, name=name)


def _output_logits(x, embedding, vocabulary_size, tie_embeddings):
    if tie_embeddings:
        return embedding(x, reverse=True)
    return keras.layers.Dense(vocabulary_size, name="lm_head")(x)


def transformer_seq2seq(
    *,
    vocabulary_size,
    sequence_length,
    num_layers=2,
    embedding_dim=64,
    num_heads=4,
    intermediate_dim=128,
    dropout=0.1,
    position="learned",
    share_embeddings=False,
    tie_embeddings=False,
    scale_embeddings=False,
    name="transformer_seq2seq",
):
    """An encoder-decoder Transformer for sequence-to-sequence tasks.

    encoder tokens -> embedding -> `num_layers` x `TransformerEncoder`
    (`encoder_layer_{i}`); decoder tokens -> embedding -> `num_layers` x
    `TransformerDecoder` with cross-attention to the encoder output
    (`decoder_layer_{i}`) -> next-token logits (`lm_head`, or the tied table).

    Args:
        vocabulary_size, sequence_length, num_layers, embedding_dim, num_heads,
        intermediate_dim, dropout: see the module docstring; the vocabulary and the
            maximum length are those of both sides.
        position: `"learned"` or `"sinusoidal"` position encoding.
        share_embeddings: one token table (`shared_embedding`) for source and
            target, instead of `encoder_embedding` and `decoder_embedding`.
        tie_embeddings: the output projection is the (decoder's) token table,
            transposed; no `lm_head`.
        scale_embeddings: multiply token embeddings by `sqrt(embedding_dim)`.
        name: model name.

    Returns:
        A `keras.Model` with inputs `[encoder_tokens (batch, src_seq),
        decoder_tokens (batch, tgt_seq)]` and output next-token logits
        `(batch, tgt_seq, vocabulary_size)`. Train with teacher forcing: decoder
        tokens `[start, y_1, ..., y_{n-1}]`, targets `[y_1, ..., y_n]`.

    Example:
    >>> model = transformer_seq2seq(vocabulary_size=50, sequence_length=16)
    >>> model.output_shape
    (None, None, 50)
    """
    _check_common(vocabulary_size, sequence_length, num_layers, embedding_dim,
                  num_heads, intermediate_dim, dropout)
    for flag in ("share_embeddings", "tie_embeddings", "scale_embeddings"):
        _common.check_bool(locals()[flag], flag)
    encoder_tokens = keras.Input((None,), dtype="int32", name="encoder_tokens")
    decoder_tokens = keras.Input((None,), dtype="int32", name="decoder_tokens")
    args = (vocabulary_size, sequence_length, embedding_dim, position,
            scale_embeddings)
    if share_embeddings:
        encoder_embedding = decoder_embedding = _embedding("shared_embedding", *args)
    else:
        encoder_embedding = _embedding("encoder_embedding", *args)
        decoder_embedding = _embedding("decoder_embedding", *args)

    x = encoder_embedding(encoder_tokens)
    x = keras.layers.Dropout(dropout, name="encoder_embedding_dropout")(x)
    encoded = _encoder_stack(x, num_layers, num_heads, intermediate_dim, dropout)

    y = decoder_embedding(decoder_tokens)
    y = keras.layers.Dropout(dropout, name="decoder_embedding_dropout")(y)
    for i in range(num_layers):
        y = TransformerDecoder(
            num_heads, intermediate_dim, dropout=dropout, name=f"decoder_layer_{i}"
        )(y, encoded)
    logits = _output_logits(y, decoder_embedding, vocabulary_size, tie_embeddings)
    return keras.Model([encoder_tokens, decoder_tokens], logits, name=name)


def transformer_base(vocabulary_size=37000, sequence_length=256, dropout=0.1,
                     name="transformer_base"):
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
        The `keras.Model` of :func:`transformer_seq2seq` (inputs encoder and
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


# --- generation ----------------------------------------------------------------------


_STRATEGIES = ("greedy", "sample")


def generate(
    model,
    prompt,
    max_new_tokens,
    strategy="greedy",
    temperature=1.0,
    top_k=None,
    seed=None,
    encoder_tokens=None,
    use_cache=True,
):
    """Extend `prompt` by `max_new_tokens` tokens, one at a time.

    For models made by :func:`causal_language_model` and :func:`transformer_seq2seq`
    (found by their layer names) the decoder runs with its key/value cache: the
    prompt is processed once, then each new token costs one position, not the
    whole prefix. `use_cache=False` instead runs `model` on the whole sequence at
    every step; it works for any model mapping tokens to `(batch, seq, vocab)`
    logits and gives the same tokens.

    Args:
        model: a `keras.Model` from this module.
        prompt: int array `(batch, prompt_len)`, `prompt_len >= 1` (for a seq2seq
            model, the decoder start, e.g. a start-of-sequence token).
        max_new_tokens: positive int.
        strategy: `"greedy"` (argmax) or `"sample"` (from
            `softmax(logits / temperature)`, restricted to the `top_k` most likely
            tokens if given).
        temperature: positive float, for `"sample"`.
        top_k: positive int or `None`, for `"sample"`.
        seed: int, seed of the sampler (numpy), for reproducible samples.
        encoder_tokens: int array `(batch, src_len)`, required for seq2seq models.
        use_cache: decode incrementally with the cache (default) or recompute.

    Returns:
        A numpy int32 array `(batch, prompt_len + max_new_tokens)`: the prompt
        followed by the new tokens.

    Example:
    >>> model = causal_language_model(vocabulary_size=20, sequence_length=16)
    >>> generate(model, [[1, 2, 3]], max_new_tokens=4).shape
    (1, 7)
    """
    prompt = _check_tokens(prompt, "prompt")
    _common.check_positive_int(max_new_tokens, "max_new_tokens")
    if strategy not in _STRATEGIES:
        raise ValueError(
            f"`strategy` must be one of {_STRATEGIES}. Received: strategy={strategy!r}"
        )
    if isinstance(temperature, bool) or not isinstance(
        temperature, numbers.Real
    ) or temperature <= 0:
        raise ValueError(
            f"`temperature` must be a positive float. Received: temperature={temperature!r}"
        )
    _common.check_positive_int(top_k, "top_k", allow_none=True)
    _common.check_bool(use_cache, "use_cache")
    parts = _model_parts(model)
    if parts["encoder_layers"]:
        if encoder_tokens is None:
            raise ValueError(
                f"Model '{model.name}' is an encoder-decoder: `encoder_tokens` "
                "(batch, src_len) is required. Received: encoder_tokens=None"
            )
        encoder_tokens = _check_tokens(encoder_tokens, "encoder_tokens")
        if encoder_tokens.shape[0] != prompt.shape[0]:
            raise ValueError(
                "`encoder_tokens` and `prompt` must have the same batch size. Received: "
                f"encoder_tokens.shape={encoder_tokens.shape}, prompt.shape={prompt.shape}"
            )
    elif encoder_tokens is not None:
        raise ValueError(
            f"Model '{model.name}' has no encoder; `encoder_tokens` must be None. "
            f"Received: encoder_tokens.shape={np.shape(encoder_tokens)}"
        )
    total = prompt.shape[1] + max_new_tokens
    embedding = parts["decoder_embedding"]
    if embedding.position == "learned" and total > embedding.sequence_length:
        raise ValueError(
            f"prompt length + max_new_tokens ({prompt.shape[1]} + {max_new_tokens}) "
            f"exceeds the model's sequence_length={embedding.sequence_length}. "
            f"Received: prompt.shape={prompt.shape}, max_new_tokens={max_new_tokens}"
        )
    rng = np.random.default_rng(seed)

    def choose(logits):
        return _choose(np.asarray(logits, "float64"), strategy, temperature, top_k, rng)

    if use_cache:
        return _generate_cached(parts, prompt, max_new_tokens, encoder_tokens, choose)
    tokens = prompt
    for _ in range(max_new_tokens):
        inputs = tokens if encoder_tokens is None else [encoder_tokens, tokens]
        logits = ops.convert_to_numpy(model(inputs, training=False))
        tokens = np.concatenate([tokens, choose(logits[:, -1])[:, None]], axis=1)
    return tokens


def _check_tokens(tokens, name):
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 1 or not np.issubdtype(
        tokens.dtype, np.integer
    ):
        raise ValueError(
            f"`{name}` must be integer tokens of shape (batch, length) with "
            f"length >= 1. Received: {name}.shape={tokens.shape}, dtype={tokens.dtype}"
        )
    return tokens.astype("int32")


def _model_parts(model):
    names = {layer.name: layer for layer in model.layers}

    def stack(prefix):
        layers, i = [], 0
        while f"{prefix}_{i}" in names:
            layers.append(names[f"{prefix}_{i}"])
            i += 1
        return layers

    decoder_embedding = next(
        (names[n] for n in ("decoder_embedding", "shared_embedding", "token_embedding")
         if n in names),
        None,
    )
    decoder_layers = stack("decoder_layer")
    if decoder_embedding is None or not decoder_layers:
        raise ValueError(
            "`model` must be built by `causal_language_model` or "
            "`transformer_seq2seq` (layers named `token_embedding`/"
            "`decoder_embedding` and `decoder_layer_0`, ...). Received: model "
            f"'{model.name}' with layers {sorted(names)}; pass use_cache=False to "
            "generate by recomputing the full sequence."
        )
    return {
        "decoder_embedding": decoder_embedding,
        "encoder_embedding": names.get("encoder_embedding", names.get("shared_embedding")),
        "encoder_layers": stack("encoder_layer"),
        "decoder_layers": decoder_layers,
        "lm_head": names.get("lm_head"),
    }


def _generate_cached(parts, prompt, max_new_tokens, encoder_tokens, choose):
    batch, prompt_len = prompt.shape
    total = prompt_len + max_new_tokens
    encoded = None
    if encoder_tokens is not None:
        encoded = parts["encoder_embedding"](encoder_tokens)
        for layer in parts["encoder_layers"]:
            encoded = layer(encoded, training=False)
    caches = [layer.get_initial_cache(batch, total) for layer in parts["decoder_layers"]]
    tokens = np.zeros((batch, total), "int32")
    tokens[:, :prompt_len] = prompt
    # Padding (token 0) among earlier tokens stays masked as a key, as in the full
    # forward pass, where the embedding's Keras mask covers the whole sequence.
    step_tokens, start = prompt, 0
    for position in range(prompt_len, total):
        x = parts["decoder_embedding"](step_tokens, start_index=start)
        keep = tokens != 0
        for i, layer in enumerate(parts["decoder_layers"]):
            x, caches[i] = layer(
                x, encoded, decoder_padding_mask=keep, self_attention_cache=caches[i],
                cache_index=start, training=False,
            )
        x = x[:, -1:]
        if parts["lm_head"] is not None:
            logits = parts["lm_head"](x)
        else:
            logits = parts["decoder_embedding"](x, reverse=True)
        tokens[:, position] = choose(ops.convert_to_numpy(logits)[:, -1])
        step_tokens, start = tokens[:, position:position + 1], position
    return tokens


def _choose(logits, strategy, temperature, top_k, rng):
    if strategy == "greedy":
        return np.argmax(logits, axis=-1).astype("int32")
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = np.sort(logits, axis=-1)[:, -top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    logits = logits - logits.max(-1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(-1, keepdims=True)
    return np.array([rng.choice(probs.shape[-1], p=p) for p in probs], "int32")


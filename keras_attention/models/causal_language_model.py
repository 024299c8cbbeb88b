"""`CausalLanguageModel`: a decoder-only (GPT-style) Transformer that owns `generate()`."""

import warnings

import keras

from keras_attention import _validation
from keras_attention.layers.rms_norm import RMSNorm
from keras_attention.layers.transformer_decoder import TransformerDecoder
from keras_attention.models import _parts
from keras_attention.models._adaptation import AdaptationMixin
from keras_attention.models.generation import deprecated
from keras_attention.models.generation.loop import GenerativeMixin

# The block settings of style="llama": pre-norm RMSNorm, RoPE, SwiGLU, no biases.
_LLAMA_BLOCK = {
    "normalize_first": True,
    "normalization": "rms_norm",
    "layer_norm_epsilon": 1e-6,
    "use_bias": False,
    "activation": "swiglu",
    "position_embedding": "rotary",
}


@keras.saving.register_keras_serializable(package="keras_attention")
class CausalLanguageModel(AdaptationMixin, GenerativeMixin, keras.Model):
    """A decoder-only language model: next-token logits and compiled generation.

    tokens -> `TokenAndPositionEmbedding` (`embedding`, layer name
    `token_embedding`) -> dropout -> `num_layers` x `TransformerDecoder` without
    cross-attention (`decoder_layers`, `decoder_layer_{i}`) -> `Dense(vocabulary_size)`
    (`lm_head`), or with `tie_embeddings=True` the transposed token table
    (`lm_head` is then `None`).

    `style="llama"` builds a Llama-shaped decoder instead: token embeddings only
    (positions come from rotary embeddings in every attention), pre-norm blocks with
    :class:`RMSNorm`, RoPE, grouped-query heads (`num_key_value_heads`), a SwiGLU
    feed-forward and no biases anywhere, a final RMSNorm (`final_norm`), and a
    bias-free `lm_head` (or the tied token table).

    Built functionally in `__init__` (like keras-hub's backbones), so `summary()`,
    `fit`, `.keras` save/load (no `custom_objects`) and `model.export` work as for
    any functional model; the parts are attributes, never looked up by name.

    Package-internal step API, used by `generate()` and `keras_attention.export`
    (see :class:`~keras_attention.models.generation.GenerativeMixin`):
    `initial_cache(batch_size, max_length)`, `call_with_cache(tokens, cache, index,
    key_mask=None, encoder_state=None, return_logits=True) -> (logits, cache)`,
    `left_align(tokens, mask) -> (tokens, lengths)` and `generate_graph(tokens, mask,
    max_new_tokens, stop_token_ids=(), pad_token_id=0)`.

    Args:
        vocabulary_size: positive int.
        sequence_length: positive int, the longest sequence (size of the learned
            position table; bounds prompt + new tokens in `generate`).
        num_layers, embedding_dim, num_heads, intermediate_dim: positive ints;
            `embedding_dim` divisible by `num_heads`.
        dropout: float in `[0, 1)`.
        position: `"learned"` or `"sinusoidal"` position encoding (default
            `"learned"`; `"none"`, the only choice, for `style="llama"`).
        tie_embeddings: reuse the token table as the output projection.
        mask_zero: token id 0 is padding (masked as a key, and left out of the loss
            by `fit`); with `False` it is an ordinary token.
        style: `"gpt"` (post-norm blocks with LayerNorm, biases, ReLU, learned or
            sinusoidal positions) or `"llama"` (see above).
        num_key_value_heads: positive int dividing `num_heads` (grouped-query
            attention); default `num_heads`.
        sliding_window: optional positive int, each token attends to the last
            `sliding_window` tokens (Mistral); the generation cache is then a ring
            of that many positions.
        soft_cap: optional positive float, attention logit soft-capping (Gemma 2).
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

    Call arguments:
        tokens: int `(batch, seq)`.

    Returns:
        Next-token logits `(batch, seq, vocabulary_size)`: position `t` predicts
        token `t + 1`.

    Example:
    >>> model = CausalLanguageModel(vocabulary_size=50, sequence_length=32)
    >>> model.output_shape
    (None, None, 50)
    >>> model.generate([[1, 2, 3]], max_new_tokens=4).shape
    (1, 7)
    """

    def __init__(
        self,
        vocabulary_size,
        sequence_length,
        num_layers=2,
        embedding_dim=64,
        num_heads=4,
        intermediate_dim=128,
        dropout=0.1,
        position=None,
        tie_embeddings=False,
        mask_zero=True,
        style="gpt",
        num_key_value_heads=None,
        sliding_window=None,
        soft_cap=None,
        **kwargs,
    ):
        _parts.check_model_kwargs(kwargs, "CausalLanguageModel")
        config = dict(
            vocabulary_size=vocabulary_size,
            sequence_length=sequence_length,
            num_layers=num_layers,
            embedding_dim=embedding_dim,
            num_heads=num_heads,
            intermediate_dim=intermediate_dim,
            dropout=dropout,
            position=position,
            tie_embeddings=tie_embeddings,
            mask_zero=mask_zero,
            style=style,
            num_key_value_heads=num_key_value_heads,
            sliding_window=sliding_window,
            soft_cap=soft_cap,
        )
        config["position"] = _check_arguments(config)
        kwargs.setdefault("name", "causal_language_model")
        llama = style == "llama"
        # === Layers ===
        embedding = _parts.embedding("token_embedding", config)
        embedding_dropout = keras.layers.Dropout(dropout, name="embedding_dropout")
        decoder_layers = [
            TransformerDecoder(
                intermediate_dim,
                num_heads,
                dropout=dropout,
                num_key_value_heads=num_key_value_heads,
                sliding_window=sliding_window,
                soft_cap=soft_cap,
                name=f"decoder_layer_{i}",
                **(_LLAMA_BLOCK if llama else {}),
            )
            for i in range(num_layers)
        ]
        final_norm = RMSNorm(epsilon=1e-6, name="final_norm") if llama else None
        lm_head = None
        if not tie_embeddings:
            lm_head = keras.layers.Dense(vocabulary_size, use_bias=not llama, name="lm_head")
        # === Functional model ===
        tokens = keras.Input((None,), dtype="int32", name="tokens")
        x = embedding_dropout(embedding(tokens))
        for layer in decoder_layers:
            x = layer(x)
        if final_norm is not None:
            x = final_norm(x)
        logits = embedding(x, reverse=True) if lm_head is None else lm_head(x)
        super().__init__(inputs=tokens, outputs=logits, **kwargs)
        # === Parts (assigned after `Model.__init__`, which PyTorch's Module needs) ===
        self.decoder_layers = decoder_layers
        self.embedding = embedding
        self.embedding_dropout = embedding_dropout
        self.lm_head = lm_head
        self.final_norm = final_norm
        # === Config ===
        _parts.set_config(self, config)

    def _logits(self, x):
        if self.final_norm is not None:
            x = self.final_norm(x)
        return super()._logits(x)

    @property
    def decoder_embedding(self):
        return self.embedding

    def generate(
        self,
        prompt,
        max_new_tokens,
        prompt_mask=None,
        sampler="greedy",
        seed=None,
        stop_token_ids=None,
        pad_token_id=0,
        compile=True,
        cache_dtype=None,
    ):
        """Continue each prompt by up to `max_new_tokens` tokens.

        One prefill call runs the prompt into the key/value cache; then the token
        loop runs inside one compiled function (`tf.function` with XLA, `jax.jit`),
        compiled on the first call of each input shape and setting and reused after.

        Args:
            prompt: int `(batch, length)`, or a list of token lists of different
                lengths.
            max_new_tokens: positive int, new tokens per sequence.
            prompt_mask: optional boolean `(batch, length)`, `True` for the prompt's
                tokens (right padding, left padding or holes). Without it every
                token is part of the prompt; token 0 is never treated as padding
                here (the model masks it itself only with `mask_zero=True`).
            sampler: a `keras_attention.models.samplers.Sampler` or one of
                `"greedy"`, `"random"`, `"top_k"`, `"top_p"`, `"beam"`.
            seed: int for reproducible sampling; `None` draws a fresh seed.
            stop_token_ids: token ids that end a sequence (the stop token is kept,
                the positions after it get `pad_token_id`); the loop ends when every
                sequence has stopped.
            pad_token_id: int, written after a sequence's last token.
            compile: `False` runs the same loop eagerly, op by op (for debugging).
            cache_dtype: `None` (the key/value cache in the compute dtype) or
                `"int8"`: keys and values stored as int8 with a float32 scale per
                position and head (0.28x the float32 bytes at head_dim 32; a token
                can differ from the float cache's where two logits nearly tie).

        Returns:
            Numpy int32 `(batch, longest prompt + max_new_tokens)`: row `i` holds its
            prompt tokens, its new tokens, then `pad_token_id`.
        """
        return self._run_generate(
            prompt,
            max_new_tokens,
            prompt_mask,
            sampler,
            seed,
            stop_token_ids,
            pad_token_id,
            compile,
            cache_dtype=cache_dtype,
        )

    def export_generate(self, path, max_new_tokens, stop_token_ids=None, pad_token_id=0):
        """Deprecated: use :func:`keras_attention.export.export_generator` with
        `format="tf_saved_model"` (see :func:`keras_attention.models.export_generate`
        for the renamed inputs). Emits a `DeprecationWarning`."""
        warnings.warn(deprecated._MESSAGE, DeprecationWarning, stacklevel=2)
        return deprecated._export_generate(self, path, max_new_tokens, stop_token_ids, pad_token_id)


def _check_arguments(config):
    """Check the arguments the blocks do not check; the `position` to use."""
    _parts.check_common(config)
    _validation.check_bool(config["tie_embeddings"], "tie_embeddings")
    _validation.check_bool(config["mask_zero"], "mask_zero")
    _validation.check_one_of(config["style"], "style", ("gpt", "llama"))
    llama, position = config["style"] == "llama", config["position"]
    if llama and position not in (None, "none"):
        raise ValueError(
            "style='llama' encodes positions with rotary embeddings in the attention, "
            f"so `position` must be 'none' (or None). Received: position={position!r}"
        )
    return ("none" if llama else "learned") if position is None else position

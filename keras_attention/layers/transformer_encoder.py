"""`TransformerEncoder`: one encoder block, self-attention then a feed-forward network."""

import keras
from keras import ops

from keras_attention import _validation
from keras_attention.layers import _common
from keras_attention.layers._transformer_block import _padding_mask, _TransformerBlock


@keras.saving.register_keras_serializable(package="keras_attention")
class TransformerEncoder(_TransformerBlock):
    """One encoder block of "Attention Is All You Need": self-attention, then FFN.

    Post-norm (the paper, `normalize_first=False`):
    `x = LayerNorm(x + Dropout(MHA(x, x)))`, `y = LayerNorm(x + Dropout(FFN(x)))`.
    Pre-norm (`normalize_first=True`):
    `x = x + Dropout(MHA(LN(x), LN(x)))`, `y = x + Dropout(FFN(LN(x)))`; a stack
    of pre-norm blocks is usually followed by one final `LayerNormalization`.
    Sandwich norms (`post_norm=True`, Gemma 2/3) normalize each sublayer's output too:
    `x = x + PostLN(Dropout(MHA(LN(x))))`. Parallel residual
    (`parallel_residual=True`, GPT-NeoX): `y = x + Dropout(MHA(LN_1(x))) +
    Dropout(FFN(LN_2(x)))`, both sublayers reading the block's input.

    Sublayers: `self_attention` (`MultiHeadAttention`), `self_attention_dropout`,
    `self_attention_layer_norm`, `feedforward` (:class:`FeedForward`, made by
    `_make_feedforward()`, which a subclass may override), `feedforward_dropout`,
    `feedforward_layer_norm`, and with `post_norm` `self_attention_post_norm`,
    `feedforward_post_norm` (else None). With `d` features,
    `h = num_heads`, `k = key_dim`, `f = intermediate_dim` the block has
    `4 d h k + 3 h k + d` (attention) `+ 2 d f + f + d` (FFN) `+ 4 d` (two
    LayerNorms) parameters.

    The arguments come in the order and with the defaults of keras-hub's
    `TransformerEncoder` (`TransformerEncoder(intermediate_dim, num_heads)`, dropout
    0), so code written for it runs after changing the import.

    Args:
        intermediate_dim: positive int, hidden size of the FFN.
        num_heads: positive int, number of attention heads.
        dropout: float in `[0, 1)`, used on the attention probabilities and on each
            sublayer's output before the residual addition (the paper's `P_drop`,
            0.1 there). Defaults to 0, as in keras-hub.
        activation: FFN activation.
        layer_norm_epsilon: positive float.
        kernel_initializer, bias_initializer: for every `Dense` inside.
        normalize_first: pre-norm if `True`, post-norm (the paper) if `False`.
        key_dim: size of each head; default `features / num_heads` (which must
            divide; keras-hub rounds down).
        seed: int, seed for the dropouts.
        normalization: `"layer_norm"` (the paper) or `"rms_norm"` (:class:`RMSNorm`,
            Llama); `layer_norm_epsilon` is its epsilon.
        use_bias: `False` drops every bias: the projections', the feed-forward's
            and the LayerNorms' offsets (Llama, PaLM); or a tuple of the parts that
            keep theirs, from `("query", "key", "value", "output", "feedforward",
            "norm")` (`"norm"`: the LayerNorms' `center`; Qwen2: `("query", "key",
            "value")`).
        num_key_value_heads, position_embedding, sliding_window, soft_cap,
        query_norm, key_norm, attention_scale, qk_norm_epsilon: passed to the
            self-attention's :class:`MultiHeadAttention` (grouped-query heads,
            `"rotary"`, a window, logit soft-capping, QK-norm, the scale of `Q K^T`,
            the QK-norm epsilon); a decoder's cross-attention gets all but the
            position embedding and the window. `activation` may be
            `"gelu_tanh"`, or `"swiglu"`/`"geglu"`/`"geglu_tanh"` (a gated
            :class:`FeedForward`).
        score_bias: `None`, or a position bias layer (:class:`ALiBiBias`,
            :class:`RelativePositionBias`) or its config, added to the
            self-attention's scores. Not copied: blocks given the same instance
            share it and its weights (T5's one relative table for a stack), and a
            saved model reloads it shared.
        post_norm: if `True` (needs `normalize_first=True`), sandwich norms: each
            sublayer's output is normalized before the residual addition (Gemma 2/3).
        parallel_residual: if `True` (needs `normalize_first=True`, no
            cross-attention), the attention and the feed-forward both read the
            block's input and add to it (GPT-NeoX, GPT-J).
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `(batch, seq, features)`.
        padding_mask: boolean `(batch, seq)`, `True` for real tokens.
        attention_mask: boolean `(batch, seq, seq)`, `True` = may attend.
        training: whether dropout is active.
        return_attention_scores: if `True`, also return the self-attention weights
            (as keras-hub's `TransformerEncoder`).
        mask: the Keras mask of `inputs`, filled in by Keras; combined with
            `padding_mask`. Padded positions are never attended.

    Returns:
        `(batch, seq, features)`, carrying the input's Keras mask; with
        `return_attention_scores=True`, `(outputs, scores)` with scores of shape
        `(batch, num_heads, seq, seq)`.

    Example:
    >>> import numpy as np
    >>> encoder = TransformerEncoder(intermediate_dim=32, num_heads=2)
    >>> tuple(encoder(np.zeros((2, 5, 8), "float32")).shape)
    (2, 5, 8)
    """

    def build(self, inputs_shape):
        _validation.check_sequence(inputs_shape, "inputs")
        self.self_attention = self._attention(inputs_shape[-1], "self_attention")
        self.self_attention.build(inputs_shape, inputs_shape)
        self._build_feedforward(inputs_shape)
        self.built = True

    def call(
        self,
        inputs,
        padding_mask=None,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
        mask=None,
        inputs_mask=None,
    ):
        # Keras fills `mask` when `inputs` is the only tensor argument and
        # `inputs_mask` when more tensors are passed.
        padding_mask = _padding_mask(
            padding_mask,
            mask if mask is not None else inputs_mask,
            inputs,
            "padding_mask",
            "inputs",
        )
        # Padded keys are never attended; padded queries attend nothing (their
        # attention output is zero, and the output mask marks them).
        attention_mask = _common.self_attention_mask(
            padding_mask, ops.shape(inputs)[1], attention_mask
        )

        scores = []
        x = self._attention_residual(
            inputs,
            "self_attention",
            scores,
            None,
            training,
            attention_mask=attention_mask,
            return_attention_scores=return_attention_scores,
        )
        x = self._feedforward_residual(x, training)
        return (x, scores[0]) if return_attention_scores else x

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape)

    def compute_output_spec(self, inputs, return_attention_scores=False, **kwargs):
        output = keras.KerasTensor(inputs.shape, dtype=self.compute_dtype)
        if not return_attention_scores:
            return output
        batch, length = inputs.shape[0], inputs.shape[1]
        scores = (batch, self.num_heads, length, length)
        return output, keras.KerasTensor(scores, dtype=self.compute_dtype)

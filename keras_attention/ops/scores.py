"""From scores to outputs: the score modifiers (soft cap, bias, causal and window
masks), the masked float32 softmax and :func:`attention_from_scores`."""

import warnings

import keras
from keras import ops

from keras_attention import _validation
from keras_attention import backend as backend_lib
from keras_attention import masks as masks_lib
from keras_attention.ops import _checks

# Dtypes whose scores are cast to float32 before the softmax and the score modifiers.
LOW_PRECISION_DTYPES = ("float16", "bfloat16")


def attention_from_scores(
    scores,
    value,
    mask=None,
    dropout_rate=0.0,
    seed=None,
    training=False,
    return_attention_scores=False,
):
    """Masked softmax of raw scores, then the weighted sum of values.

    The second half of every attention in the package: dot-product attention computes
    `scores = Q K^T * scale`, additive attention `v^T tanh(W_q q + W_k k)`, and both
    finish here, so masking, the float32 softmax and the zero rows live in one place.

    Args:
        scores: `(..., q_len, kv_len)` attention logits.
        value: `(..., kv_len, d_v)`.
        mask: optional boolean, broadcastable to `scores`, `True` = may attend.
        dropout_rate, seed, training, return_attention_scores: as in
            :func:`scaled_dot_product_attention`.

    Returns:
        `(..., q_len, d_v)`, or `(output, weights)` with `return_attention_scores`.
    """
    _validation.check_rate(dropout_rate, "dropout_rate")
    mask = _checks.check_mask(mask, tuple(scores.shape))
    weights = ops.cast(masked_softmax(scores, mask), value.dtype)

    probabilities = weights
    if training and dropout_rate > 0.0:
        probabilities = keras.random.dropout(weights, rate=dropout_rate, seed=seed)
    output = ops.matmul(probabilities, value)
    if return_attention_scores:
        return output, weights
    return output


def masked_softmax(scores, mask, in_loop=False):
    """The float32 softmax of `scores` over the keys, exactly 0 where `mask` is False.

    `in_loop`: the softmax runs inside a loop's body. There, on TensorFlow, it is
    written out (`exp(s - max) / sum`, the same numbers to rounding): the graph
    optimizer cannot see the rank of a `Softmax` op's input inside a loop and prints
    a warning for each (tensorflow/tensorflow#50575).
    """
    # Softmax in float32 even under mixed precision: float16 exp() overflows at 11.
    if keras.backend.standardize_dtype(scores.dtype) in LOW_PRECISION_DTYPES:
        scores = ops.cast(scores, "float32")
    if mask is not None:
        scores = scores + masks_lib.mask_to_bias(mask, scores.dtype)
    if in_loop and keras.backend.backend() == "tensorflow":
        exp = ops.exp(scores - ops.max(scores, axis=-1, keepdims=True))
        weights = exp / ops.sum(exp, axis=-1, keepdims=True)
    elif scores.shape[-1] == 1:
        # A softmax over one key is 1, and keras.ops.softmax warns about the axis.
        # Still the softmax, not ones: a graph traced with one key (PyTorch's ONNX
        # and OpenVINO exports trace at size 1) must stay right for more keys.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="You are using a softmax over axis")
            weights = ops.softmax(scores, axis=-1)
    else:
        weights = ops.softmax(scores, axis=-1)
    if mask is not None:
        # Exact zeros for masked keys; a fully masked row (where the softmax of equal
        # biases is uniform) becomes all zeros, so its output is 0 and its gradient
        # is 0, instead of the mean of the values.
        weights = weights * ops.cast(mask, weights.dtype)
    return weights


class ScoreModifier:
    """The position-dependent parts of the logits: soft cap, bias, causal and window.

    Every path asks it for one block of queries `[q_offset, q_offset + q_len)`
    against all `kv_len` keys, so the chunked path never builds a `(q_len, kv_len)`
    bias or mask for the whole sequence.
    """

    def __init__(self, bias, soft_cap, sliding_window, causal):
        self.bias = bias
        self.soft_cap = soft_cap
        self.sliding_window = sliding_window
        self.causal = causal

    @property
    def bias_has_rows(self):
        """Whether a tensor bias varies along the query axis (must be chunked)."""
        return (
            self.bias is not None
            and not callable(self.bias)
            and len(self.bias.shape) >= 2
            and self.bias.shape[-2] != 1
        )

    def mask(self, q_len, kv_len, q_offset=0, k_offset=0):
        """Causal and sliding-window mask of the block, or `None`.

        The block holds queries `[q_offset, q_offset + q_len)` and keys
        `[k_offset, k_offset + kv_len)`; both masks depend only on the difference.
        """
        if not (self.causal or self.sliding_window is not None):
            return None
        offset = q_offset - k_offset
        causal = masks_lib.causal_mask(q_len, kv_len, offset) if self.causal else None
        window = None
        if self.sliding_window is not None:
            window = masks_lib.sliding_window_mask(q_len, kv_len, self.sliding_window, offset)
        return masks_lib.combine_masks(causal, window)

    def block_bias(
        self, q_len, kv_len, q_offset=0, scores_shape=None, k_offset=0, q_end=None, k_end=None
    ):
        """The bias of the block (`None` without one); a callable is evaluated here.

        `q_end`, `k_end`: the sequences' lengths, where the block may reach past them
        (padded query rows, padded key tiles): the callable is promised positions of
        real queries and keys, so those are clipped to the last one (a lookup in a
        `(q_len, kv_len)` table would fail, or give NaN; the padded rows' and keys'
        scores are discarded or masked anyway).
        """
        if not callable(self.bias):
            return self.bias
        q_positions = backend_lib.positions(q_len) + ops.cast(q_offset, "int32")
        k_positions = backend_lib.positions(kv_len) + ops.cast(k_offset, "int32")
        if q_end is not None:
            q_positions = ops.minimum(q_positions, ops.cast(q_end, "int32") - 1)
        if k_end is not None:
            k_positions = ops.minimum(k_positions, ops.cast(k_end, "int32") - 1)
        bias = ops.convert_to_tensor(self.bias(q_positions, k_positions))
        if scores_shape is not None:
            _checks.check_bias(bias, scores_shape)
        return bias

    def cap(self, scores):
        """`soft_cap * tanh(scores / soft_cap)`, or `scores` without a cap."""
        if self.soft_cap is None:
            return scores
        cap = ops.cast(self.soft_cap, scores.dtype)
        return cap * ops.tanh(scores / cap)

    def apply(self, scores, bias=None):
        """Soft cap, then `bias`, on raw scaled scores (float32 under mixed precision)."""
        if self.soft_cap is None and bias is None:
            return scores
        if keras.backend.standardize_dtype(scores.dtype) in LOW_PRECISION_DTYPES:
            scores = ops.cast(scores, "float32")
        scores = self.cap(scores)
        if bias is not None:
            scores = scores + ops.cast(bias, scores.dtype)
        return scores

"""`RotaryEmbedding`: rotary position embedding (RoPE) of per-head queries and keys."""

import keras

from keras_attention import _validation, backend
from keras_attention import ops as attention_ops
from keras_attention.layers._common import NothingToQuantize
from keras_attention.ops.positions import check_rope_scaling


@keras.saving.register_keras_serializable(package="keras_attention")
class RotaryEmbedding(NothingToQuantize, keras.layers.Layer):
    """Rotary position embedding: rotate feature pairs by a position-dependent angle.

    Pair `k` of the first `r = rotary_fraction * head_dim` features at position `p`
    is rotated by `theta_k = (p / scaling_factor) * max_wavelength^(-2k / r)`, so
    `<rope(q, p), rope(k, p')>` depends only on `p - p'` (relative positions from an
    absolute encoding). The math is
    :func:`keras_attention.ops.apply_rotary_embedding`; the layer has no weights.

    Layouts: `"rotate_half"` (default, as in keras-hub's `RotaryEmbedding`, GPT-NeoX
    and Hugging Face Llama) pairs features `k` and `k + r/2`; `"interleaved"` (the
    paper, GPT-J) pairs `2k` and `2k + 1`. Weights trained with one layout need that
    layout.

    `rope_scaling` holds the frequency scalings of published long-context models,
    as Hugging Face's `rope_scaling` dicts (`"type"` or `"rope_type"` names the type;
    the math is :func:`keras_attention.ops.positions.rotary_frequencies`):
    `{"type": "linear", "factor"}`; `{"type": "llama3", "factor", "low_freq_factor",
    "high_freq_factor", "original_max_position_embeddings"}` (Llama 3.1-3.3);
    `{"type": "longrope", "short_factor", "long_factor",
    "original_max_position_embeddings", "max_position_embeddings"?, "factor"?,
    "attention_factor"?}` (Phi-3 128k "su", lists of `rotated_dim / 2` factors;
    `cos` and `sin` are multiplied by the attention factor); `{"type": "yarn",
    "factor", "original_max_position_embeddings", "beta_fast"=32, "beta_slow"=1,
    "attention_factor"?, "truncate"=True}`; `{"type": "dynamic", "factor",
    "original_max_position_embeddings"}` (dynamic NTK).

    "longrope" and "dynamic" depend on the sequence length, which (as in Hugging
    Face) is the largest position of the call plus one: every token of a call gets
    the frequencies of its last position. A token at position `p` is rotated the
    same in a full sequence of length `L` and at cache index `p` only while both
    `L` and `p + 1` are at most `original_max_position_embeddings` (or both above it,
    for "longrope"); past it, keys already in a decoding cache keep the rotation
    they were written with, as in Hugging Face's and keras-hub's caches. The other
    types do not depend on the length, so cached decoding matches a full pass.

    Args:
        max_wavelength: positive float, the base of the frequencies (10000).
        scaling_factor: positive float, linear position interpolation: positions
            are divided by it (e.g. 4 to stretch a 2k context to 8k). Leave it at 1
            with `rope_scaling`.
        rotary_fraction: float in (0, 1], the fraction of the head dim rotated
            (`partial_rotary_factor`); the rest passes through.
        layout: `"rotate_half"` or `"interleaved"`.
        sequence_axis: axis of `inputs` holding the positions (1 for
            `(batch, seq, heads, head_dim)`, as in keras-hub; 2 for
            `(batch, heads, seq, head_dim)`). The features are the last axis.
        rope_scaling: None or a dict naming a frequency scaling and its settings
            (above).
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `(batch, ..., head_dim)` with positions along `sequence_axis`.
        start_index: int or scalar int tensor, the position of the first element
            (cached decoding: the cache index).
        positions: optional int `(seq,)` explicit positions (overrides
            `start_index`).

    Returns:
        Same shape as `inputs`.

    Example:
    >>> import numpy as np
    >>> rope = RotaryEmbedding()
    >>> tuple(rope(np.ones((2, 5, 4, 8), "float32")).shape)
    (2, 5, 4, 8)
    """

    def __init__(
        self,
        max_wavelength=10000,
        scaling_factor=1.0,
        rotary_fraction=1.0,
        layout="rotate_half",
        sequence_axis=1,
        rope_scaling=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        attention_ops.check_rotary_arguments(2, max_wavelength, scaling_factor, 1.0, layout)
        check_rope_scaling(rope_scaling, scaling_factor=scaling_factor)
        _validation.check_positive_float(rotary_fraction, "rotary_fraction")
        if rotary_fraction > 1:
            raise ValueError(
                f"`rotary_fraction` must be in (0, 1]. Received: rotary_fraction={rotary_fraction}"
            )
        if isinstance(sequence_axis, bool) or not isinstance(sequence_axis, int):
            raise ValueError(
                f"`sequence_axis` must be an int. Received: sequence_axis={sequence_axis!r}"
            )
        self.max_wavelength = max_wavelength
        self.scaling_factor = scaling_factor
        self.rotary_fraction = rotary_fraction
        self.layout = layout
        self.sequence_axis = sequence_axis
        self.rope_scaling = None if rope_scaling is None else dict(rope_scaling)
        self.supports_masking = True

    def build(self, inputs_shape):
        rank = len(inputs_shape)
        axis = self.sequence_axis % rank if -rank <= self.sequence_axis < rank else None
        if rank < 3 or axis is None or axis in (0, rank - 1):
            raise ValueError(
                "`inputs` must be (batch, ..., head_dim) with `sequence_axis` between "
                f"the batch and the feature axes. Received: inputs.shape="
                f"{tuple(inputs_shape)}, sequence_axis={self.sequence_axis}"
            )
        self.rotated_dim(inputs_shape[-1])
        self.built = True

    def rotated_dim(self, head_dim):
        """The number of rotated features for `head_dim` (raises if it is odd, or if
        `rope_scaling`'s longrope lists do not have one factor per rotated pair)."""
        return attention_ops.check_rotary_arguments(
            head_dim,
            self.max_wavelength,
            self.scaling_factor,
            self.rotary_fraction,
            self.layout,
            self.rope_scaling,
        )

    def call(self, inputs, start_index=0, positions=None):
        rank = len(inputs.shape)
        axis = self.sequence_axis % rank
        x = inputs if axis == rank - 2 else backend.moveaxis(inputs, axis, -2)
        x = self.rotate(x, start_index=start_index, positions=positions)
        return x if axis == rank - 2 else backend.moveaxis(x, -2, axis)

    def rotate(self, x, start_index=0, positions=None):
        """Rotate `x` `(..., seq, head_dim)` (positions on the second-to-last axis,
        whatever `sequence_axis` says) with this layer's settings: the per-head
        rotation `MultiHeadAttention` applies to its `(batch, heads, seq, dim)`."""
        return attention_ops.apply_rotary_embedding(
            x,
            positions=positions,
            start_index=start_index,
            max_wavelength=self.max_wavelength,
            scaling_factor=self.scaling_factor,
            rotary_fraction=self.rotary_fraction,
            layout=self.layout,
            rope_scaling=self.rope_scaling,
        )

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "max_wavelength": self.max_wavelength,
                "scaling_factor": self.scaling_factor,
                "rotary_fraction": self.rotary_fraction,
                "layout": self.layout,
                "sequence_axis": self.sequence_axis,
                "rope_scaling": None if self.rope_scaling is None else dict(self.rope_scaling),
            }
        )
        return config

"""Keras layers of the package, one public layer class a module named after it
(`multi_head_attention.py` holds `MultiHeadAttention`); `_`-prefixed modules hold the
helpers and base classes they share."""

__all__ = ["ALiBiBias", "MixtureOfExperts", "RelativePositionBias", "RMSNorm", "RotaryEmbedding"]

# Layers of modern decoders: positions and norms (RoPE, ALiBi, T5 bias, RMSNorm) and the
# mixture-of-experts feed-forward network (Mixtral).
from keras_attention.layers.alibi_bias import ALiBiBias  # noqa: E402
from keras_attention.layers.mixture_of_experts import MixtureOfExperts  # noqa: E402
from keras_attention.layers.relative_position_bias import RelativePositionBias  # noqa: E402
from keras_attention.layers.rms_norm import RMSNorm  # noqa: E402
from keras_attention.layers.rotary_embedding import RotaryEmbedding  # noqa: E402

"""`TopKSampler`: sampling among the `k` most likely tokens."""

import keras
from keras import ops

from keras_attention import _validation
from keras_attention.models.samplers.sampler import Sampler, gumbel_argmax


@keras.saving.register_keras_serializable(package="keras_attention")
class TopKSampler(Sampler):
    """Sampling from `softmax(logits / temperature)` restricted to the `k` most
    likely tokens (renormalized over them). `k=1` is greedy decoding.

    Args:
        k: positive int.
        temperature: positive float.

    Example:
    >>> import numpy as np
    >>> sampler = TopKSampler(k=2)
    >>> logits = np.array([[0.0, 5.0, 4.0, 1.0]], "float32")
    >>> int(sampler.next_token(logits, np.random.rand(1, 4).astype("float32"))[0]) in (1, 2)
    True
    """

    def __init__(self, k=5, temperature=1.0):
        super().__init__(temperature)
        _validation.check_positive_int(k, "k")
        self.k = k

    def next_token(self, logits, uniform_noise):
        logits = ops.convert_to_tensor(logits)
        logits = logits / ops.cast(self.temperature, logits.dtype)
        k = min(self.k, logits.shape[-1])
        # Sample among the k best only (exactly k even with ties), then map back.
        top_logits, top_ids = ops.top_k(logits, k)
        noise = ops.convert_to_tensor(uniform_noise)[:, :k]
        choice = gumbel_argmax(top_logits, noise)
        return ops.cast(ops.take_along_axis(top_ids, choice[:, None], axis=-1)[:, 0], "int32")

    def sampling_logits(self, logits):
        logits = ops.convert_to_tensor(logits)
        logits = logits / ops.cast(self.temperature, logits.dtype)
        k = min(self.k, logits.shape[-1])
        kth = ops.top_k(logits, k)[0][..., -1:]
        # (ties with the k-th logit stay in; next_token keeps exactly k of them)
        return ops.where(logits >= kth, logits, float("-inf"))

    def get_config(self):
        return {"k": self.k, **super().get_config()}

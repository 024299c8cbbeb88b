"""`TopPSampler`: nucleus sampling, among the most likely tokens holding mass `p`."""

import numbers

import keras
from keras import ops

from keras_attention import _validation
from keras_attention.models.samplers.sampler import Sampler, gumbel_argmax


@keras.saving.register_keras_serializable(package="keras_attention")
class TopPSampler(Sampler):
    """Nucleus sampling (Holtzman et al., 2019).

    The tokens are sorted by probability under `softmax(logits / temperature)`;
    the nucleus is the shortest prefix whose probabilities sum to at least `p`
    (at least the most likely token), and the next token is drawn from it,
    renormalized. `p=1` samples from the whole distribution.

    Args:
        p: float in `(0, 1]`.
        k: optional positive int: sort only the `k` most likely tokens (faster on
            large vocabularies; the nucleus is then also cut at `k` tokens).
        temperature: positive float.

    Example:
    >>> import numpy as np
    >>> sampler = TopPSampler(p=0.5)
    >>> logits = np.log(np.array([[0.1, 0.6, 0.3]], "float32"))
    >>> int(sampler.next_token(logits, np.random.rand(1, 3).astype("float32"))[0])
    1
    """

    def __init__(self, p=0.9, k=None, temperature=1.0):
        super().__init__(temperature)
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 < p <= 1:
            raise ValueError(f"`p` must be a float in (0, 1]. Received: p={p!r}")
        _validation.check_positive_int(k, "k", allow_none=True)
        self.p = float(p)
        self.k = k

    def _nucleus(self, logits):
        """The `k` best logits (and their ids), those outside the nucleus at `-inf`."""
        logits = ops.convert_to_tensor(logits)
        logits = logits / ops.cast(self.temperature, logits.dtype)
        k = logits.shape[-1] if self.k is None else min(self.k, logits.shape[-1])
        sorted_logits, sorted_ids = ops.top_k(logits, k)
        probabilities = ops.softmax(sorted_logits, axis=-1)
        # Mass strictly before each token: a token is in the nucleus while the
        # tokens ahead of it hold less than p (so the first one always is).
        mass_before = ops.cumsum(probabilities, axis=-1) - probabilities
        keep = mass_before < ops.cast(self.p, probabilities.dtype)
        return ops.where(keep, sorted_logits, float("-inf")), sorted_ids, logits

    def sampling_logits(self, logits):
        sorted_logits, _, logits = self._nucleus(logits)
        # the smallest kept logit; ties with it stay in
        smallest = ops.min(
            ops.where(sorted_logits == float("-inf"), float("inf"), sorted_logits),
            axis=-1,
            keepdims=True,
        )
        return ops.where(logits >= smallest, logits, float("-inf"))

    def next_token(self, logits, uniform_noise):
        sorted_logits, sorted_ids, _ = self._nucleus(logits)
        k = sorted_logits.shape[-1]
        noise = ops.convert_to_tensor(uniform_noise)[:, :k]
        choice = gumbel_argmax(sorted_logits, noise)
        return ops.cast(ops.take_along_axis(sorted_ids, choice[:, None], axis=-1)[:, 0], "int32")

    def get_config(self):
        return {"p": self.p, "k": self.k, **super().get_config()}

"""`BeamSampler`: beam search, the `num_beams` most likely continuations at each step."""

import numbers

import keras

from keras_attention.models.samplers.sampler import Sampler


@keras.saving.register_keras_serializable(package="keras_attention")
class BeamSampler(Sampler):
    """Beam search: keep the `num_beams` most likely partial sequences.

    At each step every beam is extended by every token, and the `num_beams`
    extensions with the highest total log-probability survive. A beam that
    emits a stop token is finished (it is carried on with padding at no cost).
    At the end each sequence returns its beam with the highest
    `log_probability / generated_length ** length_penalty`. The search itself
    runs inside the generation loop (it reorders the key/value caches);
    `num_beams=1` is greedy decoding.

    Args:
        num_beams: positive int.
        length_penalty: float; `0` ranks finished beams by total log-probability,
            `1` (default) by log-probability per token, larger values favour
            longer sequences.

    Example:
    >>> BeamSampler(num_beams=4).get_config()
    {'num_beams': 4, 'length_penalty': 1.0}
    """

    is_random = False

    def __init__(self, num_beams=4, length_penalty=1.0):
        super().__init__(temperature=1.0)
        if (
            isinstance(num_beams, bool)
            or not isinstance(num_beams, numbers.Integral)
            or num_beams < 1
        ):
            raise ValueError(
                f"`num_beams` must be a positive integer. Received: num_beams={num_beams!r}"
            )
        if isinstance(length_penalty, bool) or not isinstance(length_penalty, numbers.Real):
            raise ValueError(
                f"`length_penalty` must be a float. Received: length_penalty={length_penalty!r}"
            )
        self.num_beams = int(num_beams)
        self.length_penalty = float(length_penalty)

    def next_token(self, logits, uniform_noise=None):
        raise NotImplementedError(
            "BeamSampler is run by the generation loop itself (it keeps several "
            "beams per sequence); pass it as `sampler=` to `generate`."
        )

    def get_config(self):
        return {"num_beams": self.num_beams, "length_penalty": self.length_penalty}

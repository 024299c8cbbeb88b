"""What conversions from other libraries need from the model classes: the entry
points that the layer above (`keras_attention.convert`) registers here, so that
`CausalLanguageModel.from_keras_hub` works without `models` importing upward; and
the dtype policy a converted model is built, saved and reloaded under."""

import contextlib

import keras

# source library name -> function(target_class, model_or_preset, **arguments)
_CONVERTERS = {}


class ConvertibleMixin:
    """`from_keras_hub` and `tokenizer` of the model classes."""

    @property
    def tokenizer(self):
        """The keras-hub tokenizer of `self.preprocessor` (kept by
        :meth:`from_keras_hub` from a causal task with one), or `None`: with one,
        `generate` takes and returns strings."""
        return getattr(getattr(self, "preprocessor", None), "tokenizer", None)

    @classmethod
    def from_keras_hub(cls, model_or_preset, verify=True, tolerance=None, dtype=None, **options):
        """This class with the architecture and weights of a keras-hub model.

        The work is :func:`keras_attention.convert.from_keras_hub` (the layer above
        the models registers it; see there for the families, what `verify` checks
        and the tolerances).

        Args:
            model_or_preset: a keras-hub task (a `CausalLM` for
                `CausalLanguageModel`, whose preprocessor is kept: then `generate`
                takes strings; a BART or T5 `Seq2SeqLM` for `Seq2SeqTransformer`),
                a `Backbone`, or a preset name or folder that the task's
                `from_preset` loads.
            verify: run a padded probe batch (for encoder-decoders, a padded source
                and a padded target) through both models and raise a `ValueError`
                when their logits differ by more than `tolerance`.
            tolerance: optional positive float (default 1e-4 in float32, 1e-2 in
                float16, 5e-2 in bfloat16), relative to the largest reference logit
                when that exceeds 1.
            dtype: optional dtype policy name; default the source's.
            **options: arguments of this class that override the converted ones
                (`sequence_length`, `name`, ...).
        """
        convert = converter("keras_hub")
        return convert(cls, model_or_preset, verify, tolerance, dtype, **options)


def register(source, function):
    """Called by `keras_attention.convert.<source>` when it is imported (the package
    `keras_attention` imports it, so importing any part of the package registers it)."""
    _CONVERTERS[source] = function


def converter(source):
    """The registered conversion from `source` (e.g. `"keras_hub"`)."""
    if source not in _CONVERTERS:
        raise ImportError(
            f"No conversion from {source} is registered; `import keras_attention` "
            f"(or `keras_attention.convert.{source}`) registers it."
        )
    return _CONVERTERS[source]


@contextlib.contextmanager
def dtype_policy_scope(policy):
    """Build layers under the global dtype `policy` (a name or a `DTypePolicy`;
    `None` keeps the current one), restoring the previous policy after."""
    if policy is None:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def policy_config(model):
    """The `get_config` entry of `model`'s dtype policy: its name when it is not
    float32 (a bfloat16 or float16 conversion reloads as one), else nothing."""
    name = model.dtype_policy.name
    return {} if name == "float32" else {"dtype": name}

"""`quantize` and `enable_lora` for the model classes: Keras' own, made to work on
every layer of the package and to reach the compiled `generate()`."""

import re
import warnings

import keras

from keras_attention.layers import _common
from keras_attention.models import _conversion, _parts, _text


def _quantizable(layer, mode):
    """Whether `layer` has its own `quantize` for `mode` (Keras' base raises and the
    model warns; Keras' `Embedding` has no float8, so the table then stays float)."""
    if mode == "float8" and isinstance(layer, keras.layers.Embedding):
        return False
    return type(layer).quantize is not keras.layers.Layer.quantize


def _matches(layer, filters):
    """Keras' `filters` rule: regex on the name, list of regexes, or a callable."""
    if filters is None:
        return True
    if isinstance(filters, str):
        return bool(re.search(filters, layer.name))
    if isinstance(filters, (list, tuple)):
        return any(re.search(pattern, layer.name) for pattern in filters)
    return bool(filters(layer))


def quantized_layers(model):
    """`{path: mode}` of `model`'s quantized layers."""
    return {
        layer.path: layer.quantization_mode
        for layer in model._flatten_layers(include_self=False)
        if getattr(layer, "quantization_mode", None) is not None
    }


class AdaptationMixin:
    """`quantize(mode)` and `enable_lora(rank)` for `CausalLanguageModel` and
    `Seq2SeqTransformer`; both drop the compiled `generate` functions, which hold the
    variables they were traced with. Also the classes' `get_config`/`from_config`
    (constructor arguments, and which layers are quantized: the constructor makes
    float layers, so `from_config` quantizes them again before weights load; a
    dtype policy other than float32 and a keras-hub preprocessor, kept by
    `from_keras_hub`)."""

    def quantize(self, mode=None, config=None, filters=None, **kwargs):
        """Quantize the weights of every `Dense` and the token table (Keras'
        `Model.quantize`): `"int8"` (per-channel), `"int4"` (per-channel, or
        sub-channel with `keras.quantizers.Int4QuantizationConfig(block_size=...)`)
        or `"float8"` (the token table stays float: Keras' `Embedding` has no float8).
        Norms, rotary positions, position tables and biases stay in float. Once per model; `filters` (a regex, a list of them or a callable on
        layers) limits it to some layers.
        """
        current = set(quantized_layers(self).values())
        if current:
            raise ValueError(
                f"'{self.name}' is already quantized (mode={current.pop()!r}); quantize "
                f"the float model once. Received: mode={mode!r}"
            )
        with warnings.catch_warnings():
            # TensorFlow tensors' `__array__` lacks numpy 2's `copy`: noise, per kernel.
            warnings.filterwarnings("ignore", message=r"__array__ implementation")
            super().quantize(
                mode,
                config=config,
                filters=lambda layer: _quantizable(layer, mode) and _matches(layer, filters),
                **kwargs,
            )
        self._generation_functions().functions.clear()

    def enable_lora(self, rank, target_layer_names=("query", "value")):
        """LoRA as in keras-hub's `Backbone.enable_lora`: freeze every weight and add
        rank-`rank` factors to the sublayers named in `target_layer_names` (by default
        every attention's `query` and `value` projection); only those factors train.
        Saving (`.keras`, `export`) merges them into the kernels (Keras' `Dense`).
        """
        layers = _common.enable_lora(self, rank, target_layer_names)
        self._generation_functions().functions.clear()
        return layers

    def get_config(self):
        config = _parts.get_config(self)
        layers = quantized_layers(self)
        if layers:  # the sublayers are made by the constructor: quantize them on load
            config["quantized_layers"] = layers
        # A converted model's dtype policy and keras-hub preprocessor (its vocabulary
        # files are `.keras` assets of the attribute `preprocessor`).
        config.update(_conversion.policy_config(self))
        preprocessor = _text.serialize(self)
        if preprocessor is not None:
            config["preprocessor"] = preprocessor
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        layers = config.pop("quantized_layers", None)
        preprocessor = _text.deserialize(config.pop("preprocessor", None))
        with _conversion.dtype_policy_scope(config.pop("dtype", None)):
            model = cls(**config)
        if preprocessor is not None:
            _text.attach(model, preprocessor)
        if layers:
            (mode,) = set(layers.values())
            model.quantize(mode, filters=lambda layer: layer.path in layers)
        return model

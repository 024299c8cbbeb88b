"""Argument checks shared by the savers and exporters of `keras_attention.export`."""

import os

import keras


def check_model(model):
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`model` must be a `keras.Model`. Received: model of type {type(model).__name__}"
        )


def check_not_a_file(path):
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(
            "`path` is an existing file; a SavedModel is a folder. Choose another "
            f"path or remove the file. Received: path={path!r}"
        )


def check_symbolic_inputs(model):
    if not getattr(model, "inputs", None):
        raise ValueError(
            "Cannot export a model without symbolic `inputs` (a subclassed model "
            f"that was never called on a `keras.Input`). Received: model={model.name!r}"
        )


def check_saved_model_backend(function):
    backend = keras.backend.backend()
    if backend in ("tensorflow", "jax"):
        return
    raise ValueError(
        f"`{function}` needs the TensorFlow or JAX backend (a SavedModel is traced "
        "with TensorFlow; Keras converts JAX models with jax2tf). On PyTorch use "
        "`keras_attention.export.export_torch_program(model, path)` (a `.pt2` file, "
        "loaded with `torch.export.load`) or `model.export(path, format='onnx')`. "
        f"Received: keras.backend.backend()={backend!r}"
    )


def import_tensorflow(function):
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ModuleNotFoundError(
            f"`{function}` needs TensorFlow (SavedModels are TensorFlow's format). "
            "Install it with `pip install tensorflow`.",
            name="tensorflow",
        ) from error
    return tf


def check_litert_quantization(model):
    """LiteRT has no float8 type (Keras' float8 layers cast to float8 in the graph);
    int8 and int4 models convert (`backend/litert_quantized.py`)."""
    float8 = [
        layer.path
        for layer in model._flatten_layers(include_self=False)
        if getattr(layer, "quantization_mode", None) == "float8"
    ]
    if float8:
        raise ValueError(
            "A model quantized with `model.quantize('float8')` cannot be converted to "
            "LiteRT: LiteRT has no float8 type (Keras' float8 layers round their inputs "
            "and kernels through float8 in the graph, and keep float32 kernels, so the "
            "file would not shrink). Quantize with 'int8' or 'int4', or export the float "
            "model with `quantization='dynamic_int8'` (LiteRT's own int8 weights). "
            f"Received: {len(float8)} float8 layers (first {float8[0]!r}), format='litert'"
        )

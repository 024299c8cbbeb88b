"""`export_model`: `model.export(path, format=...)` for every format Keras offers on
the backend, written atomically, with clear errors for a format that cannot work on
the backend, a missing converter package and a failed conversion."""

import importlib.util
import os
import tempfile

import keras

from keras_attention.backend.litert_quantized import int8_products_in_float
from keras_attention.export import _checks
from keras_attention.export._atomic import atomic_folder
from keras_attention.export.torch_program import export_torch_program

FORMATS = {
    "tensorflow": ("tf_saved_model", "litert", "onnx", "openvino"),
    "jax": ("tf_saved_model", "onnx", "openvino"),
    "torch": ("onnx", "openvino", "litert", "torch"),
}
COMPLETE_FORMATS = {
    "tensorflow": ("tf_saved_model", "litert", "onnx", "openvino"),
    "jax": ("tf_saved_model", "onnx"),
    "torch": ("onnx", "openvino", "torch"),
}
# The converter package `model.export` imports for a format on a backend (beyond the
# backend itself), as (module, PyPI name).
CONVERTERS = {
    ("jax", "onnx"): ("jax2onnx", "jax2onnx"),
    ("torch", "litert"): ("litert_torch", "litert-torch"),
}
# Why a converter is not in the `export` extra (checked with `pip install --dry-run`
# against the pinned backends; docs/deployment.md).
CONVERTER_CONFLICTS = {
    "litert-torch": (
        "requires typing-extensions<4.13 (litert-torch 0.10 through xdsl 0.28), "
        "which conflicts with jax2onnx (chex needs >=4.15)"
    ),
}
# The file name ending Keras' exporter of a format requires (`tf_saved_model` is a
# folder; Keras takes any ONNX file name).
SUFFIXES = {"litert": ".tflite", "openvino": ".xml", "torch": ".pt2"}
# Formats that cannot work on a backend whatever the model: (what to do instead, why).
_REFUSED = {
    ("jax", "openvino"): (
        "export format='onnx' and read that file with OpenVINO "
        "(`openvino.Core().read_model(path)`), or export on the TensorFlow or PyTorch "
        "backend",
        "Keras converts JAX models for OpenVINO with jax2tf, which writes one "
        "`XlaCallModule` op that OpenVINO cannot convert (any model, even one Dense "
        "layer)",
    ),
}


def export_model(model, path, format, verbose=False, **kwargs):
    """`model.export(path, format=format)`, written atomically, with clear errors.

    Every format of `model.export` on the current backend (see `FORMATS`), called as
    Keras calls it (a model of several inputs takes one list), except that `"torch"`
    goes through :func:`export_torch_program` (dynamic batch and sequence), `"litert"`
    on TensorFlow keeps to LiteRT's built-in ops (the plain `ai-edge-litert`
    interpreter has no TensorFlow ops), the others are Keras' `model.export`.
    Files are written next to `path` and renamed into place, so a failed export
    leaves a previous one intact.

    Args:
        model: a built `keras.Model`.
        path: destination (a folder for `"tf_saved_model"`, else a file; OpenVINO
            writes `path` and the weights beside it with the suffix `.bin`).
        format: one of `FORMATS[keras.backend.backend()]`.
        verbose: print Keras' export messages.
        **kwargs: passed on to the exporter.

    Returns:
        The absolute path written, as a string.

    Raises:
        TypeError: `model` is not a `keras.Model`.
        ValueError: `format` is not a format of this backend, or cannot work on it
            (the message names the format to use instead); `path` does not suit
            the format (a file name without the ending Keras' exporter needs, an
            existing folder where a file goes, an existing file where a
            SavedModel folder goes); a `"torch"` export of a model without
            symbolic `inputs`; an `"onnx"` export of a model never called on
            data (Keras' ONNX exporter needs one call).
        ModuleNotFoundError: the format's converter package is not installed
            (the message says how to install it and names the formats that work
            without it).
        RuntimeError: the export failed for this model, whatever the converter
            raised; the message keeps the converter's error (also as `__cause__`)
            and names the formats that export every layer of this package on this
            backend.

    Example:
    >>> import keras, keras_attention, numpy as np
    >>> inputs = keras.Input((None, 8))
    >>> model = keras.Model(inputs, keras_attention.SelfAttention(8)(inputs))
    >>> try:
    ...     keras_attention.export.export_model(model, "/tmp/m.bin", format="tflite")
    ... except ValueError as error:
    ...     print(str(error).split(" (")[0])
    `format` must be one of
    """
    _checks.check_model(model)
    backend = keras.backend.backend()
    formats = FORMATS.get(backend, ())
    if format not in formats:
        raise ValueError(
            f"`format` must be one of {formats} on the {backend} backend. "
            f"Received: format={format!r}"
        )
    if (backend, format) in _REFUSED:
        instead, why = _REFUSED[backend, format]
        raise ValueError(
            f"format={format!r} cannot work on the {backend} backend; {instead}. Why: {why}."
        )
    path = os.path.abspath(os.fspath(path))
    # The package's own checks first: their errors name the argument, unwrapped.
    _check_export_path(path, format)
    if format == "torch":
        _checks.check_symbolic_inputs(model)
    _check_converter(backend, format)
    if format == "onnx":
        _check_called(model)
    if format == "litert" and backend == "tensorflow":
        _checks.check_litert_quantization(model)
    try:
        if format == "tf_saved_model":
            with atomic_folder(path) as folder:
                model.export(folder, format=format, verbose=verbose, **kwargs)
            return path
        if format == "torch":
            return export_torch_program(model, path, verbose=verbose, **kwargs)
        if format == "litert" and backend == "tensorflow":
            import tensorflow as tf

            kwargs.setdefault("target_spec", {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]})
            # A `model.quantize()`d model's int8 products, traced in float32 (exact).
            with int8_products_in_float():
                _export_files(model, path, format, verbose, kwargs)
        else:
            _export_files(model, path, format, verbose, kwargs)
    except Exception as error:  # any converter error, whatever its type
        raise RuntimeError(
            f"Exporting to format={format!r} failed on the {backend} backend: "
            f"{type(error).__name__}: {error}\n{_complete_formats(backend)}"
        ) from error
    return path


def _complete_formats(backend):
    return (
        "The formats that export every layer and builder of keras_attention on the "
        f"{backend} backend: {COMPLETE_FORMATS[backend]} (docs/deployment.md)."
    )


def _check_export_path(path, format):
    if format == "tf_saved_model":
        _checks.check_not_a_file(path)
        return
    suffix = SUFFIXES.get(format)
    if suffix and not path.endswith(suffix):
        raise ValueError(
            f"`path` must end in `{suffix}` for format={format!r}. Received: path={path!r}"
        )
    if os.path.isdir(path):
        raise ValueError(
            f"`path` is an existing folder; format={format!r} writes a file. Choose "
            f"another path or remove the folder. Received: path={path!r}"
        )


def missing_converter(backend, format):
    """`(module, package, conflict)` of the converter package `format` needs on
    `backend` when it is not installed (`conflict`: why it is not in the `export`
    extra, or `None`); `None` when nothing is missing."""
    module, package = CONVERTERS.get((backend, format), (None, None))
    if module is None or importlib.util.find_spec(module) is not None:
        return None
    return module, package, CONVERTER_CONFLICTS.get(package)


def _check_converter(backend, format):
    """A `ModuleNotFoundError` that says how to install the format's converter
    package when it is missing (Keras imports it in the middle of the export)."""
    missing = missing_converter(backend, format)
    if missing is None:
        return
    module, package, conflict = missing
    extra = (
        f"It is not in this package's `export` extra: it {conflict} "
        "(docs/deployment.md); install it in an environment without jax2onnx. "
        if conflict
        else "It is in this package's `export` extra (`pip install -e '.[export]'`). "
    )
    raise ModuleNotFoundError(
        f"format={format!r} on the {backend} backend needs the `{package}` package: "
        f"`pip install {package}`. {extra}{_complete_formats(backend)}",
        name=module,
    )


def _check_called(model):
    # Keras' ONNX exporter refuses a model never called on data (`model._called`),
    # functional ones included, with a terse "The model provided has never called".
    if not getattr(model, "_called", True):
        raise ValueError(
            "format='onnx' needs a model that has been called on data once (Keras' "
            "ONNX exporter requires it): run `model(x)` or `model.predict(x)` on a "
            f"sample batch first. Received: model={model.name!r}, never called"
        )


def _export_files(model, path, format, verbose, kwargs):
    """`model.export` into a temporary folder beside `path`, then each written file
    renamed into place (OpenVINO's weights `.bin` before its `.xml`)."""
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export.", dir=parent) as folder:
        target = os.path.join(folder, os.path.basename(path))
        model.export(target, format=format, verbose=verbose, **kwargs)
        written = sorted(os.listdir(folder), key=lambda name: name == os.path.basename(path))
        for name in written:
            os.replace(os.path.join(folder, name), os.path.join(parent, name))

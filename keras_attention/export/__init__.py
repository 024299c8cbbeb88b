"""Saving and exporting models: atomic `.keras` files and self-contained artifacts.

`save_model` writes a `.keras` file that reloads with `keras.saving.load_model(path)`
after `import keras_attention` (every layer of the package is registered, so no
`custom_objects` are needed). `export_saved_model` writes a TensorFlow SavedModel
whose serving function is plain TensorFlow: it loads with `tf.saved_model.load`
in a process where neither this package nor Keras is imported. It works on the
TensorFlow and JAX backends (Keras converts JAX functions with `jax2tf`). On
PyTorch, `export_torch_program` writes a `torch.export` program (`.pt2`) that loads
with `torch.export.load`, again without this package or Keras.

`export_model` is `model.export(path, format=...)` for every format Keras offers on
the backend, written atomically, with a clear `ValueError` for a format that cannot
work on this backend (naming the one that does) and the formats that export every
layer of this package named when a converter fails.

`export_generator` writes a decoder's `prefill` and `decode` steps, with the
key/value cache as explicit state, as a LiteRT flatbuffer or a SavedModel, so an app
runs the token loop itself (see `keras_attention.export.generator`).

Both writers are atomic: they write next to the target and rename into place, so an
error or an interruption mid-write leaves the previous file or folder intact.
"""

import importlib.util
import os
import tempfile

import keras

from keras_attention.export._atomic import atomic_file, atomic_folder
from keras_attention.export.generator import export_generator

__all__ = [
    "save_model",
    "export_model",
    "missing_converter",
    "export_saved_model",
    "export_torch_program",
    "load_saved_model",
    "serving_signature",
    "export_generator",
]


def save_model(model, path, **kwargs):
    """Save `model` to a `.keras` file atomically.

    The model is written to a temporary file in the target's folder and then moved
    over `path` with `os.replace` (atomic on POSIX and Windows within one file
    system). If saving fails, the temporary file is removed, the error is re-raised,
    and a file already at `path` is untouched.

    Args:
        model: a `keras.Model`.
        path: destination, a string or `os.PathLike` ending in `.keras`. Missing
            parent folders are created.
        **kwargs: passed on to `model.save`.

    Returns:
        The absolute path written, as a string.

    Example:
    >>> import keras, keras_attention
    >>> inputs = keras.Input((None, 8))
    >>> model = keras.Model(inputs, keras_attention.SelfAttention(8)(inputs))
    >>> path = keras_attention.export.save_model(model, "/tmp/self_attention.keras")
    >>> reloaded = keras.saving.load_model(path)
    """
    _check_model(model)
    path = os.path.abspath(os.fspath(path))
    if not path.endswith(".keras"):
        raise ValueError(
            f"`path` must end in `.keras` (the Keras v3 format). Received: path={path!r}"
        )
    if os.path.isdir(path):
        raise ValueError(f"`path` must be a file path, but it is a folder. Received: path={path!r}")
    # The temporary file must end in `.keras` too: `model.save` checks the suffix.
    with atomic_file(path, suffix=".tmp.keras") as tmp_path:
        model.save(tmp_path, **kwargs)
    return path


def serving_signature(model, dynamic_axes=(0, 1)):
    """The `tf.TensorSpec` input signature for serving `model`, with dynamic axes.

    Takes each of `model.inputs` and replaces the sizes of `dynamic_axes` (by default
    batch and sequence) with `None`, keeping dtypes and the other sizes.

    Args:
        model: a built functional or sequential `keras.Model` (it has `inputs`).
        dynamic_axes: axes made dynamic; axes beyond an input's rank are ignored.

    Returns:
        A list with one `tf.TensorSpec` per model input.

    Raises:
        ValueError: on the PyTorch backend, which cannot export a SavedModel.
    """
    _check_saved_model_backend("serving_signature")
    tf = _import_tensorflow("serving_signature")

    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise ValueError(
            "Cannot infer a serving signature: the model has no symbolic `inputs` "
            "(a subclassed model that was never called on a `keras.Input`). Pass "
            "`input_signature=[tf.TensorSpec(shape, dtype), ...]` explicitly. "
            f"Received: model={model.name!r}"
        )
    specs = []
    for tensor in inputs:
        shape = list(tensor.shape)
        for axis in dynamic_axes:
            if axis < len(shape):
                shape[axis] = None
        name = getattr(tensor, "name", None)
        specs.append(tf.TensorSpec(shape, dtype=tensor.dtype, name=_spec_name(name)))
    return specs


# `model.export` formats per backend (Keras 3.15), and those that export every layer
# and builder of this package there (docs/deployment.md, written by the export matrix).
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
    _check_model(model)
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
        _check_symbolic_inputs(model)
    _check_converter(backend, format)
    if format == "onnx":
        _check_called(model)
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
        _check_not_a_file(path)
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


def _check_symbolic_inputs(model):
    if not getattr(model, "inputs", None):
        raise ValueError(
            "Cannot export a model without symbolic `inputs` (a subclassed model "
            f"that was never called on a `keras.Input`). Received: model={model.name!r}"
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


def export_saved_model(
    model, path, input_signature=None, endpoint_name="serve", verbose=False, **kwargs
):
    """Export `model` as a TensorFlow SavedModel that serves without this package.

    The serving function (endpoint `endpoint_name`, also the `serving_default`
    signature) is traced with `keras.export.ExportArchive`; by default its input
    signature has dynamic batch and sequence dimensions (see
    :func:`serving_signature`), so it accepts any batch size and any sequence length
    the model itself supports.

    The export is written to a temporary folder next to `path` and then renamed into
    place. An existing export at `path` is first renamed aside and deleted only after
    the new one is in place, so a failure leaves the previous export intact.

    Args:
        model: a built `keras.Model` (TensorFlow or JAX backend).
        path: destination folder (string or `os.PathLike`). Must not be an existing
            file.
        input_signature: optional list of `tf.TensorSpec`, one per model input.
        endpoint_name: name of the serving function on the loaded object.
        verbose: print Keras' summary of the exported endpoint.
        **kwargs: passed on to `keras.export.ExportArchive.add_endpoint`. On JAX,
            every dynamic axis becomes its own symbol; a model that needs two inputs'
            lengths equal (it concatenates them, say) names the shared symbol with
            `jax2tf_kwargs={"polymorphic_shapes": ["(b, n, 6)", "(b, n, 4)"]}`.

    Returns:
        The absolute path of the export folder, as a string.

    Example:
    >>> import os, tempfile
    >>> import keras, keras_attention, numpy as np
    >>> inputs = keras.Input((None, 8))
    >>> model = keras.Model(inputs, keras_attention.SelfAttention(8)(inputs))
    >>> folder = os.path.join(tempfile.mkdtemp(), "self_attention")
    >>> path = keras_attention.export.export_saved_model(model, folder)
    >>> serve = keras_attention.export.load_saved_model(path)
    >>> tuple(serve(np.zeros((3, 5, 8), "float32")).shape)
    (3, 5, 8)
    """
    _check_model(model)
    if not isinstance(endpoint_name, str) or not endpoint_name.isidentifier():
        raise ValueError(
            "`endpoint_name` must be a Python identifier. "
            f"Received: endpoint_name={endpoint_name!r}"
        )
    path = os.path.abspath(os.fspath(path))
    _check_not_a_file(path)
    _check_saved_model_backend("export_saved_model")
    if input_signature is None:
        input_signature = serving_signature(model)
    with atomic_folder(path) as tmp_dir:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            name=endpoint_name,
            fn=_serving_fn(model),
            input_signature=list(input_signature),
            **kwargs,
        )
        archive.write_out(tmp_dir, verbose=verbose)
    return path


class _ServingEndpoint:
    """A loaded SavedModel's serving function; keeps the loaded object alive.

    TensorFlow's restored functions reference the loaded object's variables; holding
    the object here avoids "weakly-referenced object no longer exists" errors once the
    caller drops it.
    """

    def __init__(self, loaded, fn, path):
        self.loaded = loaded
        self.fn = fn
        self.path = path

    def __call__(self, *args):
        return self.fn(*args)

    def __repr__(self):
        return f"<SavedModel endpoint of {self.path!r}>"


def load_saved_model(path, endpoint_name="serve"):
    """Load a SavedModel written by :func:`export_saved_model` and return its endpoint.

    Only TensorFlow is needed: this is `tf.saved_model.load(path)` followed by
    picking the serving function, which is what a server without this package does.
    It works whichever Keras backend is active, as long as TensorFlow is installed.

    Args:
        path: the export folder.
        endpoint_name: the endpoint given to :func:`export_saved_model`.

    Returns:
        A callable taking the model inputs positionally (numpy arrays or tensors) and
        returning `tf.Tensor` outputs.

    Raises:
        ModuleNotFoundError: TensorFlow is not installed (the message says so).
    """
    tf = _import_tensorflow("load_saved_model")

    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise ValueError(f"`path` must be an existing SavedModel folder. Received: path={path!r}")
    loaded = tf.saved_model.load(path)
    fn = getattr(loaded, endpoint_name, None)
    if fn is None:
        raise ValueError(
            f"The SavedModel has no endpoint named {endpoint_name!r}. "
            f"Received: endpoint_name={endpoint_name!r}, path={path!r}"
        )
    return _ServingEndpoint(loaded, fn, path)


def export_torch_program(model, path, dynamic_axes=(0, 1), verbose=False):
    """Export `model` as a PyTorch `ExportedProgram` (`.pt2`), on the PyTorch backend.

    This is Keras' `model.export(path, format="torch")` (`torch.export`) with the
    `dynamic_axes` of every input (by default batch and sequence) left dynamic, and
    written atomically like :func:`save_model`. The file loads with
    `torch.export.load(path).module()` in a process without Keras or this package.

    Args:
        model: a built functional `keras.Model` (PyTorch backend).
        path: destination file ending in `.pt2`; missing parent folders are created.
        dynamic_axes: axes of each input whose size may change between calls.
        verbose: print Keras' export message.

    Returns:
        The absolute path written, as a string.

    Example:
    >>> import keras, keras_attention, numpy as np
    >>> inputs = keras.Input((None, 8))
    >>> model = keras.Model(inputs, keras_attention.SelfAttention(8)(inputs))
    >>> path = keras_attention.export.export_torch_program(model, "/tmp/sa.pt2")
    >>> import torch
    >>> program = torch.export.load(path).module()
    >>> tuple(program(torch.zeros(3, 5, 8)).shape)
    (3, 5, 8)
    """
    _check_model(model)
    backend = keras.backend.backend()
    if backend != "torch":
        raise ValueError(
            "`export_torch_program` needs the PyTorch backend. On TensorFlow and JAX "
            "use `keras_attention.export.export_saved_model(model, path)`. "
            f"Received: keras.backend.backend()={backend!r}"
        )
    import torch

    path = os.path.abspath(os.fspath(path))
    if not path.endswith(".pt2"):
        raise ValueError(f"`path` must end in `.pt2`. Received: path={path!r}")
    _check_symbolic_inputs(model)
    inputs = model.inputs
    dynamic_shapes = []
    for tensor in inputs:
        dynamic_shapes.append(
            {axis: torch.export.Dim.AUTO for axis in dynamic_axes if axis < len(tensor.shape)}
        )
    # Keras calls a model of several inputs with one list of them.
    dynamic_shapes = tuple(dynamic_shapes) if len(inputs) == 1 else [(dynamic_shapes,)]
    with atomic_file(path, suffix=".tmp.pt2") as tmp_path:
        model.export(tmp_path, format="torch", dynamic_shapes=dynamic_shapes, verbose=verbose)
        _check_axes_stay_dynamic(tmp_path, inputs, dynamic_axes)
    return path


def _check_axes_stay_dynamic(program_path, inputs, dynamic_axes):
    """Run the written program with sizes other than the example's on its dynamic axes.

    `torch.export.Dim.AUTO` silently fixes a dimension to the example input's size
    (Keras traces with 2) when the traced code turns it into a constant; the program
    would then fail only in the user's server. Raise here instead.
    """
    import torch

    probe = []
    for tensor in inputs:
        shape = []
        for axis, dim in enumerate(tensor.shape):
            if dim is None:
                dim = 3 if axis in dynamic_axes else 2  # Keras' example size is 2
            shape.append(dim)
        dtype = getattr(torch, keras.backend.standardize_dtype(tensor.dtype))
        probe.append(torch.zeros(shape, dtype=dtype))
    try:
        program = torch.export.load(program_path).module()
        program(*probe) if len(probe) == 1 else program(probe)
    except Exception as error:
        raise ValueError(
            "The exported program does not accept sizes other than the example's on "
            f"`dynamic_axes`={tuple(dynamic_axes)} (torch.export fixed them while "
            "tracing). Export with `dynamic_axes=()` for a fixed-shape program. "
            f"Received inputs of shapes {[tuple(p.shape) for p in probe]}; error: {error}"
        ) from error


def _serving_fn(model):
    def serve(*inputs):
        # A single-input model takes the tensor itself, a multi-input one a list.
        return model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)

    return serve


def _check_not_a_file(path):
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(
            "`path` is an existing file; a SavedModel is a folder. Choose another "
            f"path or remove the file. Received: path={path!r}"
        )


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`model` must be a `keras.Model`. Received: model of type {type(model).__name__}"
        )


def _spec_name(name):
    # Keras input names may hold characters a SavedModel signature rejects.
    if not name:
        return None
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return cleaned if cleaned and cleaned[0].isalpha() else None


def _check_saved_model_backend(function):
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


def _import_tensorflow(function):
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ModuleNotFoundError(
            f"`{function}` needs TensorFlow (SavedModels are TensorFlow's format). "
            "Install it with `pip install tensorflow`.",
            name="tensorflow",
        ) from error
    return tf

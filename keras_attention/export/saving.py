"""Saving: atomic `.keras` files, and TensorFlow SavedModels that serve without this
package (TensorFlow and JAX backends), with their serving signature and loader."""

import os

import keras

from keras_attention.export import _checks
from keras_attention.export._atomic import atomic_file, atomic_folder


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
    _checks.check_model(model)
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
    _checks.check_saved_model_backend("serving_signature")
    tf = _checks.import_tensorflow("serving_signature")

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
    _checks.check_model(model)
    if not isinstance(endpoint_name, str) or not endpoint_name.isidentifier():
        raise ValueError(
            "`endpoint_name` must be a Python identifier. "
            f"Received: endpoint_name={endpoint_name!r}"
        )
    path = os.path.abspath(os.fspath(path))
    _checks.check_not_a_file(path)
    _checks.check_saved_model_backend("export_saved_model")
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
    tf = _checks.import_tensorflow("load_saved_model")

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


def _serving_fn(model):
    def serve(*inputs):
        # A single-input model takes the tensor itself, a multi-input one a list.
        return model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)

    return serve


def _spec_name(name):
    # Keras input names may hold characters a SavedModel signature rejects.
    if not name:
        return None
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return cleaned if cleaned and cleaned[0].isalpha() else None

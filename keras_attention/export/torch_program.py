"""`export_torch_program`: a PyTorch `ExportedProgram` (`.pt2`) with dynamic axes that
loads with `torch.export.load` without this package or Keras."""

import os

import keras

from keras_attention.export import _checks
from keras_attention.export._atomic import atomic_file


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
    _checks.check_model(model)
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
    _checks.check_symbolic_inputs(model)
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

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
key/value cache as explicit state, as a LiteRT flatbuffer, ONNX files or a SavedModel,
so an app runs the token loop itself; the SavedModel also has the whole greedy loop as its
`generate(tokens, mask)` signature (see `keras_attention.export.generator`).

The modules, by job: `saving` (`.keras` files and SavedModels), `formats`
(`export_model` and what each format needs on each backend), `torch_program`,
`generator` (the generation export) and `_atomic` (whole-or-nothing writes).

The writers are atomic: they write next to the target and rename into place, so an
error or an interruption mid-write leaves the previous file or folder intact.
"""

# The tables of formats stay readable here (`keras_attention.export.FORMATS`); their
# home, where a test patches them, is `keras_attention.export.formats`.
from keras_attention.export.formats import COMPLETE_FORMATS as COMPLETE_FORMATS
from keras_attention.export.formats import CONVERTER_CONFLICTS as CONVERTER_CONFLICTS
from keras_attention.export.formats import CONVERTERS as CONVERTERS
from keras_attention.export.formats import FORMATS as FORMATS
from keras_attention.export.formats import SUFFIXES as SUFFIXES
from keras_attention.export.formats import export_model, missing_converter
from keras_attention.export.generator import export_generator
from keras_attention.export.saving import (
    export_saved_model,
    load_saved_model,
    save_model,
    serving_signature,
)
from keras_attention.export.torch_program import export_torch_program

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

"""pytest setup for the docstring examples of the package (`--doctest-modules`)."""

import keras
import pytest

# Docstring examples that need the TensorFlow backend (SavedModel export).
_TENSORFLOW_ONLY = {"keras_attention.export.export_saved_model"}


def pytest_collection_modifyitems(config, items):
    if keras.backend.backend() == "tensorflow":
        return
    skip = pytest.mark.skip(reason="SavedModel export needs the TensorFlow backend")
    for item in items:
        if isinstance(item, pytest.DoctestItem) and item.name in _TENSORFLOW_ONLY:
            item.add_marker(skip)

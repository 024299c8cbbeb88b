"""pytest setup for the docstring examples of the package (`--doctest-modules`)."""

import importlib.util
import os

# The suite compiles hundreds of small XLA programs (TensorFlow's generation loops, every
# JAX op and `jax.jit`) whose run time is negligible next to their compile time, most of
# which is LLVM's optimization passes. Level 0 compiles the same programs with fewer of
# those passes: measured on the 2-core machine, test_processors.py took 33 % less CPU
# time on JAX (119 to 79 s) and test_processors.py with test_speculative.py 16 % less on
# TensorFlow (146 to 123 s), with the same results. A level the user set is kept.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import keras  # noqa: E402
import pytest  # noqa: E402

# `backend/torch_step.py` is the PyTorch backend's own module (imported only there): the
# doctest collection, which imports every module, leaves it out where torch is missing
# (the README's `pip install -e ".[test]"` does not install it).
collect_ignore = (
    [] if importlib.util.find_spec("torch") else ["keras_attention/backend/torch_step.py"]
)

# Most tests are single-threaded (tracing, XLA compiles, small ops), so one worker a core
# uses the machine; each worker holds a whole TensorFlow runtime (1-2 GiB), hence the cap.
_MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (the default in setup.cfg): one worker a core, at most `_MAX_WORKERS`."""
    return max(1, min(os.cpu_count() or 1, _MAX_WORKERS))


# Docstring examples that need particular backends, with the reason.
_BACKENDS = {
    "keras_attention.export.saving.export_saved_model": (
        ("tensorflow", "jax"),
        "SavedModel export needs TensorFlow or JAX",
    ),
    "keras_attention.export.torch_program.export_torch_program": (
        ("torch",),
        "torch.export needs the PyTorch backend",
    ),
    "keras_attention.distribution.layout_map": (("jax",), "keras.distribution runs on JAX"),
}


def pytest_collection_modifyitems(config, items):
    backend = keras.backend.backend()
    for item in items:
        if not isinstance(item, pytest.DoctestItem) or item.name not in _BACKENDS:
            continue
        backends, reason = _BACKENDS[item.name]
        if backend not in backends:
            item.add_marker(pytest.mark.skip(reason=f"{reason}; backend is {backend}"))

"""Helpers shared by the example scripts: command line, output folder, serving check."""

import argparse
import json
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:  # installed with pip
    import keras_attention  # noqa: F401
except ModuleNotFoundError:  # run from a source checkout: `python examples/quickstart.py`
    sys.path.insert(0, REPO_ROOT)


def parse_args(description, argv, epochs, extra=None):
    """`--epochs`, `--output-dir` (default `saved_models/`), `--smoke`, `--seed`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--epochs", type=int, default=epochs, help=f"training epochs (default {epochs})"
    )
    parser.add_argument(
        "--output-dir",
        default=os.path.join(REPO_ROOT, "saved_models"),
        help="where models and pictures are written (default: saved_models/)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny data and 1 epoch: checks that the script runs"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs = 1
    if args.epochs < 1:
        parser.error(f"--epochs must be a positive integer. Received: --epochs={args.epochs}")
    # Absolute, so paths stay valid for subprocesses started in another folder.
    args.output_dir = os.path.abspath(args.output_dir)
    os.makedirs(args.output_dir, exist_ok=True)
    return args


_SERVE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["keras_attention"] = None  # a server without the package
    import numpy as np
    import tensorflow as tf

    export_dir, inputs_file, outputs_file = sys.argv[1:4]
    loaded = tf.saved_model.load(export_dir)  # keep it: `serve` uses its variables
    serve = loaded.serve
    arrays = np.load(inputs_file)
    np.savez(outputs_file, **{k: serve(arrays[k]).numpy() for k in arrays.files})
    """
)


_SERVE_TORCH_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["keras_attention"] = None  # a server without the package
    import numpy as np
    import torch

    program_file, inputs_file, outputs_file = sys.argv[1:4]
    module = torch.export.load(program_file).module()
    arrays = np.load(inputs_file)
    np.savez(outputs_file, **{
        k: module(torch.from_numpy(arrays[k])).detach().numpy() for k in arrays.files})
    """
)


def export_for_serving(model, path):
    """Export `model` for a server without this package: a SavedModel on TensorFlow
    and JAX, a `torch.export` program (`path` + ".pt2") on PyTorch."""
    import keras

    from keras_attention import export

    if keras.backend.backend() == "torch":
        return export.export_torch_program(model, path + ".pt2")
    return export.export_saved_model(model, path)


def serve_in_fresh_process(export_dir, inputs, workdir):
    """Load the export with TensorFlow (or PyTorch) alone in a new Python, run `inputs`.

    `inputs` maps names to arrays; returns the outputs under the same names.
    `keras_attention` is made unimportable there, as on a server without it.
    """
    import numpy as np

    # The subprocess runs with cwd=workdir: relative paths would point elsewhere.
    export_dir, workdir = os.path.abspath(export_dir), os.path.abspath(workdir)
    inputs_file = os.path.join(workdir, "serve_inputs.npz")
    outputs_file = os.path.join(workdir, "serve_outputs.npz")
    np.savez(inputs_file, **inputs)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _SERVE_TORCH_SCRIPT if export_dir.endswith(".pt2") else _SERVE_SCRIPT,
            export_dir,
            inputs_file,
            outputs_file,
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError("serving in a fresh process failed:\n" + result.stderr[-3000:])
    with np.load(outputs_file) as outputs:
        served = {k: outputs[k] for k in outputs.files}
    os.remove(inputs_file)
    os.remove(outputs_file)
    return served


def print_summary(title, items):
    print(f"\n== {title} ==")
    width = max(len(k) for k in items)
    for key, value in items.items():
        print(f"{key:<{width}}  {value}")
    return json.dumps(items)

"""The export matrix: every public layer (inside a small functional model) and every
model builder, exported with every `model.export` format Keras offers on the current
backend, each artifact run in its own runtime in a child process without this package.

A developer tool, never imported by the library. `python tools/export_matrix.py`
prints the table of the current backend (`KERAS_BACKEND=jax ...` for another);
`--write docs/deployment.md` replaces that backend's table (between its markers, see
:func:`markers`) in that file and leaves the other backends' tables alone;
`--cases` and `--formats` run a part of it.
A case passes (✓) when the runtime's outputs are within `ATOL` of Keras for two
input shapes (batch and sequence length both change), so dynamic shapes are checked
too; "static" means the artifact runs at the traced shape only.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time

import keras
import numpy as np

# A source checkout runs this file without installing the package.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import keras_attention as ka  # noqa: E402
from keras_attention import export, models  # noqa: E402

ATOL = 1e-5
VOCABULARY = 50
FEATURES = 8
# Two input shapes per case, (batch, sequence length): both change between them.
SHAPES = ((2, 5), (3, 9))
# The formats of `model.export` per backend (Keras 3.15), in table order: those that
# `export_model` takes.
BACKEND_FORMATS = export.FORMATS
# Artifact names: the endings `export_model` requires, a folder for SavedModels,
# `.onnx` by convention.
SUFFIXES = {"tf_saved_model": "", "onnx": ".onnx", **export.SUFFIXES}
RUNTIMES = {
    "tf_saved_model": "tensorflow",
    "litert": "ai_edge_litert",
    "onnx": "onnxruntime",
    "openvino": "openvino",
    "torch": "torch",
}


def markers(backend=None):
    """The Markdown comments around the table of `backend` (default: the current one)."""
    backend = backend or keras.backend.backend()
    return f"<!-- export-matrix:{backend}:start -->", f"<!-- export-matrix:{backend}:end -->"


# ----------------------------------------------------------------------- cases


def _tokens(name="tokens"):
    return keras.Input((None,), dtype="int32", name=name)


def _sequence(name, features=FEATURES):
    return keras.Input((None, features), name=name)


def _embedded(tokens):
    """Token embeddings with a padding mask (token 0), so masks reach the layer."""
    return keras.layers.Embedding(VOCABULARY, FEATURES, mask_zero=True)(tokens)


# Each layer case returns the inputs and outputs of a small functional model.


def _scaled_dot_product():
    query, value = _sequence("query"), _sequence("value")
    return [query, value], ka.ScaledDotProductAttention()(query, value)


def _self_attention():
    tokens = _tokens()
    return tokens, ka.SelfAttention(FEATURES)(_embedded(tokens), use_causal_mask=True)


def _multi_head():
    tokens, context = _tokens(), _sequence("context", 6)
    x = _embedded(tokens)
    x = ka.MultiHeadAttention(2, 4)(x, x, use_causal_mask=True)
    return [tokens, context], ka.MultiHeadAttention(2, 4)(x, context)


def _grouped_query():
    tokens = _tokens()
    x = _embedded(tokens)
    return tokens, ka.GroupedQueryAttention(4, 4, 2)(x, x, use_causal_mask=True)


def _additive():
    query, value = _sequence("query"), _sequence("value", 6)
    return [query, value], ka.AdditiveAttention(8)(query, value)


def _luong():
    state = keras.Input((FEATURES,), name="state")
    value = _sequence("value")
    return [state, value], ka.LuongAttention("general")(state, value)


def _pooling():
    tokens = _tokens()
    return tokens, ka.AttentionPooling(units=8)(_embedded(tokens))


def _feed_forward():
    x = _sequence("sequence")
    return x, ka.FeedForward(16)(x)


def _sinusoidal():
    x = _sequence("sequence")
    return x, ka.SinusoidalPositionEncoding()(x)


def _position_embedding():
    x = _sequence("sequence")
    return x, x + ka.PositionEmbedding(sequence_length=16)(x)


def _token_and_position():
    tokens = _tokens()
    return tokens, ka.TokenAndPositionEmbedding(VOCABULARY, 16, FEATURES)(tokens)


def _encoder():
    tokens = _tokens()
    return tokens, ka.TransformerEncoder(16, 2)(_embedded(tokens))


def _decoder():
    tokens, source = _tokens(), _tokens("source")
    y = ka.TransformerDecoder(16, 2)(_embedded(tokens), _embedded(source))
    return [tokens, source], y


def _rotary():
    x = _sequence("sequence")
    return x, ka.RotaryEmbedding()(x)


def _rms_norm():
    x = _sequence("sequence")
    return x, ka.RMSNorm()(x)


def _alibi():
    tokens = _tokens()
    x = _embedded(tokens)
    layer = ka.MultiHeadAttention(2, 4, score_bias=ka.ALiBiBias(2), soft_cap=20.0)
    return tokens, layer(x, x, use_causal_mask=True)


def _relative_position():
    tokens = _tokens()
    x = _embedded(tokens)
    bias = ka.RelativePositionBias(num_buckets=8, max_distance=16, num_heads=2)
    return tokens, ka.MultiHeadAttention(2, 4, score_bias=bias)(x, x)


def _modern_multi_head():
    tokens = _tokens()
    x = _embedded(tokens)
    layer = ka.MultiHeadAttention(
        4,
        4,
        num_key_value_heads=2,
        position_embedding="rotary",
        query_norm="rms_norm",
        key_norm="rms_norm",
        sliding_window=3,
        use_bias=False,
    )
    return tokens, layer(x, x, use_causal_mask=True)


_LAYER_CASES = {
    "ScaledDotProductAttention": _scaled_dot_product,
    "SelfAttention": _self_attention,
    "MultiHeadAttention": _multi_head,
    "GroupedQueryAttention": _grouped_query,
    "AdditiveAttention": _additive,
    "LuongAttention": _luong,
    "AttentionPooling": _pooling,
    "FeedForward": _feed_forward,
    "SinusoidalPositionEncoding": _sinusoidal,
    "PositionEmbedding": _position_embedding,
    "TokenAndPositionEmbedding": _token_and_position,
    "TransformerEncoder": _encoder,
    "TransformerDecoder": _decoder,
    "RotaryEmbedding": _rotary,
    "RMSNorm": _rms_norm,
    "ALiBiBias": _alibi,
    "RelativePositionBias": _relative_position,
    "MultiHeadAttention (RoPE, GQA, QK-norm, window)": _modern_multi_head,
}


def _layer_cases():
    return dict(_LAYER_CASES)


def _builder_cases():
    small = dict(
        vocabulary_size=VOCABULARY,
        sequence_length=16,
        num_layers=1,
        embedding_dim=FEATURES,
        num_heads=2,
        intermediate_dim=16,
    )
    return {
        "transformer_classifier": lambda: models.transformer_classifier(**small),
        "causal_language_model": lambda: models.causal_language_model(**small),
        "causal_language_model(style='llama')": lambda: models.causal_language_model(
            **small, style="llama", num_key_value_heads=1
        ),
        "transformer_seq2seq": lambda: models.transformer_seq2seq(**small),
    }


def cases():
    """`{name: build()}`; `build` returns a `keras.Model` (or its inputs and outputs)."""
    return {**_layer_cases(), **_builder_cases()}


def uncovered_layers():
    """Public layer classes of the package that have no case in the matrix."""
    covered = {getattr(ka, name.split(" ")[0]) for name in _layer_cases()}  # aliases once
    uncovered = {}
    for name in sorted(getattr(ka, "__all__", dir(ka))):
        value = getattr(ka, name, None)
        if (
            isinstance(value, type)
            and issubclass(value, keras.layers.Layer)
            and not issubclass(value, keras.Model)
            and value not in covered
        ):
            uncovered.setdefault(value, name)
    return sorted(uncovered.values())


def _build(case):
    built = case()
    if isinstance(built, keras.Model):
        return built
    inputs, outputs = built
    return keras.Model(inputs, outputs)


def _example_inputs(model, batch, length, seed):
    rng = np.random.default_rng(seed)
    arrays = []
    for tensor in model.inputs:
        shape = [batch] + [length if d is None else d for d in tensor.shape[1:]]
        if "int" in str(tensor.dtype):
            x = rng.integers(1, VOCABULARY, shape).astype("int32")
            if x.ndim == 2 and length > 2:
                x[0, -2:] = 0  # padding at the end of the first row
            arrays.append(x)
        else:
            arrays.append(rng.normal(size=shape).astype("float32"))
    return arrays


# ----------------------------------------------------------------- the runner

# Runs in a child process that cannot import this package (or Keras: the artifacts
# must stand alone). Reads a JSON manifest, writes the outputs of every artifact.
_RUNNER = textwrap.dedent(
    """
    import json, sys, traceback
    sys.modules["keras_attention"] = None
    sys.modules["keras"] = None
    import numpy as np

    def feed(names, arrays, keys):
        # Match runtime input names to the Keras input names; else keep the order.
        chosen = []
        for name in names:
            hits = [k for k in keys if k in name]
            if len(hits) != 1 and hits:
                hits = [max(hits, key=len)]
            chosen.append(hits[0] if hits else None)
        if None in chosen or len(set(chosen)) != len(chosen):
            # Unnamed inputs (PyTorch's exports): Keras writes them in the order of
            # the model's inputs.
            if len(names) != len(keys):
                raise ValueError(f"cannot match inputs {names} to {keys}")
            chosen = keys
        return {name: arrays[key] for name, key in zip(names, chosen)}

    def tf_saved_model(path):
        import tensorflow as tf
        loaded = tf.saved_model.load(path)
        def run(arrays, keys):
            xs = [tf.constant(arrays[k]) for k in keys]
            out = loaded.serve(xs[0] if len(xs) == 1 else xs)
            return np.asarray(out)
        return run

    def litert(path):
        from ai_edge_litert.interpreter import Interpreter
        runner = Interpreter(path).get_signature_runner()
        names = list(runner.get_input_details())
        def run(arrays, keys):
            (out,) = runner(**feed(names, arrays, keys)).values()
            return out
        return run

    def onnx(path):
        import onnxruntime as ort
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return lambda arrays, keys: session.run(None, feed(names, arrays, keys))[0]

    def openvino(path):
        import openvino as ov
        # float32 inference: on CPUs with bfloat16 units (AVX512_BF16, AMX) the CPU
        # plugin's default precision is bfloat16, off by ~1e-3 from the model.
        compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        names = [i.get_any_name() for i in compiled.inputs]
        def run(arrays, keys):
            fed = feed(names, arrays, keys)
            return compiled([fed[n] for n in names])[0]
        return run

    def torch_program(path):
        import torch
        module = torch.export.load(path).module()
        def run(arrays, keys):
            xs = [torch.from_numpy(arrays[k]) for k in keys]
            # A model of several inputs takes them as one list, as in Keras.
            return module(*xs if len(xs) == 1 else [xs]).detach().numpy()
        return run

    loaders = dict(tf_saved_model=tf_saved_model, litert=litert, onnx=onnx,
                   openvino=openvino, torch=torch_program)
    manifest = json.load(open(sys.argv[1]))
    results = {}
    for job in manifest:
        key = job["case"] + "/" + job["format"]
        try:
            run = loaders[job["format"]](job["artifact"])
        except Exception as error:
            results[key] = {"load_error": f"{type(error).__name__}: {error}"}
            continue
        outcome = {}
        for i, inputs_file in enumerate(job["inputs"]):
            data = np.load(inputs_file)
            try:
                out = np.asarray(run(data, job["keys"]), dtype="float32")
                np.save(f"{job['outputs']}_{i}.npy", out)
                outcome[str(i)] = "ok"
            except Exception as error:
                outcome[str(i)] = f"{type(error).__name__}: {error}"
        results[key] = outcome
    loaded = [m for m, mod in sys.modules.items()
              if m.split(".")[0] in ("keras_attention", "keras") and mod]
    print(json.dumps({"results": results, "package_modules": loaded}))
    """
)


def _short(error, limit=140):
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m|\[[01]?m", "", str(error)).split())
    # Keras wraps a layer's error: keep the layer's name and the error itself.
    wrapped = re.match(
        r"Exception encountered when calling (\w+)\.call\(\)\. (.*?)( Arguments received|$)", text
    )
    if wrapped:
        text = f"in {wrapped.group(1)}: {wrapped.group(2)}"
    # OpenVINO lists the operations it cannot convert after its own source location.
    unconverted = re.search(r"No conversion rule found for operations: \w+(, \w+)*", text)
    if unconverted:
        text = unconverted.group(0)
    # A converter error is its op locations (graph names with run-dependent
    # numbers), then "'dialect.op' op <message>": keep the message, so the table
    # reads well and does not change from run to run.
    message = re.search(r"'[\w.]+' op [^.]*\.", text)
    if "loc(" in text and message:
        text = message.group(0)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def missing_converter(format, backend=None):
    """Why `format` cannot be exported on `backend` here (its converter package is
    not installed), or `None` when it can."""
    missing = export.missing_converter(backend or keras.backend.backend(), format)
    if missing is None:
        return None
    _, package, conflict = missing
    reason = conflict or "is not installed (`pip install -e '.[export]'`)"
    return f"needs `{package}`, which {reason}"


def _export(model, path, format):
    """Export as a user of this package would: `keras_attention.export.export_model`
    (built-in ops only for LiteRT, dynamic shapes for `torch`, clear errors)."""
    export.export_model(model, path, format)


def run_matrix(names=None, formats=None, workdir=None, seed=0, log=None):
    """Export every case with every format and check it in its runtime.

    Args:
        names: case names (default: all, see :func:`cases`).
        formats: formats (default: those Keras offers on the current backend).
        workdir: folder for the artifacts (default: a temporary folder).
        seed: seed of the weights and inputs.
        log: optional callable taking progress lines.

    Returns:
        `{case: {format: result}}`; a result is a dict with `status` (`"ok"`,
        `"static"` or `"error"`), `max_error` (float or None) and `detail`.
    """
    backend = keras.backend.backend()
    formats = tuple(formats or BACKEND_FORMATS[backend])
    all_cases = cases()
    names = list(names or all_cases)
    unknown = sorted(set(names) - set(all_cases))
    if unknown:
        raise ValueError(
            f"`names` must be cases of the matrix ({', '.join(all_cases)}). Received: {unknown}"
        )
    own_dir = workdir is None
    workdir = tempfile.mkdtemp(prefix="export_matrix_") if own_dir else os.fspath(workdir)
    results, jobs, expected = {}, [], {}
    for name in names:
        keras.utils.set_random_seed(seed)
        model = _build(all_cases[name])
        expected[name], inputs_files = _expected_outputs(model, name, workdir, seed)
        results[name] = {}
        for format in formats:
            job = _export_case(model, name, format, inputs_files, workdir, log)
            if "status" in job:  # the export failed: its result
                results[name][format] = job
            else:
                jobs.append(job)
        keras.backend.clear_session()
    if jobs:
        if log:
            log(f"running {len(jobs)} artifacts in their runtimes")
        report = _run_children(jobs, workdir)
        for job in jobs:
            name, format = job["case"], job["format"]
            results[name][format] = _judge(job, report["results"][f"{name}/{format}"], expected)
    # in the order of `formats` (failed exports were filled in first)
    return {name: {format: row[format] for format in formats} for name, row in results.items()}


def _expected_outputs(model, name, workdir, seed):
    """Keras' outputs at each of `SHAPES`, and the files of their inputs (named
    after the Keras inputs: the runtimes name theirs after them, with prefixes)."""
    keys = [tensor.name for tensor in model.inputs]
    expected, inputs_files = [], []
    for i, (batch, length) in enumerate(SHAPES):
        arrays = _example_inputs(model, batch, length, seed + i)
        outputs = model(arrays[0] if len(arrays) == 1 else arrays, training=False)
        expected.append(keras.ops.convert_to_numpy(outputs))
        inputs_file = os.path.join(workdir, f"{name}_inputs_{i}.npz")
        np.savez(inputs_file, **dict(zip(keys, arrays)))
        inputs_files.append(inputs_file)
    return expected, inputs_files


def _export_case(model, name, format, inputs_files, workdir, log):
    """Export one case in one format: the runtime's job, or the result of an export
    that failed (a dict with `status`)."""
    artifact = os.path.join(workdir, f"{name}_{format}{SUFFIXES[format]}")
    missing = missing_converter(format)
    if missing:
        return {"status": "error", "max_error": None, "detail": missing}
    if log:
        log(f"export {name} -> {format}")
    try:
        _export(model, artifact, format)
    except Exception as error:
        return {
            "status": "error",
            "max_error": None,
            "detail": f"export: {type(error).__name__}: {_short(error)}",
        }
    return {
        "case": name,
        "format": format,
        # relative to the runtime's working folder, `workdir`: a runtime's message
        # names the file, never the (temporary) folder
        "artifact": os.path.basename(artifact),
        "inputs": inputs_files,
        "keys": [tensor.name for tensor in model.inputs],
        "outputs": os.path.join(workdir, f"{name}_{format}_out"),
    }


def _run_children(jobs, workdir):
    manifest = os.path.join(workdir, "manifest.json")
    with open(manifest, "w") as handle:
        json.dump(jobs, handle)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    completed = subprocess.run(
        [sys.executable, "-c", _RUNNER, manifest],
        cwd=workdir,  # not the repository root: the package is not on sys.path
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"The runtime process failed:\n{completed.stderr[-3000:]}")
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    if report["package_modules"]:
        raise RuntimeError(f"The runtime process imported {report['package_modules']}")
    return report


def _judge(job, outcome, expected):
    if "load_error" in outcome:
        return {
            "status": "error",
            "max_error": None,
            "detail": f"load: {_short(outcome['load_error'])}",
        }
    errors = []
    for i, want in enumerate(expected[job["case"]]):
        if outcome.get(str(i)) != "ok":
            if i == 0:
                return {
                    "status": "error",
                    "max_error": None,
                    "detail": f"run: {_short(outcome.get(str(i)))}",
                }
            return {
                "status": "static",
                "max_error": max(errors),
                "detail": f"shape {SHAPES[i]}: {_short(outcome.get(str(i)))}",
            }
        got = np.load(f"{job['outputs']}_{i}.npy")
        if got.shape != want.shape:
            return {
                "status": "error",
                "max_error": None,
                "detail": f"shape {got.shape}, Keras {want.shape}",
            }
        errors.append(float(np.max(np.abs(got - want))) if want.size else 0.0)
    worst = max(errors)
    if worst > ATOL:
        return {"status": "error", "max_error": worst, "detail": f"max error {worst:.1e} > {ATOL}"}
    return {"status": "ok", "max_error": worst, "detail": ""}


# ------------------------------------------------------------------ the table


def table(results, backend=None):
    """The Markdown table of `run_matrix`'s results (rows: cases, columns: formats)."""
    backend = backend or keras.backend.backend()
    formats = list(next(iter(results.values())))
    lines = [
        f"| {backend} backend | " + " | ".join(f"`{f}`" for f in formats) + " |",
        "|---|" + "---|" * len(formats),
    ]
    notes = []
    for name, row in results.items():
        cells = []
        for format in formats:
            result = row[format]
            if result["status"] == "ok":
                cells.append("✓")
                continue
            notes.append(f"{name} / `{format}`: {result['detail']}")
            mark = "static shapes only" if result["status"] == "static" else "✗"
            cells.append(f"{mark} [{len(notes)}]")
        kind = "builder" if name[0].islower() else "layer"
        lines.append(f"| {name} ({kind}) | " + " | ".join(cells) + " |")
    for name in uncovered_layers():
        lines.append(f"| {name} (layer) | " + " | ".join("not in the matrix yet" for _ in formats))
    if notes:
        lines.append("")
        lines += [f"[{i}] {note}" for i, note in enumerate(notes, 1)]
    worst = [r["max_error"] for row in results.values() for r in row.values() if r["max_error"]]
    if worst:
        lines.append("")
        lines.append(
            f"✓: outputs within {ATOL:g} of Keras at shapes {SHAPES[0]} and {SHAPES[1]} "
            "(batch, sequence); largest difference over the table "
            f"{_magnitude(max(worst))}."
        )
    return "\n".join(lines)


def _magnitude(value):
    # An order of magnitude, so the table does not change with the last digits.
    exponent = int(np.floor(np.log10(value))) if value > 0 else None
    return "0" if exponent is None else f"below 1e{exponent + 1}"


def write_table(text, path, backend=None):
    """Replace the text between the markers of `backend`'s table (default: the
    current backend's, see :func:`markers`) in the Markdown file `path`; the other
    backends' tables stay as they are."""
    mark_start, mark_end = markers(backend)
    with open(path) as handle:
        document = handle.read()
    start, end = document.find(mark_start), document.find(mark_end)
    if start < 0 or end < start:
        raise ValueError(
            f"`path` must contain the markers {mark_start} and {mark_end}. Received: path={path!r}"
        )
    document = document[: start + len(mark_start)] + "\n" + text + "\n" + document[end:]
    with open(path, "w") as handle:
        handle.write(document)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python tools/export_matrix.py", description=__doc__)
    parser.add_argument("--cases", nargs="*", help="case names (default: all)")
    parser.add_argument("--formats", nargs="*", help="formats (default: all of the backend)")
    parser.add_argument("--write", metavar="MARKDOWN", help="replace the table in this file")
    args = parser.parse_args(argv)
    start = time.time()
    results = run_matrix(
        args.cases, args.formats, log=lambda line: print(line, file=sys.stderr, flush=True)
    )
    text = table(results)
    print(text)
    print(f"({time.time() - start:.0f} s)", file=sys.stderr)
    if args.write:
        write_table(text, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`export_generator`: a decoder exported as `prefill` and `decode` steps with the
key/value cache as explicit state, so an app (a phone, a server) runs the token loop
in its own code, with only LiteRT, ONNX Runtime or TensorFlow.

The exported functions, for a :class:`~keras_attention.models.CausalLanguageModel`:

- `prefill(tokens, mask) -> {"logits", "cache"}`: `tokens` int32 `(batch, width)`,
  `mask` bool `(batch, width)` (`True` for the prompt's tokens, anywhere in the row;
  the rows are left-aligned as `generate` does). `logits` float32
  `(batch, vocabulary_size)` predict the token after each row's last prompt token;
  `cache` float32 `(batch, max_length, cache_features)` holds every decoder layer's
  keys and values (a layer with a sliding window `w` keeps its ring in the first
  `min(max_length, w)` rows, zeros after) and, in its last channel, 1.0 where a
  position holds a key the model attends to (token 0 is padding for models built
  with `mask_zero=True`). It holds the positions every prompt row has, up to the
  shortest prompt's length, where the app's loop resumes.
- `decode(token, cache, index) -> {"logits", "cache"}`: `token` int32 `(batch,)` is
  written at position `index` (int32 scalar); `logits` predict position `index + 1`.

With `cache_dtype="int8"` the `cache` is int8 `(batch, max_length, cache_features)`:
every layer's int8 keys and values, then the bytes of their float32 scales (per
position and head, `tf.bitcast`), then the key mask (0 or 1) in the last channel; the
app passes it back as it came, as with the float cache.

A :class:`~keras_attention.models.Seq2SeqTransformer` adds the source:
`prefill(encoder_tokens, encoder_mask, tokens, mask)` also returns `encoder_cache`
(the cross-attention keys/values of every decoder layer and the source mask), which
`decode(token, cache, encoder_cache, index)` takes.

The app's greedy loop (what `model.generate` does, prompts of different lengths
included)::

    lengths = mask.sum(1); tokens = left-aligned prompt rows (zeros after)
    out = prefill(tokens=tokens, mask=mask); logits, cache = out["logits"], out["cache"]
    for index in range(lengths.min(), max_length):
        token = where(index < lengths, tokens[:, index], logits.argmax(-1))
        out = decode(token=token, cache=cache, index=index)
        logits, cache = out["logits"], out["cache"]

An ONNX export (`format="onnx"`) is a folder of two graphs, `prefill.onnx` and
`decode.onnx`, one `onnxruntime.InferenceSession` each, with the same inputs and
outputs except one name: ONNX names every value of a graph once, so `decode`
returns its updated cache as `next_cache` (the app passes it back as `cache`).

A SavedModel export also has the whole greedy loop as one signature,
`generate(tokens, mask) -> {"tokens": (batch, max_length)}` (and
`generate(encoder_tokens, encoder_mask, tokens, mask)` for seq2seq models), stopping
a row at `stop_token_ids` and padding it with `pad_token_id`, with the logits
processors given at export (`processors=`, their settings fixed): the one SavedModel
export of generation (`keras_attention.models.export_generate` is deprecated).

The steps (`export/_generator_steps.py`) are the models' package-internal step API (`initial_cache`,
`call_with_cache`, `left_align`, `generate_graph`, and for seq2seq `encode` and
`encoder_state_from_cache`), the same functions `model.generate` runs.
"""

import importlib.util
import os
import tempfile

import keras

from keras_attention import _validation
from keras_attention.backend.litert_quantized import int8_products_in_float
from keras_attention.export import _atomic, _checks
from keras_attention.export._generator_steps import Steps
from keras_attention.export._onnx_generator import write_onnx
from keras_attention.models import processors as processors_lib
from keras_attention.models.generation import GenerativeMixin, check_token_ids
from keras_attention.models.generation.state import CACHE_DTYPES

FORMATS = ("litert", "tf_saved_model", "onnx")
QUANTIZATIONS = (None, "dynamic_int8")


def export_generator(
    model,
    path,
    format="litert",
    max_length=None,
    prompt_length=None,
    quantization=None,
    stop_token_ids=None,
    pad_token_id=0,
    processors=None,
    cache_dtype=None,
):
    """Export `model`'s decoder as `prefill`/`decode` signatures (and `generate`).

    TensorFlow backend. The signatures have a dynamic batch size and prompt width
    (source length too, for seq2seq); the cache holds `max_length` positions, prompt
    included. See the module docstring for the signatures and the app's loop.

    Args:
        model: a :class:`~keras_attention.models.CausalLanguageModel` or
            :class:`~keras_attention.models.Seq2SeqTransformer` (a model with a
            decoder and a key/value cache).
        path: for `format="litert"` a file ending in `.tflite`; for
            `"tf_saved_model"` and `"onnx"` a folder (`"onnx"` writes
            `path/prefill.onnx` and `path/decode.onnx`).
        format: `"litert"` (a `.tflite` flatbuffer for the `ai-edge-litert`
            interpreter, built-in ops only), `"tf_saved_model"` (also has the
            whole-loop greedy `generate` signature) or `"onnx"` (for ONNX Runtime,
            converted by tf2onnx as Keras' `model.export(format="onnx")` is on
            TensorFlow; needs `tf2onnx` and `onnx`, in the `export` extra).
        max_length: positions of the cache, prompt plus new tokens; defaults to
            the model's `sequence_length`. With learned positions it must not exceed
            `sequence_length`.
        prompt_length: optional int, a fixed prompt width for `prefill` (a static
            shape, which some LiteRT delegates need); `None` keeps it dynamic.
        quantization: `None` (float32) or `"dynamic_int8"` (LiteRT only: weights
            stored as int8, `tf.lite.Optimize.DEFAULT`). A `model.quantize("int8")`d
            model needs neither: its int8 kernels go into the `.tflite` as they are
            and it computes what the quantized model computes (the int8 products in
            float32, exact); `"int4"` converts too, `"float8"` does not.
        stop_token_ids: token ids that end a row in the SavedModel's `generate`
            signature, as in `model.generate` (`"tf_saved_model"` only: a LiteRT
            app's own loop decides when to stop).
        pad_token_id: int written after a row's last token by `generate`
            (`"tf_saved_model"` only).
        processors: optional list of `keras_attention.models.processors`
            `LogitsProcessor`s applied before the argmax of the SavedModel's
            `generate` signature, their settings fixed at export
            (`"tf_saved_model"` only).
        cache_dtype: `None` (a float32 cache) or `"int8"` (the decoder's
            self-attention cache quantized, as `model.generate(cache_dtype="int8")`;
            a seq2seq model's `encoder_cache` stays float32; not for `"onnx"`).

    Returns:
        The absolute path written, as a string.

    Raises:
        ValueError: an unknown `format` or `quantization`, a model without a decoder,
            `max_length` out of range or smaller than `prompt_length`, token ids
            out of the vocabulary or given for LiteRT or ONNX, `cache_dtype="int8"`
            for ONNX, a `path` ending in `.onnx` for ONNX, a float8-quantized model
            for LiteRT, or a backend other than TensorFlow.
        ModuleNotFoundError: `format="onnx"` without `tf2onnx` or `onnx`.

    Example:
    ```python
    path = export_generator(model, "saved_models/lm.tflite", max_length=64)
    runner = ai_edge_litert.interpreter.Interpreter(path).get_signature_runner("prefill")
    ```
    """
    _check_format(format, quantization, stop_token_ids, pad_token_id, processors)
    _validation.check_one_of(cache_dtype, "cache_dtype", CACHE_DTYPES)
    if format == "onnx" and cache_dtype is not None:
        raise ValueError(
            "format='onnx' exports the float32 cache only (the int8 cache stores its "
            "scales' bytes with a bitcast, which tf2onnx cannot convert): use "
            "format='litert' or 'tf_saved_model' for it. "
            f"Received: cache_dtype={cache_dtype!r}, format='onnx'"
        )
    max_length = _check_model(model, max_length, prompt_length)
    if format == "litert":
        _checks.check_litert_quantization(model)
    vocabulary = model.decoder_embedding.vocabulary_size
    generate_settings = (
        check_token_ids(stop_token_ids, "stop_token_ids", vocabulary),
        check_token_ids([pad_token_id], "pad_token_id", vocabulary)[0],
        processors_lib.check(processors, vocabulary),
    )
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ValueError(
            "`export_generator` traces TensorFlow graphs and needs the TensorFlow "
            f"backend. Received: keras.backend.backend()={backend!r}"
        )
    path = os.path.abspath(os.fspath(path))
    if format == "litert" and not path.endswith(".tflite"):
        raise ValueError(f"`path` must end in `.tflite` for LiteRT. Received: path={path!r}")
    if format == "onnx":
        _check_onnx_path(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if format == "tf_saved_model":
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(
                f"`path` is an existing file; a SavedModel is a folder. Received: path={path!r}"
            )
        steps = Steps(model, max_length, True, generate_settings, cache_dtype)
        with _atomic.atomic_folder(path) as tmp_dir:
            _write_saved_model(steps, tmp_dir, prompt_length, with_generate=True)
        return path
    if format == "onnx":
        # Like LiteRT, no run-time width check: the app checks the prompt width.
        steps = Steps(model, max_length, False)
        with _atomic.atomic_folder(path) as tmp_dir:
            write_onnx(steps, tmp_dir, prompt_length)
        return path
    # LiteRT drops assertions; the app checks the width (see examples/litert_app.py).
    steps = Steps(model, max_length, False, cache_dtype=cache_dtype)
    _write_litert(steps, path, prompt_length, quantization)
    return path


def _check_onnx_path(path):
    if path.endswith(".onnx") or (os.path.exists(path) and not os.path.isdir(path)):
        raise ValueError(
            "`path` is a folder for format='onnx': it receives `prefill.onnx` and "
            f"`decode.onnx`. Received: path={path!r}"
        )
    for module in ("tf2onnx", "onnx"):
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(
                f"format='onnx' needs the `{module}` package: `pip install {module}` (it is "
                "in this package's `export` extra, `pip install -e '.[export]'`).",
                name=module,
            )


def _check_format(format, quantization, stop_token_ids, pad_token_id, processors=None):
    if format not in FORMATS:
        raise ValueError(
            f"`format` must be one of {', '.join(map(repr, FORMATS))}. Received: format={format!r}"
        )
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            "`quantization` must be None or 'dynamic_int8'. "
            f"Received: quantization={quantization!r}"
        )
    if quantization is not None and format != "litert":
        raise ValueError(
            "`quantization` applies to the LiteRT format only. "
            f"Received: quantization={quantization!r}, format={format!r}"
        )
    if format != "tf_saved_model" and (stop_token_ids is not None or pad_token_id != 0):
        raise ValueError(
            "`stop_token_ids` and `pad_token_id` apply to the SavedModel's `generate` "
            "signature (format='tf_saved_model'); a LiteRT or ONNX app's own loop decides when "
            f"to stop. Received: stop_token_ids={stop_token_ids!r}, "
            f"pad_token_id={pad_token_id!r}, format={format!r}"
        )
    if format != "tf_saved_model" and processors:
        raise ValueError(
            "`processors` apply to the SavedModel's `generate` signature "
            "(format='tf_saved_model'); a LiteRT or ONNX app's own loop processes its logits. "
            f"Received: processors={processors!r}, format={format!r}"
        )


def _check_model(model, max_length, prompt_length):
    """Check the model and the lengths; the cache length to use."""
    if not isinstance(model, GenerativeMixin):
        raise ValueError(
            "`model` must have a decoder with a key/value cache (a CausalLanguageModel "
            "or a Seq2SeqTransformer) to export `prefill`/`decode`; for other models use "
            "`model.export(path, format=...)`. "
            f"Received: model of type {type(model).__name__}"
        )
    embedding = model.decoder_embedding
    if max_length is None:
        max_length = embedding.sequence_length
    _validation.check_positive_int(max_length, "max_length")
    if embedding.position == "learned" and max_length > embedding.sequence_length:
        raise ValueError(
            "`max_length` must not exceed the model's learned position table "
            f"(sequence_length={embedding.sequence_length}). Received: max_length={max_length}"
        )
    _validation.check_positive_int(prompt_length, "prompt_length", allow_none=True)
    if prompt_length is not None and max_length <= prompt_length:
        raise ValueError(
            "`max_length` (prompt plus new tokens) must be greater than the prompt "
            f"length. Received: max_length={max_length}, prompt_length={prompt_length}"
        )
    return max_length


def _write_litert(steps, path, prompt_length, quantization):
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as saved_model_dir:
        # A `model.quantize()`d model's int8 products, traced in float32 (exact).
        with int8_products_in_float():
            _write_saved_model(steps, saved_model_dir, prompt_length, with_generate=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            saved_model_dir, signature_keys=["prefill", "decode"]
        )
        # Built-in ops only: the plain `ai-edge-litert` interpreter has no TF ops.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantization == "dynamic_int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        flatbuffer = converter.convert()
    with _atomic.atomic_file(path, suffix=".tmp.tflite") as tmp_path:
        with open(tmp_path, "wb") as handle:
            handle.write(flatbuffer)


def _write_saved_model(steps, folder, prompt_length, with_generate):
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    # The weights only, not the model object: a tokenizer kept on a converted model
    # (`from_keras_hub`) holds lookup tables whose TF ops LiteRT's built-ins lack.
    weights = tf.Module()
    weights.model_variables = list(steps.model.variables)
    archive.track(weights)
    for name, (function, specs) in steps.signatures(prompt_length, with_generate).items():
        archive.add_endpoint(name, function, specs)
    archive.write_out(folder, verbose=False)

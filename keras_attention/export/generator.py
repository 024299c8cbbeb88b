"""`export_generator`: a decoder exported as `prefill` and `decode` steps with the
key/value cache as explicit state, so an app (a phone, a server) runs the token loop
in its own code, with only LiteRT or TensorFlow.

The exported functions, for a :class:`~keras_attention.models.CausalLanguageModel`:

- `prefill(tokens, mask) -> {"logits", "cache"}`: `tokens` int32 `(batch, width)`,
  `mask` bool `(batch, width)` (`True` for the prompt's tokens, anywhere in the row;
  the rows are left-aligned as `generate` does). `logits` float32
  `(batch, vocabulary_size)` predict the token after each row's last prompt token;
  `cache` float32 `(batch, max_length, cache_features)` holds every decoder layer's
  keys and values and, in its last channel, 1.0 where a position holds a key the model
  attends to (token 0 is padding for models built with `mask_zero=True`).
- `decode(token, cache, index) -> {"logits", "cache"}`: `token` int32 `(batch,)` is
  written at position `index` (int32 scalar); `logits` predict position `index + 1`.

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

A SavedModel export also has the whole greedy loop as one signature,
`generate(tokens, mask) -> {"tokens": (batch, max_length)}` (and
`generate(encoder_tokens, encoder_mask, tokens, mask)` for seq2seq models).
"""

import os
import tempfile

import keras
from keras import ops

from keras_attention import _validation
from keras_attention.export import _atomic

FORMATS = ("litert", "tf_saved_model")
QUANTIZATIONS = (None, "dynamic_int8")


def export_generator(
    model, path, format="litert", max_length=None, prompt_length=None, quantization=None
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
            `"tf_saved_model"` a folder.
        format: `"litert"` (a `.tflite` flatbuffer for the `ai-edge-litert`
            interpreter, built-in ops only) or `"tf_saved_model"` (also has the
            whole-loop greedy `generate` signature).
        max_length: positions of the cache, prompt plus new tokens; defaults to
            the model's `sequence_length`. With learned positions it must not exceed
            `sequence_length`.
        prompt_length: optional int, a fixed prompt width for `prefill` (a static
            shape, which some LiteRT delegates need); `None` keeps it dynamic.
        quantization: `None` (float32) or `"dynamic_int8"` (LiteRT only: weights
            stored as int8, `tf.lite.Optimize.DEFAULT`).

    Returns:
        The absolute path written, as a string.

    Raises:
        ValueError: an unknown `format` or `quantization`, a model without a decoder,
            `max_length` out of range or smaller than `prompt_length`, or a backend
            other than TensorFlow.

    Example:
    ```python
    path = export_generator(model, "saved_models/lm.tflite", max_length=64)
    runner = ai_edge_litert.interpreter.Interpreter(path).get_signature_runner("prefill")
    ```
    """
    from keras_attention.models.generation import GenerativeMixin

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
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ValueError(
            "`export_generator` traces TensorFlow graphs and needs the TensorFlow "
            f"backend. Received: keras.backend.backend()={backend!r}"
        )
    path = os.path.abspath(os.fspath(path))
    if format == "litert" and not path.endswith(".tflite"):
        raise ValueError(f"`path` must end in `.tflite` for LiteRT. Received: path={path!r}")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    if format == "tf_saved_model":
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(
                f"`path` is an existing file; a SavedModel is a folder. Received: path={path!r}"
            )
        with _atomic.atomic_folder(path) as tmp_dir:
            _write_saved_model(model, tmp_dir, max_length, prompt_length, with_generate=True)
        return path
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as saved_model_dir:
        _write_saved_model(model, saved_model_dir, max_length, prompt_length, with_generate=False)
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
    return path


def _write_saved_model(model, folder, max_length, prompt_length, with_generate):
    import tensorflow as tf

    # LiteRT drops assertions; the app checks the width (see examples/litert_app.py).
    steps = _Steps(model, max_length, check_width=with_generate)
    width = prompt_length
    tokens = [
        tf.TensorSpec((None, width), tf.int32, name="tokens"),
        tf.TensorSpec((None, width), tf.bool, name="mask"),
    ]
    cache = tf.TensorSpec((None, max_length, steps.cache_features), tf.float32, name="cache")
    token = tf.TensorSpec((None,), tf.int32, name="token")
    index = tf.TensorSpec((), tf.int32, name="index")
    archive = keras.export.ExportArchive()
    archive.track(model)
    if steps.seq2seq:
        source = [
            tf.TensorSpec((None, None), tf.int32, name="encoder_tokens"),
            tf.TensorSpec((None, None), tf.bool, name="encoder_mask"),
        ]
        encoder_cache = tf.TensorSpec(
            (None, None, steps.cache_features), tf.float32, name="encoder_cache"
        )
        archive.add_endpoint("prefill", steps.prefill_seq2seq, source + tokens)
        archive.add_endpoint("decode", steps.decode_seq2seq, [token, cache, encoder_cache, index])
        if with_generate:
            archive.add_endpoint("generate", steps.generate_seq2seq, source + tokens)
    else:
        archive.add_endpoint("prefill", steps.prefill, tokens)
        archive.add_endpoint("decode", steps.decode, [token, cache, index])
        if with_generate:
            archive.add_endpoint("generate", steps.generate, tokens)
    archive.write_out(folder, verbose=False)


class _Steps:
    """The traced functions; `keras.ops` over the model's own decoding step."""

    def __init__(self, model, max_length, check_width):
        self.model = model
        self.max_length = max_length
        self.check_width = check_width
        self.seq2seq = hasattr(model, "encode")
        self.mask_zero = model.decoder_embedding.mask_zero
        self.num_layers = len(model.decoder_layers)
        attention = model.decoder_layers[0].self_attention
        self.layer_features = attention.get_initial_cache(1, 1).shape[-1]
        self.cache_features = self.num_layers * self.layer_features + 1

    # -- packing the per-layer caches and the key mask into one tensor --------------

    def _pack(self, caches, key_mask):
        flags = ops.expand_dims(ops.cast(key_mask, "float32"), -1)
        return ops.concatenate([ops.cast(c, "float32") for c in caches] + [flags], axis=-1)

    def _unpack(self, state):
        size = self.layer_features
        caches = [state[..., i * size : (i + 1) * size] for i in range(self.num_layers)]
        return caches, state[..., -1] > 0.5

    def _encoded(self, encoder_cache):
        from keras_attention.models.generation import _Encoded

        caches, mask = self._unpack(encoder_cache)
        # The decoder reads only the encoder output's length once the cross-attention
        # keys/values are given.
        batch, length = ops.shape(encoder_cache)[0], ops.shape(encoder_cache)[1]
        sequence = ops.zeros((batch, length, self.model.embedding_dim), "float32")
        return _Encoded(sequence, mask, caches)

    def _checked(self, tokens):
        """`tokens`, after a run-time check that the prompt leaves room in the cache."""
        if not self.check_width:
            return tokens
        import tensorflow as tf

        width = tf.shape(tokens)[1]
        check = tf.debugging.assert_less(
            width,
            self.max_length,
            message=f"The prompt width must be smaller than max_length={self.max_length} "
            "(prompt plus new tokens); received a wider `tokens`",
        )
        with tf.control_dependencies([check]):
            return tf.identity(tokens)

    # -- prefill and decode -----------------------------------------------------------

    def _prefill(self, tokens, mask, encoded):
        from keras_attention.models.generation import _left_align

        tokens, lengths = _left_align(self._checked(tokens), mask)
        batch, width = ops.shape(tokens)[0], ops.shape(tokens)[1]
        columns = ops.arange(self.max_length, dtype="int32")[None, :]
        padded = ops.pad(tokens, [[0, 0], [0, self.max_length - width]])
        key_mask = ops.logical_and(columns < lengths[:, None], ops.not_equal(padded, 0))
        if not self.mask_zero:
            key_mask = columns < lengths[:, None]
        caches = [
            layer.get_initial_cache(batch, self.max_length) for layer in self.model.decoder_layers
        ]
        logits, caches = self.model._decode(
            tokens, 0, caches, key_mask if self.mask_zero else None, encoded
        )
        last = ops.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
        return {"logits": ops.cast(last, "float32"), "cache": self._pack(caches, key_mask)}

    def _decode(self, token, cache, index, encoded):
        caches, key_mask = self._unpack(cache)
        token = ops.cast(token, "int32")[:, None]
        index = ops.cast(index, "int32")
        valid = ops.not_equal(token, 0) if self.mask_zero else ops.ones_like(token, "bool")
        key_mask = ops.slice_update(key_mask, [0, index], valid)
        logits, caches = self.model._decode(
            token, index, caches, key_mask if self.mask_zero else None, encoded
        )
        return {"logits": ops.cast(logits[:, 0], "float32"), "cache": self._pack(caches, key_mask)}

    def prefill(self, tokens, mask):
        return self._prefill(tokens, mask, None)

    def decode(self, token, cache, index):
        return self._decode(token, cache, index, None)

    def prefill_seq2seq(self, encoder_tokens, encoder_mask, tokens, mask):
        encoded = self.model.encode(encoder_tokens, encoder_mask)
        outputs = self._prefill(tokens, mask, encoded)
        outputs["encoder_cache"] = self._pack(encoded.cross_caches, encoded.padding_mask)
        return outputs

    def decode_seq2seq(self, token, cache, encoder_cache, index):
        return self._decode(token, cache, index, self._encoded(encoder_cache))

    # -- the whole greedy loop (SavedModel only: LiteRT has no loop of this kind) -----

    def _generate(self, tokens, mask, encoder_inputs):
        from keras_attention.models import samplers
        from keras_attention.models.generation import _left_align, _Settings

        tokens, lengths = _left_align(self._checked(tokens), mask)
        new_tokens = self.max_length - ops.shape(tokens)[1]
        settings = _Settings(new_tokens, samplers.GreedySampler(), (), 0)
        seed = ops.zeros((2,), "int32")
        return {
            "tokens": self.model._generate_tensors(
                settings, "graph", tokens, lengths, seed, *encoder_inputs
            )
        }

    def generate(self, tokens, mask):
        return self._generate(tokens, mask, ())

    def generate_seq2seq(self, encoder_tokens, encoder_mask, tokens, mask):
        return self._generate(tokens, mask, (encoder_tokens, encoder_mask))

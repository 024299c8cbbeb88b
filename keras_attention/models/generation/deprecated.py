"""`export_generate`, deprecated: `keras_attention.export.export_generator` with
`format="tf_saved_model"` is the one generation export (inputs `tokens`/`mask`)."""

import warnings

import keras

from keras_attention import _validation
from keras_attention.backend import generation as _backend
from keras_attention.models.generation.loop import GenerativeMixin
from keras_attention.models.generation.prompts import check_token_ids

_MESSAGE = (
    "`export_generate` is deprecated; use `keras_attention.export.export_generator(model, "
    "path, format='tf_saved_model', max_length=..., stop_token_ids=..., pad_token_id=...)`. "
    "Its SavedModel signature is `generate(tokens, mask)` (the inputs `prompt_tokens` and "
    "`prompt_mask` renamed) and returns `{'tokens': (batch, max_length)}`: pass "
    "`max_length` = prompt width + `max_new_tokens`. It also has the `prefill` and "
    "`decode` steps and works for `Seq2SeqTransformer` too."
)


def export_generate(model, path, max_new_tokens, stop_token_ids=None, pad_token_id=0):
    """Deprecated: use :func:`keras_attention.export.export_generator` with
    `format="tf_saved_model"`.

    Exports greedy generation as a TensorFlow SavedModel with the signature
    `generate(prompt_tokens, prompt_mask)` -> `{"tokens": int32 (batch, width +
    max_new_tokens)}`. The replacement's signature is `generate(tokens, mask)` (the
    same inputs, renamed) -> `{"tokens": int32 (batch, max_length)}`: to migrate, call
    `export_generator(model, path, format="tf_saved_model", max_length=width +
    max_new_tokens, stop_token_ids=stop_token_ids, pad_token_id=pad_token_id)` and
    feed `tokens=` and `mask=`. Emits a `DeprecationWarning`.

    Args:
        model: a :class:`CausalLanguageModel`.
        path: folder to write.
        max_new_tokens: positive int, fixed at export.
        stop_token_ids, pad_token_id: as in `generate`.

    Returns:
        `path`.
    """
    warnings.warn(_MESSAGE, DeprecationWarning, stacklevel=2)
    return _export_generate(model, path, max_new_tokens, stop_token_ids, pad_token_id)


def _export_generate(model, path, max_new_tokens, stop_token_ids, pad_token_id):
    """The SavedModel of :func:`export_generate`, written with the models' step API
    (`generate_graph`, the loop `keras_attention.export.export_generator` exports)."""
    if _backend.BACKEND != "tensorflow":
        raise ValueError(
            "`export_generate` writes a TensorFlow SavedModel and needs the TensorFlow "
            f"backend. Received: backend={_backend.BACKEND!r}"
        )
    if not isinstance(model, GenerativeMixin) or getattr(model, "encode", None):
        raise ValueError(
            f"`model` must be a CausalLanguageModel. Received: model of type {type(model).__name__}"
        )
    import tensorflow as tf

    vocabulary = model.decoder_embedding.vocabulary_size
    _validation.check_positive_int(max_new_tokens, "max_new_tokens")
    stop_token_ids = check_token_ids(stop_token_ids, "stop_token_ids", vocabulary)
    (pad_token_id,) = check_token_ids([pad_token_id], "pad_token_id", vocabulary)

    def serve(prompt_tokens, prompt_mask):
        tokens = model.generate_graph(
            prompt_tokens, prompt_mask, max_new_tokens, stop_token_ids, pad_token_id
        )
        return {"tokens": tokens}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "generate",
        serve,
        input_signature=[
            tf.TensorSpec((None, None), tf.int32, name="prompt_tokens"),
            tf.TensorSpec((None, None), tf.bool, name="prompt_mask"),
        ],
    )
    archive.write_out(path, verbose=False)
    return path

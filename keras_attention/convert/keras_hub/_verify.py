"""`verify=True` of `from_keras_hub`: the logits of a padded probe batch through the
keras-hub model and the converted one, compared at the real positions.

The metric is the largest absolute difference, relative to the largest reference
logit when that exceeds 1 (large logits carry proportionally large rounding):
`max |ours - theirs| <= tolerance * max(1, max |theirs|)`. Default tolerances by
compute dtype: float32 1e-4, float16 1e-2, bfloat16 5e-2.
"""

import importlib
import numbers

import numpy as np
from keras import ops

DEFAULT_TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
PROBE_LENGTH = 8


def check_tolerance(tolerance):
    """`tolerance` is None or a positive number; a `ValueError` otherwise."""
    if tolerance is None:
        return
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or tolerance <= 0:
        raise ValueError(
            f"`tolerance` must be a positive number or None. Received: tolerance={tolerance!r}"
        )


def verify_conversion(source, backbone, model, tolerance=None):
    """Raise a `ValueError` when `model` and the keras-hub `source` (a task or a
    backbone) disagree on a probe batch by more than `tolerance` (see the module).
    Returns the largest difference."""
    compute = model.dtype_policy.compute_dtype
    if tolerance is None:
        tolerance = DEFAULT_TOLERANCE.get(compute, DEFAULT_TOLERANCE["float32"])
    task = _reference_task(source, backbone)
    probe = _seq2seq_logits if hasattr(model, "encode") else _decoder_logits
    theirs, ours, mask = probe(task, model)
    theirs = np.asarray(theirs, "float32")[mask]
    difference = float(np.max(np.abs(np.asarray(ours, "float32")[mask] - theirs)))
    allowed = tolerance * max(1.0, float(np.max(np.abs(theirs))))
    if not difference <= allowed:  # also catches NaN
        raise ValueError(
            f"The converted model's logits differ from the keras-hub model's by "
            f"{difference:.3g} on a probe batch, more than the tolerance allows "
            f"({allowed:.3g} = tolerance {tolerance:g} x max(1, largest logit); compute "
            f"dtype {compute}). A weight is misplaced or a setting is not converted; "
            "pass `verify=False` to keep the model anyway, or a larger `tolerance`."
        )
    return difference


def _reference_task(source, backbone):
    """`source` when it is a task; else the keras-hub task for `backbone`'s class
    (built on the same backbone, without preprocessor), which applies the output
    steps a backbone lacks (the output projection, Gemma 2's final soft-cap)."""
    if source is not backbone:
        return source
    models = importlib.import_module("keras_hub").models
    for base in (models.CausalLM, models.Seq2SeqLM):
        for task in _subclasses(base):
            if getattr(task, "backbone_cls", None) is type(backbone):
                return task(backbone=backbone, preprocessor=None)
    raise ValueError(
        f"`verify` needs keras-hub's task for {type(backbone).__name__}, and none was "
        "found; pass the task model (CausalLM/Seq2SeqLM) or `verify=False`."
    )


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _probe(vocabulary_size, length, seed):
    """Random ids `(2, length)`, the second row's last half padding (mask False)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocabulary_size, (2, length)).astype("int32")
    mask = np.ones((2, length), bool)
    mask[1, length // 2 :] = False
    return np.where(mask, tokens, 0), mask


def _probe_length(model):
    return max(2, min(PROBE_LENGTH, model.sequence_length))


def _decoder_logits(task, model):
    tokens, mask = _probe(model.vocabulary_size, _probe_length(model), 0)
    theirs = task({"token_ids": tokens, "padding_mask": mask}, training=False)
    ours = model(tokens, training=False)  # causal: padding after a row changes nothing
    return ops.convert_to_numpy(theirs), ops.convert_to_numpy(ours), mask


def _seq2seq_logits(task, model):
    length = _probe_length(model)
    sources, source_mask = _probe(model.vocabulary_size, length, 1)
    targets, target_mask = _probe(model.vocabulary_size, length, 2)
    theirs = task(
        {
            "encoder_token_ids": sources,
            "encoder_padding_mask": source_mask,
            "decoder_token_ids": targets,
            "decoder_padding_mask": target_mask,
        },
        training=False,
    )
    # The path `generate` runs: `encode`, then the decoder through the cache.
    state = model.encode(sources, source_mask)
    cache = model.initial_cache(*targets.shape)
    ours, _ = model.call_with_cache(targets, cache, 0, key_mask=target_mask, encoder_state=state)
    return ops.convert_to_numpy(theirs), ops.convert_to_numpy(ours), target_mask

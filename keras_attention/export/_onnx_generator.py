"""The ONNX form of `export_generator`: the `prefill` and `decode` signatures of
`_generator_steps.Steps`, each converted by tf2onnx (what Keras' own
`model.export(format="onnx")` uses on TensorFlow) into its own file of one folder.

ONNX names every value of a graph once, so `decode` cannot take `cache` and return
`cache` as the LiteRT and SavedModel signatures do: its updated cache is returned as
`next_cache` (everything else keeps its name).

Keras' `ops.slice_update` is XLA's `DynamicUpdateSlice` on TensorFlow, which tf2onnx
does not convert: `_dynamic_update_slice` lowers it to ONNX `Pad` and `Where`.
"""

import contextlib
import logging
import os

import numpy as np

FILES = {"prefill": "prefill.onnx", "decode": "decode.onnx"}


def write_onnx(steps, folder, prompt_length):
    """Write `FILES` into `folder` (an existing, empty folder)."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    handlers = {"XlaDynamicUpdateSlice": (_dynamic_update_slice, [])}
    for name, (function, specs) in steps.signatures(prompt_length).items():
        if name == "decode":
            function = _with_next_cache(function)
        # As Keras' `ExportArchive` traces its endpoints: no autograph.
        function = tf.function(function, input_signature=specs, autograph=False)
        with _quiet_einsum_optimizer():
            proto, _ = tf2onnx.convert.from_function(function, specs, custom_op_handlers=handlers)
        # tf2onnx keeps an op it cannot convert and writes an invalid graph: refuse it.
        try:
            onnx.checker.check_model(proto)
        except onnx.checker.ValidationError as error:
            raise RuntimeError(
                f"tf2onnx could not convert the `{name}` signature to a valid ONNX graph: {error}"
            ) from error
        onnx.save(proto, os.path.join(folder, FILES[name]))


class _SkipEinsumOptimizer(logging.Filter):
    def filter(self, record):
        return record.getMessage() != "Failed to apply einsum_optimizer"


@contextlib.contextmanager
def _quiet_einsum_optimizer():
    """tf2onnx's optional einsum rewrite cannot read equations with `...` and logs a
    traceback per einsum; the `Einsum` stays as it is, which ONNX Runtime runs."""
    logger, quiet = logging.getLogger("tf2onnx.optimizer"), _SkipEinsumOptimizer()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _with_next_cache(decode):
    def renamed(*args):
        outputs = dict(decode(*args))
        outputs["next_cache"] = outputs.pop("cache")
        return outputs

    return renamed


def _dynamic_update_slice(ctx, node, name, args):
    """tf2onnx handler: `XlaDynamicUpdateSlice(operand, update, start)` as
    `Where(mask, Pad(update), operand)`, the start clamped as XLA clamps it (so the
    update fits), `mask` the padded update's footprint."""
    from onnx import TensorProto, helper
    from tf2onnx import utils

    operand, update, start = node.input

    def make(op_type, inputs, **attr):
        return ctx.make_node(op_type, inputs, attr=attr).output[0]

    start = make("Cast", [start], to=TensorProto.INT64)
    update_shape = make("Shape", [update])
    room = make("Sub", [make("Shape", [operand]), update_shape])
    zero = ctx.make_const(utils.make_name(f"{name}_zero"), np.zeros([1], np.int64)).output[0]
    start = make("Min", [make("Max", [start, zero]), room])
    pads = make("Concat", [start, make("Sub", [room, start])], axis=0)
    padded = make("Pad", [update, pads])
    true = helper.make_tensor("value", TensorProto.BOOL, [1], [True])
    footprint = make("Pad", [make("ConstantOfShape", [update_shape], value=true), pads])
    if ctx.get_dtype(operand) == TensorProto.BOOL:  # ONNX Runtime has no boolean `Where`
        kept = make("And", [make("Not", [footprint]), operand])
        node.type = "Or"
        ctx.replace_inputs(node, [make("And", [footprint, padded]), kept])
        return
    node.type = "Where"
    ctx.replace_inputs(node, [footprint, padded, operand])

"""PyTorch: the one-token decoding step traced once per shape and run as a graph.

On PyTorch `keras.ops.while_loop` is a Python loop, so `generate()` calls the model's
layers eagerly at every step, and most of a step's time is Keras' Python work
(`Layer.__call__`, argument conversion, tree walks) around small kernels.
:class:`TracedStep` records the step (`call_with_cache` of one token a row) with
`torch.export.export(strict=False)`: the Python code runs once on the example inputs
and the ATen operations it issues become an FX graph, which later steps run
directly. The model's variables are inputs of the graph (mapped onto the layers with
`keras.StatelessScope`, as the JAX path does), so a model trained or changed after
the trace still decodes with its current weights.

Two edits of the graph (:func:`_simplify`):

- conversions that change nothing (`aten.to` to the tensor's own dtype and device)
  and the exporter's metadata assertions are removed: they are most of its nodes;
- the key/value cache is written in place: `clone` of a cache input followed by its
  `index_put_` becomes the `index_put_` alone. The caller's tensors are never
  written: a cache the step did not return itself is copied once before its first
  step (:meth:`TracedStep.__call__`).

Tracing takes seconds (no compiler runs), unlike `torch.compile`, whose Inductor
compilation of this step took minutes on a CPU (`docs/performance.md`). A step that
cannot be exported (a data-dependent branch in some layer) runs eagerly, as before:
the failure is kept, so it is not retried every call.
"""

import keras
import torch
from torch.utils import _pytree

_NO_OPS = ("aten._assert_tensor_metadata.default", "aten._assert_scalar.default")
_CONVERSIONS = ("aten.to.dtype", "aten.to.dtype_layout", "aten.to.device")
# New tensors: a clone of one that nothing else reads copies for nothing.
_FACTORIES = ("aten.ones.default", "aten.zeros.default", "aten.full.default")


class _Step(torch.nn.Module):
    """`call(*inputs)` with the model's variables replaced by `values`."""

    def __init__(self, call, variables):
        super().__init__()
        self._call = call
        self._variables = variables

    def forward(self, values, tokens, caches, index, key_mask, encoded):
        mapping = list(zip(self._variables, values))
        with keras.StatelessScope(state_mapping=mapping):
            return self._call(tokens, caches, index, key_mask, encoded)


class TracedStep:
    """`call(tokens, caches, index, key_mask, encoded) -> (logits, caches)` run
    through graphs traced once per input shapes and kept in `store` (a dict the
    model owns, so later `generate()` calls reuse them).

    One instance serves one token loop: it writes in place only the caches it
    returned itself at its previous call.
    """

    def __init__(self, call, variables, store):
        self._call = call
        self._variables = list(variables)
        self._store = store
        self._owned = ()

    def __call__(self, tokens, caches, index, key_mask=None, encoded=None):
        inputs = (tokens, caches, index, key_mask, encoded)
        graph = self._graph(inputs)
        if graph is None:
            return self._call(*inputs)
        owned = {id(x) for x in self._owned}
        caches = _pytree.tree_map(
            lambda x: x if id(x) in owned else torch.clone(x),
            caches,
        )
        values = [v.value for v in self._variables]
        logits, caches = graph(values, tokens, caches, index, key_mask, encoded)
        # Held, so that no other tensor can take their ids before the next call.
        self._owned = tuple(_pytree.tree_leaves(caches))
        return logits, caches

    def _graph(self, inputs):
        key = (tuple(id(v) for v in self._variables), _signature(inputs))
        if key not in self._store:
            self._store[key] = self._trace(inputs)
        return self._store[key]

    def _trace(self, inputs):
        """The simplified graph module of the step, or None where it cannot be
        exported (the reason is kept in `store["failures"]`)."""
        self._store["traces"] = self._store.get("traces", 0) + 1
        values = [v.value for v in self._variables]
        try:
            with torch.no_grad():
                program = torch.export.export(
                    _Step(self._call, self._variables), (values, *inputs), strict=False
                )
            module = program.module()
        except Exception as error:  # any exporter error: decode eagerly instead
            self._store.setdefault("failures", []).append(repr(error))
            return None
        _simplify(module)
        return module


def _signature(inputs):
    """The inputs' structure, shapes and dtypes (what a traced graph is valid for)."""
    leaves, spec = _pytree.tree_flatten(inputs)
    shapes = tuple(
        (tuple(x.shape), x.dtype, x.device) if isinstance(x, torch.Tensor) else x for x in leaves
    )
    return str(spec), shapes


def _value(node):
    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return value if isinstance(value, torch.Tensor) else None


def _simplify(module):
    """Drop the graph's identity conversions and assertions; write cache inputs in
    place (see the module's docstring)."""
    graph = module.graph
    for node in list(graph.nodes):
        # The exporter's check of the inputs' shapes: `TracedStep` keys graphs by them.
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(node)
        if node.op != "call_function":
            continue
        target = str(node.target)
        if target in _NO_OPS and not node.users:
            graph.erase_node(node)
        elif target in _CONVERSIONS and _is_identity(node):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    for node in list(graph.nodes):
        if str(node.target) == "aten.clone.default" and _clones_input_for_update(node):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    graph.eliminate_dead_code()
    module.recompile()


def _is_identity(node):
    source, result = _value(node.args[0]), _value(node)
    if source is None or result is None or node.kwargs.get("copy"):
        return False
    return (
        source.dtype == result.dtype
        and source.device == result.device
        and node.kwargs.get("memory_format") in (None, torch.preserve_format)
    )


def _clones_input_for_update(node):
    """`clone(x)` of a graph input or a new tensor `x` read by nothing else, whose
    only use writes into it (`index_put_`): the write can go to `x` itself."""
    source = node.args[0]
    users = list(node.users)
    return (
        isinstance(source, torch.fx.Node)
        and (source.op == "placeholder" or str(source.target) in _FACTORIES)
        and len(source.users) == 1
        and len(users) == 1
        and str(users[0].target) == "aten.index_put_.default"
        and users[0].args[0] is node
    )

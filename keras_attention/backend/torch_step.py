"""PyTorch: the one-token decoding step traced once per shape and run as a graph.

On PyTorch `keras.ops.while_loop` is a Python loop, so `generate()` calls the model's
layers eagerly at every step, and most of a step's time is Keras' Python work
(`Layer.__call__`, argument conversion, tree walks) around small kernels.
:class:`TracedStep` records the step (`call_with_cache` of one token a row) with
`torch.fx.experimental.proxy_tensor.make_fx` on fake tensors: the Python code runs
once, on tensors that carry only shapes and dtypes, and the ATen operations it issues
become an FX graph, which later steps run directly. A value read from a tensor
(`int(index)`, a branch on data) cannot be faked, so it fails the trace instead of
being frozen into the graph. The model's variables are inputs of the graph (mapped
onto the layers with `keras.StatelessScope`, as the JAX path does), so a model
trained or changed after the trace still decodes with its current weights.

The key/value cache is written in place (:func:`_write_caches_in_place`): each
cache update traces as a `clone` of the cache and an `index_put_` into the clone, a
copy of the whole cache per layer and step; the graph keeps the `index_put_` alone.
The caller's tensors are never written: a cache the step did not return itself is
copied once before its first step (:meth:`TracedStep.__call__`).

Tracing takes seconds (no compiler runs; `torch.export.export(strict=False)` made
the same graph about 4x slower), unlike `torch.compile`, whose Inductor compilation
of this step took minutes on a CPU (`docs/performance.md`). A step that
cannot be traced (a data-dependent branch in some layer) runs eagerly, as before: the
failure is kept, so it is not retried every call.
"""

import keras
import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils import _pytree

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
            lambda x: torch.clone(x) if isinstance(x, torch.Tensor) and id(x) not in owned else x,
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
        """The graph module of the step, or None where it cannot be traced (the
        reason is kept in `store["failures"]`)."""
        self._store["traces"] = self._store.get("traces", 0) + 1
        values = [v.value for v in self._variables]
        step = _Step(self._call, self._variables)
        try:
            with torch.no_grad():
                module = make_fx(step, tracing_mode="fake")(values, *inputs)
        except Exception as error:  # any tracing error: decode eagerly instead
            self._store.setdefault("failures", []).append(repr(error))
            return None
        _write_caches_in_place(module)
        return module


def _signature(inputs):
    """The inputs' structure, shapes and dtypes (what a traced graph is valid for)."""
    leaves, spec = _pytree.tree_flatten(inputs)
    shapes = tuple(
        (tuple(x.shape), x.dtype, x.device) if isinstance(x, torch.Tensor) else x for x in leaves
    )
    return str(spec), shapes


def _write_caches_in_place(module):
    """Drop the `clone` before every `index_put_` into a cache input or a new tensor
    (see the module's docstring)."""
    graph = module.graph
    for node in list(graph.nodes):
        if str(node.target) == "aten.clone.default" and _clones_input_for_update(node):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    graph.eliminate_dead_code()
    module.recompile()


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

"""Layout maps that shard this package's layers for `keras.distribution.ModelParallel`.

`layout_map(model, mesh)` walks a built model and returns a
`keras.distribution.LayoutMap` that splits every :class:`MultiHeadAttention` by heads
(Megatron-style: the query/key/value projections by output column, the output
projection by input row) and every :class:`FeedForward` by its intermediate units
(the first `Dense` by column, the second by row), along the mesh's model axis. Other
weights (embeddings, norms, heads) stay replicated. Each device then holds
`1 / model_axis_size` of those weights and computes its own heads; XLA inserts the
one all-reduce after each output projection.

Keras applies a layout when a variable is created, so the model that trains must be
created inside the distribution's scope; the map is computed from any built model
with the same layer names (for instance the model itself, cloned in the scope).

Example (JAX, 4 devices):

```python
import keras
from keras_attention.distribution import layout_map

template = build_model()  # any built model with these layers
mesh = keras.distribution.DeviceMesh((2, 2), ("batch", "model"),
                                     keras.distribution.list_devices())
distribution = keras.distribution.ModelParallel(
    layout_map=layout_map(template, mesh), batch_dim_name="batch")
with distribution.scope():
    model = keras.models.clone_model(template)  # same names, sharded weights
model.set_weights(template.get_weights())
```
"""

import re

import keras

__all__ = ["layout_map"]


def layout_map(model, mesh, model_axis="model"):
    """A `LayoutMap` sharding attention heads and feed-forward units over `model_axis`.

    Args:
        model: a built `keras.Model` (or layer) containing this package's layers.
        mesh: a `keras.distribution.DeviceMesh` with an axis named `model_axis`.
        model_axis: name of the mesh axis the weights are split over.

    Returns:
        A `keras.distribution.LayoutMap` whose keys are the exact paths of the
        sharded variables (anchored regular expressions) and whose values are
        tuples of mesh axis names (`None` = not split), ready for
        `keras.distribution.ModelParallel(layout_map=...)`.

    Raises:
        ValueError: `model_axis` is not an axis of `mesh`, the model is not built,
            or a layer's heads (or units) do not divide evenly over the axis.

    Example:
    >>> import keras, keras_attention
    >>> inputs = keras.Input((None, 16))
    >>> outputs = keras_attention.MultiHeadAttention(4, 4)(inputs, inputs)
    >>> model = keras.Model(inputs, outputs)
    >>> mesh = keras.distribution.DeviceMesh((1, 1), ("batch", "model"),
    ...                                      keras.distribution.list_devices()[:1])
    >>> layouts = layout_map(model, mesh)
    >>> tuple(layouts["multi_head_attention/query/kernel"].axes)
    (None, 'model')
    """
    from keras_attention.layers.feed_forward import FeedForward
    from keras_attention.layers.multi_head_attention import MultiHeadAttention

    if not isinstance(mesh, keras.distribution.DeviceMesh):
        raise TypeError(
            "`mesh` must be a `keras.distribution.DeviceMesh`. "
            f"Received: mesh of type {type(mesh).__name__}"
        )
    axis_names = list(mesh.axis_names)
    if model_axis not in axis_names:
        raise ValueError(
            f"`model_axis` must be one of the mesh's axes {axis_names}. "
            f"Received: model_axis={model_axis!r}"
        )
    if not model.built:
        raise ValueError(
            "`model` must be built (call it on data or build it on `keras.Input`s) "
            f"so its weights have paths. Received: model={model.name!r}"
        )
    size = mesh.shape[axis_names.index(model_axis)]
    layouts = keras.distribution.LayoutMap(mesh)
    column, row = (None, model_axis), (model_axis, None)

    def shard(dense, kernel_axes, name, count, what):
        if dense is None:
            return
        if count % size:
            raise ValueError(
                f"Cannot split {what} of layer {name!r} over the {size} devices of mesh "
                f"axis {model_axis!r}: {count} is not divisible by {size}."
            )
        layouts[_exact(dense.kernel.path)] = kernel_axes
        if dense.bias is not None:
            layouts[_exact(dense.bias.path)] = (model_axis,) if kernel_axes == column else (None,)

    for layer in _layers(model):
        if isinstance(layer, MultiHeadAttention):
            heads = layer.num_heads
            kv_heads = getattr(layer, "num_key_value_heads", None) or heads
            shard(layer.query_dense, column, layer.name, heads, "the query heads")
            if getattr(layer, "gate_dense", None) is not None:  # use_gate: per query head
                shard(layer.gate_dense, column, layer.name, heads, "the query heads")
            shard(layer.key_dense, column, layer.name, kv_heads, "the key/value heads")
            shard(layer.value_dense, column, layer.name, kv_heads, "the key/value heads")
            shard(layer.output_dense, row, layer.name, heads, "the query heads")
        elif isinstance(layer, FeedForward):
            units = layer.intermediate_dim
            shard(layer.intermediate_dense, column, layer.name, units, "the intermediate units")
            shard(layer.output_dense, row, layer.name, units, "the intermediate units")
    return layouts


def _layers(model):
    """`model` and every layer nested in it, each once."""
    seen, stack = set(), [model]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        children = list(getattr(layer, "layers", None) or [])  # models
        for value in vars(layer).values():  # sublayers held as attributes
            items = value if isinstance(value, (list, tuple)) else [value]
            children.extend(item for item in items if isinstance(item, keras.layers.Layer))
        stack.extend(reversed(children))


def _exact(path):
    return f"^{re.escape(path)}$"

"""Helpers shared by the layers: the Dense projection settings, the self-attention
mask, symbolic outputs, and the quantization and LoRA hooks (`NothingToQuantize`,
`LoraMixin`, `enable_lora`)."""

import keras

from keras_attention import _validation, masks

# The Dense arguments a layer passes on unchanged to its projections, and the Keras
# module that turns each into an object (and back into config).
_SETTING_MODULES = {
    "kernel_initializer": keras.initializers,
    "bias_initializer": keras.initializers,
    "kernel_regularizer": keras.regularizers,
    "bias_regularizer": keras.regularizers,
    "kernel_constraint": keras.constraints,
    "bias_constraint": keras.constraints,
}
# Keras' defaults of those not None, as in `keras.layers.Dense`.
_DEFAULTS = {"kernel_initializer": "glorot_uniform", "bias_initializer": "zeros"}
INITIALIZER_KEYS = ("kernel_initializer", "bias_initializer")


class ProjectionSettings:
    """The settings a layer shares among its `Dense` projections, and their factory.

    Holds `use_bias`, the dtype policy and the initializer/regularizer/constraint
    arguments (`settings`, Keras' names and defaults); `dense(units, name)` builds a
    `keras.layers.Dense` with them, so a layer states only what is its own (units,
    name, and where it differs: a bias-free score vector, an activation).
    `get_config()` merges into the layer's config.

    A layer keeps the Keras-style arguments (`kernel_initializer=...`) in its own
    signature and hands them over in one line with `from_arguments(locals(), dtype)`.

    `activity_regularizer` is not among them: it goes to the base `keras.layers.Layer`
    and regularizes the layer's output, as for any Keras layer.
    """

    def __init__(self, use_bias=True, dtype=None, **settings):
        unknown = sorted(set(settings) - set(_SETTING_MODULES))
        if unknown:
            raise TypeError(
                f"Unknown projection settings {unknown}; expected some of {list(_SETTING_MODULES)}."
            )
        self.use_bias = use_bias
        self.dtype = dtype
        for key, module in _SETTING_MODULES.items():
            setattr(self, key, module.get(settings.get(key, _DEFAULTS.get(key))))

    @classmethod
    def from_arguments(cls, arguments, dtype):
        """The settings among a layer constructor's `arguments` (its `locals()`, taken
        before it rebinds any of them): `use_bias` and the initializer/regularizer/
        constraint arguments it has; the ones it lacks keep Keras' defaults."""
        names = ("use_bias", *_SETTING_MODULES)
        return cls(dtype=dtype, **{name: arguments[name] for name in names if name in arguments})

    def dense(self, units, name, use_bias=None, activation=None):
        """A `keras.layers.Dense(units)` projection named `name` with these settings;
        `use_bias` (default: the layer's) and `activation` are per projection."""
        return keras.layers.Dense(
            units,
            activation=activation,
            use_bias=self.use_bias if use_bias is None else use_bias,
            name=name,
            dtype=self.dtype,
            **self.dense_kwargs(),
        )

    def dense_kwargs(self, keys=tuple(_SETTING_MODULES)):
        """The `keys` settings as keyword arguments for a sublayer: fresh objects, so
        sublayers never share an initializer's state."""
        kwargs = {}
        for key in keys:
            value, module = getattr(self, key), _SETTING_MODULES[key]
            kwargs[key] = None if value is None else module.get(module.serialize(value))
        return kwargs

    def get_config(self, keys=tuple(_SETTING_MODULES)):
        """The `keys` settings as config entries (`use_bias` is the layer's own)."""
        return {key: _SETTING_MODULES[key].serialize(getattr(self, key)) for key in keys}


def serialize_shared_layer(layer):
    """`layer`'s config entry for the `get_config` of a layer that may share it with
    others (a position bias several blocks use, as T5's one table).

    Keras' `.keras` saving marks an object met twice with a `shared_object_id` and
    rebuilds it once, but it marks the dict `serialize_keras_object` returned, which
    the caller of `get_config` then copies: the first holder's copy lost the mark and
    reloading made two layers. So while a model is being saved (Keras' object-sharing
    scope is open) the entry is the layer itself, serialized by Keras in place; else
    (plain `get_config`) its serialized dict, JSON as always."""
    if layer is None:
        return None
    try:
        from keras.src.backend.common import global_state
    except ImportError:  # pragma: no cover - a Keras without the sharing scope
        global_state = None
    if global_state is not None and (
        global_state.get_global_attribute("shared_objects/id_to_config_map") is not None
    ):
        return layer
    return keras.saving.serialize_keras_object(layer)


def bias_parts(use_bias, parts):
    """`use_bias` checked: a bool (every one of `parts` has a bias, or none) or a
    tuple/list of names from `parts` (only those do). Returns `(use_bias, with_bias)`:
    the value to keep for `get_config` (a sequence as a tuple) and the frozenset of the
    parts that have a bias."""
    if isinstance(use_bias, bool):
        return use_bias, frozenset(parts if use_bias else ())
    if not isinstance(use_bias, (tuple, list)):
        raise TypeError(
            f"`use_bias` must be a bool or a tuple of part names from {parts}. "
            f"Received: use_bias={use_bias!r}"
        )
    unknown = [part for part in use_bias if part not in parts]
    if unknown:
        raise ValueError(
            f"`use_bias` names unknown parts {unknown}; expected names from {parts}. "
            f"Received: use_bias={use_bias!r}"
        )
    return tuple(use_bias), frozenset(use_bias)


def self_attention_mask(padding_mask, seq_len, attention_mask=None, use_causal_mask=False):
    """The mask of attention over one sequence of `seq_len` tokens (queries and keys
    alike): padded keys are never attended and padded queries attend nothing (their
    output is zero), merged with `attention_mask` and, with `use_causal_mask`, the
    causal mask; see `masks.merge_attention_masks`."""
    return masks.merge_attention_masks(
        query_mask=padding_mask,
        value_mask=padding_mask,
        attention_mask=attention_mask,
        use_causal_mask=use_causal_mask,
        q_len=seq_len,
        kv_len=seq_len,
    )


def attention_output_spec(layer, output_shape, scores_shape, return_attention_scores):
    """Symbolic outputs of an attention layer: the output, plus the attention scores
    when `return_attention_scores` is true. Used by `compute_output_spec`, so that
    symbolic shapes come from the same formulas as `compute_output_shape`."""
    output = keras.KerasTensor(output_shape, dtype=layer.compute_dtype)
    if not return_attention_scores:
        return output
    return output, keras.KerasTensor(scores_shape, dtype=layer.compute_dtype)


class NothingToQuantize:
    """A layer whose weights, if any, stay in float under `model.quantize(mode)`.

    `keras.Model.quantize` calls `quantize` on every leaf layer and warns for each
    that lacks it; norms, rotary and sinusoidal positions, position biases and
    tables are small or have no weights, so they keep them, quietly. Keras still
    checks the mode and that the layer is built first.
    """

    def quantize(self, mode=None, type_check=True, config=None):
        del mode, type_check, config  # nothing to quantize


class LoraMixin:
    """`enable_lora(rank)` for a layer made of `Dense` projections (LoRA on them)."""

    def enable_lora(self, rank, target_layer_names=None):
        """Freeze this layer's weights and add rank-`rank` LoRA factors to its
        `Dense` projections (all of them, or those named in `target_layer_names`,
        e.g. `("query", "value")`); only the LoRA factors then train.

        Keras' `Dense.enable_lora` keeps `kernel + (alpha / rank) * A @ B` in the
        call and merges it into the kernel when the layer is saved. The layer must be
        built.
        """
        if target_layer_names is None:
            target_layer_names = tuple(
                layer.name
                for layer in self._flatten_layers(include_self=False)
                if isinstance(layer, keras.layers.Dense)
            )
        return enable_lora(self, rank, target_layer_names)


def enable_lora(root, rank, target_layer_names):
    """keras-hub's `Backbone.enable_lora` on `root`: every weight frozen, LoRA on the
    sublayers whose name is in `target_layer_names` (their kernels and biases stay
    frozen). Returns the layers given LoRA."""
    _validation.check_positive_int(rank, "rank")
    names = (target_layer_names,) if isinstance(target_layer_names, str) else target_layer_names
    names = tuple(names)
    if not root.built:
        raise ValueError(f"Build `{root.name}` before `enable_lora` (LoRA factors need shapes).")
    targets = [
        layer
        for layer in root._flatten_layers(include_self=False)
        if layer.name in names and hasattr(layer, "enable_lora") and layer.weights
    ]
    missing = [name for name in names if name not in {layer.name for layer in targets}]
    if not names or missing:
        raise ValueError(
            "`target_layer_names` must name Dense, EinsumDense or Embedding sublayers of "
            f"'{root.name}' (no match: {missing}). Received: target_layer_names={names!r}"
        )
    enabled = [layer.name for layer in targets if layer.lora_enabled]
    if enabled:
        raise ValueError(
            f"LoRA is already enabled on {enabled}; enable it once. Received: rank={rank}"
        )
    root.trainable = True
    for variable in root.trainable_variables:
        variable.trainable = False
    for layer in root._flatten_layers(include_self=False):
        layer.trainable = False
    for layer in targets:
        frozen = [id(variable) for variable in layer.variables]
        layer.trainable = True
        layer.enable_lora(rank)
        for variable in layer.variables:  # the kernel, a bias: only the new factors train
            variable.trainable = id(variable) not in frozen
    return targets

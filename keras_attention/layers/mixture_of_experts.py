"""`MixtureOfExperts`: a sparse feed-forward network that sends each token through a
few of many gated experts (Mixtral)."""

import math
import numbers

import keras
from keras import ops

from keras_attention import _validation
from keras_attention.layers import _common
from keras_attention.layers.feed_forward import GATED_ACTIVATIONS

# The Dense settings the router and the experts take (they have no biases).
_KERNEL_KEYS = ("kernel_initializer", "kernel_regularizer", "kernel_constraint")


class _Router(_common.NothingToQuantize, keras.layers.Dense):
    """The router's `Dense`: its `d * num_experts` weights stay float under
    `quantize`, since rounding them can change which experts a token picks."""


@keras.saving.register_keras_serializable(package="keras_attention")
class MixtureOfExperts(keras.layers.Layer):
    """Mixture-of-experts feed-forward network (Shazeer et al. 2017; Mixtral, Jiang et
    al. 2024): each token goes through the `k` experts its router scores highest.

    For a token `x`, the router gives `p = softmax(x W_r)` over `num_experts`
    experts; the `k = num_experts_per_token` largest, renormalised to sum to 1
    (`w_j = p_j / sum_top_k p`, as Mixtral does), weigh the chosen experts' outputs:
    `MoE(x) = sum_{j in top_k(p)} w_j E_j(x)`. Each expert is a gated feed-forward
    `E_j(x) = (act(x G_j) * (x U_j)) D_j` (`"swiglu"`: `act = silu`; `"geglu"`:
    `gelu`), or with a plain activation `act(x U_j) D_j`; no biases. A block can use
    it in place of `FeedForward`: same call, same output shape.

    Weights (keras-hub's Mixtral layout, so its weights copy over unchanged):
    `router` (a `Dense` without bias, kernel `(d, num_experts)`), and the experts
    stacked in three `EinsumDense` layers: `gate_dense` and `intermediate_dense`
    (kernels `(num_experts, d, intermediate_dim)`; no `gate_dense` for a plain
    activation) and `output_dense` (`(num_experts, intermediate_dim, d)`).

    Which experts run: with a static number of tokens `T` and `T * k <= num_experts`
    (decoding a few rows) only the chosen experts run, their kernels gathered per
    token: never more weights read than by all experts, and `k / num_experts` of the
    arithmetic. Otherwise every expert runs on every token and a routing matrix, zero
    outside each token's top `k`, weighs them: a static-shape computation XLA compiles
    once (grouping tokens by expert gives shapes that depend on the routing). Both
    give the same outputs.

    `quantize(mode)` (through `model.quantize`) quantizes the three expert kernels
    (per expert and output channel in `"int8"`); the router stays float. A quantized
    layer always runs every expert. `enable_lora(rank)` adds LoRA factors to the
    router and the expert kernels (for a stacked kernel, Keras' `EinsumDense` shares
    the second factor among the experts).

    Load balancing (Switch Transformer, Fedus et al. 2021; Mixtral): with
    `router_aux_loss_coefficient = c > 0`, a training call adds
    `c * num_experts * sum_i f_i P_i` with `add_loss`, `f_i` the share of the
    tokens' top-`k` choices that went to expert `i` and `P_i` its mean router
    probability, over the tokens the Keras mask keeps (keras-hub's Mixtral loss;
    Hugging Face's equals `k` times it). Its minimum, 1, is a uniform routing.

    Args:
        num_experts: positive int, the number of experts.
        num_experts_per_token: int in `[1, num_experts]`, `k`: the experts each token
            goes through (2 in Mixtral).
        intermediate_dim: positive int, each expert's hidden size.
        activation: `"swiglu"` (default) or `"geglu"` for gated experts, or a Keras
            activation (name or callable) for plain ones.
        router_aux_loss_coefficient: float `>= 0`, the load-balancing loss'
            coefficient (0, the default: no loss; Mixtral trains with 0.02).
        kernel_initializer, kernel_regularizer, kernel_constraint: passed to the
            router and the expert layers. The default Glorot initializer counts the
            expert axis in its fans, as keras-hub's Mixtral does.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `(batch, ..., features)`.
        training: whether the load-balancing loss is added.

    Returns:
        Same shape as `inputs`, carrying the input's Keras mask.

    Example:
    >>> import numpy as np
    >>> moe = MixtureOfExperts(num_experts=4, num_experts_per_token=2, intermediate_dim=16)
    >>> tuple(moe(np.ones((2, 5, 8), "float32")).shape)
    (2, 5, 8)
    >>> tuple(moe.gate_dense.kernel.shape)  # (num_experts, features, intermediate_dim)
    (4, 8, 16)
    """

    def __init__(
        self,
        num_experts,
        num_experts_per_token,
        intermediate_dim,
        activation="swiglu",
        router_aux_loss_coefficient=0.0,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        kernel_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_arguments(num_experts, num_experts_per_token, router_aux_loss_coefficient)
        _validation.check_positive_int(intermediate_dim, "intermediate_dim")
        self.projection = _common.ProjectionSettings(
            use_bias=False,
            dtype=self.dtype_policy,
            kernel_initializer=kernel_initializer,
            kernel_regularizer=kernel_regularizer,
            kernel_constraint=kernel_constraint,
        )
        self.num_experts = num_experts
        self.num_experts_per_token = num_experts_per_token
        self.intermediate_dim = intermediate_dim
        self.router_aux_loss_coefficient = router_aux_loss_coefficient
        self.gated = isinstance(activation, str) and activation in GATED_ACTIVATIONS
        self.activation = activation if self.gated else _plain_activation(activation)
        self.hidden_activation = keras.activations.get(
            GATED_ACTIVATIONS[activation] if self.gated else self.activation
        )
        self.supports_masking = True
        self.router = _Router(
            num_experts,
            use_bias=False,
            name="router",
            dtype=self.dtype_policy,
            **self.projection.dense_kwargs(_KERNEL_KEYS),
        )
        hidden = (num_experts, intermediate_dim)
        self.gate_dense = self._experts("td,edf->tef", hidden, "gate_dense") if self.gated else None
        self.intermediate_dense = self._experts("td,edf->tef", hidden, "intermediate_dense")
        self.output_dense = None

    def _experts(self, equation, output_shape, name):
        """One part of every expert: an `EinsumDense` with the experts' stacked kernel."""
        return keras.layers.EinsumDense(
            equation,
            output_shape,
            name=name,
            dtype=self.dtype_policy,
            **self.projection.dense_kwargs(_KERNEL_KEYS),
        )

    @property
    def expert_layers(self):
        """The `EinsumDense` layers holding the experts (`gate_dense` when gated)."""
        parts = (self.gate_dense, self.intermediate_dense, self.output_dense)
        return tuple(part for part in parts if part is not None)

    def build(self, inputs_shape):
        _validation.check_rank(inputs_shape, (2, 3, 4), "inputs", "(batch, ..., features)")
        _validation.check_known_features(inputs_shape, "inputs")
        features = inputs_shape[-1]
        self.output_dense = self._experts(
            "tef,efd->ted", (self.num_experts, features), "output_dense"
        )
        tokens_shape = (None, features)
        self.router.build(tokens_shape)
        self.intermediate_dense.build(tokens_shape)
        if self.gate_dense is not None:
            self.gate_dense.build(tokens_shape)
        self.output_dense.build((None, self.num_experts, self.intermediate_dim))
        self.built = True

    def call(self, inputs, training=None, mask=None):
        tokens = ops.reshape(inputs, (-1, inputs.shape[-1]))
        # Routing in float32: top-k picks and the aux loss should not depend on rounding.
        probabilities = ops.softmax(ops.cast(self.router(tokens), "float32"), axis=-1)
        weights, experts = ops.top_k(probabilities, k=self.num_experts_per_token)
        weights = ops.cast(weights / ops.sum(weights, axis=-1, keepdims=True), self.compute_dtype)
        if self._runs_chosen_experts_only(inputs.shape):
            outputs = self._chosen_experts(tokens, weights, experts)
        else:
            outputs = self._all_experts(tokens, weights, experts)
        if training and self.router_aux_loss_coefficient > 0:
            loss = load_balancing_loss(probabilities, experts, self.num_experts, mask)
            self.add_loss(self.router_aux_loss_coefficient * loss)
        return ops.reshape(outputs, ops.shape(inputs))

    def _runs_chosen_experts_only(self, inputs_shape):
        """Whether to gather the chosen experts' kernels (see the class docstring):
        float kernels and a static token count `T` with `T * k <= num_experts`."""
        if any(layer.quantization_mode is not None for layer in self.expert_layers):
            return False  # quantized kernels are only used through EinsumDense's call
        if any(not isinstance(size, int) for size in inputs_shape[:-1]):
            return False
        tokens = math.prod(inputs_shape[:-1])
        return tokens * self.num_experts_per_token <= self.num_experts

    def _hidden(self, project):
        """`act(x G) * (x U)` (gated) or `act(x U)`, with `project(layer)` the input
        through that layer's experts: `(T, experts, intermediate_dim)`."""
        hidden = project(self.intermediate_dense)
        if self.gate_dense is None:
            return self.hidden_activation(hidden)
        return self.hidden_activation(project(self.gate_dense)) * hidden

    def _all_experts(self, tokens, weights, experts):
        """Every expert on every token, weighed by the `(T, num_experts)` routing matrix
        (each row zero outside the token's top `k`)."""
        one_hot = ops.one_hot(experts, self.num_experts, dtype=weights.dtype)
        routing = ops.sum(one_hot * weights[..., None], axis=1)
        hidden = self._hidden(lambda layer: layer(tokens))
        return ops.einsum("ted,te->td", self.output_dense(hidden), routing)

    def _chosen_experts(self, tokens, weights, experts):
        """Only each token's `k` chosen experts: their kernels gathered to
        `(T, k, ...)` (`layer.kernel` includes LoRA factors)."""

        def chosen_kernel(layer):
            return ops.take(ops.cast(layer.kernel, self.compute_dtype), experts, axis=0)

        hidden = self._hidden(
            lambda layer: ops.einsum("td,tkdf->tkf", tokens, chosen_kernel(layer))
        )
        outputs = ops.einsum("tkf,tkfd->tkd", hidden, chosen_kernel(self.output_dense))
        return ops.einsum("tkd,tk->td", outputs, weights)

    def enable_lora(self, rank, target_layer_names=None):
        """Freeze this layer's weights and add rank-`rank` LoRA factors to the router
        and the expert layers (all, or those named in `target_layer_names`, e.g.
        `("gate_dense", "intermediate_dense", "output_dense")`). Built layers only."""
        if target_layer_names is None:
            target_layer_names = tuple(layer.name for layer in (self.router, *self.expert_layers))
        return _common.enable_lora(self, rank, target_layer_names)

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_experts": self.num_experts,
                "num_experts_per_token": self.num_experts_per_token,
                "intermediate_dim": self.intermediate_dim,
                "activation": self.activation
                if self.gated
                else keras.activations.serialize(self.activation),
                "router_aux_loss_coefficient": self.router_aux_loss_coefficient,
                **self.projection.get_config(_KERNEL_KEYS),
            }
        )
        return config


def load_balancing_loss(probabilities, experts, num_experts, mask=None):
    """The load-balancing loss `num_experts * sum_i f_i P_i` (keras-hub's Mixtral).

    Args:
        probabilities: `(tokens, num_experts)` router probabilities (softmax).
        experts: `(tokens, k)` int indices of each token's chosen experts.
        num_experts: int.
        mask: `None` or booleans, one per token (any shape of `tokens` elements):
            tokens to count (padding left out).

    Returns:
        A float32 scalar; 1 when routing is uniform, up to `num_experts`.
    """
    probabilities = ops.cast(probabilities, "float32")
    # Each token's share of its k choices that went to each expert: (tokens, num_experts).
    choices = ops.mean(ops.one_hot(experts, num_experts, dtype="float32"), axis=1)
    if mask is None:
        fractions, mean_probabilities = ops.mean(choices, axis=0), ops.mean(probabilities, axis=0)
    else:
        keep = ops.reshape(ops.cast(mask, "float32"), (-1, 1))
        count = ops.maximum(ops.sum(keep), 1.0)
        fractions = ops.sum(choices * keep, axis=0) / count
        mean_probabilities = ops.sum(probabilities * keep, axis=0) / count
    return num_experts * ops.sum(fractions * mean_probabilities)


def check_expert_counts(num_experts, num_experts_per_token):
    """A `ValueError` unless both are positive ints, `num_experts_per_token` at most
    `num_experts` (also checked by the models taking the two arguments)."""
    _validation.check_positive_int(num_experts, "num_experts")
    _validation.check_positive_int(num_experts_per_token, "num_experts_per_token")
    if num_experts_per_token > num_experts:
        raise ValueError(
            "`num_experts_per_token` must be at most `num_experts`. Received: "
            f"num_experts_per_token={num_experts_per_token}, num_experts={num_experts}"
        )


def _check_arguments(num_experts, num_experts_per_token, router_aux_loss_coefficient):
    check_expert_counts(num_experts, num_experts_per_token)
    coefficient = router_aux_loss_coefficient
    if isinstance(coefficient, bool) or not isinstance(coefficient, numbers.Real):
        coefficient = -1
    if not coefficient >= 0:
        raise ValueError(
            "`router_aux_loss_coefficient` must be a float >= 0. Received: "
            f"router_aux_loss_coefficient={router_aux_loss_coefficient!r}"
        )


def _plain_activation(activation):
    """`keras.activations.get(activation)`, with an error naming the argument."""
    try:
        return keras.activations.get(activation)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"`activation` must be one of {', '.join(map(repr, GATED_ACTIVATIONS))} or a "
            f"Keras activation. Received: activation={activation!r}"
        ) from error

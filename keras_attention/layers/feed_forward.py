"""`FeedForward`: the position-wise feed-forward network of a Transformer block."""

import keras

from keras_attention import _validation
from keras_attention.layers import _common


@keras.saving.register_keras_serializable(package="keras_attention")
def gelu_tanh(x):
    """GELU with the tanh approximation (GPT-2, Gemma):
    `0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))`."""
    return keras.activations.gelu(x, approximate=True)


# Gated linear units (Shazeer 2020): the name and the activation of the gate.
GATED_ACTIVATIONS = {"swiglu": "silu", "geglu": "gelu", "geglu_tanh": gelu_tanh}
# Activations this package names that Keras' `activations.get` does not know.
NAMED_ACTIVATIONS = {"gelu_tanh": gelu_tanh}


def resolve_activation(activation):
    """The activation as stored (and put in `get_config`): this package's names
    (`GATED_ACTIVATIONS`, `NAMED_ACTIVATIONS`) stay strings, anything else goes
    through `keras.activations.get`."""
    if isinstance(activation, str) and (
        activation in GATED_ACTIVATIONS or activation in NAMED_ACTIVATIONS
    ):
        return activation
    return keras.activations.get(activation)


def serialize_activation(activation):
    """The config entry of an activation from `resolve_activation`."""
    if isinstance(activation, str):
        return activation
    return keras.activations.serialize(activation)


@keras.saving.register_keras_serializable(package="keras_attention")
class FeedForward(_common.LoraMixin, keras.layers.Layer):
    """Position-wise feed-forward network: `FFN(x) = act(x W_1 + b_1) W_2 + b_2`.

    The same two `Dense` layers (`intermediate_dense`, `output_dense`) are applied at
    every position independently, so the layer mixes features, never positions (that
    is attention's job). The output has as many features as the input, so the block
    can sit inside a residual connection. Parameters: `2 d f + f + d` for `d` input
    features and `f = intermediate_dim` (without biases: `2 d f`).

    Gated variants (Shazeer 2020, "GLU Variants Improve Transformer"; Llama uses
    SwiGLU, Gemma GeGLU): `activation="swiglu"` gives
    `FFN(x) = (silu(x W_g) * (x W_1)) W_2`, `"geglu"` the same with the exact
    `gelu` and `"geglu_tanh"` with its tanh approximation (Gemma's
    `gelu(x W_g, approximate=True) * (x W_1)`); the gate is the extra `Dense`
    `gate_dense` (`3 d f` kernel parameters).

    Args:
        intermediate_dim: positive int, the hidden size `d_ff` (2048 in the paper).
        activation: activation of the hidden layer (`"relu"` in the paper; any
            Keras activation, or `"gelu_tanh"`, the tanh-approximate GELU of GPT-2),
            or `"swiglu"`/`"geglu"`/`"geglu_tanh"` for a gated feed-forward.
        dropout: float in `[0, 1)`, dropout on the hidden activations.
        use_bias: whether both `Dense` layers have biases.
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer,
        kernel_constraint, bias_constraint: passed to both `Dense` layers.
        seed: int, seed for dropout.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `(batch, ..., features)`.
        training: whether dropout is active.

    Returns:
        Same shape as `inputs`, carrying the input's Keras mask.

    Example:
    >>> import numpy as np
    >>> tuple(FeedForward(32)(np.zeros((2, 5, 8), "float32")).shape)
    (2, 5, 8)
    """

    def __init__(
        self,
        intermediate_dim,
        activation="relu",
        dropout=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.projection = _common.ProjectionSettings.from_arguments(locals(), self.dtype_policy)
        _validation.check_positive_int(intermediate_dim, "intermediate_dim")
        _validation.check_rate(dropout, "dropout")
        _validation.check_bool(use_bias, "use_bias")
        self.intermediate_dim = intermediate_dim
        self.gated = isinstance(activation, str) and activation in GATED_ACTIVATIONS
        self.activation = resolve_activation(activation)
        self.dropout = dropout
        self.use_bias = use_bias
        self.seed = seed
        self.supports_masking = True
        self.gate_dense = None
        if self.gated:
            self.gate_dense = self.projection.dense(
                intermediate_dim,
                "gate_dense",
                activation=keras.activations.get(GATED_ACTIVATIONS[activation]),
            )
        self.intermediate_dense = self.projection.dense(
            intermediate_dim,
            "intermediate_dense",
            activation=None
            if self.gated
            else NAMED_ACTIVATIONS.get(self.activation, self.activation),
        )
        self.dropout_layer = keras.layers.Dropout(
            dropout, seed=seed, name="dropout", dtype=self.dtype_policy
        )
        self.output_dense = None

    def build(self, inputs_shape):
        _validation.check_rank(inputs_shape, (2, 3, 4), "inputs", "(batch, ..., features)")
        _validation.check_known_features(inputs_shape, "inputs")
        features = inputs_shape[-1]
        self.output_dense = self.projection.dense(features, "output_dense")
        self.intermediate_dense.build(inputs_shape)
        if self.gate_dense is not None:
            self.gate_dense.build(inputs_shape)
        self.output_dense.build(tuple(inputs_shape[:-1]) + (self.intermediate_dim,))
        self.built = True

    def call(self, inputs, training=None):
        hidden = self.intermediate_dense(inputs)
        if self.gate_dense is not None:
            hidden = self.gate_dense(inputs) * hidden
        hidden = self.dropout_layer(hidden, training=training)
        return self.output_dense(hidden)

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "intermediate_dim": self.intermediate_dim,
                "activation": serialize_activation(self.activation),
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "seed": self.seed,
                **self.projection.get_config(),
            }
        )
        return config

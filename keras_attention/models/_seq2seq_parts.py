"""The architecture options of :class:`Seq2SeqTransformer` (BART, T5): their checks,
the blocks' arguments, the embeddings of the two sides, position biases and norms.

A `config` here is the dict of the model's constructor arguments."""

import keras
from keras import ops

from keras_attention import _validation, masks
from keras_attention.layers._layer_normalization import LayerNormalization
from keras_attention.layers.feed_forward import FeedForward
from keras_attention.layers.positional import (
    PositionEmbedding,
    SinusoidalPositionEncoding,
    TokenAndPositionEmbedding,
)
from keras_attention.layers.relative_position_bias import RelativePositionBias
from keras_attention.layers.rms_norm import RMSNorm

POSITIONS = ("learned", "sinusoidal", "none", "relative")
NORMALIZATIONS = ("layer_norm", "rms_norm")
SHARE_EMBEDDINGS = (False, True, "tokens")
# The parts `use_bias` may name: those of the blocks, and the output projection.
BLOCK_BIAS_PARTS = ("query", "key", "value", "output", "feedforward", "norm")
BIAS_PARTS = BLOCK_BIAS_PARTS + ("lm_head",)


def check_options(config):
    """Check the architecture options the blocks do not check themselves (or check
    under another name), each error naming the model's argument and its value."""
    _validation.check_one_of(config["position"], "position", POSITIONS)
    if config["share_embeddings"] not in SHARE_EMBEDDINGS or not isinstance(
        config["share_embeddings"], (bool, str)
    ):
        raise ValueError(
            "`share_embeddings` must be False, True or 'tokens'. Received: "
            f"share_embeddings={config['share_embeddings']!r}"
        )
    for flag in ("tie_embeddings", "scale_embeddings", "mask_zero"):
        _validation.check_bool(config[flag], flag)
    for flag in ("normalize_first", "embedding_norm", "final_norm"):
        _validation.check_bool(config[flag], flag)
    _validation.check_one_of(config["normalization"], "normalization", NORMALIZATIONS)
    _validation.check_positive_float(config["layer_norm_epsilon"], "layer_norm_epsilon")
    _validation.check_positive_int(config["head_dim"], "head_dim", allow_none=True)
    for name in ("attention_scale", "output_scale"):
        if config[name] is not None:
            _validation.check_positive_float(config[name], name)
    _check_use_bias(config["use_bias"])
    _check_activation(config["activation"])
    if config["position"] == "relative":
        _check_relative(config["relative_num_buckets"], config["relative_max_distance"])


def _check_use_bias(use_bias):
    if isinstance(use_bias, bool):
        return
    parts = use_bias if isinstance(use_bias, (tuple, list)) else None
    if parts is None or any(part not in BIAS_PARTS for part in parts):
        raise ValueError(
            "`use_bias` must be a bool or a tuple of part names from "
            f"{BIAS_PARTS}. Received: use_bias={use_bias!r}"
        )


def _check_activation(activation):
    """The feed-forward layer decides which activations exist; name the argument."""
    try:
        FeedForward(1, activation=activation)
    except (ValueError, TypeError) as error:
        raise ValueError(
            "`activation` must be a Keras activation (e.g. 'relu', 'gelu') or a gated "
            f"one the FeedForward layer knows (e.g. 'swiglu', 'geglu'). Received: "
            f"activation={activation!r} ({error})"
        ) from None


def _check_relative(num_buckets, max_distance):
    _validation.check_positive_int(num_buckets, "relative_num_buckets")
    _validation.check_positive_int(max_distance, "relative_max_distance")
    # The encoder's buckets are bidirectional (a quarter exact each way), the
    # decoder's causal (half exact): both need buckets past the exact ones.
    if num_buckets < 4 or max_distance <= num_buckets // 2:
        raise ValueError(
            "`relative_num_buckets` must be at least 4 and `relative_max_distance` "
            "greater than relative_num_buckets // 2 (the distances the exact buckets "
            f"cover). Received: relative_num_buckets={num_buckets}, "
            f"relative_max_distance={max_distance}"
        )


def has_bias(use_bias, part):
    """Whether `part` of `BIAS_PARTS` gets a bias under `use_bias`."""
    return use_bias if isinstance(use_bias, bool) else part in use_bias


def block_kwargs(config):
    """The `TransformerEncoder`/`TransformerDecoder` arguments of `config` (besides
    the sizes, dropout and the self-attention's `score_bias`)."""
    use_bias = config["use_bias"]
    if not isinstance(use_bias, bool):
        use_bias = tuple(part for part in use_bias if part != "lm_head") or False
    kwargs = {
        "activation": config["activation"],
        "normalize_first": config["normalize_first"],
        "normalization": config["normalization"],
        "layer_norm_epsilon": config["layer_norm_epsilon"],
        "use_bias": use_bias,
        "key_dim": config["head_dim"],
    }
    if config["attention_scale"] is not None:
        kwargs["attention_scale"] = config["attention_scale"]
    return kwargs


def norm(config, name):
    """A norm of the kind and epsilon of the blocks (a LayerNorm centers only when
    the `"norm"` part has biases)."""
    epsilon = config["layer_norm_epsilon"]
    if config["normalization"] == "rms_norm":
        return RMSNorm(epsilon=epsilon, name=name)
    return LayerNormalization(
        epsilon=epsilon, center=has_bias(config["use_bias"], "norm"), name=name
    )


def relative_biases(config):
    """T5's relative position biases, one for the encoder's self-attentions
    (bidirectional) and one for the decoder's (causal), each shared by the layers of
    its stack; `(None, None)` unless `position="relative"`."""
    if config["position"] != "relative":
        return None, None
    return tuple(
        RelativePositionBias(
            num_buckets=config["relative_num_buckets"],
            max_distance=config["relative_max_distance"],
            bidirectional=side == "encoder",
            num_heads=config["num_heads"],
            name=f"{side}_position_bias",
        )
        for side in ("encoder", "decoder")
    )


def embeddings(config):
    """The `(encoder_embedding, decoder_embedding)` of `config`: one layer for both
    with `share_embeddings=True` and no `embedding_norm` (as before the options)."""
    share, position = config["share_embeddings"], config["position"]
    table_position = "none" if position == "relative" else position
    own_positions = share == "tokens" and table_position != "none"
    if share == "tokens" and not own_positions:
        share = True  # no position table to keep apart

    def table(name, with_positions=True):
        return TokenAndPositionEmbedding(
            config["vocabulary_size"],
            config["sequence_length"],
            config["embedding_dim"],
            mask_zero=config["mask_zero"],
            position=table_position if with_positions else "none",
            scale_by_sqrt_dim=config["scale_embeddings"],
            name=name,
        )

    wrap = own_positions or config["embedding_norm"]
    if share:
        shared = table("shared_embedding", with_positions=not own_positions)
        tables = (shared, shared)
    else:
        suffix = "_tokens" if wrap else "_embedding"
        tables = (table("encoder" + suffix), table("decoder" + suffix))
    if not wrap:
        return tables
    return tuple(
        SideEmbedding(
            tables[i],
            _positions(config, table_position) if own_positions else None,
            norm(config, "embedding_norm") if config["embedding_norm"] else None,
            name=f"{side}_embedding",
        )
        for i, side in enumerate(("encoder", "decoder"))
    )


def _positions(config, position):
    if position == "learned":
        return PositionEmbedding(config["sequence_length"], name="position_embedding")
    return SinusoidalPositionEncoding(name="position_embedding")


class SideEmbedding(keras.layers.Layer):
    """One side's embedding in a :class:`Seq2SeqTransformer` with BART's options:
    the token table `table` (a `TokenAndPositionEmbedding`, maybe shared with the
    other side), then this side's own `positions` (optional), then `norm` (BART's
    `layernorm_embedding`, optional). `reverse=True` gives the table's logits.

    It has the attributes of a `TokenAndPositionEmbedding` generation reads
    (`vocabulary_size`, `mask_zero`, `position`, `sequence_length`,
    `embedding_dim`). Built by the model's constructor, never deserialized alone.
    """

    def __init__(self, table, positions=None, norm=None, **kwargs):
        super().__init__(**kwargs)
        self.table = table
        self.positions = positions
        self.norm = norm
        self.vocabulary_size = table.vocabulary_size
        self.embedding_dim = table.embedding_dim
        self.mask_zero = table.mask_zero
        self.position = table.position if positions is None else _kind(positions)
        self.sequence_length = table.sequence_length
        self.supports_masking = True

    def build(self, inputs_shape):
        tokens_shape = tuple(inputs_shape[:2])
        if not self.table.built:
            self.table.build(tokens_shape)
        for layer in (self.positions, self.norm):
            if layer is not None and not layer.built:
                layer.build(tokens_shape + (self.embedding_dim,))
        self.built = True

    def call(self, inputs, start_index=0, reverse=False):
        if reverse:
            return self.table(inputs, reverse=True)
        x = self.table(inputs)
        if self.positions is not None:
            x = self.positions(x, start_index=start_index)
        if self.norm is not None:
            x = self.norm(x)
        return x

    def compute_mask(self, inputs, mask=None):
        # Hidden states (reverse=True) keep their mask; tokens get `tokens != 0`
        # with `mask_zero`, and a mask given with them (e.g. `model(inputs,
        # mask=[...])`, for a padding id other than 0) is kept too.
        if len(inputs.shape) == 3:
            return mask
        tokens = ops.not_equal(inputs, 0) if self.mask_zero else None
        return masks.combine_masks(tokens, None if mask is None else ops.cast(mask, "bool"))

    def compute_output_shape(self, inputs_shape, reverse=False):
        return self.table.compute_output_shape(inputs_shape, reverse=reverse)

    def compute_output_spec(self, inputs, start_index=0, reverse=False):
        return self.table.compute_output_spec(inputs, reverse=reverse)

    @property
    def embeddings(self):
        """The `(vocabulary_size, embedding_dim)` token table."""
        return self.table.embeddings


def _kind(positions):
    return "learned" if isinstance(positions, PositionEmbedding) else "sinusoidal"

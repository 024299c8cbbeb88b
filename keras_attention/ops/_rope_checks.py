"""Checks of RoPE's `rope_scaling` dicts (the types and their keys, Hugging Face's
names); the frequency math is in `keras_attention.ops.positions`."""

import numbers

# type -> (required keys, optional keys) of a `rope_scaling` dict (Hugging Face's names).
ROPE_SCALING_KEYS = {
    "linear": (("factor",), ()),
    "llama3": (
        ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
        (),
    ),
    "longrope": (
        ("short_factor", "long_factor", "original_max_position_embeddings"),
        ("max_position_embeddings", "factor", "attention_factor"),
    ),
    "yarn": (
        ("factor", "original_max_position_embeddings"),
        ("beta_fast", "beta_slow", "attention_factor", "truncate"),
    ),
    "dynamic": (("factor", "original_max_position_embeddings"), ()),
}
ROPE_SCALING_TYPES = tuple(ROPE_SCALING_KEYS)


def rope_type(config):
    """The type a `rope_scaling` dict names (`"type"`, or Hugging Face's newer
    `"rope_type"`)."""
    return config.get("type", config.get("rope_type"))


def check_rope_scaling(rope_scaling, rotary_dim=None, scaling_factor=1.0):
    """Raise `ValueError` unless `rope_scaling` is None or a valid scaling dict (see
    `keras_attention.ops.positions.rotary_frequencies`); given `rotary_dim`,
    longrope's lists must have `rotary_dim / 2` entries. `scaling_factor` (linear
    interpolation outside the dict) must be 1 beside a dict."""
    if rope_scaling is None:
        return
    if scaling_factor != 1:
        raise ValueError(
            "`scaling_factor` and `rope_scaling` both scale the positions: set one "
            f"(`rope_scaling={{'type': 'linear', 'factor': {scaling_factor}}}` is "
            f"`scaling_factor={scaling_factor}`). Received: scaling_factor={scaling_factor}, "
            f"rope_scaling={rope_scaling!r}"
        )

    def fail(expected):
        raise ValueError(f"`rope_scaling` {expected}. Received: rope_scaling={rope_scaling!r}")

    if not isinstance(rope_scaling, dict):
        fail("must be None or a dict with a 'type' key")
    kind = rope_type(rope_scaling)
    if rope_scaling.get("rope_type", kind) != kind:
        fail("names two types ('type' and 'rope_type' differ)")
    if kind not in ROPE_SCALING_KEYS:
        fail(f"'type' must be one of {', '.join(map(repr, ROPE_SCALING_TYPES))}")
    required, optional = ROPE_SCALING_KEYS[kind]
    given = set(rope_scaling) - {"type", "rope_type"}
    missing = [key for key in required if key not in given]
    unknown = sorted(given - set(required) - set(optional))
    if missing or unknown:
        problem = f"missing {missing}" if missing else f"unknown {unknown}"
        fail(
            f"of type {kind!r} needs the keys {list(required)} (optional: "
            f"{list(optional)}); {problem}"
        )
    for key in sorted(given):
        _check_rope_value(key, rope_scaling[key], fail)
    config = rope_scaling
    if kind == "llama3" and not config["high_freq_factor"] > config["low_freq_factor"]:
        fail("'high_freq_factor' must be greater than 'low_freq_factor'")
    if kind == "yarn" and not config.get("beta_fast", 32.0) > config.get("beta_slow", 1.0):
        fail("'beta_fast' must be greater than 'beta_slow'")
    if kind == "longrope":
        expected = len(config["short_factor"]) if rotary_dim is None else rotary_dim // 2
        for key in ("short_factor", "long_factor"):
            if len(config[key]) != expected:
                fail(
                    f"{key!r} must have one entry per rotated feature pair, {expected} "
                    f"(rotated dim / 2); it has {len(config[key])}"
                )


def _check_rope_value(key, value, fail):
    def real(v):
        return isinstance(v, numbers.Real) and not isinstance(v, bool) and v > 0

    if key in ("short_factor", "long_factor"):
        if not isinstance(value, (list, tuple)) or not value or not all(map(real, value)):
            fail(f"{key!r} must be a non-empty list of positive floats; it is {value!r}")
    elif key in ("original_max_position_embeddings", "max_position_embeddings"):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            fail(f"{key!r} must be a positive int; it is {value!r}")
    elif key == "truncate":
        if not isinstance(value, bool):
            fail(f"'truncate' must be a bool; it is {value!r}")
    elif not real(value):
        fail(f"{key!r} must be a positive float; it is {value!r}")

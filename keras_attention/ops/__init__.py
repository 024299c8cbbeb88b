"""The attention math: `softmax(Q K^T * scale + bias) V`, written once with `keras.ops`.

Every layer of the package projects its inputs and calls
:func:`scaled_dot_product_attention`; none re-implements the math. The head
reshapes and the position helpers shared by the layers live here too.

One module a job:

- `attention`: :func:`scaled_dot_product_attention` (checks, the choice of a path,
  the plain path), :func:`check_implementation`;
- `scores`: the score modifiers (soft cap, bias, causal and window masks), the
  masked softmax, :func:`attention_from_scores`;
- `chunked`, `flash`, `fused`: one path each, each entered by
  `attend(query, key, value, mask, score_mod, ...)`;
- `_checks`: shape, mask and bias checks, the default scale, the grouped-query
  key/value repeat;
- `heads`: :func:`split_heads`, :func:`merge_heads`;
- `positions`: :func:`apply_rotary_embedding`, :func:`check_rotary_arguments`,
  `ROTARY_LAYOUTS`, :func:`alibi_slopes`, :func:`relative_position_buckets`.

The tuning constants are readable here and live (and are read by the code) in their
modules: `CHUNKED_THRESHOLD` and `FLASH_THRESHOLD` in `keras_attention.ops.attention`,
`CHUNK_ELEMENTS` and `DYNAMIC_NUM_CHUNKS` in `keras_attention.ops.chunked`,
`FLASH_BLOCK_Q`, `FLASH_BLOCK_K` and `FLASH_TILE_ELEMENTS` in
`keras_attention.ops.flash` (and `ROTARY_LAYOUTS` in `keras_attention.ops.positions`).
To change one (a test's `monkeypatch.setattr`), set it in that module: setting it on
this package would change nothing, so it raises an `AttributeError` naming the module
to set.
"""

import sys
import types

from keras_attention.ops.attention import (
    CHUNKED_THRESHOLD,
    FLASH_THRESHOLD,
    check_implementation,
    scaled_dot_product_attention,
)
from keras_attention.ops.chunked import CHUNK_ELEMENTS, DYNAMIC_NUM_CHUNKS
from keras_attention.ops.flash import FLASH_BLOCK_K, FLASH_BLOCK_Q, FLASH_TILE_ELEMENTS
from keras_attention.ops.heads import merge_heads, split_heads
from keras_attention.ops.positions import (
    ROTARY_LAYOUTS,
    alibi_slopes,
    apply_rotary_embedding,
    check_rotary_arguments,
    relative_position_buckets,
)
from keras_attention.ops.scores import attention_from_scores

__all__ = [
    "scaled_dot_product_attention",
    "attention_from_scores",
    "split_heads",
    "merge_heads",
    "apply_rotary_embedding",
    "alibi_slopes",
    "relative_position_buckets",
]

# Each constant and the module whose copy the code reads.
_CONSTANT_MODULES = {
    "CHUNKED_THRESHOLD": "keras_attention.ops.attention",
    "FLASH_THRESHOLD": "keras_attention.ops.attention",
    "CHUNK_ELEMENTS": "keras_attention.ops.chunked",
    "DYNAMIC_NUM_CHUNKS": "keras_attention.ops.chunked",
    "FLASH_BLOCK_Q": "keras_attention.ops.flash",
    "FLASH_BLOCK_K": "keras_attention.ops.flash",
    "FLASH_TILE_ELEMENTS": "keras_attention.ops.flash",
    "ROTARY_LAYOUTS": "keras_attention.ops.positions",
}


class _Package(types.ModuleType):
    """This package, refusing to set a constant that only its module's copy sets."""

    def __setattr__(self, name, value):
        if name in _CONSTANT_MODULES:
            raise AttributeError(
                f"`keras_attention.ops.{name}` is a copy that the code does not read: "
                f"set `{_CONSTANT_MODULES[name]}.{name}` instead."
            )
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

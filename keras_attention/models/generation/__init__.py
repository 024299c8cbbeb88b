"""Generation: the compiled decoding loop behind the models' `generate()` and their
step API (`loop`), prompt checks (`prompts`), what a generation carries (`state`),
streaming in chunks (`streaming`), the multi-turn `GenerationState` (`session`),
the function form `generate` (`functional`), and the deprecated `export_generate`
(`deprecated`; `keras_attention.export.export_generator` replaces it)."""

from keras_attention.models.generation.deprecated import export_generate
from keras_attention.models.generation.functional import generate
from keras_attention.models.generation.loop import GenerativeMixin
from keras_attention.models.generation.prompts import check_token_ids, left_align, prepare_prompt
from keras_attention.models.generation.session import GenerationState
from keras_attention.models.generation.state import EncoderState, GenerationSettings

__all__ = [
    "GenerativeMixin",
    "generate",
    "export_generate",
    "prepare_prompt",
    "check_token_ids",
    "left_align",
    "EncoderState",
    "GenerationSettings",
    "GenerationState",
]

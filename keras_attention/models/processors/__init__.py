"""Logits processors for `generate(..., processors=[...])`: penalties, n-gram and
sequence bans, min-p, minimum length and suppressed tokens, applied in order to the
next-token logits before the sampler, inside the compiled loop."""

from keras import ops

from keras_attention.models.processors.banned_sequences import BannedSequences
from keras_attention.models.processors.frequency_penalty import FrequencyPenalty
from keras_attention.models.processors.min_new_tokens import MinNewTokens
from keras_attention.models.processors.min_p import MinP
from keras_attention.models.processors.no_repeat_ngram import NoRepeatNGram
from keras_attention.models.processors.presence_penalty import PresencePenalty
from keras_attention.models.processors.processor import LogitsProcessor, ProcessorContext
from keras_attention.models.processors.repetition_penalty import RepetitionPenalty
from keras_attention.models.processors.suppress_tokens import SuppressTokens

__all__ = [
    "LogitsProcessor",
    "ProcessorContext",
    "RepetitionPenalty",
    "PresencePenalty",
    "FrequencyPenalty",
    "NoRepeatNGram",
    "MinP",
    "BannedSequences",
    "MinNewTokens",
    "SuppressTokens",
    "check",
    "apply",
]


def check(processors, vocabulary_size):
    """`processors` (`None`, one `LogitsProcessor` or a list of them) as a tuple,
    after checking their token ids against `vocabulary_size`; a `ValueError` naming
    `processors` otherwise."""
    if processors is None:
        return ()
    if isinstance(processors, LogitsProcessor):
        processors = [processors]
    if not isinstance(processors, (list, tuple)) or not all(
        isinstance(p, LogitsProcessor) for p in processors
    ):
        raise ValueError(
            "`processors` must be a list of LogitsProcessor instances (e.g. "
            f"[RepetitionPenalty(1.2), MinP(0.05)]). Received: processors={processors!r}"
        )
    for processor in processors:
        processor.check_vocabulary(vocabulary_size)
    return tuple(processors)


def apply(processors, logits, tokens, prompt_lengths, index, new_token_counts):
    """`logits` `(batch, vocabulary)` in float32 through each processor in turn (the
    hook of the generation loop, where logits become the next token)."""
    logits = ops.cast(logits, "float32")
    if not processors:
        return logits
    context = ProcessorContext(tokens, prompt_lengths, index, new_token_counts)
    for processor in processors:
        logits = processor(logits, context)
    return logits

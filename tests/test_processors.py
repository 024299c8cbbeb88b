"""Logits processors: each against a numpy reference of its published definition
(written here, one row at a time), inside `generate` (compiled == eager, every
sampler and beam search, the compile cache), their configs, the SavedModel export,
and bad input.

The references follow: CTRL / Hugging Face `RepetitionPenaltyLogitsProcessor`
(prompt and generated tokens), OpenAI's presence and frequency penalties
(`mu[j] - c[j] * frequency - (c[j] > 0) * presence`, `c[j]` counting the tokens
generated before the current position, not the prompt), Hugging Face's
`NoRepeatNGramLogitsProcessor`, `MinPLogitsWarper`, `NoBadWordsLogitsProcessor`,
`MinNewTokensLengthLogitsProcessor` and `SuppressTokensLogitsProcessor`.
"""

import keras
import numpy as np
import pytest

from keras_attention import models
from keras_attention.models import processors as processors_lib
from keras_attention.models.processors import (
    BannedSequences,
    FrequencyPenalty,
    LogitsProcessor,
    MinNewTokens,
    MinP,
    NoRepeatNGram,
    PresencePenalty,
    ProcessorContext,
    RepetitionPenalty,
    SuppressTokens,
)

VOCAB = 7  # small, so the random texts repeat tokens and n-grams
WIDTH = 14
LENGTHS = np.array([2, 5, 3, 7], "int32")
TINY = dict(
    vocabulary_size=17,
    sequence_length=40,
    num_layers=1,
    embedding_dim=16,
    num_heads=2,
    intermediate_dim=24,
    dropout=0.0,
)


# ------------------------------------------------------------- numpy references


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def ref_repetition(row, text, generated, new, penalty):
    row = row.copy()
    for token in set(text):
        row[token] = row[token] * penalty if row[token] < 0 else row[token] / penalty
    return row


def ref_openai(row, text, generated, new, presence=0.0, frequency=0.0):
    counts = np.bincount(np.array(generated, "int64"), minlength=len(row))
    return row - counts * frequency - (counts > 0) * presence


def ref_no_repeat_ngram(row, text, generated, new, n):
    row = row.copy()
    if len(text) + 1 < n:
        return row
    seen = {}
    for start in range(len(text) - n + 1):
        gram = tuple(text[start : start + n])
        seen.setdefault(gram[:-1], []).append(gram[-1])
    for token in seen.get(tuple(text[len(text) - n + 1 :]), []):
        row[token] = -np.inf
    return row


def ref_min_p(row, text, generated, new, min_p):
    probs = _softmax(row)
    return np.where(probs < min_p * probs.max(), -np.inf, row)


def ref_banned(row, text, generated, new, sequences):
    row = row.copy()
    for sequence in sequences:
        prefix = list(sequence[:-1])
        if len(prefix) <= len(text) and list(text[len(text) - len(prefix) :]) == prefix:
            row[sequence[-1]] = -np.inf
    return row


def ref_min_new_tokens(row, text, generated, new, n, stops):
    row = row.copy()
    if new < n:
        row[list(stops)] = -np.inf
    return row


def ref_suppress(row, text, generated, new, ids):
    row = row.copy()
    row[list(ids)] = -np.inf
    return row


CASES = [
    (RepetitionPenalty(1.7), ref_repetition, dict(penalty=1.7)),
    (RepetitionPenalty(0.6), ref_repetition, dict(penalty=0.6)),
    (PresencePenalty(0.8), ref_openai, dict(presence=0.8)),
    (PresencePenalty(-1.5), ref_openai, dict(presence=-1.5)),
    (FrequencyPenalty(0.45), ref_openai, dict(frequency=0.45)),
    (NoRepeatNGram(1), ref_no_repeat_ngram, dict(n=1)),
    (NoRepeatNGram(2), ref_no_repeat_ngram, dict(n=2)),
    (NoRepeatNGram(3), ref_no_repeat_ngram, dict(n=3)),
    (MinP(0.0), ref_min_p, dict(min_p=0.0)),
    (MinP(0.3), ref_min_p, dict(min_p=0.3)),
    (MinP(1.0), ref_min_p, dict(min_p=1.0)),
    (
        BannedSequences([[4], [1, 2], [0, 1, 3], [2, 2, 2, 5]]),
        ref_banned,
        dict(sequences=[[4], [1, 2], [0, 1, 3], [2, 2, 2, 5]]),
    ),
    (MinNewTokens(3, stop_token_ids=[1, 6]), ref_min_new_tokens, dict(n=3, stops=[1, 6])),
    (SuppressTokens([0, 5]), ref_suppress, dict(ids=[0, 5])),
]


@pytest.mark.parametrize(
    "processor, reference, kwargs",
    CASES,
    ids=[f"{type(case[0]).__name__}-{i}" for i, case in enumerate(CASES)],
)
def test_processor_matches_its_numpy_reference(processor, reference, kwargs):
    rng = np.random.default_rng(3)
    for index in range(1, WIDTH):
        # Junk after `index`: the processor must read only the text before it.
        tokens = rng.integers(0, VOCAB, (len(LENGTHS), WIDTH)).astype("int32")
        logits = rng.normal(size=(len(LENGTHS), VOCAB)).astype("float32") * 2
        new = np.maximum(index - LENGTHS, 0).astype("int32")
        context = ProcessorContext(tokens, LENGTHS, np.int32(index), new)
        got = keras.ops.convert_to_numpy(processor(logits, context))
        for row, length in enumerate(LENGTHS):
            if index < length:
                continue  # a row inside its prompt keeps its prompt token
            text = list(tokens[row, :index])
            expected = reference(logits[row], text, text[length:], new[row], **kwargs)
            np.testing.assert_allclose(got[row], expected, rtol=1e-6, atol=1e-6)


def test_openai_penalties_compose_to_the_full_formula():
    rng = np.random.default_rng(4)
    tokens = rng.integers(0, VOCAB, (len(LENGTHS), WIDTH)).astype("int32")
    logits = rng.normal(size=(len(LENGTHS), VOCAB)).astype("float32")
    index, new = 10, 10 - LENGTHS
    processors = (PresencePenalty(0.3), FrequencyPenalty(0.2))
    got = keras.ops.convert_to_numpy(
        processors_lib.apply(processors, logits, tokens, LENGTHS, index, new)
    )
    for row, length in enumerate(LENGTHS):
        generated = list(tokens[row, length:index])
        expected = ref_openai(logits[row], None, generated, 0, presence=0.3, frequency=0.2)
        np.testing.assert_allclose(got[row], expected, rtol=1e-6)


# ----------------------------------------------------------------- in generate


ALL = [
    RepetitionPenalty(1.3),
    PresencePenalty(0.5),
    FrequencyPenalty(0.3),
    NoRepeatNGram(3),
    MinP(0.02),
    BannedSequences([[3], [4, 5]]),
    MinNewTokens(2, [2]),
    SuppressTokens([7]),
]


@pytest.fixture(scope="module")
def lm():
    keras.utils.set_random_seed(11)
    return models.causal_language_model(**TINY)


@pytest.fixture(scope="module")
def s2s():
    keras.utils.set_random_seed(12)
    return models.transformer_seq2seq(**TINY)


def _bigrams_repeat(row):
    grams = list(zip(row[:-1], row[1:]))
    return len(grams) != len(set(grams))


@pytest.mark.parametrize("sampler", ["greedy", "top_p", models.BeamSampler(3)], ids=str)
def test_compiled_equals_eager(lm, sampler):
    prompt = [[1, 2, 3], [4, 5, 6, 8, 9], [10]]
    kwargs = dict(sampler=sampler, seed=5, stop_token_ids=[2], processors=ALL)
    compiled = lm.generate(prompt, 8, **kwargs)
    eager = lm.generate(prompt, 8, compile=False, **kwargs)
    np.testing.assert_array_equal(compiled, eager)


def test_seq2seq_compiled_equals_eager(s2s):
    source = np.array([[3, 4, 5, 6], [7, 8, 9, 1]], "int32")
    kwargs = dict(sampler="top_k", seed=2, processors=ALL)
    compiled = s2s.generate(source, [[1], [1, 2]], 6, **kwargs)
    eager = s2s.generate(source, [[1], [1, 2]], 6, compile=False, **kwargs)
    np.testing.assert_array_equal(compiled, eager)


@pytest.mark.parametrize("sampler", ["greedy", models.BeamSampler(3)], ids=str)
def test_no_repeat_ngram_removes_the_loops_of_a_repetitive_model(lm, sampler):
    prompt = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], "int32")
    plain = lm.generate(prompt, 30, sampler=sampler)
    assert any(_bigrams_repeat(list(row)) for row in plain)  # the model does loop
    processed = lm.generate(prompt, 30, sampler=sampler, processors=[NoRepeatNGram(2)])
    assert not any(_bigrams_repeat(list(row)) for row in processed)
    np.testing.assert_array_equal(processed[:, :4], prompt)


@pytest.mark.parametrize("sampler", ["greedy", "random", models.BeamSampler(2)], ids=str)
def test_suppressed_token_never_appears(lm, sampler):
    prompt = np.array([[1, 2, 3], [4, 5, 6]], "int32")
    plain = lm.generate(prompt, 20, sampler=sampler, seed=0)
    values, counts = np.unique(plain[:, 3:], return_counts=True)
    token = int(values[np.argmax(counts)])  # the model's favourite
    processed = lm.generate(prompt, 20, sampler=sampler, seed=0, processors=[SuppressTokens(token)])
    assert token not in processed[:, 3:]


def test_min_new_tokens_delays_the_stop(lm):
    prompt = np.array([[1, 2, 3], [4, 5, 6]], "int32")
    stop = int(lm.generate(prompt, 1)[0, 3])  # the first row stops at once
    plain = lm.generate(prompt, 12, stop_token_ids=[stop], pad_token_id=0)
    assert plain[0, 3] == stop and (plain[0, 4:] == 0).all()
    processed = lm.generate(prompt, 12, stop_token_ids=[stop], processors=[MinNewTokens(5, stop)])
    assert stop not in processed[:, 3:8]


def test_banned_sequence_never_completes(lm):
    prompt = np.array([[1, 2, 3], [4, 5, 6]], "int32")
    plain = lm.generate(prompt, 20)
    pair = [int(plain[0, 5]), int(plain[0, 6])]  # a bigram the model writes
    processed = lm.generate(prompt, 20, processors=[BannedSequences([pair])])
    for row in processed:
        assert pair not in [list(g) for g in zip(row[3:-1], row[4:])]


def test_compile_cache_keys_on_the_processors_config():
    keras.utils.set_random_seed(13)
    model = models.causal_language_model(**TINY)
    prompt = np.array([[1, 2, 3]], "int32")
    model.generate(prompt, 4, processors=[RepetitionPenalty(1.5)])
    model.generate(prompt, 4, processors=[RepetitionPenalty(1.5)])  # a new, equal instance
    assert len(model._generate_functions.functions) == 1
    model.generate(prompt, 4, processors=[RepetitionPenalty(2.0)])
    model.generate(prompt, 4)
    assert len(model._generate_functions.functions) == 3
    if keras.backend.backend() != "torch":  # PyTorch runs the loop eagerly (no trace)
        assert model._generate_functions.traces == 3


# ------------------------------------------------------------- config, export


@pytest.mark.parametrize("processor", ALL, ids=repr)
def test_config_round_trip(processor):
    config = keras.saving.serialize_keras_object(processor)
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is type(processor) and restored == processor
    assert hash(restored) == hash(processor)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 17, (2, 9)).astype("int32")
    logits = rng.normal(size=(2, 17)).astype("float32")
    context = ProcessorContext(tokens, np.array([2, 4], "int32"), np.int32(6), np.array([4, 2]))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(restored(logits, context)),
        keras.ops.convert_to_numpy(processor(logits, context)),
    )


@pytest.mark.tensorflow_only("SavedModel export of TensorFlow graphs")
def test_saved_model_generate_with_processors_equals_generate(lm, tmp_path):
    import tensorflow as tf

    from keras_attention.export import export_generator

    tokens = np.array([[3, 4, 5, 6], [0, 7, 8, 0]], "int32")
    mask = np.array([[1, 1, 1, 1], [0, 1, 1, 0]], bool)
    expected = lm.generate(tokens, 10, prompt_mask=mask, stop_token_ids=[2], processors=ALL)
    assert not np.array_equal(expected, lm.generate(tokens, 10, prompt_mask=mask))
    path = export_generator(
        lm, tmp_path / "lm", "tf_saved_model", max_length=14, stop_token_ids=[2], processors=ALL
    )
    served = tf.saved_model.load(path).signatures["generate"](tokens=tokens, mask=mask)
    np.testing.assert_array_equal(served["tokens"].numpy(), expected)


# ------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: RepetitionPenalty(0), "`penalty` must be a number > 0. Received: penalty=0"),
        (lambda: RepetitionPenalty(-1.2), "Received: penalty=-1.2"),
        (lambda: RepetitionPenalty("2"), "Received: penalty='2'"),
        (lambda: PresencePenalty(2.5), r"`penalty` must be a number in \[-2, 2\]"),
        (lambda: FrequencyPenalty(float("nan")), "Received: penalty=nan"),
        (lambda: MinP(1.5), r"`min_p` must be a number in \[0, 1\]. Received: min_p=1.5"),
        (lambda: MinP(-0.1), "Received: min_p=-0.1"),
        (lambda: NoRepeatNGram(0), "`ngram_size` must be an integer >= 1. Received: ngram_size=0"),
        (lambda: NoRepeatNGram(2.0), "Received: ngram_size=2.0"),
        (lambda: BannedSequences([[1], []]), r"Received: sequences=\[\[1\], \[\]\]"),
        (lambda: BannedSequences([]), r"non-empty list.*Received: sequences=\[\]"),
        (lambda: BannedSequences([[1, 2.5]]), r"Received: sequences=\[\[1, 2.5\]\]"),
        (lambda: BannedSequences([1, 2]), r"Received: sequences=\[1, 2\]"),
        (lambda: MinNewTokens(-1, [2]), "Received: min_new_tokens=-1"),
        (lambda: MinNewTokens(3, ["2"]), r"`stop_token_ids` must be.*Received: stop_token_ids"),
        (lambda: SuppressTokens([1.0]), r"`token_ids` must be.*Received: token_ids=\[1.0\]"),
        (lambda: SuppressTokens([True]), r"Received: token_ids=\[True\]"),
        (lambda: SuppressTokens([-3]), r"Received: token_ids=\[-3\]"),
    ],
)
def test_bad_arguments_are_named(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_generate_refuses_bad_processors(lm):
    with pytest.raises(ValueError, match="`processors` must be a list of LogitsProcessor"):
        lm.generate([[1, 2]], 3, processors=["min_p"])
    with pytest.raises(
        ValueError, match=r"`token_ids` must be token ids in \[0, vocabulary_size=17"
    ):
        lm.generate([[1, 2]], 3, processors=[SuppressTokens([17])])
    with pytest.raises(ValueError, match="`sequences` must be token ids"):
        lm.generate([[1, 2]], 3, processors=[BannedSequences([[1, 40]])])


def test_export_refuses_processors_for_litert(lm, tmp_path):
    from keras_attention.export import export_generator

    with pytest.raises(ValueError, match="`processors` apply to the SavedModel"):
        export_generator(lm, tmp_path / "lm.tflite", processors=[MinP(0.1)])


def test_base_class_must_be_subclassed():
    with pytest.raises(NotImplementedError, match="must implement __call__"):
        LogitsProcessor()(np.zeros((1, 2), "float32"), None)

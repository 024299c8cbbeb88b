"""Modern block options (RMSNorm, no biases, RoPE, GQA, SwiGLU, window, soft-cap) and
the Llama-style causal LM: training, cached generation, saving."""

import keras
import numpy as np
import pytest

import keras_attention as ka
from keras_attention.models import generation
from tests.utils import run_layer_test

_np = keras.ops.convert_to_numpy

MODERN = {
    "normalize_first": True,
    "normalization": "rms_norm",
    "use_bias": False,
    "activation": "swiglu",
    "position_embedding": "rotary",
    "num_key_value_heads": 1,
    "sliding_window": 3,
    "soft_cap": 3.0,
    "query_norm": "rms_norm",
    "key_norm": "rms_norm",
}


def _x(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def test_encoder_with_modern_options(tmp_path):
    layer, _ = run_layer_test(
        ka.TransformerEncoder,
        {"num_heads": 2, "intermediate_dim": 6, "dropout": 0.0, **MODERN},
        {"inputs": _x(2, 5, 8)},
        tmp_path=tmp_path,
        expected_output_shape=(2, 5, 8),
        masked_inputs=("inputs",),
    )
    # No biases or offsets anywhere: q, k, v, o kernels, gate/up/down, two RMSNorm
    # scales, the two QK-norm scales.
    names = sorted(w.path.split("/")[-1] for w in layer.trainable_weights)
    assert "bias" not in names and "beta" not in names, names
    assert len(names) == 4 + 3 + 2 + 2


def test_decoder_cached_steps_equal_full_pass():
    keras.utils.set_random_seed(1)
    decoder = ka.TransformerDecoder(
        num_heads=4, intermediate_dim=6, dropout=0.0, **{**MODERN, "num_key_value_heads": 2}
    )
    x = _x(2, 7, 8, seed=1)
    keep = np.ones((2, 7), bool)
    keep[1, 1] = False  # a padded key inside the window
    full = _np(decoder(x, decoder_padding_mask=keep))
    cache = decoder.get_initial_cache(2, 7)
    assert cache.shape[1] == 3  # the ring of the sliding window
    out, cache = decoder(
        x[:, :2], self_attention_cache=cache, cache_index=0, decoder_padding_mask=keep
    )
    outs = [_np(out)]
    for t in range(2, 7):
        out, cache = decoder(
            x[:, t : t + 1], self_attention_cache=cache, cache_index=t, decoder_padding_mask=keep
        )
        outs.append(_np(out))
    # The padded position's own output is not compared: the cached call masks keys
    # only (its query row is never used).
    np.testing.assert_allclose(np.concatenate(outs, 1)[keep], full[keep], atol=1e-5)


def test_block_bad_options():
    with pytest.raises(ValueError, match="normalization='batch_norm'"):
        ka.TransformerEncoder(4, 2, normalization="batch_norm")
    with pytest.raises(ValueError, match="num_key_value_heads=3"):
        ka.TransformerDecoder(4, 4, num_key_value_heads=3)
    with pytest.raises(ValueError, match="sliding_window=0"):
        ka.TransformerDecoder(4, 4, sliding_window=0)
    with pytest.raises(ValueError, match="soft_cap=0"):
        ka.TransformerEncoder(4, 4, soft_cap=0)


def _llama(**kwargs):
    keras.utils.set_random_seed(2)
    return ka.models.causal_language_model(
        vocabulary_size=23,
        sequence_length=16,
        num_layers=2,
        embedding_dim=16,
        num_heads=4,
        num_key_value_heads=2,
        intermediate_dim=24,
        dropout=0.0,
        style="llama",
        **kwargs,
    )


@pytest.mark.parametrize("tie_embeddings", [False, True])
def test_llama_shape_and_parameter_count(tie_embeddings):
    model = _llama(tie_embeddings=tie_embeddings)
    d, f, v, kv = 16, 24, 23, 2 * 4
    block = 2 * d * d + 2 * d * kv + 3 * d * f + 2 * d  # q,o + k,v + SwiGLU + 2 RMSNorm
    head = 0 if tie_embeddings else d * v
    assert model.count_params() == v * d + 2 * block + d + head
    assert (model.lm_head is None) == tie_embeddings


def test_llama_trains_generates_with_cache_and_reloads(tmp_path):
    # With a window shorter than prompt + new tokens, generation runs on the ring cache.
    model = _llama(sliding_window=4, soft_cap=5.0)
    rng = np.random.default_rng(3)
    # A learnable pattern: token t+1 = token t + 1 (mod 22), ids 1..22.
    start = rng.integers(1, 23, (32, 1))
    tokens = ((start + np.arange(12)) % 22 + 1).astype("int32")
    model.compile(
        keras.optimizers.Adam(0.02), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    history = model.fit(tokens[:, :-1], tokens[:, 1:], epochs=6, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]

    prompt = tokens[:3, :5]
    cached = model.generate(prompt, max_new_tokens=3)
    recomputed = generation.generate(model, prompt, max_new_tokens=3, use_cache=False)
    np.testing.assert_array_equal(cached, _np(recomputed))

    path = tmp_path / "llama.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        reloaded.predict(tokens, verbose=0), model.predict(tokens, verbose=0), atol=1e-6
    )
    np.testing.assert_array_equal(reloaded.generate(prompt, max_new_tokens=3), cached)
    assert reloaded.get_config()["style"] == "llama"


def test_llama_style_takes_an_explicit_position_table():
    # `style` fills only the options left unset (issue 28): an explicit learned
    # position table replaces RoPE.
    model = _llama(position="learned")
    assert model.embedding.position_embedding is not None
    assert all(layer.self_attention.rotary_embedding is None for layer in model.decoder_layers)

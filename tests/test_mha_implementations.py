"""MultiHeadAttention's memory-efficient (chunked) and fused paths equal the plain one."""

import keras
import numpy as np
import pytest

import keras_attention as ka
from keras_attention import backend as backend_lib
from keras_attention.ops import attention, chunked, flash
from tests.utils import value_and_gradients

RNG = np.random.default_rng(7)


def _outputs_and_grads(implementation, weights, query, value, **call_kwargs):
    layer = ka.MultiHeadAttention(
        num_heads=4, key_dim=8, num_key_value_heads=2, implementation=implementation
    )
    layer(query, value)
    layer.set_weights(weights)
    out = keras.ops.convert_to_numpy(layer(query, value, **call_kwargs))
    _, grads = value_and_gradients(
        lambda: keras.ops.sum(keras.ops.sin(layer(query, value, **call_kwargs))),
        [],
        layer.trainable_variables,
    )
    return [out] + grads


@pytest.mark.parametrize("implementation", ["chunked", "flash", "fused"])
@pytest.mark.parametrize("causal", [False, True])
def test_paths_agree_with_masks_causal_and_gqa(implementation, causal):
    query = RNG.standard_normal((2, 9, 16)).astype("float32")
    value = RNG.standard_normal((2, 9, 12)).astype("float32")
    attention_mask = RNG.random((2, 9, 9)) > 0.3
    attention_mask[0, 2] = False  # a fully masked query row
    reference = ka.MultiHeadAttention(num_heads=4, key_dim=8, num_key_value_heads=2)
    reference(query, value)
    weights = reference.get_weights()
    kwargs = dict(attention_mask=attention_mask, use_causal_mask=causal)
    plain = _outputs_and_grads("plain", weights, query, value, **kwargs)
    other = _outputs_and_grads(implementation, weights, query, value, **kwargs)
    for a, b in zip(plain, other):
        assert np.all(np.isfinite(b))
        np.testing.assert_allclose(b, a, atol=1e-5)


def test_default_switches_to_a_memory_efficient_path_above_threshold(monkeypatch):
    # The flash path where the backend has a kernel for it (TensorFlow), else chunked.
    path = flash if backend_lib.has_flash_attention() else chunked
    used = []
    original = path.attend
    monkeypatch.setattr(path, "attend", lambda *a, **k: used.append(1) or original(*a, **k))
    monkeypatch.setattr(attention, "CHUNKED_THRESHOLD", 1000)
    layer = ka.MultiHeadAttention(num_heads=2, key_dim=4)
    x = RNG.standard_normal((2, 30, 8)).astype("float32")
    out = layer(x, x)
    assert used, "2 * 2 * 30 * 30 scores exceed the threshold: flash/chunked expected"
    _, scores = layer(x, x, return_attention_scores=True)
    assert len(used) == 1, "returning scores needs the plain path"
    forced = ka.MultiHeadAttention(num_heads=2, key_dim=4, implementation="plain")
    forced(x, x)
    forced.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(forced(x, x)), keras.ops.convert_to_numpy(out), atol=1e-5
    )
    assert len(used) == 1


def test_implementation_is_validated_and_serialized():
    with pytest.raises(ValueError, match="implementation"):
        ka.MultiHeadAttention(2, 4, implementation="flashy")
    layer = ka.MultiHeadAttention(2, 4, implementation="chunked")
    clone = ka.MultiHeadAttention.from_config(layer.get_config())
    assert clone.implementation == "chunked"


def test_chunked_trains_in_fit():
    inputs = keras.Input((None, 8))
    x = ka.MultiHeadAttention(2, 4, implementation="chunked")(inputs, inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(x))
    model.compile("adam", "mse")
    data = RNG.standard_normal((16, 12, 8)).astype("float32")
    history = model.fit(data, data[:, 0], epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))

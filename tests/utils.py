"""The shared layer-test helper: every public layer goes through `run_layer_test`."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
from keras import ops


class MaskFrom(keras.layers.Layer):
    """Test-only layer: passes `x` through and attaches `keep` as its Keras mask.

    Unlike `keras.layers.Masking`, the masked positions may hold any values, which
    lets tests check that masked content cannot change the result.
    """

    def call(self, inputs):
        return inputs[0]

    def compute_mask(self, inputs, mask=None):
        return ops.cast(inputs[1], "bool")

    def compute_output_shape(self, input_shape):
        return input_shape[0]


def _flat(outputs):
    return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]


def _symbolic_inputs(arrays, dynamic_axes=()):
    inputs = {}
    for name, array in arrays.items():
        shape = list(array.shape[1:])
        for axis in dynamic_axes:
            if axis - 1 < len(shape) and len(shape) > 1:
                shape[axis - 1] = None
        inputs[name] = keras.Input(shape=tuple(shape), dtype=str(array.dtype), name=name)
    return inputs


def run_layer_test(
    layer_cls,
    init_kwargs,
    inputs,
    call_kwargs=None,
    *,
    tmp_path,
    expected_output_shape=None,
    expected_num_trainable_weights=None,
    masked_inputs=(),
    expect_output_mask=True,
    check_compute_output_shape=True,
    dynamic_axes=(1,),
    atol=1e-6,
):
    """Check the behaviour every layer of the package must have.

    Args:
        layer_cls: the layer class.
        init_kwargs: constructor arguments.
        inputs: dict of call-argument name -> numpy array (the tensor arguments, in
            call order; the first is positional).
        call_kwargs: non-tensor call arguments (e.g. `use_causal_mask=True`).
        tmp_path: folder for the `.keras` file.
        expected_output_shape: the eager shape of the (first) output, if given.
        expected_num_trainable_weights: number of trainable weights, if given.
        masked_inputs: names of inputs that get a Keras mask in the mask check: the
            last two steps of batch element 0 are masked and filled with other values,
            and the outputs at unmasked query positions must not change.
        expect_output_mask: whether the output must carry a Keras mask.
        check_compute_output_shape: compare `compute_output_shape` with eager shapes.
        dynamic_axes: axes (besides batch) left as `None` in the symbolic check.

    Checks: symbolic vs eager output shapes (static and dynamic lengths),
    `compute_output_shape`, `get_config` / `from_config` round trip with JSON-only
    configs, `.keras` save and `keras.saving.load_model` (safe mode) with identical
    outputs, gradients reaching every trainable weight, and masks (propagation and
    invariance to masked content).
    """
    call_kwargs = dict(call_kwargs or {})
    names = list(inputs)
    arrays = [inputs[name] for name in names]

    def call(layer, tensors, **extra):
        return layer(tensors[0], **dict(zip(names[1:], tensors[1:])), **call_kwargs, **extra)

    # Eager call.
    layer = layer_cls(**init_kwargs)
    eager = _flat(call(layer, arrays))
    if expected_output_shape is not None:
        assert tuple(eager[0].shape) == tuple(expected_output_shape)
    if expected_num_trainable_weights is not None:
        assert len(layer.trainable_weights) == expected_num_trainable_weights
    for tensor in eager:
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(tensor)))

    # Symbolic shapes agree with eager shapes, with static and dynamic lengths.
    for axes in ((), tuple(dynamic_axes)):
        symbolic_inputs = _symbolic_inputs(inputs, axes)
        symbolic = _flat(call(layer_cls(**init_kwargs), [symbolic_inputs[n] for n in names]))
        assert len(symbolic) == len(eager)
        for sym, eag in zip(symbolic, eager):
            _assert_shape_matches(sym.shape, eag.shape)

    if check_compute_output_shape and len(eager) == 1:
        shapes = {f"{name}_shape": inputs[name].shape for name in names}
        computed = layer.compute_output_shape(**shapes)
        assert tuple(computed) == tuple(eager[0].shape), (computed, eager[0].shape)

    # Config round trip: JSON only, and from_config rebuilds the same config.
    config = layer.get_config()
    json.dumps(config)
    clone = layer_cls.from_config(config)
    assert clone.get_config() == config

    # .keras save and reload (safe mode) gives identical outputs.
    symbolic_inputs = _symbolic_inputs(inputs, dynamic_axes)
    model_outputs = call(layer_cls(**init_kwargs), [symbolic_inputs[n] for n in names])
    model = keras.Model([symbolic_inputs[n] for n in names], model_outputs)
    before = _flat(model.predict(arrays, verbose=0))
    path = os.path.join(str(tmp_path), f"{layer_cls.__name__}.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    after = _flat(reloaded.predict(arrays, verbose=0))
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, atol=atol, rtol=0)

    # Gradients reach every trainable weight (or, for a layer without weights, the
    # floating-point inputs).
    _check_gradients(layer, arrays, lambda *tensors: call(layer, tensors, training=True))

    if masked_inputs:
        _check_masks(
            layer_cls,
            init_kwargs,
            inputs,
            names,
            call_kwargs,
            masked_inputs,
            expect_output_mask,
            atol,
        )
    return layer, eager


def _assert_shape_matches(symbolic_shape, eager_shape):
    assert len(symbolic_shape) == len(eager_shape), (symbolic_shape, eager_shape)
    for sym, eag in zip(symbolic_shape, eager_shape):
        assert sym is None or sym == eag, (symbolic_shape, eager_shape)


def _check_gradients(layer, arrays, forward):
    rng = np.random.default_rng(0)
    floating = [i for i, a in enumerate(arrays) if np.issubdtype(a.dtype, np.floating)]
    projections = {}

    def loss(*float_inputs):
        tensors = list(arrays)
        for i, tensor in zip(floating, float_inputs):
            tensors[i] = tensor
        outputs = _flat(forward(*tensors))
        # A random projection of the outputs, so no gradient cancels by symmetry.
        total = 0.0
        for index, out in enumerate(outputs):
            if index not in projections:
                projections[index] = ops.convert_to_tensor(
                    rng.standard_normal(tuple(out.shape)).astype("float32")
                )
            total = total + ops.sum(ops.cast(out, "float32") * projections[index])
        return total

    float_arrays = [arrays[i] for i in floating]
    if layer.trainable_weights:
        names = [w.path for w in layer.trainable_weights]
        _, grads = value_and_gradients(loss, float_arrays, layer.trainable_weights)
        grads = grads[len(float_arrays) :]
    else:
        names = [f"input {i}" for i in floating]
        _, grads = value_and_gradients(loss, float_arrays)
    assert names, "nothing to differentiate"
    for name, grad in zip(names, grads):
        assert grad is not None, f"no gradient reaches {name}"
        assert np.all(np.isfinite(grad)), f"non-finite gradient for {name}"
        assert np.any(grad != 0), f"zero gradient for {name}"


def value_and_gradients(fn, inputs, variables=()):
    """`fn(*inputs)` (a scalar) and its gradients, on every Keras backend.

    The one place in the tests that differentiates: `jax.value_and_grad` on JAX
    (the variables enter through a `keras.StatelessScope`), `torch.autograd.grad`
    on PyTorch and `tf.GradientTape` on TensorFlow.

    Args:
        fn: function of the input tensors returning a scalar tensor; it may read
            `variables` (e.g. call a layer that owns them).
        inputs: numpy arrays (or tensors) differentiated as `fn`'s arguments.
        variables: `keras.Variable`s differentiated too.

    Returns:
        `(value, grads)`: `value` a float, `grads` a list of numpy arrays, one per
        input then one per variable, `None` where the result does not depend on it.
    """
    backend = keras.backend.backend()
    inputs = [ops.convert_to_tensor(x) for x in inputs]
    variables = list(variables)
    if backend == "jax":
        import jax

        def pure(input_values, variable_values):
            with keras.StatelessScope(state_mapping=list(zip(variables, variable_values))):
                return fn(*input_values)

        value, (input_grads, variable_grads) = jax.value_and_grad(pure, argnums=(0, 1))(
            inputs, [v.value for v in variables]
        )
        grads = list(input_grads) + list(variable_grads)
    elif backend == "torch":
        import torch

        inputs = [x.detach().requires_grad_(True) for x in inputs]
        value = fn(*inputs)
        targets = inputs + [v.value for v in variables]
        grads = torch.autograd.grad(value, targets, allow_unused=True)
    elif backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(inputs)
            value = fn(*inputs)
        grads = tape.gradient(value, inputs + [v.value for v in variables])
    else:
        raise ValueError(f"Unsupported backend: {backend!r}")
    grads = [None if g is None else ops.convert_to_numpy(ops.convert_to_tensor(g)) for g in grads]
    return float(ops.convert_to_numpy(value)), grads


def _check_masks(
    layer_cls, init_kwargs, inputs, names, call_kwargs, masked_inputs, expect_output_mask, atol
):
    """Masked positions may hold anything: outputs at unmasked positions stay the same,
    and the output carries the query's mask on."""
    data, masks = {}, {}
    for name in names:
        data[name] = inputs[name]
        if name in masked_inputs:
            keep = np.ones(inputs[name].shape[:2], dtype=bool)
            keep[0, -2:] = False
            masks[name] = keep
    layer = layer_cls(**init_kwargs)
    sym = _symbolic_inputs(inputs)
    mask_sym = {
        n: keras.Input(shape=masks[n].shape[1:], dtype="bool", name=f"{n}_keep") for n in masks
    }
    tensors = [MaskFrom()([sym[n], mask_sym[n]]) if n in masks else sym[n] for n in names]
    outputs = layer(tensors[0], **dict(zip(names[1:], tensors[1:])), **call_kwargs)
    first = _flat(outputs)[0]
    if expect_output_mask:
        assert getattr(first, "_keras_mask", None) is not None, "output mask was dropped"
    model = keras.Model([sym[n] for n in names] + [mask_sym[n] for n in masks], outputs)

    def run(fill):
        feed = []
        for n in names:
            array = data[n].copy()
            if n in masks and np.issubdtype(array.dtype, np.floating):
                array[~masks[n]] = fill
            feed.append(array)
        return _flat(model.predict(feed + [masks[n] for n in masks], verbose=0))[0]

    a, b = run(0.0), run(1e3)
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))
    first_name = names[0]
    if first_name in masks and a.ndim >= 2 and a.shape[1] == masks[first_name].shape[1]:
        keep = masks[first_name]
        np.testing.assert_allclose(a[keep], b[keep], atol=atol * 10, rtol=1e-5)
    else:
        np.testing.assert_allclose(a, b, atol=atol * 10, rtol=1e-5)


def run_script_without_package(script, *args, cwd):
    """Run `python -c script *args` in `cwd`, where this package cannot be imported.

    The child gets the environment without `PYTHONPATH` (and `cwd` is not the
    repository root), so an exported artifact is checked in its own runtime only.
    The script must print, as its last line, the JSON list of the forbidden modules
    it found imported; the run must succeed and that list be empty.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def to_numpy(x, dtype=None):
    """A tensor of any backend (or an array) as a numpy array, cast to `dtype` if given
    (`"float64"` for comparisons against a float64 reference)."""
    array = keras.ops.convert_to_numpy(x)
    return array if dtype is None else array.astype(dtype)


def normal_sampler(rng):
    """`sample(*shape, scale=1.0)`: float32 standard-normal draws times `scale`, from
    one stream (`rng`, a `numpy.random.Generator` or a seed) shared by a test module."""
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)

    def sample(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype("float32")

    return sample


def random_normal(*shape, seed=0):
    """float32 standard-normal draws of `shape` from a fresh stream seeded by `seed`."""
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


# A tiny language model's settings (vocabulary 13, two layers of width 16) for the
# generation tests; each file adds its `sequence_length`.
TINY_LM = dict(
    vocabulary_size=13,
    num_layers=2,
    embedding_dim=16,
    num_heads=2,
    intermediate_dim=24,
    dropout=0.0,
)

"""The backend-specific part of generation: compiling the decoding function and its
random numbers. `keras_attention.models` is `keras.ops` only and calls these.

- TensorFlow: `tf.function`, with the token loop under XLA (`jit_compile=True`);
  variables are read in the graph.
- JAX: `jax.jit` of a pure function: the model's variables are passed in and mapped
  onto the layers with `keras.StatelessScope`, as `keras_hub` does.
- PyTorch: no compiler; the loop runs as a Python loop under `torch.no_grad()`,
  its one-token step traced once per shape (`make_fx`) and run as a graph
  (:mod:`keras_attention.backend.torch_step`; `docs/performance.md` says why and
  what it gains).
"""

import keras
from keras import ops

BACKEND = keras.backend.backend()


# TensorFlow: XLA compiles only the token loop; the prefill (a few large matmuls, run
# once) stays a plain graph, which halves the compile time of the first call
# (measured with benchmarks/bench_generate.py against compiling the whole call).


def compile_function(fn, variables):
    """`fn(*tensors)` compiled once per input signature; the traces are cached by the
    backend (`tf.function` / `jax.jit`) and reused for calls of the same shapes."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        # A plain graph; `while_loop(..., mode="compiled")` puts the loop under XLA.
        return tf.function(fn, autograph=False)
    if BACKEND == "jax":
        import jax

        variables = list(variables)

        def pure(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return fn(*args)

        jitted = jax.jit(pure)

        def run(*args):
            return jitted([v.value for v in variables], *args)

        return run
    return run_eagerly(fn)


def run_eagerly(fn):
    """`fn` as is (for PyTorch without autograd bookkeeping)."""
    if BACKEND == "torch":
        import torch

        def run(*args):
            with torch.no_grad():
                return fn(*args)

        return run
    return fn


def decode_step(call, variables, store, mode):
    """The token loop's step `call(tokens, caches, index, key_mask, encoded) ->
    (logits, caches)`: on PyTorch in `"compiled"` mode traced once per shape into a
    graph kept in the dict `store` (`torch_step.TracedStep`), else `call` itself
    (TensorFlow and JAX compile the whole loop)."""
    if BACKEND != "torch" or mode != "compiled":
        return call
    from keras_attention.backend import torch_step

    return torch_step.TracedStep(call, variables, store)


def while_loop(cond, body, loop_vars, mode):
    """The token loop. `mode`: `"compiled"` (`keras.ops.while_loop`, on TensorFlow
    compiled by XLA), `"graph"` (`keras.ops.while_loop` without XLA, for exported
    SavedModels) or `"eager"` (a Python loop: every step runs op by op and can be
    stepped through)."""
    if mode != "eager":
        if BACKEND == "tensorflow" and mode == "compiled":
            import tensorflow as tf

            if tf.inside_function():
                loop = tf.function(
                    lambda loop_vars: ops.while_loop(cond, body, loop_vars),
                    jit_compile=True,
                    autograph=False,
                )
                return loop(loop_vars)
        return ops.while_loop(cond, body, loop_vars)
    while bool(ops.convert_to_numpy(cond(*loop_vars))):
        loop_vars = body(*loop_vars)
    return loop_vars


def cond(pred, true_fn, false_fn, mode):
    """`true_fn()` if the boolean scalar `pred` else `false_fn()`: a conditional of
    the compiled loop (`keras.ops.cond`), or, in `"eager"` mode, a Python `if` that
    runs only the branch taken."""
    if mode == "eager":
        return true_fn() if bool(ops.convert_to_numpy(pred)) else false_fn()
    return ops.cond(pred, true_fn, false_fn)


def uniform(shape, seed, step):
    """Uniform floats in `[0, 1)` from a `(2,)` int32 `seed` tensor and the int32
    `step` tensor: a new, reproducible stream for every step of every seed."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        if tf.inside_function():
            return _tf_uniform(shape, seed, step)
        # XLA and the plain kernels draw different numbers from the same seed; the
        # compiled loop runs under XLA, so the eager loop draws under XLA too.
        global _tf_uniform_xla
        if _tf_uniform_xla is None:
            _tf_uniform_xla = tf.function(_tf_uniform, jit_compile=True, autograph=False)
        return _tf_uniform_xla(tuple(shape), seed, step)
    if BACKEND == "jax":
        import jax

        key = jax.random.PRNGKey(seed[0])
        key = jax.random.fold_in(jax.random.fold_in(key, seed[1]), step)
        return jax.random.uniform(key, shape)
    import torch

    values = tuple(int(v) for v in ops.convert_to_numpy(seed)) + (int(step),)
    generator = torch.Generator().manual_seed(hash(values) & (2**63 - 1))
    noise = torch.rand(tuple(shape), generator=generator)
    return ops.convert_to_tensor(noise)


_tf_uniform_xla = None


def _tf_uniform(shape, seed, step):
    import tensorflow as tf

    key = tf.stack([seed[0], seed[1] + tf.cast(step, seed.dtype)])
    return tf.random.stateless_uniform(shape, seed=key)

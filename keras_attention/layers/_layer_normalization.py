"""`keras.layers.LayerNormalization` that PyTorch's ONNX exporter can write."""

import keras
from keras import ops

from keras_attention import backend
from keras_attention.layers._common import NothingToQuantize


@keras.saving.register_keras_serializable(package="keras_attention", name="_LayerNormalization")
class LayerNormalization(NothingToQuantize, keras.layers.LayerNormalization):
    """Keras' `LayerNormalization` (same arguments, config, `gamma`/`beta` weights and
    values), computed by :func:`keras_attention.backend.layer_normalization`.

    Keras' layer reads the normalized sizes from the inputs' shape at every call; on
    PyTorch, TorchScript's ONNX exporter (Keras' `format="onnx"` with dynamic sizes)
    cannot write those traced sizes. This layer keeps the sizes it was built with,
    so the blocks of this package export to ONNX on PyTorch too. Weights are created
    by Keras' `build`, so `.keras` files saved with Keras' layer inside the blocks
    load unchanged.

    Example:
    >>> import numpy as np
    >>> layer = LayerNormalization(epsilon=1e-6)
    >>> y = layer(np.array([[1.0, 3.0]], "float32"))
    >>> [round(float(v), 4) for v in keras.ops.convert_to_numpy(y)[0]]
    [-1.0, 1.0]
    """

    def build(self, input_shape):
        super().build(input_shape)  # sorts `self.axis` into a list
        self._normalized_shape = tuple(input_shape[axis] for axis in self.axis)

    def call(self, inputs):
        if self.rms_scaling:  # Keras' deprecated option: Keras' own code
            return super().call(inputs)
        outputs = backend.layer_normalization(
            inputs, self.gamma, self.beta, self.axis, self.epsilon, self._normalized_shape
        )
        return ops.cast(outputs, self.compute_dtype)

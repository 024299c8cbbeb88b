import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402

if keras.backend.backend() == "torch":
    import torch

    _tensor_array = torch.Tensor.__array__

    def _detached_array(self, *args, **kwargs):
        """numpy views of PyTorch tensors that require grad, for numpy assertions.

        Test-only: a layer's output requires grad on PyTorch and `np.asarray` of it
        raises; tests compare values, so they read the detached tensor, as
        `keras.ops.convert_to_numpy` does. The package itself never relies on this.
        """
        tensor = self.detach().cpu()
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: read it as float32
            tensor = tensor.float()
        return _tensor_array(tensor, *args, **kwargs)

    torch.Tensor.__array__ = _detached_array


def pytest_collection_modifyitems(config, items):
    """Skip tests marked `tensorflow_only` on the other backends, saying why."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return
    for item in items:
        marker = item.get_closest_marker("tensorflow_only")
        if marker is not None:
            reason = marker.args[0] if marker.args else "needs TensorFlow"
            item.add_marker(
                pytest.mark.skip(reason=f"TensorFlow only ({reason}); backend is {backend}")
            )


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Each test starts from a known seed and the float32 policy."""
    keras.utils.set_random_seed(1234)
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()

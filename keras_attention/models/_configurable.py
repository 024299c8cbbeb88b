"""`Configurable`: the base of the small settings objects (samplers, logits
processors) whose `get_config()` is their whole identity."""

import json


class Configurable:
    """An object defined by its `get_config()`: rebuilt by `from_config`, shown as
    `Name(arg=value, ...)`, equal to another of its class with the same config and
    hashed by it (the compiled-generation cache keys on samplers and processors).

    Subclasses return their constructor arguments (JSON values) from `get_config()`.

    Example:
    >>> class Scale(Configurable):
    ...     def __init__(self, factor=2.0):
    ...         self.factor = factor
    ...     def get_config(self):
    ...         return {"factor": self.factor}
    >>> Scale(3.0), Scale(3.0) == Scale.from_config({"factor": 3.0}), Scale() == Scale(3.0)
    (Scale(factor=3.0), True, False)
    """

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, json.dumps(self.get_config(), sort_keys=True)))

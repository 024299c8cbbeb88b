"""Conversions from other libraries' models into this package's model classes.

`keras_attention.convert.keras_hub`: keras-hub backbones and task models to
:class:`~keras_attention.models.CausalLanguageModel` and
:class:`~keras_attention.models.Seq2SeqTransformer` (config map and weight map per
family), through :func:`from_keras_hub` (also the models' `from_keras_hub`
classmethods, which this module registers). Only the package `__init__` imports
this, and keras-hub is imported only inside the functions that need it.
"""

from keras_attention.convert.keras_hub._api import from_keras_hub

__all__ = ["from_keras_hub"]

"""Conversions from other libraries' models into this package's model classes.

`keras_attention.convert.keras_hub`: keras-hub backbones and task models to
:class:`~keras_attention.models.CausalLanguageModel` and
:class:`~keras_attention.models.Seq2SeqTransformer` (config map and weight map per
family). Nothing here is imported by the rest of the package, and keras-hub is
imported only inside the functions that need it.
"""

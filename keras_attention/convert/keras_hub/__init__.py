"""keras-hub backbones -> this package's model classes, one module a family.

Each family module has `config(backbone)` (the keyword arguments of this package's
model class that rebuild the backbone's architecture) and `weights(backbone, model)`
(copies every weight of the backbone into the model, or raises a `ValueError`
naming the weights it could not place). keras-hub is imported lazily: it is a test
and benchmark dependency, never a runtime one.

Families: `bart` (`BartBackbone` -> `Seq2SeqTransformer`), `t5` (`T5Backbone` ->
`Seq2SeqTransformer`).
"""

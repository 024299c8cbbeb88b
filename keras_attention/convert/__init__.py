"""Weight transplants from other libraries' models into this package's model classes
(`keras_attention.convert.keras_hub`: keras-hub's backbones, one module a family).

Nothing here is imported by the rest of the package, and the source library is
imported only inside the functions that need it."""

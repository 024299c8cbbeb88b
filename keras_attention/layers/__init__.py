"""Keras layers of the package, one module per family."""

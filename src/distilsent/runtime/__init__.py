"""The runtime: backends, the ONNX graph and its cache, long-text reading, the ``Classifier`` facade,
embeddings and export.

Turns texts into scores with a loaded model. May import :mod:`distilsent.model` and the foundation
(:mod:`distilsent.errors`, :mod:`distilsent.progress`); never data, training, serving, bulk, insight or the
command line.
"""

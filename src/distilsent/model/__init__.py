"""The model: configuration, tokenizer, the PyTorch network, checkpoints, conversion, LoRA and model cards.

Owns what a model *is* and how its directory is read and written. Imports only :mod:`distilsent.errors` and
:mod:`distilsent.progress` besides its own modules; knows nothing of the runtime, training or serving. PyTorch
is imported only by :mod:`.distilbert` and :mod:`.lora` (and lazily, where weights are loaded).
"""

import importlib


def __getattr__(name: str):
    # The flat layout's ``distilsent.model`` module was the network: its names stay importable from here,
    # without importing torch for users of the other modules of this package.
    if not name.startswith("_") and name != "distilbert":
        network = importlib.import_module(f"{__name__}.distilbert")
        if hasattr(network, name):
            return getattr(network, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

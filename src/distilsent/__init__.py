"""distilsent: English sentiment classification with DistilBERT, exact, fast and offline."""

import sys

from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DistilsentError,
    InputError,
    MissingDependencyError,
    QueueFullError,
    ShuttingDownError,
)
from .model.config import DistilBertConfig
from .model.tokenizer import Tokenizer
from .moved import MovedModules
from .runtime.classifier import Classifier
from .runtime.long_text import Reading

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "Classifier",
    "ConfigError",
    "DataError",
    "DistilBertConfig",
    "DistilsentError",
    "InputError",
    "MissingDependencyError",
    "QueueFullError",
    "Reading",
    "ShuttingDownError",
    "Tokenizer",
    "__version__",
]

if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(MovedModules())

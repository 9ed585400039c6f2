"""distilsent: English sentiment classification with DistilBERT, exact, fast and offline."""

from .classifier import Classifier
from .config import DistilBertConfig
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
from .tokenizer import Tokenizer

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
    "ShuttingDownError",
    "Tokenizer",
    "__version__",
]

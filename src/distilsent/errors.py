"""Every error distilsent raises on purpose, in one place.

Callers catch :class:`DistilsentError` to handle anything the library reports; the command line turns
it into a one-line message and a non-zero exit code.
"""


class DistilsentError(Exception):
    """Base class of every error raised by distilsent."""


class ConfigError(DistilsentError, ValueError):
    """A model configuration is missing, malformed or inconsistent."""


class CheckpointError(DistilsentError):
    """A checkpoint is missing, corrupt, unsafe or does not match its configuration."""


class InputError(DistilsentError, ValueError):
    """Input text or data is of the wrong type or malformed."""


class DataError(InputError):
    """A labelled data file has a malformed row; the message names the file and line."""


class WindowLimitError(InputError):
    """Texts would be read as more windows than a caller allows (``Classifier.prepare(..., window_limit=)``),
    found from their token counts before any window is built; ``windows`` and ``limit`` say by how much."""

    def __init__(self, windows: int, limit: int):
        super().__init__(f"the texts make {windows} windows, over the limit of {limit}")
        self.windows, self.limit = windows, limit


class MissingDependencyError(DistilsentError, ImportError):
    """An optional dependency is needed; the message says what to install."""


class QueueFullError(DistilsentError):
    """The service's batcher holds as many texts as it may; the caller should retry later."""


class ShuttingDownError(DistilsentError):
    """The service's batcher is closing and accepts no new work."""


class DistilsentWarning(UserWarning):
    """Something distilsent did differently from what was asked, and why; the command line prints it as one
    ``distilsent: warning: ...`` line."""


class BatcherFailure(DistilsentError):
    """The service's batcher failed outside any one request's texts: the server is at fault, not the request."""

"""The process's console: lines of stdin, warnings as one line on stderr, SIGTERM as an interrupt."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator

from ..data.tables import looks_binary, not_text, peek_head
from ..errors import DistilsentWarning


def stdin_lines() -> Iterator[str]:
    """Lines of stdin as text; invalid UTF-8 is replaced (U+FFFD) and reported with its line number.
    Binary data (a NUL byte, or mostly invalid UTF-8, at the start) is refused before any line is read."""
    if looks_binary(peek_head(sys.stdin.buffer)):
        raise not_text("-")
    for number, raw in enumerate(sys.stdin.buffer, start=1):
        raw = raw.rstrip(b"\n").rstrip(b"\r")
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            print(f"distilsent: warning: line {number}: invalid UTF-8 replaced with U+FFFD", file=sys.stderr)
            yield raw.decode("utf-8", errors="replace")


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """distilsent's own warnings as one ``distilsent: warning: ...`` line; others as Python shows them."""
    if issubclass(category, DistilsentWarning):
        text = f"distilsent: warning: {message}\n"
    else:
        text = warnings.formatwarning(message, category, filename, lineno, line)
    (file or sys.stderr).write(text)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that a long verb stops as on Ctrl-C (and says what is kept)."""


def terminate(signum, frame) -> None:
    raise Terminated

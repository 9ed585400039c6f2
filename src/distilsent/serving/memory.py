"""Memory given back after bursts (:class:`MemoryRelease`).

glibc's malloc keeps what a burst freed in its arenas, one per thread that allocated (the event loop, the
inference thread, the tokenizer and explanation threads), so the process stays near its peak: a request of 96
texts of 512 tokens, 1 MiB texts or a run of explanations leave tens to hundreds of MB resident for good.
``malloc_trim(0)`` gives every arena's free pages back to the system. The service calls it on a thread, once
no heavy work (a batch of many tokens, a large tokenization, an explanation) has ended for ``QUIET_S``: not
during a burst, whose memory would be asked for again at once, and not after ordinary small requests, which
keep no more than their working set.

Chosen by measurement with ``benchmarks/load.py --scenarios memory`` (the default model on 2 shared cores; a
burst of each kind in turn, RSS 10 s after it against the warmed-up idle RSS): 1 MiB texts, 96 texts of 512
tokens, 20 explanations of 256 words. Without a release: +32, +17, +120 MB. With MALLOC_ARENA_MAX=2: +64, +90,
+68 MB (fewer arenas, but what they hold stays; it must also be set before the process starts). With this
trim: -41, -51, -31 MB (below idle: the warm-up's leftovers go too). jemalloc would need LD_PRELOAD and a
library that is not a dependency. Where malloc is not glibc's, nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger("distilsent.serving.memory")

QUIET_S = 1.0  # without heavy work for this long, a burst is over
# A batch of this many padded tokens or more is heavy: its activations are tens of MB; smaller batches are
# what steady traffic keeps allocating anyway.
HEAVY_BATCH_TOKENS = 2048


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class MemoryRelease:
    """``heavy()`` after heavy work ends; ``QUIET_S`` after the last one, free memory goes back to the system."""

    def __init__(self, trim: Callable[[int], int] | None = None, quiet: float = QUIET_S):
        self._trim = trim
        self.quiet = quiet
        self._timer: asyncio.TimerHandle | None = None
        self.releases = 0  # trims run

    def heavy(self) -> None:
        """Heavy work just ended (on the event loop): release what it freed once none has followed for a while."""
        if self._trim is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self.quiet, self._release)

    def batch(self, tokens: int) -> None:
        """A batch of ``tokens`` padded tokens ran."""
        if tokens >= HEAVY_BATCH_TOKENS:
            self.heavy()

    def _release(self) -> None:
        self._timer = None
        self.releases += 1
        # On a thread: trimming a large heap takes milliseconds, which the event loop should not wait for.
        asyncio.get_running_loop().run_in_executor(None, self._trim, 0)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

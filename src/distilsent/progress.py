"""Progress of long work (evaluation, training, export parity, ...) on stderr, in one form for every verb.

At a terminal it is a tqdm bar with rate and ETA (when tqdm is installed). Anywhere else (a log file, a
CI job, a pipe) a bar would fill the log with carriage returns, so it is a plain line at most every
``interval`` seconds and one when the work ends, e.g.::

    eval: 1200/1821 texts (66%) 310.2 texts/s, ETA 0:00:02
    eval: 1821/1821 texts (100%) 311.0 texts/s in 0:00:05
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from typing import TextIO

PLAIN_INTERVAL_SECONDS = 10.0  # a line every 10 s keeps an hour-long run to a few hundred lines of log


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class Progress:
    """``total`` units of work named ``desc``; ``update(n)`` as they are done, ``close()`` (or ``with``) at the end.

    ``enabled=False`` makes every method a no-op, so callers need no branches. ``postfix`` values given to
    :meth:`update` (a loss, a learning rate) are shown after the rate.
    """

    def __init__(
        self,
        total: int,
        *,
        desc: str,
        unit: str = "it",
        initial: int = 0,
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float = PLAIN_INTERVAL_SECONDS,
    ):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.stream = stream or sys.stderr
        self.interval = interval
        self.done = self.initial = initial
        self.postfix: dict[str, str] = {}
        self.start = self.last_line = time.perf_counter()
        self.bar = None
        self.closed = False
        if enabled and self.stream.isatty():
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm is an extra; plain lines work everywhere
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                                file=self.stream)

    def update(self, n: int = 1, **postfix) -> None:
        if not self.enabled:
            return
        self.done += n
        self.postfix = {k: str(v) for k, v in postfix.items()}
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(self.postfix, refresh=False)
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last_line >= self.interval:
            self.last_line = now
            self._line(now, final=False)

    def write(self, text: str) -> None:
        """A message that does not break the bar (an evaluation result, a warning)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if not self.enabled or self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        else:
            self._line(time.perf_counter(), final=True)

    def _line(self, now: float, final: bool) -> None:
        elapsed = now - self.start
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.done}/{self.total} {self.unit}s"]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        parts.append(f"{rate:.1f} {self.unit}s/s")
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        if final:
            parts.append(f"in {_clock(elapsed)}")
        elif rate > 0 and self.total:
            parts.append(f"ETA {_clock((self.total - self.done) / rate)}")
        print(" ".join(parts[:1]) + " " + ", ".join(parts[1:]), file=self.stream, flush=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ProgressBar:
    """A progress observer, ``observer(done, total)``, drawn as a :class:`Progress` bar: the bar is made at
    the first call, when the total is known (an inference reports ``(0, total)`` before its first batch),
    and closed on leaving the ``with`` block. Counts that start again from 0 belong to a further run and
    add to the bar; ``total`` (when given) is the bar's total over every run."""

    def __init__(self, desc: str, *, unit: str = "it", enabled: bool = True, total: int | None = None,
                 stream: TextIO | None = None):
        self.desc, self.unit, self.enabled, self.total, self.stream = desc, unit, enabled, total, stream
        self.bar: Progress | None = None
        self.last = 0  # the current run's count

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = Progress(self.total if self.total is not None else total, desc=self.desc, unit=self.unit,
                                stream=self.stream)
        if done < self.last:  # a further run: its counts add to the bar
            self.last = 0
        if done > self.last:
            self.bar.update(done - self.last)
            self.last = done

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

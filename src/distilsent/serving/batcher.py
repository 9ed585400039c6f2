"""Dynamic batching: texts of concurrent requests are merged into batches and run off the event loop.

Requests submit token id lists and await their logits. One worker task waits for work, lets more
arrive for at most ``max_wait_ms`` (or until a batch's worth of tokens is queued), then takes a round
of at most a batch's worth of tokens, one text from each waiting request in turn, so that a small
request is never stuck behind a big one for longer than a round; a round's batches run shortest first.
The round is cut into batches by ``Classifier.plan`` (the planner offline use has too) and run back to
back by ``Classifier.run_batch`` on a single inference thread; the backend uses every core it was
given, so running two batches at once would only make them compete. Meanwhile the event loop keeps
accepting and tokenizing requests.

Admission is bounded by texts and by tokens (``max_queue_texts``, ``max_queue_tokens``): past them
``submit`` raises :class:`QueueFullError` instead of letting memory grow.

Nothing can strand a request: a request whose caller goes away leaves the queue at once; a batch that
fails fails only the requests whose texts make it fail; anything else that goes wrong in a round fails
that round's requests with :class:`BatcherFailure` and the worker goes on; if the worker itself ends
(a bug outside any round, or killed), every request in its hands fails with :class:`BatcherFailure`, the
reason is logged and a new worker starts (:attr:`Batcher.restarts` counts them; the service's ``/health``
reports it). A worker that keeps dying at once is restarted after a growing delay, up to 5 s, during
which :attr:`Batcher.alive` is false.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..errors import BatcherFailure, QueueFullError, ShuttingDownError
from ..runtime.classifier import Classifier
from .settings import DEFAULTS, ServiceSettings

log = logging.getLogger("distilsent.serving.batcher")

# Tokens a round may take, in batches' worth. A request arriving behind a big one waits for the round
# being computed, then runs in the next. Measured with benchmarks/load.py (96 texts of 512 tokens, then
# one word): with 2 batches per round run longest first the word took 6.0 s (the big request 9.8 s);
# with 1, shortest first, 1.2 s (the big request 11.9 s, on a busy machine).
ROUND_BATCHES = 1

# A worker that dies within this many seconds of starting is restarted after a delay that doubles each
# time (0.1 s up to RESTART_DELAY_MAX_S), so a fault that recurs at once costs a log line per delay, not a busy
# loop; the first restart, and any after a worker that lived longer, are immediate.
QUICK_DEATH_S = 1.0
RESTART_DELAY_MAX_S = 5.0

# texts in the batch, padded tokens, seconds each text waited in the queue, seconds of inference
BatchObserver = Callable[[int, int, Sequence[float], float], None]


@dataclass(eq=False)
class _Job:
    """One request: its texts' ids and the future that receives their logits in input order."""

    sequences: list[list[int]]
    future: asyncio.Future
    logits: np.ndarray
    enqueued: float = field(default_factory=time.perf_counter)
    next: int = 0  # first text not yet taken into a round
    released: list[bool] = field(default_factory=list)  # per text: delivered or dropped, admission given back

    def __post_init__(self) -> None:
        self.released = [False] * len(self.sequences)


class Batcher:
    def __init__(
        self, classifier: Classifier, settings: ServiceSettings = DEFAULTS, on_batch: BatchObserver | None = None
    ):
        self.classifier = classifier
        self.max_batch_tokens = settings.max_batch_tokens
        self.max_batch_size = settings.max_batch_size
        self.max_wait = settings.max_wait_ms / 1000
        self.max_queue_texts = settings.max_queue_texts
        self.max_queue_tokens = settings.max_queue_tokens
        self._on_batch = on_batch or (lambda *_: None)
        self._jobs: list[_Job] = []  # jobs with texts not yet taken, in arrival order
        self._queued_tokens = 0  # tokens of the texts not yet taken
        self.admitted = 0  # texts queued or being computed
        self.admitted_tokens = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distilsent-inference")
        self._worker: asyncio.Task | None = None
        self._started = 0.0  # when the current worker started
        self._restart_delay = 0.0
        self._restart: asyncio.Handle | None = None
        self.restarts = 0  # workers started after one ended unasked
        self.failure: str | None = None  # why the last worker ended unasked

    def start(self) -> None:
        self._restart = None
        if self._closing:
            return
        self._started = time.perf_counter()
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="distilsent-batcher")
        self._worker.add_done_callback(self._worker_ended)

    @property
    def alive(self) -> bool:
        return self._worker is not None and not self._worker.done()

    async def submit(self, sequences: list[list[int]]) -> np.ndarray:
        """Logits (n, labels) for the texts' token ids, in their order. Cancelling the call drops the
        texts not yet computed."""
        if self._closing:
            raise ShuttingDownError("the server is shutting down")
        if not self.alive:
            raise BatcherFailure(self.failure or "the batcher is not running")
        tokens = sum(len(s) for s in sequences)
        if (self.admitted + len(sequences) > self.max_queue_texts
                or self.admitted_tokens + tokens > self.max_queue_tokens):
            raise QueueFullError(
                f"queue full ({self.admitted} texts, {self.admitted_tokens} tokens admitted; limits "
                f"{self.max_queue_texts} texts, {self.max_queue_tokens} tokens); retry later"
            )
        job = _Job(
            sequences,
            asyncio.get_running_loop().create_future(),
            np.empty((len(sequences), self.classifier.config.num_labels), dtype=np.float32),
        )
        if not sequences:
            return job.logits
        self.admitted += len(sequences)
        self.admitted_tokens += tokens
        self._jobs.append(job)
        self._queued_tokens += tokens
        self._wakeup.set()
        try:
            # shield: the future is the batcher's; a caller that goes away is handled below
            return await asyncio.shield(job.future)
        finally:
            if not job.future.done():  # the caller went away: its texts not yet computed are dropped
                job.future.cancel()
                self._unqueue(job)

    def _unqueue(self, job: _Job) -> None:
        """Forget the texts of ``job`` not yet taken into a round (those in a round end with it)."""
        if job in self._jobs:
            self._jobs.remove(job)
            self._queued_tokens -= sum(len(s) for s in job.sequences[job.next :])
            for i in range(job.next, len(job.sequences)):
                self._release(job, i)

    def _release(self, job: _Job, i: int) -> None:
        """Give back the admission of text ``i`` of ``job``, once, whichever way it ended."""
        if not job.released[i]:
            job.released[i] = True
            self.admitted -= 1
            self.admitted_tokens -= len(job.sequences[i])

    async def close(self, timeout: float | None = None) -> None:
        """Stop accepting work and finish what is admitted, for at most ``timeout`` seconds; then fail
        whatever is left with :class:`ShuttingDownError` and stop the worker."""
        self._closing = True
        self._wakeup.set()
        if self._restart is not None:
            self._restart.cancel()
        if self._worker is not None and not self._worker.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), timeout)
            except asyncio.TimeoutError:
                self._worker.cancel()
                try:
                    await self._worker
                except asyncio.CancelledError:
                    pass
        # A batch already on the inference thread cannot be interrupted; do not wait for it.
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _worker_ended(self, worker: asyncio.Task) -> None:
        if worker.cancelled():
            reason = "the batcher was stopped"
        elif worker.exception() is not None:
            reason = f"the batcher failed: {worker.exception()!r}"
        else:
            return  # closed cleanly: nothing is left
        error = ShuttingDownError("the server is shutting down") if self._closing else BatcherFailure(reason)
        for job in list(self._jobs):
            self._fail(job, error)
        if self._closing:
            return
        self.failure = reason
        quick = time.perf_counter() - self._started < QUICK_DEATH_S
        if quick and self.restarts:
            self._restart_delay = min(max(2 * self._restart_delay, 0.1), RESTART_DELAY_MAX_S)
        else:
            self._restart_delay = 0.0
        self.restarts += 1
        log.error("%s; restarting it in %.1f s (restart %d)", reason, self._restart_delay, self.restarts,
                  exc_info=None if worker.cancelled() else worker.exception())
        self._restart = asyncio.get_running_loop().call_later(self._restart_delay, self.start)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._jobs:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._gather()
            taken = self._take()
            try:
                await loop.run_in_executor(self._executor, self._compute, taken, loop)
            except BaseException as error:  # outside any one batch (planning, the thread): the server's fault
                if isinstance(error, asyncio.CancelledError):
                    failure: Exception = (ShuttingDownError("the server is shutting down") if self._closing
                                          else BatcherFailure("the batcher was stopped"))
                else:
                    log.exception("a round of batches failed")
                    failure = BatcherFailure(f"inference failed: {error!r}")
                for job, _ in taken:
                    self._fail(job, failure)
                if not isinstance(error, Exception):
                    raise
            finally:
                # Texts of this round that were not delivered (their caller went away, or they failed)
                # give their admission back now.
                for job, i in taken:
                    self._release(job, i)

    async def _gather(self) -> None:
        """Let more texts join until the oldest has waited ``max_wait`` or a full batch is queued."""
        deadline = self._jobs[0].enqueued + self.max_wait
        while not self._closing and self._queued_tokens < self.max_batch_tokens:
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), left)
            except asyncio.TimeoutError:
                return

    def _take(self) -> list[tuple[_Job, int]]:
        """A round: one text from each waiting job in turn, up to ``ROUND_BATCHES`` batches of tokens."""
        budget = ROUND_BATCHES * self.max_batch_tokens
        taken: list[tuple[_Job, int]] = []
        tokens = 0
        while self._jobs:
            for job in list(self._jobs):
                length = len(job.sequences[job.next])
                if taken and tokens + length > budget:
                    self._queued_tokens -= tokens
                    return taken
                taken.append((job, job.next))
                tokens += length
                job.next += 1
                if job.next == len(job.sequences):
                    self._jobs.remove(job)
        self._queued_tokens -= tokens
        return taken

    def _compute(self, taken: list[tuple[_Job, int]], loop: asyncio.AbstractEventLoop) -> None:
        """On the inference thread: every batch of ``taken``, back to back. Results go to the event loop
        as each batch ends, but the next batch does not wait for the loop, which may be busy with HTTP."""
        plan = self.classifier.plan(
            [len(job.sequences[i]) for job, i in taken],
            batch_size=self.max_batch_size,
            max_batch_tokens=self.max_batch_tokens,
        )
        for batch in reversed(plan):  # shortest first: short requests are answered without waiting for long ones
            items = [taken[k] for k in batch if not taken[k][0].future.done()]  # skip callers gone or failed
            if items:
                self._run_batch(items, loop)

    def _run_batch(self, items: list[tuple[_Job, int]], loop: asyncio.AbstractEventLoop) -> None:
        started = time.perf_counter()
        sequences = [job.sequences[i] for job, i in items]
        try:
            logits = self.classifier.run_batch(sequences)
        except Exception as error:  # noqa: BLE001 - the texts may be at fault: find whose
            # Do not let one request's texts fail the others: rerun each request's share on its own,
            # so only the requests whose texts still fail receive the error.
            by_job: dict[_Job, list[tuple[_Job, int]]] = {}
            for item in items:
                by_job.setdefault(item[0], []).append(item)
            if len(by_job) > 1:
                for share in by_job.values():
                    self._run_batch(share, loop)
            else:
                loop.call_soon_threadsafe(self._fail, items[0][0], error)
            return
        seconds = time.perf_counter() - started
        tokens = len(sequences) * max(len(s) for s in sequences)
        loop.call_soon_threadsafe(self._deliver, items, logits, tokens, started, seconds)

    def _deliver(
        self, items: list[tuple[_Job, int]], logits: np.ndarray, tokens: int, started: float, seconds: float
    ) -> None:
        """On the event loop: hand each text its logits, then tell the observer (which may fail)."""
        for (job, i), row in zip(items, logits):
            job.logits[i] = row
            self._release(job, i)
            if all(job.released) and not job.future.done():
                job.future.set_result(job.logits)
        try:
            self._on_batch(len(items), tokens, [started - job.enqueued for job, _ in items], seconds)
        except Exception:  # noqa: BLE001 - metrics must never cost a request its answer
            log.exception("the batch observer failed")

    def _fail(self, job: _Job, error: BaseException) -> None:
        """Fail a request. Its queued texts give their admission back now, those in a round when it ends."""
        if not job.future.done():
            job.future.set_exception(error)
        self._unqueue(job)

"""Dynamic batching: texts of concurrent requests are merged into batches and run off the event loop.

Requests submit tokenized texts and await their logits. One worker task waits for work, lets more
arrive for at most ``max_wait`` seconds (or until a batch's worth of tokens is queued), then takes
everything queued, cuts it into length-sorted batches under the token budget (as ``Classifier.logits``
does offline, but cut to suit a few dozen texts, see :func:`plan`) and runs them back to back on a
single inference thread; the backend uses every core it was given, so running two batches at once
would only make them compete. Meanwhile the event loop keeps accepting and tokenizing requests,
which become the next batches.

Admission is bounded: at most ``max_queue_texts`` texts are admitted (queued or being computed) at
once, beyond which ``submit`` raises :class:`QueueFullError` instead of letting memory grow.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .classifier import Classifier
from .errors import QueueFullError, ShuttingDownError

# The fixed cost of one backend call, in tokens' worth of compute. It weighs fewer, fuller batches
# against the padding that mixing lengths costs; a few dozen tokens is a call's overhead on a CPU.
BATCH_OVERHEAD_TOKENS = 32


def plan(lengths: Sequence[int], max_batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices of each batch, longest first, cut to minimise padded tokens plus a fixed cost per batch.

    Offline, ``plan_batches`` fills batches greedily over thousands of texts, so similar lengths meet.
    A server batches the few dozen texts that arrived together: filled greedily, one long paragraph
    would pad thirty short sentences to its length. Over texts sorted by length the best cut is a
    small dynamic programme (at most ``max_batch_size`` steps per text).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    cost = [0.0] + [math.inf] * len(order)  # cost[end]: best cost of batching order[:end]
    cut = [0] * (len(order) + 1)  # where the last batch of that best plan starts
    for end in range(1, len(order) + 1):
        for start in range(end - 1, max(-1, end - 1 - max_batch_size), -1):
            size, width = end - start, lengths[order[start]]  # order[start] is the batch's longest
            if size > 1 and size * width > max_batch_tokens:
                break  # starting earlier only adds longer texts
            total = cost[start] + BATCH_OVERHEAD_TOKENS + size * width
            if total < cost[end]:
                cost[end], cut[end] = total, start
    batches, end = [], len(order)
    while end:
        batches.append(order[cut[end] : end])
        end = cut[end]
    return batches[::-1]


# texts in the batch, padded tokens, seconds each text waited in the queue, seconds of inference
BatchObserver = Callable[[int, int, Sequence[float], float], None]


@dataclass(eq=False)
class _Job:
    """One request: its texts' ids and the future that receives their logits in input order."""

    sequences: list[list[int]]
    future: asyncio.Future
    logits: np.ndarray
    enqueued: float = field(default_factory=time.perf_counter)
    remaining: int = 0

    def __post_init__(self) -> None:
        self.remaining = len(self.sequences)


class Batcher:
    def __init__(
        self,
        classifier: Classifier,
        *,
        max_batch_tokens: int = 8192,
        max_batch_size: int = 64,
        max_wait: float = 0.005,
        max_queue_texts: int = 2048,
        on_batch: BatchObserver | None = None,
    ):
        if max_batch_tokens < 1 or max_batch_size < 1 or max_queue_texts < 1 or max_wait < 0:
            raise ValueError("batch limits must be positive and max_wait non-negative")
        self.classifier = classifier
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.max_queue_texts = max_queue_texts
        self._on_batch = on_batch or (lambda *_: None)
        self._queue: list[tuple[_Job, int]] = []  # (job, index of the text in the job), arrival order
        self._queued_tokens = 0
        self.admitted = 0  # texts queued or being computed, bounded by max_queue_texts
        self._wakeup = asyncio.Event()
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distilsent-inference")
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="distilsent-batcher")

    async def submit(self, sequences: list[list[int]]) -> np.ndarray:
        """Logits (n, labels) for the texts' token ids, in their order."""
        if self._closing:
            raise ShuttingDownError("the server is shutting down")
        if self.admitted + len(sequences) > self.max_queue_texts:
            raise QueueFullError(
                f"queue full ({self.admitted} of {self.max_queue_texts} texts admitted); retry later"
            )
        job = _Job(
            sequences,
            asyncio.get_running_loop().create_future(),
            np.empty((len(sequences), self.classifier.config.num_labels), dtype=np.float32),
        )
        if not sequences:
            return job.logits
        self.admitted += len(sequences)
        self._queue.extend((job, i) for i in range(len(sequences)))
        self._queued_tokens += sum(len(s) for s in sequences)
        self._wakeup.set()
        try:
            # shield: a caller that goes away must not cancel the future other code still completes
            return await asyncio.shield(job.future)
        finally:
            if not job.future.done():
                job.future.cancel()

    async def close(self) -> None:
        """Stop accepting work, finish every admitted text, then stop the worker and its thread."""
        self._closing = True
        self._wakeup.set()
        if self._worker is not None:
            await self._worker
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._gather()
            taken, self._queue, self._queued_tokens = self._queue, [], 0
            await loop.run_in_executor(self._executor, self._compute, taken, loop)

    async def _gather(self) -> None:
        """Let more texts join until the oldest has waited ``max_wait`` or a full batch is queued."""
        deadline = self._queue[0][0].enqueued + self.max_wait
        while not self._closing and self._queued_tokens < self.max_batch_tokens:
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), left)
            except asyncio.TimeoutError:
                return

    def _compute(self, taken: list[tuple[_Job, int]], loop: asyncio.AbstractEventLoop) -> None:
        """On the inference thread: every batch of ``taken``, back to back. Results go to the event loop
        as each batch ends, but the next batch does not wait for the loop, which may be busy with HTTP."""
        lengths = [len(job.sequences[i]) for job, i in taken]
        for batch in plan(lengths, self.max_batch_size, self.max_batch_tokens):
            self._run_batch([taken[k] for k in batch], loop)

    def _run_batch(self, items: list[tuple[_Job, int]], loop: asyncio.AbstractEventLoop) -> None:
        started = time.perf_counter()
        sequences = [job.sequences[i] for job, i in items]
        try:
            ids, mask = self.classifier.tokenizer.pad(sequences)
            logits = self.classifier.backend.logits(ids, mask)
        except Exception as error:
            # Do not let one request's texts fail the others: rerun each request's share on its own,
            # so only the requests whose texts still fail receive the error.
            by_job: dict[_Job, list[tuple[_Job, int]]] = {}
            for item in items:
                by_job.setdefault(item[0], []).append(item)
            if len(by_job) > 1:
                for share in by_job.values():
                    self._run_batch(share, loop)
            else:
                loop.call_soon_threadsafe(self._finish, items[0][0], len(items), error)
            return
        seconds = time.perf_counter() - started
        loop.call_soon_threadsafe(self._deliver, items, logits, ids.size, started, seconds)

    def _deliver(self, items: list[tuple[_Job, int]], logits: np.ndarray, tokens: int, started: float, seconds: float) -> None:
        self._on_batch(len(items), tokens, [started - job.enqueued for job, _ in items], seconds)
        for (job, i), row in zip(items, logits):
            job.logits[i] = row
            self._finish(job, 1)

    def _finish(self, job: _Job, count: int, error: Exception | None = None) -> None:
        job.remaining -= count
        self.admitted -= count
        if job.future.done():  # already failed, or its caller went away
            return
        if error is not None:
            job.future.set_exception(error)
        elif job.remaining == 0:
            job.future.set_result(job.logits)

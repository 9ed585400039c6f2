"""``POST /explain`` under admission (:class:`Explanations`): occlusion attributions, bounded.

Occlusion classifies a text once more for every word left out: 257 sequences for a 256-word text, the work
of hundreds of ordinary requests. Explanations are admitted apart from predictions:

- their work is counted in tokens x occlusions (the text's tokens, uncut, times the sequences its occlusion
  runs); what is admitted, waiting or computing, stays within ``max_explain_work``, and within what the
  latest batches' pace can finish in ``explain_timeout`` seconds (before any batch has run, none may wait for
  a thread): past either a request gets 429 with ``Retry-After`` at once rather than a 503 after the work was
  done in vain; one over ``max_explain_work`` on its own gets 413;
- at most ``max_concurrent_explains`` compute at once, batch after batch of occlusions (planned as
  ``Classifier.run`` plans them) on as many threads of their own, beside the batcher's inference thread
  rather than in its queue. An occlusion batch of 260-token texts takes a tenth of a second or more on 2
  cores: in the batcher every prediction behind it would wait for it; beside it the two share the cores,
  which costs a one-sentence prediction far less (benchmarks/load.py ``--scenarios explain``);
- an explanation not done ``explain_timeout`` seconds after its admission gets 503 with ``Retry-After``,
  and one whose caller goes away (the client hung up) is dropped; either way no further batch of it starts
  (the one on a thread ends first), and its work is given back at once. Once shutting down, 503.

The answer is :func:`distilsent.insight.explain.occlusion`'s, computed by the same steps: the classifier's chain
on each variant under its own reading, softmax, each word's drop in the predicted label's probability.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..insight.explain import Explanation, Word, split_words
from ..runtime.classifier import Classifier
from ..runtime.long_text import UNLIMITED
from .bodies import ServiceError
from .metrics import Metrics
from .settings import ServiceSettings

log = logging.getLogger("distilsent.serving.explanations")

# Occlusion costs one classification per word: a request is capped so one visitor cannot queue thousands of
# texts; the library function itself has no cap.
MAX_EXPLAIN_WORDS = 256
# Weight of the latest batch in the pace (tokens per second per explanation thread): a few batches, a second
# or two of work, follow a change in what else the cores are doing.
PACE_WEIGHT = 0.2


class Explanations:
    """Admission and computation of ``/explain``'s occlusion attributions; ``explain(text)`` gives the answer."""

    def __init__(
        self, classifier: Classifier, settings: ServiceSettings, metrics: Metrics,
        tokenize: Callable[..., Awaitable],  # (chars, function, *args): its result, on a tokenizer thread if large
        ended: Callable[[], None],  # called on the event loop as each admitted explanation ends
    ):
        self.classifier = classifier
        self.settings = settings
        self.metrics = metrics
        self._tokenize = tokenize
        self._ended = ended
        self.work = 0  # tokens x occlusions admitted: waiting or computing
        self.admitted = 0  # explanations waiting or computing
        self.computing = 0
        self.pace: float | None = None  # tokens per second of an explanation thread, latest batches weighted
        self.closing = False
        self._slots = asyncio.Semaphore(settings.max_concurrent_explains)
        self._threads = ThreadPoolExecutor(settings.max_concurrent_explains, thread_name_prefix="distilsent-explain")
        metrics.explain_work.set_function(lambda: self.work)
        metrics.explains_computing.set_function(lambda: self.computing)

    async def explain(self, text: str) -> dict:
        """Occlusion attributions of ``text`` as ``Explanation.to_dict()``, or a :class:`ServiceError`."""
        if self.closing:
            raise ServiceError(503, "unhealthy", "the server is shutting down")
        s = self.settings
        words, work = await self._tokenize(len(text), self._measure, text)
        if work > s.max_explain_work:
            self.metrics.explains.labels("too_large").inc()
            raise ServiceError(413, "too_large", f"explaining this text is {work} tokens x occlusions, over the "
                               f"limit of {s.max_explain_work}; send a shorter text")
        if self._full(work):
            self.metrics.explains.labels("overloaded").inc()
            raise ServiceError(429, "overloaded", f"explanations queue full ({self.admitted} explanations, "
                               f"{self.work} tokens x occlusions admitted); retry later",
                               retry_after=self._drain_seconds())
        self.work += work
        self.admitted += 1
        started, outcome = time.perf_counter(), "cancelled"  # the caller went away
        try:
            answer = await asyncio.wait_for(self._explain(text, words), s.explain_timeout)
            outcome = "ok"
            return answer
        except asyncio.TimeoutError:
            outcome = "timeout"
            raise ServiceError(503, "timeout", f"the explanation did not finish within {s.explain_timeout:g} s; "
                               "retry later") from None
        except ServiceError:
            outcome = "failed"
            raise
        finally:
            self.work -= work
            self.admitted -= 1
            self.metrics.explains.labels(outcome).inc()
            self.metrics.explain_seconds.observe(time.perf_counter() - started)
            self._ended()

    def _full(self, work: int) -> bool:
        """Whether ``work`` more would overfill the queue: past ``max_explain_work``, or past what the threads
        finish within ``explain_timeout`` at the current pace (with no pace yet, past the threads)."""
        s = self.settings
        if self.work + work > s.max_explain_work:
            return True
        if self.pace is None:
            return self.admitted >= s.max_concurrent_explains
        return (self.work + work) / (self.pace * s.max_concurrent_explains) > s.explain_timeout

    def _drain_seconds(self) -> int:
        """When the work admitted now should be done: at the current pace, and never later than the deadline
        that ends every admitted explanation (a prediction's one second would send clients back to a queue that
        an explanation of 10-40 s still fills)."""
        s = self.settings
        if self.pace is None:
            return math.ceil(s.explain_timeout)
        return max(1, min(math.ceil(self.work / (self.pace * s.max_concurrent_explains)), math.ceil(s.explain_timeout)))

    def _measure(self, text: str) -> tuple[list[tuple[str, int, int]], int]:
        """The text's words and its work: its tokens, uncut, times the texts occlusion classifies."""
        if not text.strip():
            raise ServiceError(422, "validation", "explain needs a non-empty text")
        words = split_words(text)
        if len(words) > MAX_EXPLAIN_WORDS:
            raise ServiceError(422, "validation", f"explain takes texts of at most {MAX_EXPLAIN_WORDS} words")
        tokens = len(self.classifier.tokenizer.encode([text], UNLIMITED)[0])
        return words, tokens * (len(words) + 1)

    async def _explain(self, text: str, words: list[tuple[str, int, int]]) -> dict:
        async with self._slots:
            self.computing += 1
            try:
                probabilities = await self._probabilities([text] + [text[:a] + text[b:] for _, a, b in words])
            except Exception:
                log.exception("an explanation failed")
                raise ServiceError(500, "backend", "the explanation failed; see the server log") from None
            finally:
                self.computing -= 1
        label = int(probabilities[0].argmax())
        full = float(probabilities[0, label])
        drops = full - probabilities[1:, label]
        return Explanation(
            text, self.classifier.labels[label], full, "occlusion",
            tuple(Word(w, start, end, float(d)) for (w, start, end), d in zip(words, drops)),
        ).to_dict()

    async def _probabilities(self, texts: list[str]) -> np.ndarray:
        """Softmax scores (n, labels) of ``texts`` read as the classifier reads them: its chain (``prepare``,
        batches, ``complete``) with the batches run one at a time on the explanation threads, so that a
        cancelled explanation stops between two."""
        classifier, loop = self.classifier, asyncio.get_running_loop()
        job = await loop.run_in_executor(self._threads, classifier.prepare, texts)
        sequences = job.sequences
        logits = np.empty((len(sequences), classifier.config.num_labels), dtype=np.float32)
        for batch in classifier.plan([len(s) for s in sequences]):
            started = time.perf_counter()
            logits[batch] = await loop.run_in_executor(
                self._threads, classifier.run_batch, [sequences[i] for i in batch]
            )
            pace = sum(len(sequences[i]) for i in batch) / max(time.perf_counter() - started, 1e-6)
            self.pace = pace if self.pace is None else self.pace + PACE_WEIGHT * (pace - self.pace)
        return classifier.complete(job, logits, "softmax").scores

    def close(self) -> None:
        """Admit no more; a batch already on a thread is not waited for."""
        self.closing = True
        self._threads.shutdown(wait=False, cancel_futures=True)

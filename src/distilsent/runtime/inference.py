"""The values that travel along the classifier's chain (see :mod:`distilsent.runtime.classifier`): the
:class:`Job` that ``Classifier.prepare`` builds, the :data:`Runner` that turns its sequences into logits,
the :data:`Observer` told of the progress, and the :class:`Inference` that ``Classifier.complete`` returns.

No model runs here: these are plain values and the numpy that reads them back per text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .embeddings import Embeddings
from .long_text import Reading, WindowPlan
from .long_text import aggregate as aggregate_windows

# (sequences) -> float32 logits (n, labels), row i for sequence i: the classifier's planned batches by
# default (``Classifier.run``), or anything else that scores id lists (a cross-request batcher, a cache).
Runner = Callable[[Sequence[Sequence[int]]], np.ndarray]
# (sequences done, sequences in all): called with (0, total) before the first batch and after each batch;
# ``distilsent.progress.ProgressBar`` draws it.
Observer = Callable[[int, int], None]


@dataclass(frozen=True, eq=False)
class Job:
    """Texts made ready to run: the sequences (one per text, or one per window) and how to read the results
    back per text. ``Classifier.prepare`` is the one place that builds them."""

    n_texts: int
    reading: Reading  # as read: its aggregation combines a text's windows
    windows: WindowPlan
    embeddings: Embeddings | None = None  # asked for with the scores

    @property
    def sequences(self) -> list[list[int]]:
        return self.windows.sequences

    def per_text(self, values: np.ndarray, how: str = "mean") -> np.ndarray:
        """(texts, k) from per-sequence ``values`` (sequences, k): a text's own row, or its windows'
        combined (see :func:`distilsent.runtime.long_text.aggregate`)."""
        return aggregate_windows(values, self.windows, self.n_texts, how)


@dataclass(frozen=True, eq=False)
class Inference:
    """What the chain gives for some texts read as ``reading``: ``scores`` (texts, labels) after the
    function (softmax, sigmoid or none) and the window aggregation, the ``windows`` run with their raw
    ``window_logits`` and ``window_scores`` (sequences, labels), and ``embeddings`` (texts, dim) when they
    were asked for."""

    scores: np.ndarray
    reading: Reading
    windows: WindowPlan
    window_logits: np.ndarray
    window_scores: np.ndarray
    embeddings: np.ndarray | None = None

    @property
    def one_each(self) -> bool:
        """Whether every text was one sequence (then a text's window logits are its logits)."""
        return len(self.windows.sequences) == len(self.scores)

    def window_results(self, labels: Sequence[str]) -> list[list[dict]]:
        """Per text, each of its sequences as ``{"start", "tokens", "label", "score"}`` (``start``: offset of
        its first token in the text; ``tokens``: without [CLS] and [SEP]), what ``return_windows`` gives."""
        out: list[list[dict]] = [[] for _ in range(len(self.scores))]
        rows = zip(self.windows.sequences, self.windows.owner, self.windows.starts, self.window_scores)
        for sequence, owner, start, row in rows:
            best = int(row.argmax())
            out[owner].append({"start": int(start), "tokens": len(sequence) - 2, "label": labels[best],
                               "score": row[best].item()})
        return out

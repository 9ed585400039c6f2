"""What every scoring engine shares: the settings that decide the output's bytes, the columns ``score`` adds
and how a chunk of records gets them (:class:`Scorer`).

The local engine (:mod:`.local`) and the Ray engine (:mod:`.ray_engine`) both build on this module and on
nothing of each other; the command line chooses between them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from ..data.tables import require_pyarrow
from ..errors import DataError, InputError
from ..runtime.embeddings import POOLINGS
from ..runtime.inference import Inference
from ..runtime.long_text import Reading, over_window_limit

ON_ERROR = ("fail", "skip", "mark")
# Rows per chunk: the unit of reading, classifying, writing and resuming. A thousand rows fill dozens of
# length-sorted batches (so the batch planner has lengths to group) and cost ~1 MB of memory for
# short texts; the loss on an interruption is at most one chunk.
CHUNK_ROWS = 1000
REPORTED_ROWS = 20  # bad rows printed one by one on stderr; the rest are only counted


@dataclass(frozen=True)
class ScoreSettings:
    """What decides the output's bytes: a resumed run must use the same settings.

    How long texts are read: ``reading``, a whole :class:`~distilsent.runtime.long_text.Reading`, or its
    parts ``long_text``, ``stride``, ``aggregate`` and ``window``, each over the classifier's own reading
    (the model's) as ``Classifier.__call__`` takes them; neither: the classifier's own."""

    text_column: str | None = None
    all_scores: bool = False
    on_error: str = "fail"
    prefix: str = ""
    chunk_rows: int = CHUNK_ROWS
    batch_size: int | None = None
    long_text: str | None = None
    stride: int | None = None
    aggregate: str | None = None
    window: int | None = None
    embeddings: str | None = None  # a pooling ("cls" or "mean"): each text's embedding, from the scoring pass
    max_windows: int | None = None  # with "window" reading: a text needing more windows is a bad row
    reading: Reading | None = None

    def __post_init__(self):
        if self.on_error not in ON_ERROR:
            raise InputError(f"on_error must be one of {', '.join(ON_ERROR)}, got {self.on_error!r}")
        if self.chunk_rows < 1:
            raise InputError("chunk_rows must be positive")
        if self.max_windows is not None and self.max_windows < 1:
            raise InputError("max_windows must be positive")
        parts = self.reading_parts()
        if self.reading is not None and parts:
            raise InputError(f"give a reading or its parts, not both: {', '.join(parts)} with {self.reading}")
        Reading(**{"long_text": "truncate", "aggregate": "mean", **parts})  # checks the parts given
        if self.embeddings not in (None, *POOLINGS):
            raise InputError(f"embeddings pooling must be one of {', '.join(POOLINGS)}, got {self.embeddings!r}")

    def reading_parts(self) -> dict:
        """The parts of a reading given one by one (not None)."""
        parts = {"long_text": self.long_text, "stride": self.stride, "aggregate": self.aggregate, "window": self.window}
        return {k: v for k, v in parts.items() if v is not None}

    def reading_of(self, clf) -> Reading:
        """How ``clf`` reads the texts: :attr:`reading`, else its own with the parts given over it."""
        return self.reading if self.reading is not None else clf.reading.override(**self.reading_parts())

    def identity(self) -> dict:
        """What a resumed run must share, as JSON: every setting (no ``reading`` key when none is given)."""
        settings = asdict(self)
        if self.reading is None:
            del settings["reading"]
        return settings


class Scorer:
    """The columns ``score`` appends, and how a chunk of records gets them."""

    def __init__(self, clf, settings: ScoreSettings, text_column: str):
        self.clf = clf
        self.settings = settings
        self.text_column = text_column
        p = settings.prefix
        self.label_key, self.score_key, self.error_key = f"{p}label", f"{p}score", f"{p}error"
        self.label_keys = [f"{p}score_{label}" for label in clf.labels] if settings.all_scores else []
        self.embedding_key = f"{p}embedding"
        self.columns = [self.label_key, self.score_key, *self.label_keys]
        if settings.embeddings:
            self.columns.append(self.embedding_key)
        if settings.on_error == "mark":
            self.columns.append(self.error_key)

    def arrow_fields(self) -> list:
        """The Arrow types of :attr:`columns`, in order."""
        pa = require_pyarrow()
        fields = [pa.field(self.label_key, pa.string()), pa.field(self.score_key, pa.float64())]
        fields += [pa.field(key, pa.float64()) for key in self.label_keys]
        if self.settings.embeddings:
            fields.append(pa.field(self.embedding_key, pa.list_(pa.float32())))
        if self.settings.on_error == "mark":
            fields.append(pa.field(self.error_key, pa.string()))
        return fields

    def check_columns(self, columns: Iterable[str], source: str) -> None:
        taken = [c for c in self.columns if c in set(columns)]
        if taken:
            raise DataError(f"{source} already has a column {taken[0]!r}; pass --prefix (e.g. --prefix pred_) "
                            "to name the new columns differently")

    def window_problems(self, records: list[dict], problems: list[str | None]) -> list[str | None]:
        """``problems`` plus the texts that ``max_windows`` refuses, found before their windows are built."""
        clf, settings = self.clf, self.settings
        reading = settings.reading_of(clf)
        if settings.max_windows is None or reading.long_text != "window":
            return problems
        good = [i for i, p in enumerate(problems) if p is None]
        over = over_window_limit(clf.tokenizer, [records[i][self.text_column] for i in good], settings.max_windows,
                                 clf.max_length, stride=reading.stride, window=reading.window)
        problems = list(problems)
        for k in over:
            problems[good[k]] = (f"the text needs more than {settings.max_windows} windows of "
                                 f"{min(reading.window or clf.max_length, clf.max_length)} tokens (--max-windows)")
        return problems

    def infer(self, texts: list[str]) -> Inference:
        """The classifier's chain under these settings: the scores ``clf(texts, top_k=None)`` reports (in
        label order) and, when asked for, the embeddings, from one pass."""
        settings = self.settings
        return self.clf.infer(texts, settings.reading_of(self.clf), embeddings=settings.embeddings,
                              batch_size=settings.batch_size)

    def scores(self, texts: list[str]) -> np.ndarray:
        """(n, labels) scores in label order: the numbers ``clf(texts, top_k=None)`` reports."""
        return self.infer(texts).scores

    def score(self, records: list[dict], problems: list[str | None]) -> list[dict]:
        """The records with the new columns; rows with a problem get empty ones (and the problem when
        marking). ``problems[i]`` is set for a row that is malformed or has no text."""
        good = [i for i, p in enumerate(problems) if p is None]
        result = self.infer([records[i][self.text_column] for i in good])
        vectors = dict(zip(good, result.embeddings.tolist())) if self.settings.embeddings else {}
        labels = self.clf.labels
        out = []
        by_row = dict(zip(good, result.scores))
        for i, (record, problem) in enumerate(zip(records, problems)):
            row = dict(record)
            s = by_row.get(i)
            best = None if s is None else int(s.argmax())
            row[self.label_key] = None if s is None else labels[best]
            row[self.score_key] = None if s is None else s[best].item()
            for j, key in enumerate(self.label_keys):
                row[key] = None if s is None else s[j].item()
            if self.settings.embeddings:
                row[self.embedding_key] = vectors.get(i)
            if self.settings.on_error == "mark":
                row[self.error_key] = problem
            out.append(row)
        return out

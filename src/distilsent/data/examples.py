"""Labelled examples from CSV, TSV, JSONL (also on stdin) and Parquet files.

Columns are found by name (``sentence``/``text``/``review``..., ``label``/``sentiment``...) unless given.
Labels may be integer ids or names (``positive``, ``neg``, ``NEGATIVE``...), or any values a label mapping
names (stars to binary: ``1,2=NEGATIVE 3=- 4,5=POSITIVE``). A malformed row is a :class:`DataError` naming
the file and line; nothing is skipped silently (a mapping's ``-`` drops rows on purpose).

Several files make one training set through :class:`Source` (a file, its sampling weight, columns and
mapping); every example remembers its source, so evaluations can report each source beside the whole.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..model.config import LABELS
from .tables import FORMATS, HEAD_BYTES, detect_format, looks_binary, not_text, open_reader

TEXT_COLUMNS = ("sentence", "text", "review", "content", "document", "comment")
LABEL_COLUMNS = ("label", "sentiment", "labels", "target", "class", "stars", "rating")
ALIASES = {"pos": "positive", "neg": "negative", "+": "positive", "-": "negative"}
@dataclass(frozen=True)
class Example:
    text: str
    label: int
    source: str | None = None  # the file (or split) it came from, for per-source figures and sampling weights


DROP = "-"  # a label mapping's target for rows to leave out (3 stars of 5 in a binary set)


def parse_label_map(spec: str) -> dict[str, str]:
    """``"1,2=NEGATIVE 3=- 4,5=POSITIVE"`` (spaces or ``;`` between groups) -> ``{"1": "NEGATIVE", ...}``.

    Keys are the file's raw label values as text; ``-`` drops the rows with that value."""
    mapping: dict[str, str] = {}
    for group in spec.replace(";", " ").split():
        values, sep, target = group.partition("=")
        target = target.strip()
        if not sep or not values.strip() or not target:
            raise DataError(f"label map {spec!r}: expected VALUES=LABEL groups such as '1,2=NEGATIVE 3=-', "
                            f"got {group!r}")
        for value in values.split(","):
            if value.strip() in mapping:
                raise DataError(f"label map {spec!r}: {value.strip()!r} is mapped twice")
            mapping[value.strip()] = target
    if not mapping:
        raise DataError(f"label map {spec!r} maps nothing")
    return mapping


@dataclass(frozen=True)
class Source:
    """One training file: its sampling weight (1 = each row once per epoch; 0.5 = a random half each epoch;
    2 = twice), its columns (found by name when not given) and an optional label mapping."""

    path: str
    weight: float = 1.0
    label_map: dict[str, str] | None = None
    text_column: str | None = None
    label_column: str | None = None
    fmt: str | None = None

    def __post_init__(self) -> None:
        if not self.weight > 0 or self.weight != self.weight or self.weight == float("inf"):
            raise DataError(f"{self.path}: the sampling weight must be a positive number, got {self.weight}")

    @classmethod
    def parse(cls, spec: str, **options) -> "Source":
        """``FILE`` or ``FILE:WEIGHT`` (a file whose own name ends in ``:number`` is taken whole when it exists)."""
        path, sep, weight = spec.rpartition(":")
        if sep and path and not Path(spec).exists():
            try:
                number = float(weight)
            except ValueError:
                return cls(spec, **options)
            return cls(path, number, **options)
        return cls(spec, **options)

    @property
    def name(self) -> str:
        return "stdin" if self.path == "-" else Path(self.path).name


def _rows(path: str, fmt: str) -> Iterator[tuple[int, dict]]:
    """(line or row number, record) pairs, streamed by :func:`distilsent.data.tables.open_reader`; the first row
    that cannot be read is a DataError naming its line."""

    reader = open_reader(path, fmt)
    try:
        for row in reader:
            where = row.line if row.line is not None else row.number
            if row.problem is not None:
                raise DataError(f"{path}:{where}: {row.problem}")
            yield where, row.record
    finally:
        reader.close()


def pick_column(columns: Iterable[str], given: str | None, candidates: Sequence[str], what: str, path: str) -> str:
    """``given`` if it is one of ``columns``, else the first of ``candidates`` present (case-insensitive)."""
    columns = list(columns)
    if given is not None:
        if given not in columns:
            raise DataError(f"{path}: no {what} column {given!r}; columns are {', '.join(map(str, columns))}")
        return given
    lowered = {str(k).lower(): k for k in columns}
    for name in candidates:
        if name in lowered:
            return lowered[name]
    raise DataError(
        f"{path}: cannot find a {what} column among {', '.join(map(str, columns)) or '(none)'}; pass --{what}-column"
    )


def parse_label(value, labels: Sequence[str]) -> int:
    """An integer id (or its string) or a label name, case-insensitive, with pos/neg aliases."""
    if isinstance(value, bool):
        raise ValueError(f"label {value!r} is a boolean")
    if isinstance(value, int):
        label = value
    elif isinstance(value, float) and value.is_integer():
        label = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        label = int(value.strip())
    elif isinstance(value, str):
        name = value.strip().lower()
        name = ALIASES.get(name, name)
        names = [label.lower() for label in labels]
        if name not in names:
            raise ValueError(f"unknown label {value!r}; expected one of {', '.join(labels)} or an id")
        return names.index(name)
    else:
        raise ValueError(f"label {value!r} is a {type(value).__name__}, expected an id or a name")
    if not 0 <= label < len(labels):
        raise ValueError(f"label id {label} is outside 0..{len(labels) - 1}")
    return label


def read_examples(
    path: str | os.PathLike,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    labels: Sequence[str] = LABELS,
    fmt: str | None = None,
    label_map: dict[str, str] | None = None,
    source: str | None = None,
) -> list[Example]:
    """Every labelled example of a file (``-`` reads JSONL from stdin), each with ``source`` as its source.

    ``label_map`` maps the file's raw label values (as text) to label names or ids, or to ``-`` to drop the
    row; a value it does not name is an error with its line."""
    path = str(path)
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if path != "-" and not Path(path).is_file():
        raise DataError(f"{path}: no such file")
    examples = []
    columns = None
    for number, record in _rows(path, fmt):
        if columns is None:
            columns = (
                pick_column(record, text_column, TEXT_COLUMNS, "text", path),
                pick_column(record, label_column, LABEL_COLUMNS, "label", path),
            )
        text_key, label_key = columns
        where = f"{path}:{number}" if fmt != "parquet" else f"{path}: row {number}"
        if text_key not in record or label_key not in record:
            raise DataError(f"{where}: missing the {text_key!r} or {label_key!r} field")
        text = record[text_key]
        if not isinstance(text, str):
            raise DataError(f"{where}: the text is a {type(text).__name__}, expected a string")
        value = record[label_key]
        if label_map is not None:
            key = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value).strip()
            if key not in label_map:
                raise DataError(f"{where}: label {value!r} is not in the label map ({', '.join(label_map)})")
            if label_map[key] == DROP:
                continue
            value = label_map[key]
        try:
            label = parse_label(value, labels)
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None
        examples.append(Example(text, label, source))
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def read_sources(sources: Sequence[Source], *, labels: Sequence[str] = LABELS) -> list[Example]:
    """The examples of several files in order, each tagged with its file's name (``Source.name``; two files of
    one name are told apart by their index)."""
    names = [s.name for s in sources]
    examples = []
    for i, s in enumerate(sources):
        name = s.name if names.count(s.name) == 1 else f"{s.name}#{i + 1}"
        examples += read_examples(s.path, text_column=s.text_column, label_column=s.label_column, labels=labels,
                                  fmt=s.fmt, label_map=s.label_map, source=name)
    return examples


def source_weights(sources: Sequence[Source], examples: Sequence[Example]) -> dict[str, float] | None:
    """``{source name: weight}`` for :func:`distilsent.train.train`, or None when every weight is 1."""
    if all(s.weight == 1.0 for s in sources):
        return None
    names = list(dict.fromkeys(e.source for e in examples))
    return dict(zip(names, (s.weight for s in sources)))


def columns(path: str | os.PathLike, *, fmt: str | None = None) -> list[str]:
    """The column names of a data file's first record (a CSV/TSV header with a row under it); ``[]`` when
    it has none. Tells a labelled file from one with only texts before reading it."""
    path = str(path)
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file")
    for _, record in _rows(path, fmt or detect_format(path)):
        return [str(name) for name in record]
    return []


def split_examples(examples: Sequence[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """``(rest, held_out)``: a random ``fraction`` of the examples held out, the same for the same seed,
    so a validation split carved out of a training file can be named by (file, fraction, seed)."""
    import numpy as np

    if not 0 < fraction < 1:
        raise DataError(f"the held-out fraction must be between 0 and 1, got {fraction}")
    order = np.random.default_rng(seed).permutation(len(examples))
    cut = round(len(examples) * fraction)
    held = set(order[:cut].tolist())
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])


def text_problem(value: Any) -> str | None:
    """Why ``value`` is no text to classify, or None. An empty or whitespace-only text is one: the model would
    still answer, from [CLS] and [SEP] alone, with a score that says nothing about the input (the library
    itself labels ``""`` as the Hugging Face pipeline does; the command line, ``score`` and the service refuse it)."""
    if value is None:
        return "the text is missing"
    if not isinstance(value, str):
        return f"the text is {type(value).__name__}, not a string"
    if value == "":
        return "the text is empty"
    if not value.strip():
        return "the text is only whitespace"
    return None


def read_texts(path: str | os.PathLike, *, text_column: str | None = None) -> list[str]:
    """Texts to embed or classify: one per line for ``-`` (stdin) and ``.txt`` files (invalid UTF-8 is an
    error with its line number), else the text column of a CSV/TSV/JSONL/Parquet file (no labels needed)."""
    path = str(path)
    if path == "-" or Path(path).suffix.lower() == ".txt":
        try:
            data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        except OSError as e:
            raise DataError(f"{path}: {e.strerror}") from None
        if looks_binary(data[:HEAD_BYTES]):
            raise not_text(path)
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        texts = []
        for number, raw in enumerate(lines, start=1):
            try:
                texts.append(raw.rstrip(b"\r").decode("utf-8"))
            except UnicodeDecodeError:
                raise DataError(f"{path}:{number}: invalid UTF-8") from None
        return texts
    fmt = detect_format(path)
    texts, column = [], None
    for number, record in _rows(path, fmt):
        column = column or pick_column(record, text_column, TEXT_COLUMNS, "text", path)
        text = record.get(column)
        if not isinstance(text, str):
            where = f"{path}:{number}" if fmt != "parquet" else f"{path}: row {number}"
            raise DataError(f"{where}: the text is a {type(text).__name__}, expected a string")
        texts.append(text)
    return texts

"""Bulk scoring of whole files: ``distilsent score IN OUT``.

The input is read a chunk of rows at a time (:mod:`distilsent.data.tables`), each chunk is classified and
written as one numbered part file in ``OUT.partial/`` (renamed into place only when whole).
When every chunk is done the parts are joined into a temporary file that is renamed to ``OUT``: a crash
never leaves a half-written ``OUT``, memory stays that of one chunk whatever the file size, and
``--resume`` re-reads the input, skips the finished chunks and continues. Chunks are cut at fixed row
counts and each is classified on its own, so a resumed run writes the same bytes as an uninterrupted one.

Each output row is the input row with every column kept, in order, plus ``label`` and ``score`` (and,
on request, one ``score_<LABEL>`` column per label and the row's ``error``). A row whose text is
missing or not a string, or that could not be parsed, is reported with its row number and, as chosen,
fails the run, is skipped, or is kept and marked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..data.examples import TEXT_COLUMNS, pick_column, text_problem
from ..data.tables import Row, detect_format, open_reader, open_writer, require_pyarrow
from ..errors import DataError, DistilsentError, InputError
from ..progress import Progress
from ..runtime.classifier import Classifier
from .engine import REPORTED_ROWS, Scorer, ScoreSettings

MANIFEST = "manifest.json"


@dataclass
class Counts:
    rows: int = 0  # input rows read
    written: int = 0
    skipped: int = 0
    marked: int = 0

    def add(self, other: "Counts") -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)


class BadRows:
    """Applies ``--on-error`` to each chunk and reports bad rows on stderr (the first few one by one)."""

    def __init__(self, source: str, on_error: str, stream=None):
        self.source, self.on_error = source, on_error
        self.stream = stream or sys.stderr
        self.reported = 0

    def problems(self, rows: list[Row], text_column: str) -> list[str | None]:
        return [row.problem or text_problem(row.record.get(text_column)) for row in rows]

    def apply(self, rows: list[Row], problems: list[str | None]) -> list[int]:
        """Indices of the rows to keep; raises on the first bad row when failing."""
        keep = []
        for i, (row, problem) in enumerate(zip(rows, problems)):
            if problem is None:
                keep.append(i)
                continue
            message = f"{self.source}: {row.where()}: {problem}"
            if self.on_error == "fail":
                raise DataError(f"{message} (pass --on-error skip or mark to go on)")
            if self.reported < REPORTED_ROWS:
                action = "skipped" if self.on_error == "skip" else "marked"
                print(f"distilsent: warning: {message}; {action}", file=self.stream)
            elif self.reported == REPORTED_ROWS:
                print("distilsent: warning: more bad rows; only counted from here on", file=self.stream)
            self.reported += 1
            if self.on_error == "mark":
                keep.append(i)
        return keep


def chunked(rows: Iterable, size: int) -> Iterator[list]:
    """Lists of ``size`` items (the last may be shorter), read lazily: memory holds one chunk."""
    chunk: list = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --------------------------------------------------------------------------------------- the output side


class PartsOutput:
    """``OUT.partial/``: the run's identity (``manifest.json``, written once) and one part file per finished
    chunk, each renamed into place when complete; joined and renamed over ``OUT`` at the end."""

    def __init__(self, target: str, fmt: str, identity: dict, resume: bool):
        self.target, self.fmt = Path(target), fmt
        self.directory = self.target.with_name(self.target.name + ".partial")
        self.done = 0
        manifest = self.directory / MANIFEST
        if resume and manifest.is_file():
            previous = json.loads(manifest.read_text(encoding="utf-8"))
            if previous != identity:
                changed = sorted(k for k in identity if previous.get(k) != identity[k])
                raise InputError(f"cannot resume {target}: {', '.join(changed)} changed since the interrupted run; "
                                 f"run without --resume to start again")
            while self.part(self.done).is_file():
                self.done += 1
        else:
            shutil.rmtree(self.directory, ignore_errors=True)
            try:
                self.directory.mkdir()
                temporary = self.directory / (MANIFEST + ".tmp")
                temporary.write_text(json.dumps(identity), encoding="utf-8")
                os.replace(temporary, manifest)
            except OSError as e:
                raise InputError(f"{target}: cannot create {self.directory}: {e.strerror}") from None

    def part(self, index: int) -> Path:
        return self.directory / f"{index:08d}.{self.fmt}"

    def write(self, index: int, layout: "Layout", records: list[dict], where: list[str]) -> None:
        """Chunk ``index`` as its own part file: written beside, then renamed, so a part exists only whole."""
        pending = self.directory / f"{index:08d}.tmp"
        writer = open_writer(str(pending), self.fmt, columns=layout.columns, header=index == 0, schema=layout.schema,
                             name=str(self.target))
        try:
            writer.write(records, where)
        finally:
            writer.close()
        os.replace(pending, self.part(index))
        self.done = index + 1

    def finish(self, layout: "Layout") -> None:
        """Join the parts into one file next to ``OUT`` and rename it over ``OUT``."""
        joined = self.directory / f"joined.{self.fmt}"
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            writer = pq.ParquetWriter(str(joined), layout.schema)
            for index in range(self.done):
                writer.write_table(pq.read_table(self.part(index)))
            writer.close()
        else:
            with open(joined, "wb") as out:
                for index in range(self.done):
                    with open(self.part(index), "rb") as part:
                        shutil.copyfileobj(part, out)
        os.replace(joined, self.target)
        self.discard()

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class Layout:
    """The output's columns (CSV/TSV header) and Arrow schema (Parquet), fixed by the first chunk."""

    columns: list[str]
    schema: Any = None


def _layout(reader, first: list[Row], scorer: Scorer, fmt: str) -> Layout:
    if reader.columns is not None:
        inputs = list(reader.columns)
    else:  # JSONL: the keys of the first chunk's records, in order of appearance
        inputs = list(dict.fromkeys(k for row in first for k in row.record))
    columns = inputs + scorer.columns
    if fmt != "parquet":
        if scorer.settings.embeddings and fmt != "jsonl":
            raise InputError(f"embeddings are lists of numbers, which {fmt.upper()} cannot hold; "
                             "write JSONL or Parquet")
        return Layout(columns)
    pa = require_pyarrow()
    if getattr(reader, "schema", None) is not None:
        fields = list(reader.schema)
    elif reader.columns is not None:  # CSV/TSV: every value is a string
        fields = [pa.field(c, pa.string()) for c in inputs]
    else:
        good = [row.record for row in first if row.problem is None]
        inferred = pa.Table.from_pylist(good).schema if good else pa.schema([])
        fields = [inferred.field(c) if c in inferred.names else pa.field(c, pa.string()) for c in inputs]
    return Layout(columns, pa.schema(fields + scorer.arrow_fields()))


def _file_identity(source: str) -> dict:
    stat = os.stat(source)
    with open(source, "rb") as handle:  # size + mtime can survive an edit; the first MiB rarely does
        head = hashlib.sha256(handle.read(1 << 20)).hexdigest()
    return {"input": str(Path(source).resolve()), "input_size": stat.st_size, "input_mtime_ns": stat.st_mtime_ns,
            "input_head_sha256": head}


def check_target(target: str) -> None:
    """Refuse an output file that cannot be written where it is named, before any work is done. A missing
    directory is not created: a mistyped path would leave directories behind."""
    if target == "-":
        return
    path = Path(target)
    if path.is_dir():
        raise InputError(f"{target} is a directory; name the output file")
    if not path.parent.is_dir():
        raise InputError(f"{target}: no such directory {path.parent}")


def score_stream(clf, source: str, target: str, settings: ScoreSettings, *, resume: bool = False,
                 progress: bool = True, in_format: str | None = None, out_format: str | None = None,
                 stderr=None) -> dict:
    """Score ``source`` into ``target`` with ``clf`` on this machine; ``-`` is JSONL on stdin/stdout.
    Formats come from the extensions unless given. Returns the summary (row counts, seconds, rows/s)."""
    stderr = stderr or sys.stderr
    in_fmt, out_fmt = in_format or detect_format(source), out_format or detect_format(target)
    if resume and "-" in (source, target):
        raise InputError("--resume needs files: stdin and stdout cannot be re-read or rewritten")
    if "-" not in (source, target) and Path(target).resolve() == Path(source).resolve():
        raise InputError(f"{target}: the output would overwrite the input")
    check_target(target)
    start = time.perf_counter()
    reader = open_reader(source, in_fmt, batch_rows=settings.chunk_rows)
    try:
        output = None
        if target != "-":
            identity = {**_file_identity(source), **settings.identity(), "model": clf.name, "labels": clf.labels,
                        "output_format": out_fmt}
            output = PartsOutput(target, out_fmt, identity, resume)
        resumed = output.done if output else 0
        meter = Progress(count_rows(source, in_fmt), desc="score", unit="row", enabled=progress, stream=stderr,
                         initial=resumed * settings.chunk_rows)
        counts, bad = Counts(), BadRows(source, settings.on_error, stderr)
        scorer = layout = None
        sink = None if output else open_writer("-", "jsonl", handle=sys.stdout)
        for index, rows in enumerate(chunked(reader, settings.chunk_rows)):
            if scorer is None:
                columns = reader.columns if reader.columns is not None else [k for r in rows for k in r.record]
                scorer = Scorer(clf, settings, pick_column(columns, settings.text_column, TEXT_COLUMNS, "text", source))
                layout = _layout(reader, rows, scorer, out_fmt)
                scorer.check_columns(layout.columns[: len(layout.columns) - len(scorer.columns)], source)
            for row in rows:
                scorer.check_columns(row.record, source)
            problems = scorer.window_problems([r.record for r in rows], bad.problems(rows, scorer.text_column))
            keep = bad.apply(rows, problems)  # also for resumed chunks: the summary counts the whole file
            counts.add(Counts(rows=len(rows), written=len(keep), skipped=len(rows) - len(keep),
                              marked=sum(problems[i] is not None for i in keep)))
            if index < resumed:
                continue
            kept = [rows[i] for i in keep]
            records = scorer.score([r.record for r in kept], [problems[i] for i in keep])
            where = [r.where() for r in kept]
            if output is None:
                sink.write(records, where)
                sink.close()  # flushes stdout: a reader downstream sees each chunk as it is done
            else:
                output.write(index, layout, records, where)
            meter.update(len(rows))
        if counts.rows == 0:
            raise DataError(f"{source}: no rows")
        if output is not None:
            output.finish(layout)
        meter.total = counts.rows  # the estimate counted lines; a quoted CSV value may span several
        meter.close()
    except DistilsentError:
        # A bad row, clashing columns, an empty file: the same input fails the same way again, so --resume
        # could make no use of the finished chunks. An interruption or a crash keeps them for --resume.
        if output is not None:
            output.discard()
        raise
    finally:
        reader.close()
    seconds = time.perf_counter() - start
    scored = counts.rows - min(counts.rows, resumed * settings.chunk_rows)
    return {**asdict(counts), "resumed_chunks": resumed, "output": target, "seconds": round(seconds, 3),
            "rows_per_second": round(scored / seconds, 1)}


def count_rows(source: str, fmt: str) -> int:
    """Rows in ``source`` for the progress line: Parquet's metadata, else its lines (0 on stdin: unknown).
    Counting newlines costs a fast pass over the file, small beside classifying it."""
    if source == "-":
        return 0
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(source).metadata.num_rows
    lines, last = 0, b"\n"
    with open(source, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"
    return max(0, lines - (fmt in ("csv", "tsv")))


def score_file(source: str, target: str, settings: ScoreSettings, *, model: str | None = None,
               threads: int | None = None, resume: bool = False, progress: bool = True, in_format: str | None = None,
               out_format: str | None = None) -> dict:
    """Load the model and score ``source`` into ``target`` on this machine (on a Ray cluster:
    :func:`distilsent.bulk.ray_engine.score_on_ray`, which builds on this module)."""
    check_target(target)  # before the model loads
    options = {"batch_size": settings.batch_size} if settings.batch_size else {}
    clf = Classifier.load(model, threads=threads, **options)
    return score_stream(clf, source, target, settings, resume=resume, progress=progress, in_format=in_format,
                        out_format=out_format)

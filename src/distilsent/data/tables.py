"""Tables read and written a chunk at a time: CSV, TSV, JSONL (``-``: stdin / stdout) and Parquet.

Readers yield :class:`Row` objects one by one, never the whole file: CSV/TSV/JSONL line by line, Parquet
one row group at a time. A row that cannot be parsed (wrong number of fields, invalid JSON, invalid
UTF-8) is not an exception here: it comes out with its ``problem`` set, so the caller decides whether
to fail, skip or mark it. Only file-level trouble (missing file, empty file, unreadable header or
Parquet footer) raises :class:`DataError`.

Values are kept as read: CSV/TSV fields stay strings, JSON values keep their JSON types, Parquet
columns keep their Arrow types, so a file written back holds exactly the input's columns and values.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import DataError, MissingDependencyError

FORMATS = ("csv", "tsv", "jsonl", "parquet")
HEAD_BYTES = 8192  # how much of a file tells text from binary


def looks_binary(head: bytes) -> bool:
    """Whether a file's first bytes say it is not UTF-8 text: a NUL byte (text has none; nearly every binary
    format, UTF-16 included, has them at once), or more invalid UTF-8 than text in another 8-bit encoding
    (Latin-1 reviews: a few accented letters) would give. Read as lines, such a file becomes hundreds of
    made-up texts and warnings instead of one clear error."""
    if b"\0" in head:
        return True
    text = head.decode("utf-8", errors="replace")
    return text.count("\ufffd") > len(text) // 4


def not_text(path: str) -> DataError:
    return DataError(f"{'stdin' if path == '-' else path}: not a text file (expected UTF-8 text)")


def peek_head(stream) -> bytes:
    """The first bytes of a binary stream, left unread: a buffered stream's peek (on a pipe, what one read
    returns), else read and sought back (``io.BytesIO`` standing in for stdin has no peek)."""
    if hasattr(stream, "peek"):
        return stream.peek(HEAD_BYTES)[:HEAD_BYTES]
    start = stream.tell()
    head = stream.read(HEAD_BYTES)
    stream.seek(start)
    return head


def detect_format(path: str) -> str:
    if path == "-":
        return "jsonl"
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in ("json", "ndjson"):
        return "jsonl"
    if suffix in FORMATS:
        return suffix
    raise DataError(
        f"{path}: cannot tell the format from the extension; name it with --format (fmt= in Python), "
        f"one of {', '.join(FORMATS)}"
    )


def require_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401  (the submodule is what the callers use)
    except ImportError:
        raise MissingDependencyError(
            "Parquet files need pyarrow: pip install 'distilsent[train]' (or pyarrow)"
        ) from None
    return pyarrow


@dataclass(frozen=True)
class Row:
    number: int  # 1-based position among the data rows (the header is not a row)
    record: dict[str, Any]
    line: int | None = None  # last physical line of the row in a text file
    problem: str | None = None  # why the row could not be read as a record, else None

    def where(self) -> str:
        return f"row {self.number}" + (f" (line {self.line})" if self.line is not None else "")


class _Lines:
    """Decoded lines of a binary stream, counting bytes (for progress) and remembering lines that were
    not valid UTF-8 (decoded with U+FFFD so parsing goes on; the row is then reported)."""

    def __init__(self, handle: IO[bytes]):
        self.handle = handle
        self.position = 0
        self.number = 0
        self.invalid: set[int] = set()

    def __iter__(self) -> Iterator[str]:
        for raw in self.handle:
            self.position += len(raw)
            self.number += 1
            if self.number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                self.invalid.add(self.number)
                yield raw.decode("utf-8", errors="replace")


class _TextReader:
    def __init__(self, path: str):
        self.path = path
        try:
            self.handle = sys.stdin.buffer if path == "-" else open(path, "rb")
        except OSError as e:
            raise DataError(f"{path}: {e.strerror}") from None
        self.size = None if path == "-" else os.fstat(self.handle.fileno()).st_size
        if looks_binary(peek_head(self.handle)):
            self.close()
            raise not_text(path)
        self.lines = _Lines(self.handle)
        self.columns: list[str] | None = None
        self.total_rows: int | None = None

    @property
    def position(self) -> int:
        return self.lines.position

    def close(self) -> None:
        if self.handle is not sys.stdin.buffer:
            self.handle.close()


def _csv_problem(error: csv.Error) -> str:
    """The csv module's words for a malformed row, but in the file's terms where they speak of Python's."""
    if "new-line character seen in unquoted field" in str(error):  # it suggests an open() mode to the user
        return "a carriage return (\\r) inside an unquoted field; quote the field, or end lines with \\n"
    return str(error)


class _CsvReader(_TextReader):
    def __init__(self, path: str, delimiter: str):
        super().__init__(path)
        # TSV files (SST-2, GLUE) are unquoted: a '"' inside a sentence is a character, not a quote.
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        self.reader = csv.reader(iter(self.lines), delimiter=delimiter, quoting=quoting)
        try:
            self.columns = next(self.reader)
        except StopIteration:
            raise DataError(f"{path}: the file is empty") from None
        except csv.Error as e:
            raise DataError(f"{path}:1: {_csv_problem(e)}") from None
        if 1 in self.lines.invalid:
            raise DataError(f"{path}:1: the header is not valid UTF-8")
        if len(set(self.columns)) != len(self.columns):
            raise DataError(f"{path}:1: repeated column names in the header")

    def __iter__(self) -> Iterator[Row]:
        number = 0
        first_line = self.lines.number + 1
        while True:
            try:
                fields = next(self.reader)
                problem = None
            except StopIteration:
                return
            except csv.Error as e:
                fields, problem = [], _csv_problem(e)
            line = self.reader.line_num
            if not fields and problem is None:
                first_line = line + 1
                continue  # a blank line is not a row
            number += 1
            if problem is None and any(first_line <= n <= line for n in self.lines.invalid):
                problem = "invalid UTF-8"
            if problem is None and len(fields) != len(self.columns):
                problem = f"expected {len(self.columns)} fields, found {len(fields)}"
            yield Row(number, dict(zip(self.columns, fields)), line, problem)
            first_line = line + 1


class _JsonlReader(_TextReader):
    def __iter__(self) -> Iterator[Row]:
        number = 0
        for text in self.lines:
            line = self.lines.number
            if not text.strip():
                continue
            number += 1
            if line in self.lines.invalid:
                yield Row(number, {}, line, "invalid UTF-8")
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                yield Row(number, {}, line, f"invalid JSON ({e.msg})")
                continue
            if not isinstance(record, dict):
                yield Row(number, {}, line, f"expected a JSON object, got {type(record).__name__}")
                continue
            yield Row(number, record, line)


class _ParquetReader:
    def __init__(self, path: str, batch_rows: int):
        require_pyarrow()
        import pyarrow.parquet as pq

        self.path = path
        try:
            self.file = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError variants for a bad footer
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
        self.schema = self.file.schema_arrow
        self.columns = list(self.schema.names)
        self.total_rows = self.file.metadata.num_rows
        self.size = None
        self.position = 0
        self.batch_rows = batch_rows

    def __iter__(self) -> Iterator[Row]:
        number = 0
        # iter_batches reads one row group at a time, so memory is bounded by the largest row group.
        for batch in self.file.iter_batches(batch_size=self.batch_rows):
            for record in batch.to_pylist():
                number += 1
                yield Row(number, record)
            self.position = number

    def close(self) -> None:
        self.file.close()


def open_reader(path: str, fmt: str | None = None, *, batch_rows: int = 1024):
    """A reader over ``path`` (``-``: JSONL on stdin) with ``columns`` (None for JSONL), ``total_rows``
    (Parquet), ``size`` and ``position`` in bytes (text files), ``close()``, iterating :class:`Row`."""
    fmt = fmt or detect_format(path)
    if path != "-" and not Path(path).is_file():
        raise DataError(f"{path}: no such file")
    if fmt == "parquet":
        return _ParquetReader(path, batch_rows)
    if fmt == "jsonl":
        return _JsonlReader(path)
    return _CsvReader(path, "\t" if fmt == "tsv" else ",")


# ---------------------------------------------------------------------------------------------- writers


def _json_default(value):
    # Parquet values JSON has no type for (dates, decimals, bytes) are written as their text.
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


class _TextWriter:
    def __init__(self, handle: IO[str], path: str, owned: bool):
        self.handle, self.path, self.owned = handle, path, owned

    def close(self) -> None:
        if self.owned:
            self.handle.close()
        else:
            self.handle.flush()


class _JsonlWriter(_TextWriter):
    def write(self, records: list[dict], numbers: list[str]) -> None:
        self.handle.write("".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in records))


class _CsvWriter(_TextWriter):
    def __init__(self, handle: IO[str], path: str, owned: bool, delimiter: str, columns: list[str], header: bool):
        super().__init__(handle, path, owned)
        self.columns = columns
        if delimiter == "\t":  # unquoted, as read: '"' is a plain character
            self.writer = csv.writer(handle, delimiter=delimiter, quoting=csv.QUOTE_NONE, quotechar=None,
                                     lineterminator="\n")
        else:
            self.writer = csv.writer(handle, delimiter=delimiter, lineterminator="\n")
        if header:
            self.writer.writerow(columns)

    def write(self, records: list[dict], numbers: list[str]) -> None:
        known = set(self.columns)
        for record, where in zip(records, numbers):
            extra = [k for k in record if k not in known]
            if extra:
                raise DataError(f"{self.path}: {where}: fields {', '.join(map(str, extra))} are not in the "
                                "first row's columns, and a CSV/TSV file has one header")
            values = [record.get(c) for c in self.columns]
            try:
                self.writer.writerow(["" if v is None else v for v in values])
            except csv.Error as e:  # a tab or newline inside a value of an unquoted TSV file
                raise DataError(f"{self.path}: {where}: cannot write this row as TSV ({e}); use CSV or JSONL") from None


class _ParquetWriter:
    def __init__(self, path: str, schema, name: str):
        require_pyarrow()
        import pyarrow.parquet as pq

        self.path, self.schema = name, schema
        self.writer = pq.ParquetWriter(path, schema)

    def write(self, records: list[dict], numbers: list[str]) -> None:
        import pyarrow as pa

        try:
            table = pa.Table.from_pylist(records, schema=self.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise DataError(f"{self.path}: {numbers[0]}..{numbers[-1]}: values do not fit the first chunk's "
                            f"column types ({e})") from None
        self.writer.write_table(table)

    def close(self) -> None:
        self.writer.close()


def open_writer(path: str, fmt: str, *, columns: list[str] | None = None, header: bool = True, schema=None,
                handle: IO[str] | None = None, name: str | None = None):
    """A writer with ``write(records, row_labels)`` and ``close()``: JSONL/CSV/TSV on ``handle`` (left open)
    or a new file at ``path``; Parquet to ``path`` with the Arrow ``schema`` (every chunk must fit it).
    Errors name the file as ``name`` (the final output, when ``path`` is a temporary part)."""
    if fmt == "parquet":
        return _ParquetWriter(path, schema, name or path)
    owned = handle is None
    if owned:
        handle = open(path, "w", encoding="utf-8", newline="")
    if fmt == "jsonl":
        return _JsonlWriter(handle, name or path, owned)
    return _CsvWriter(handle, name or path, owned, "\t" if fmt == "tsv" else ",", columns or [], header)

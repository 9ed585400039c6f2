"""``distilsent score --engine ray``: the same scoring on a Ray cluster (``pip install 'distilsent[ray]'``).

- Ray Data reads the input (CSV/TSV with every column kept as text, as the local engine does; JSONL;
  Parquet). The blocks are re-cut into the local engine's chunks (rows 1-1000, 1001-2000, ...) and every
  row gets its 1-based input row number, so order survives any scheduling (the index column is how the
  output is put back in order) and each actor batch is exactly a local chunk, so both engines batch the
  same rows together (float32 sums in another batch shape can differ in the last bits).
- ``map_batches`` runs the rows through a pool of classifier actors; each actor loads the model once,
  with the ONNX backend and ``threads`` intra-op threads.
- The model travels with the job: the driver puts the checkpoint's small files and its ONNX graph in the
  object store and every actor writes them to a local temporary directory, so workers need no shared
  file system and no copy of the model beforehand.
- One output file is streamed back through the driver in row order and written like the local engine
  (a temporary file renamed at the end); ``shards=True`` lets the workers write a directory of shards
  instead, each row carrying its row number.

Paths without a scheme are read (and shards written) on the node that runs the command (``local://``
when joining a cluster); a path Ray's file systems understand (``s3://``, ``gs://``, ``hdfs://``...) is read
by the workers themselves.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from ..data.examples import TEXT_COLUMNS, pick_column, text_problem
from ..data.tables import detect_format, open_writer, require_pyarrow
from ..errors import DataError, DistilsentError, InputError, MissingDependencyError
from ..model.checkpoint import load_config, resolve
from ..progress import Progress
from ..runtime.classifier import Classifier
from ..runtime.onnx_graph import ONNX_NAME, onnx_path
from .engine import REPORTED_ROWS, Scorer, ScoreSettings

WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")  # not needed once the ONNX graph ships


# Ray reads this when it is imported: "0" makes a node advertise and bind 127.0.0.1 instead of the machine's
# network address. A local instance needs nothing else; a driver joining a cluster must not set it.
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def require_ray(local: bool = False):
    if local and "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ONLY_ENV, "0")
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise MissingDependencyError("--engine ray needs Ray Data: pip install 'distilsent[ray]'") from None
    return ray


def model_package(model: str | None) -> dict[str, bytes]:
    """The files an ONNX-backend Classifier needs, by name: config, tokenizer files and ``model.onnx``
    (built from the weights first if the checkpoint has none), without the weights themselves."""
    directory = resolve(model)
    files = {
        path.name: path.read_bytes()
        for path in sorted(directory.iterdir())
        if path.is_file() and not path.name.endswith(WEIGHT_FILES) and path.name != ONNX_NAME
    }
    files[ONNX_NAME] = onnx_path(directory, load_config(directory)).read_bytes()
    return files


class _ScoringActor:
    """One per Ray actor: loads the shipped model once, then scores Arrow batches."""

    def __init__(self, package, settings: ScoreSettings, text_column: str, schema, source: str, tally, threads: int):
        import ray

        self.settings = settings
        options = {"batch_size": self.settings.batch_size} if self.settings.batch_size else {}
        # ONNX Runtime and the tokenizer read their files when loading, so the copy can go right after.
        with tempfile.TemporaryDirectory(prefix="distilsent-model-") as directory:
            for name, data in ray.get(package[0]).items():
                Path(directory, name).write_bytes(data)
            clf = Classifier.load(directory, backend="onnx", threads=threads, **options)
        self.scorer = Scorer(clf, self.settings, text_column)
        self.schema, self.source, self.tally = schema, source, tally

    def __call__(self, batch):
        import pyarrow as pa

        records = batch.to_pylist()
        row_key = self.schema.names[0]
        problems = self.scorer.window_problems(records, [text_problem(r.get(self.scorer.text_column))
                                                         for r in records])
        bad = [(r[row_key], p) for r, p in zip(records, problems) if p is not None]
        if bad and self.settings.on_error == "fail":
            row, problem = bad[0]
            raise DataError(f"{self.source}: row {row}: {problem} (pass --on-error skip or mark to go on)")
        keep = [i for i, p in enumerate(problems) if p is None or self.settings.on_error == "mark"]
        out = self.scorer.score([records[i] for i in keep], [problems[i] for i in keep])
        self.tally.add.remote(len(records), len(out), len(records) - len(keep),
                              sum(problems[i] is not None for i in keep), bad[:REPORTED_ROWS])
        return pa.Table.from_pylist(out, schema=self.schema)


class _Tally:
    """Row counts and the first bad rows, gathered from every actor."""

    def __init__(self):
        self.counts = {"rows": 0, "written": 0, "skipped": 0, "marked": 0}
        self.bad: list[tuple[int, str]] = []

    def add(self, rows: int, written: int, skipped: int, marked: int, bad: list) -> None:
        for key, value in zip(self.counts, (rows, written, skipped, marked)):
            self.counts[key] += value
        self.bad = sorted(self.bad + list(bad))[:REPORTED_ROWS]

    def result(self):
        return self.counts, self.bad


def _ray_path(path: str, joined: bool) -> str:
    if "://" in path:
        return path
    absolute = str(Path(path).resolve())
    # On a cluster a plain path names a file on this machine: local:// makes Ray do that I/O here.
    return f"local://{absolute}" if joined else absolute


def _read(ray, source: str, fmt: str, joined: bool):
    import pyarrow.csv as pacsv

    path = _ray_path(source, joined)
    if fmt == "parquet":
        return ray.data.read_parquet(path)
    if fmt == "jsonl":
        return ray.data.read_json(path, lines=True, file_extensions=None)
    delimiter = "\t" if fmt == "tsv" else ","
    header = _csv_header(source, delimiter) if "://" not in source else None
    convert = pacsv.ConvertOptions(
        column_types={c: "string" for c in header} if header else None, strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    # TSV is unquoted (as in the local engine); CSV values may hold quoted newlines.
    parse = pacsv.ParseOptions(delimiter=delimiter, quote_char=False if fmt == "tsv" else '"',
                               newlines_in_values=fmt != "tsv")
    return ray.data.read_csv(path, parse_options=parse, convert_options=convert, file_extensions=None)


def _csv_header(source: str, delimiter: str) -> list[str]:
    import csv

    with open(source, encoding="utf-8-sig", newline="") as handle:
        try:
            return next(csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else
                                   csv.QUOTE_MINIMAL))
        except StopIteration:
            raise DataError(f"{source}: the file is empty") from None


def _numbered(ray, ds, row_key: str, chunk_rows: int):
    """The dataset cut into blocks of exactly ``chunk_rows`` rows (the local engine's chunks, so every
    batch the actors see is the chunk the local engine scores: same batches, same bytes), each with a
    first column ``row_key``: each row's 1-based position in the input. Returns it and the row count."""
    import pyarrow as pa

    @ray.remote
    def size(block) -> int:
        return block.num_rows

    @ray.remote
    def chunk(first: int, bounds: list, *blocks):
        pieces = [block.slice(start, stop - start) for block, (start, stop) in zip(blocks, bounds)]
        table = pa.concat_tables(pieces, promote_options="default")
        return table.add_column(0, row_key, pa.array(range(first, first + table.num_rows), pa.int64()))

    blocks = ds.to_arrow_refs()
    sizes = ray.get([size.remote(b) for b in blocks])
    starts = [0, *itertools.accumulate(sizes)]  # starts[i]: input row (0-based) where block i begins
    total, chunks, first_block = starts[-1], [], 0
    for begin in range(0, total, chunk_rows):
        end = min(begin + chunk_rows, total)
        while starts[first_block + 1] <= begin:  # blocks wholly before this chunk are done with
            first_block += 1
        overlapping = list(itertools.takewhile(lambda i, end=end: starts[i] < end, range(first_block, len(blocks))))
        bounds = [(max(begin, starts[i]) - starts[i], min(end, starts[i + 1]) - starts[i]) for i in overlapping]
        chunks.append(chunk.remote(begin + 1, bounds, *(blocks[i] for i in overlapping)))
    return ray.data.from_arrow_refs(chunks), total


def _output_schema(pa, input_schema, row_key: str, scorer: Scorer):
    fields = [pa.field(row_key, pa.int64())] + [input_schema.field(n) for n in input_schema.names if n != row_key]
    return pa.schema(fields + scorer.arrow_fields())


class _Labels:
    """What :class:`Scorer` needs to name its columns, before any model is loaded on the driver."""

    def __init__(self, labels: list[str]):
        self.labels = labels


def score_on_ray(source: str, target: str, settings: ScoreSettings, *, model: str | None = None,
                 threads: int | None = None, progress: bool = True, address: str | None = None,
                 actors: int | None = None, shards: bool = False, num_cpus: int | None = None,
                 in_format: str | None = None, out_format: str | None = None, stderr=None) -> dict:
    """Score ``source`` into ``target`` on Ray; ``address`` joins a cluster (else a local Ray starts with
    ``num_cpus``), ``actors`` classifier actors of ``threads`` threads each (default: 1 thread, as many
    actors as the cluster has CPUs)."""
    stderr = stderr or sys.stderr
    if "-" in (source, target):
        raise InputError("--engine ray reads and writes files; use the local engine for stdin/stdout")
    in_fmt = in_format or detect_format(source)
    out_fmt = out_format or ("parquet" if shards and not Path(target).suffix else detect_format(target))
    if settings.embeddings and out_fmt in ("csv", "tsv"):
        raise InputError(f"embeddings are lists of numbers, which {out_fmt.upper()} cannot hold; "
                         "write JSONL or Parquet")
    if "://" not in source and not Path(source).is_file():
        raise DataError(f"{source}: no such file")
    ray = require_ray(local=address is None)
    pa = require_pyarrow()
    labels = load_config(resolve(model)).labels
    package = model_package(model)
    threads = threads or 1
    start = time.perf_counter()
    started_here = not ray.is_initialized()
    if started_here:
        # Ray's own start-up and per-dataset log lines would bury the progress line and the summary.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
        ray.init(address=address, num_cpus=None if address else (num_cpus or os.cpu_count()),
                 include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        ds = _read(ray, source, in_fmt, joined=address is not None)
        columns = ds.schema().names
        text_column = pick_column(columns, settings.text_column, TEXT_COLUMNS, "text", source)
        scorer = Scorer(_Labels(labels), settings, text_column)
        scorer.check_columns(columns, source)
        row_key = f"{settings.prefix}row"
        if row_key in columns:
            raise DataError(f"{source} already has a column {row_key!r}; pass --prefix to name the new columns")
        ds, total = _numbered(ray, ds, row_key, settings.chunk_rows)
        if total == 0:
            raise DataError(f"{source}: no rows")
        schema = _output_schema(pa, ds.schema().base_schema, row_key, scorer)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        tally = ray.remote(_Tally).remote()
        scored = ds.map_batches(
            _ScoringActor,
            fn_constructor_kwargs={"package": [ray.put(package)], "settings": settings,
                                   "text_column": scorer.text_column, "schema": schema, "source": source,
                                   "tally": tally, "threads": threads},
            batch_size=settings.chunk_rows, batch_format="pyarrow", zero_copy_batch=True,
            compute=ray.data.ActorPoolStrategy(size=actors or max(1, cpus // threads)), num_cpus=threads,
        )
        meter = Progress(total, desc="score", unit="row", enabled=progress, stream=stderr)
        if shards:
            _write_shards(scored, _ray_path(target, address is not None), out_fmt)
            meter.update(total)
        else:
            _write_one_file(scored, target, out_fmt, schema, row_key, meter, total)
        counts, bad = ray.get(tally.result.remote())
        meter.close()
    except Exception as e:
        cause = _our_error(e)
        if cause is None:
            raise
        raise DataError(str(cause)) from None
    finally:
        if started_here:
            ray.shutdown()
    action = {"skip": "skipped", "mark": "marked"}.get(settings.on_error)
    for row, problem in bad:
        print(f"distilsent: warning: {source}: row {row}: {problem}; {action}", file=stderr)
    seconds = time.perf_counter() - start
    return {**counts, "output": target, "engine": "ray", "seconds": round(seconds, 3),
            "rows_per_second": round(counts["rows"] / seconds, 1)}


def _our_error(error: BaseException) -> DistilsentError | None:
    """The distilsent error (a bad row) an actor raised, from the wrappers Ray puts around it. Ray Data
    re-raises a UDF's exception as ``UserCodeException`` whose pickled form keeps the original only in
    its traceback text, so that is where the message is read from when the object itself is gone."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DistilsentError):
            return error
        found = re.search(r"distilsent\.errors\.DataError: (.+)", str(error))
        if found:
            return DataError(found.group(1).strip())
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return None


def _write_one_file(scored, target: str, fmt: str, schema, row_key: str, meter: Progress, total: int) -> None:
    """Batches come back in row order (checked by the row column, then dropped) into a temporary file
    next to ``target``, renamed over it at the end."""
    out_schema = schema.remove(0)
    temporary = Path(target).with_name(Path(target).name + ".partial")
    writer = open_writer(str(temporary), fmt, columns=out_schema.names, schema=out_schema)
    last = previous = 0
    try:
        for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows = batch.column(0).to_pylist()
            if rows and rows[0] <= last:
                raise RuntimeError(f"Ray returned row {rows[0]} after row {last}; the output would be out of order")
            last = rows[-1] if rows else last
            records = batch.drop_columns([row_key]).to_pylist()
            writer.write(records, [f"row {n}" for n in rows])
            meter.update(last - previous)
            previous = last
        meter.update(total - previous)  # skipped rows at the end
    except BaseException:
        writer.close()
        temporary.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(temporary, target)


def _write_shards(scored, directory: str, fmt: str) -> None:
    if fmt == "parquet":
        scored.write_parquet(directory)
    elif fmt == "jsonl":
        scored.write_json(directory)
    else:
        import pyarrow.csv as pacsv

        delimiter = "\t" if fmt == "tsv" else ","
        scored.write_csv(directory,
                         arrow_csv_args_fn=lambda: {"write_options": pacsv.WriteOptions(delimiter=delimiter)})

"""``distilsent score``: a whole table scored chunk by chunk, every column kept, here or on a Ray cluster."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from ..bulk.local import ScoreSettings, score_file
from ..bulk.ray_engine import score_on_ray
from ..data.tables import FORMATS
from ..errors import InputError
from .console import terminate
from .options import EMBEDDED, add_verb, long_text_options, max_windows, positive_int, quiet, reading

SCORE_EXAMPLES = """examples:
  distilsent score tickets.csv scored.csv --text-column body --on-error mark
  distilsent score reviews.parquet scored.parquet --all-scores --resume
  cat reviews.jsonl | distilsent score - - > scored.jsonl
  distilsent score s3://bucket/reviews.parquet s3://bucket/scored --engine ray --address auto --shards"""


def add_score(verbs) -> None:
    p = add_verb(verbs, "score", "score a whole CSV/TSV/JSONL/Parquet file (- for JSONL on stdin/stdout), keeping "
                                 "every column", SCORE_EXAMPLES)
    p.add_argument("input", metavar="IN", help="file to score; its extension gives the format")
    p.add_argument("output", metavar="OUT", help="file to write (any of the formats; written at the end by a rename)")
    p.add_argument("--model", default=None, help=EMBEDDED)
    p.add_argument("--format", choices=FORMATS, default=None, help="format of IN (default: from its extension)")
    p.add_argument("--output-format", choices=FORMATS, default=None, help="format of OUT (default: from its extension)")
    p.add_argument("--text-column", default=None, help="text column (default: sentence/text/review/...)")
    p.add_argument("--all-scores", action="store_true", help="also one score_<LABEL> column per label")
    p.add_argument("--embeddings", nargs="?", const="cls", choices=("cls", "mean"), default=None, metavar="POOLING",
                   help="also an embedding column (JSONL/Parquet): the [CLS] vector (default) or the token mean")
    p.add_argument("--on-error", choices=("fail", "skip", "mark"), default="fail",
                   help="a row without text (missing, empty or blank): stop (default), leave it out, or keep it with "
                        "an error column")
    p.add_argument("--prefix", default="", help="prefix of the new column names, e.g. pred_ when IN has a label")
    long_text_options(p)
    max_windows(p, refused="a bad row (see --on-error)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="texts per batch (default: the model's)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads (default: all cores; with --engine ray: per actor, default 1)")
    p.add_argument("--chunk-rows", type=positive_int, default=1000,
                   help="rows read, scored and written at a time; the unit --resume restarts from (default: 1000)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last finished chunk")
    quiet(p)
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local (this process) or ray (Ray Data on a pool of actors; pip install 'distilsent[ray]')")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join, e.g. auto or ray://head:10001 (default: start a local Ray)")
    p.add_argument("--actors", type=positive_int, default=None,
                   help="Ray: classifier actors, each loading the model once (default: CPUs / threads)")
    p.add_argument("--shards", action="store_true",
                   help="Ray: write OUT as a directory of shards from the workers, with a row column for order")
    p.set_defaults(run=run_score)


def run_score(args: argparse.Namespace) -> None:
    settings = ScoreSettings(text_column=args.text_column, all_scores=args.all_scores, on_error=args.on_error,
                             prefix=args.prefix, chunk_rows=args.chunk_rows, batch_size=args.batch_size,
                             reading=reading(args), embeddings=args.embeddings, max_windows=args.max_windows)
    files = {"progress": not args.quiet, "in_format": args.format, "out_format": args.output_format}
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        if args.engine == "ray":  # the Ray engine builds on bulk's Scorer; the command line picks the engine
            if args.resume:
                raise InputError("--resume is for the local engine; a Ray job re-runs failed tasks itself")
            summary = score_on_ray(args.input, args.output, settings, model=args.model, threads=args.threads,
                                   address=args.address, actors=args.actors, shards=args.shards, **files)
        else:
            summary = score_file(args.input, args.output, settings, model=args.model, threads=args.threads,
                                 resume=args.resume, **files)
    except KeyboardInterrupt:
        partial = Path(args.output + ".partial")
        if args.engine == "local" and "-" not in (args.input, args.output) and partial.is_dir():
            print(f"distilsent: interrupted; the finished chunks are kept in {partial}/: run the same command with "
                  "--resume to go on from them", file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    # The summary goes where the scored rows do not: stdout, unless the rows themselves go there.
    print(json.dumps(summary), file=sys.stderr if args.output == "-" else sys.stdout)

"""``distilsent predict`` (a label per text, JSON lines out) and ``distilsent embed`` (a vector per text)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..bulk.local import chunked
from ..data.examples import read_texts, text_problem
from ..runtime.classifier import Classifier
from ..runtime.embeddings import embed, output_format, write_embeddings
from .console import stdin_lines
from .options import (
    EMBEDDED,
    add_verb,
    backend_option,
    long_text_options,
    max_windows,
    over_window_limit_at,
    positive_int,
    probability,
    quiet,
    reading,
    reading_options,
    threads_option,
    top_k,
    window_limit_error,
)

CHUNK = 1024  # texts piped into predict are classified and printed in chunks of this many lines

PREDICT_EXAMPLES = """examples:
  distilsent predict "a gripping, beautiful film"
  printf 'great\\nawful\\n' | distilsent predict --top-k all
  distilsent predict --model ./my-model --batch-size 128 < reviews.txt > predictions.jsonl
  distilsent predict --neutral-below 0.7 < reviews.txt     # NEUTRAL where the surer label is below 0.7
  distilsent predict --model ./imdb-model --window 512 --aggregate mean < reviews.txt"""


def add_predict(verbs) -> None:
    p = add_verb(verbs, "predict", "classify texts given as arguments, or one per line on stdin; JSON lines out",
                 PREDICT_EXAMPLES)
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify (default: read stdin)")
    p.add_argument("--model", default=None, help=EMBEDDED)
    backend_option(p, "onnx (ONNX Runtime, no torch needed) or torch (the PyTorch reference); default: onnx")
    p.add_argument("--top-k", type=top_k, default=False, metavar="K|all",
                   help="print the K best labels (or all) as a list per text")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="texts per batch (default: the Classifier's)")
    p.add_argument("--max-length", type=positive_int, default=None, help="truncate texts to this many tokens")
    threads_option(p, "CPU threads (default: all cores)")
    long_text_options(p)
    max_windows(p)
    p.add_argument("--neutral-below", type=probability, default=None, metavar="P",
                   help="binary models: label NEUTRAL when the best score is below P (choose P from the "
                        "risk-coverage curve of eval --plots; default: off)")
    p.set_defaults(run=run_predict)


def answer(clf: Classifier, texts: list[str], call: dict, kind: str, first: int) -> int:
    """Print one JSON line per text, in order: its labels, or in its place an error record naming the blank
    text (``KIND N``, from ``first``), which stderr also tells; returns how many texts were blank."""
    problems = [text_problem(text) for text in texts]
    classified = [text for text, problem in zip(texts, problems) if problem is None]
    results = iter(clf(classified, **call) if classified else [])
    for number, problem in enumerate(problems, start=first):
        if problem is None:
            sys.stdout.write(json.dumps(next(results), ensure_ascii=False) + "\n")
        else:
            sys.stdout.write(json.dumps({"error": f"{kind} {number}: {problem}"}) + "\n")
            print(f"distilsent: error: {kind} {number}: {problem}", file=sys.stderr)
    sys.stdout.flush()
    return len(texts) - len(classified)


def run_predict(args: argparse.Namespace) -> int:
    options = {k: v for k, v in (("batch_size", args.batch_size), ("max_length", args.max_length)) if v}
    clf = Classifier.load(args.model, backend=args.backend, threads=args.threads, **options,
                          **reading_options(reading(args)))
    # Someone typing at a terminal waits for each answer; a pipe is read in chunks, which batches well.
    chunk = 1 if sys.stdin.isatty() else CHUNK
    chunks = [args.texts] if args.texts else chunked(stdin_lines(), chunk)
    call = {} if args.top_k is False else {"top_k": args.top_k}
    if args.neutral_below is not None:
        call["neutral_below"] = args.neutral_below
    kind = "text" if args.texts else "line"  # where a message points: the arguments are one chunk
    first, blanks = 1, 0
    for texts in chunks:
        over = over_window_limit_at(clf, texts, args.max_windows)
        # The texts before a refused one are answered, so the output ends exactly where the error points.
        blanks += answer(clf, texts[:over], call, kind, first)
        if over is not None:
            raise window_limit_error(f"{kind} {first + over}", clf, args.max_windows)
        first += len(texts)
    return 1 if blanks else 0  # each blank text was told on stderr as it came


EMBED_EXAMPLES = """examples:
  distilsent embed reviews.txt vectors.npy                      # one text per line; (n, dim) float32
  distilsent embed reviews.csv vectors.parquet --text-column body --pooling mean --normalize
  cat texts.txt | distilsent embed - hidden3.npy --layer 3"""


def add_embed(verbs) -> None:
    p = add_verb(verbs, "embed", "write one embedding per text (.npy, or .parquet with the text) from any hidden "
                                 "state", EMBED_EXAMPLES)
    p.add_argument("input", metavar="IN", help="texts: - or .txt (one per line), or a CSV/TSV/JSONL/Parquet file")
    p.add_argument("output", metavar="OUT", help="a .npy (float32 n x dim) or .parquet (text, embedding) file")
    p.add_argument("--model", default=None, help=EMBEDDED)
    backend_option(p)
    p.add_argument("--pooling", choices=("cls", "mean"), default="cls",
                   help="cls: the first token (what the head reads); mean: over the real tokens (default: cls)")
    p.add_argument("--layer", type=int, default=-1,
                   help="hidden state: 0 the embeddings, 1..n the blocks, negative from the end (default: -1)")
    p.add_argument("--normalize", action="store_true", help="scale every vector to unit length")
    p.add_argument("--text-column", default=None, help="text column of a table (default: sentence/text/review/...)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="texts per batch (default: the model's)")
    p.add_argument("--max-length", type=positive_int, default=None, help="truncate texts to this many tokens")
    threads_option(p)
    quiet(p)
    p.set_defaults(run=run_embed)


def run_embed(args: argparse.Namespace) -> None:
    output_format(args.output)
    texts = read_texts(args.input, text_column=args.text_column)
    options = {name: value for name, value in (("max_length", args.max_length), ("batch_size", args.batch_size))
               if value is not None}
    clf = Classifier.load(args.model, backend=args.backend, threads=args.threads, **options)
    start = time.perf_counter()
    vectors = embed(clf, texts, pooling=args.pooling, layer=args.layer, normalize=args.normalize,
                    progress=not args.quiet)
    seconds = time.perf_counter() - start
    write_embeddings(vectors, args.output, texts if Path(args.output).suffix.lower() == ".parquet" else None)
    print(json.dumps({"output": args.output, "texts": len(texts), "dim": int(vectors.shape[1]),
                      "texts_per_second": len(texts) / seconds if seconds > 0 else None}))

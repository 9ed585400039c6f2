"""``distilsent <verb>``: each verb parses its arguments, calls one library function and prints JSON lines.

Heavy modules (torch, onnxruntime, the server) are imported inside the verbs, so ``--help`` and a
prediction with the ONNX backend start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator

CHUNK = 1024  # texts read from stdin are classified and printed in chunks of this many lines


def _top_k(value: str):
    if value == "all":
        return None
    try:
        k = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {value!r}") from None
    if k < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {value!r}")
    return k


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def _stdin_lines() -> Iterator[str]:
    """Lines of stdin as text; invalid UTF-8 is replaced (U+FFFD) and reported with its line number."""
    for number, raw in enumerate(sys.stdin.buffer, start=1):
        raw = raw.rstrip(b"\n").rstrip(b"\r")
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            print(f"distilsent: warning: line {number}: invalid UTF-8 replaced with U+FFFD", file=sys.stderr)
            yield raw.decode("utf-8", errors="replace")


def _chunks(lines: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def cmd_predict(args: argparse.Namespace) -> None:
    from .classifier import Classifier

    options = {"batch_size": args.batch_size}
    if args.max_length:
        options["max_length"] = args.max_length
    clf = Classifier.load(args.model, backend=args.backend, threads=args.threads, **options)
    chunks = [args.texts] if args.texts else _chunks(_stdin_lines(), CHUNK)
    call = {} if args.top_k is False else {"top_k": args.top_k}
    out = sys.stdout
    for texts in chunks:
        for result in clf(texts, **call):
            out.write(json.dumps(result, ensure_ascii=False) + "\n")
        out.flush()


EXAMPLES = {
    "predict": """examples:
  distilsent predict "a gripping, beautiful film"
  printf 'great\\nawful\\n' | distilsent predict --top-k all
  distilsent predict --model ./my-model --batch-size 128 < reviews.txt > predictions.jsonl""",
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="distilsent",
        description="English sentiment classification with DistilBERT.",
        epilog='example: distilsent predict "a gripping, beautiful film"',
    )
    parser.add_argument("--version", action="version", version=f"distilsent {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, help: str) -> argparse.ArgumentParser:
        return verbs.add_parser(
            name, help=help, description=help, epilog=EXAMPLES[name], formatter_class=argparse.RawDescriptionHelpFormatter
        )

    p = verb("predict", "classify texts given as arguments, or one per line on stdin; JSON lines out")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify (default: read stdin)")
    p.add_argument("--model", default=None, help="checkpoint directory or Hub id (default: the embedded model)")
    p.add_argument("--backend", default="torch", help="inference backend (default: torch)")
    p.add_argument("--top-k", type=_top_k, default=False, metavar="K|all",
                   help="print the K best labels (or all) as a list per text")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="texts per batch (default: 64)")
    p.add_argument("--max-length", type=_positive_int, default=None, help="truncate texts to this many tokens")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: all cores)")
    p.set_defaults(run=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import DistilsentError

    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except DistilsentError as e:
        print(f"distilsent: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (e.g. `| head`); nothing left to report
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

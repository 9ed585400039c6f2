"""``distilsent``: the parser of every verb, and ``main``, which runs one and turns errors into exit codes."""

from __future__ import annotations

import argparse
import sys
import warnings

from .. import __version__
from ..errors import DistilsentError
from .checkpoints import add_cache, add_convert, add_export
from .console import Terminated, show_warning
from .evaluation import add_bias_probe, add_eval, add_explain
from .predict import add_embed, add_predict
from .score import add_score
from .serve import add_serve
from .training import add_calibrate, add_distill, add_fewshot, add_train

# The order of ``distilsent --help``; each function adds one verb: its flags, examples and handler.
VERBS = (
    add_predict, add_train, add_distill, add_eval, add_calibrate, add_convert, add_export, add_serve, add_score,
    add_bias_probe, add_explain, add_embed, add_fewshot, add_cache,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distilsent",
        description="English sentiment classification with DistilBERT.",
        epilog='example: distilsent predict "a gripping, beautiful film"',
    )
    parser.add_argument("--version", action="version", version=f"distilsent {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for add in VERBS:
        add(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``distilsent ARGV``: 0 when done, 1 after an error told in one line on stderr (a verb may also
    return 1 after telling its errors itself), 2 for a usage error, 130 or 143 when interrupted."""
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            return args.run(args) or 0
    except DistilsentError as e:
        print(f"distilsent: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        return 143 if isinstance(e, Terminated) else 130  # 128 + the signal, as a shell reports it
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (e.g. `| head`); nothing left to report
        return 0

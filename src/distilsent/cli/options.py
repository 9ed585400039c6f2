"""What several verbs share: the argparse types, the option groups, and the long-text reading they build.

A verb's own flags are declared beside its handler (one module per verb or small group of verbs); a flag
that two verbs take with the same meaning is declared here once, so that it reads the same in both.
"""

from __future__ import annotations

import argparse

from ..data.examples import parse_label_map
from ..data.tables import FORMATS
from ..errors import DataError, InputError
from ..model.checkpoint import load_config, resolve
from ..runtime.backends import BACKENDS
from ..runtime.classifier import model_reading
from ..runtime.long_text import Reading, over_window_limit
from ..serving.settings import ServiceSettings

EMBEDDED = "checkpoint directory or Hub id (default: the embedded model)"


# ---------------------------------------------------------------- argparse types: a bad value is a usage error


def top_k(value: str):
    if value == "all":
        return None
    try:
        return positive_int(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {value!r}") from None


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def ranged(convert, low, high, what: str):
    """An argparse type: ``convert(value)`` within ``[low, high]``, else a usage error naming ``what``."""
    def parse(value: str):
        try:
            number = convert(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
        return number

    return parse


port = ranged(int, 1, 65535, "a port from 1 to 65535")
probability = ranged(float, 0, 1, "a probability between 0 and 1")


def label_names(value: str) -> tuple[str, ...]:
    names = tuple(label.strip() for label in value.split(",") if label.strip())
    if len(names) < 2 or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected two or more distinct comma-separated labels, got {value!r}")
    return names


def label_map(value: str) -> tuple[str, dict[str, str]]:
    """``FILE=VALUES=LABEL;...`` -> (FILE, mapping); see :func:`distilsent.data.examples.parse_label_map`."""
    path, sep, spec = value.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"expected FILE=VALUES=LABEL;..., got {value!r}")
    try:
        return path, parse_label_map(spec)
    except DataError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def comma_names(value: str) -> tuple[str, ...]:
    found = tuple(name.strip() for name in value.split(",") if name.strip())
    if not found:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {value!r}")
    return found


# ---------------------------------------------------------------- a verb and the option groups verbs share


def add_verb(verbs, name: str, help: str, examples: str) -> argparse.ArgumentParser:
    """The sub-parser of ``distilsent NAME``: its one-line help, and its examples under ``--help``."""
    return verbs.add_parser(name, help=help, description=help, epilog=examples,
                            formatter_class=argparse.RawDescriptionHelpFormatter)


def backend_option(p: argparse.ArgumentParser, help: str = "inference backend (default: onnx)") -> None:
    p.add_argument("--backend", choices=tuple(BACKENDS), default="onnx", help=help)


def threads_option(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument("--threads", type=positive_int, default=None, help=help)


def data_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="format of the data files (default: from the extension; - on stdin is jsonl)")


def data_columns(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-column", default=None, help="text column (default: sentence/text/review/...)")
    p.add_argument("--label-column", default=None, help="label column (default: label/sentiment/...)")
    data_format(p)


def label_map_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label-map", action="append", type=label_map, metavar="FILE=VALUES=LABEL;...",
                   help="map FILE's raw labels, e.g. 'stars.csv=1,2=NEGATIVE;3=-;4,5=POSITIVE' (- drops the "
                        "rows; a value not mapped is an error); once per file")


def quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


# ---------------------------------------------------------------- how long texts are read


def long_text_options(p: argparse.ArgumentParser) -> None:
    """How long texts are read. Nothing given: the model's own reading (the one its config.json carries), else
    truncation; --long-text replaces it, --window, --stride or --aggregate alone adjust it (see :func:`reading`)."""
    p.add_argument("--long-text", choices=("truncate", "head_tail", "window"), default=None,
                   help="texts over the model's length (or --window): keep the first tokens, the first 128 + last "
                        "382, or run every window and aggregate (default: the model's own reading from its "
                        "config.json, else truncate)")
    p.add_argument("--window", type=positive_int, default=None, metavar="N",
                   help="with --long-text window: tokens per window, [CLS] and [SEP] included, at most the "
                        "model's (default: the model's reading, else the model's maximum)")
    p.add_argument("--stride", type=positive_int, default=None, metavar="N",
                   help="with --long-text window: a window starts every N tokens (default: half a window)")
    p.add_argument("--aggregate", choices=("mean", "max"), default=None,
                   help="with --long-text window: mean of the windows' scores weighted by their tokens, or "
                        "the most confident window (default: the model's reading, else mean)")


def reading(args: argparse.Namespace) -> Reading | None:
    """The long-text reading the flags ask for, or None when no reading flag was given: the model's own reading
    then applies. ``--long-text`` replaces the model's reading (the parts not given take their defaults); the
    other flags given alone adjust it, read from ``args.model``'s config.json, as ``Classifier.load`` does."""
    given = {name: getattr(args, name) for name in ("long_text", "window", "stride", "aggregate")}
    given = {name: value for name, value in given.items() if value is not None}
    if not given:
        return None
    if "long_text" in given:
        return Reading(**given)
    return model_reading(load_config(resolve(args.model))).override(**given)


def reading_options(reading: Reading | None) -> dict:
    """The keyword arguments of ``Classifier.load`` (and what passes them on) that give ``reading``."""
    return reading.options() if reading is not None else {}


def max_windows(p: argparse.ArgumentParser, refused: str = "an error (exit 1)") -> None:
    # The server's bound on one request: a 5,000-word review is ~100 windows of 128 tokens. Without it a
    # 10 MB line (~35,000 windows) runs for a quarter of an hour before anything is printed.
    limit = ServiceSettings().max_request_windows
    p.add_argument("--max-windows", type=positive_int, default=limit, metavar="N",
                   help=f"with --long-text window: a text that needs more than N windows is {refused}, told "
                        f"before it is read whole (default: {limit}, as serve's --max-request-windows)")


def over_window_limit_at(clf, texts: list[str], limit: int) -> int | None:
    """The index of the first text that ``clf``'s window reading would read as more than ``limit`` windows
    (``--max-windows``), found before any window is built; None when every text is within it."""
    if clf.long_text != "window":  # the reading given, else the model's own
        return None
    over = over_window_limit(clf.tokenizer, texts, limit, clf.max_length, stride=clf.stride, window=clf.window)
    return over[0] if over else None


def window_limit_error(where: str, clf, limit: int) -> InputError:
    return InputError(f"{where}: the text needs more than {limit} windows of "
                      f"{min(clf.window or clf.max_length, clf.max_length)} tokens; raise --max-windows, or pass "
                      f"--long-text truncate to read its first {clf.max_length} tokens")

"""The verbs that look at how a model behaves: ``eval`` (figures on labelled files), ``bias-probe`` (how the
score moves with a country or a name) and ``explain`` (which words made a prediction)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..data.examples import Source, read_examples, read_sources
from ..errors import InputError
from ..insight.explain import explain
from ..insight.probe import (
    BUILTIN,
    Probe,
    builtin_probe,
    read_templates,
    read_terms,
    run_probe,
    summary_markdown,
    update_card,
    write_report,
)
from ..insight.probe import pyplot as probe_pyplot
from ..model.checkpoint import resolve
from ..runtime.classifier import Classifier
from ..training.evaluate import evaluate, format_table, plot
from ..training.evaluate import pyplot as eval_pyplot
from .console import stdin_lines
from .options import (
    EMBEDDED,
    add_verb,
    backend_option,
    data_columns,
    label_map_option,
    long_text_options,
    max_windows,
    over_window_limit_at,
    positive_int,
    quiet,
    reading,
    reading_options,
    threads_option,
    window_limit_error,
)

EVAL_EXAMPLES = """examples:
  distilsent eval default ../shared/data/sst2/dev.tsv
  distilsent eval runs/sst2/best dev.csv --json --plots plots/
  distilsent eval default reviews.csv --long-text head_tail
  distilsent eval default sst2-dev.tsv imdb-val.csv stars.csv --label-map 'stars.csv=1,2=NEGATIVE;3=-;4,5=POSITIVE'"""


def add_eval(verbs) -> None:
    p = add_verb(verbs, "eval", "accuracy, precision, recall, F1, confusion matrix and calibration on labelled files",
                 EVAL_EXAMPLES)
    p.add_argument("model", metavar="MODEL", help="checkpoint directory, Hub id, or 'default'")
    p.add_argument("files", nargs="+", metavar="FILE", help="one or more labelled files; several are also "
                                                               "reported one by one")
    label_map_option(p)
    data_columns(p)
    backend_option(p)
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="texts per batch (default: the Classifier's)")
    threads_option(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--output", default=None, metavar="FILE", help="also write the JSON to FILE")
    p.add_argument("--plots", default=None, metavar="DIR", help="write confusion-matrix and reliability PNGs")
    long_text_options(p)
    max_windows(p)
    quiet(p)
    p.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> None:
    if args.plots:
        eval_pyplot()  # a missing matplotlib is reported now, not after the whole evaluation
    clf = Classifier.load(args.model, backend=args.backend, threads=args.threads, **reading_options(reading(args)))
    columns = {"text_column": args.text_column, "label_column": args.label_column, "fmt": args.format}
    maps = dict(args.label_map or [])
    sources = [Source(path, label_map=maps.pop(path, None), **columns) for path in args.files]
    if maps:
        raise InputError(f"--label-map names {', '.join(maps)}, which is not a file to evaluate")
    # One file is one source: its figures are the whole; several also get a table each.
    examples = read_sources(sources, labels=clf.labels) if len(sources) > 1 else \
        read_examples(sources[0].path, labels=clf.labels, label_map=sources[0].label_map, **columns)
    over = over_window_limit_at(clf, [e.text for e in examples], args.max_windows)
    if over is not None:
        where = f"{examples[over].source}: example" if len(sources) > 1 else f"{args.files[0]}: example"
        raise window_limit_error(f"{where} {over + 1}", clf, args.max_windows)
    result = evaluate(clf, examples, batch_size=args.batch_size, progress=not args.quiet)
    if args.plots:
        result["plots"] = [str(p) for p in plot(result, args.plots)]
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result) if args.json else format_table(result))


BIAS_PROBE_EXAMPLES = """examples:
  distilsent bias-probe --out probe/                       # countries and first names, CSV + summary + plots
  distilsent bias-probe --probe country --out probe/ --update-card --model ./my-model
  distilsent bias-probe --templates templates.txt --terms terms.txt --out probe/   # {term} in each template"""


def add_bias_probe(verbs) -> None:
    p = add_verb(verbs, "bias-probe", "fill neutral templates with countries or names and measure how P(positive) "
                                      "moves", BIAS_PROBE_EXAMPLES)
    p.add_argument("--out", required=True, metavar="DIR", help="writes <probe>.csv, summaries and plots here")
    p.add_argument("--model", default=None, help=EMBEDDED)
    p.add_argument("--probe", choices=("all", "country", "gender"), default="all", help="built-in probe (default: all)")
    p.add_argument("--templates", default=None, metavar="FILE",
                   help="one template per line with {term} (default: the built-in country templates)")
    p.add_argument("--terms", default=None, metavar="FILE",
                   help="one term per line, optionally TAB and a group (default: every country)")
    p.add_argument("--label", default="POSITIVE", help="the label whose probability is probed (default: POSITIVE)")
    p.add_argument("--update-card", action="store_true", help="put the summary into the model's README.md")
    p.add_argument("--no-plots", action="store_true", help="CSV and summaries only (no matplotlib needed)")
    backend_option(p)
    threads_option(p)
    p.set_defaults(run=run_bias_probe)


def run_bias_probe(args: argparse.Namespace) -> None:
    if not args.no_plots:
        probe_pyplot()  # a missing matplotlib is reported now, not after every sentence has been classified
    if args.templates or args.terms:
        country = builtin_probe("country")
        probes = [Probe("custom", read_templates(args.templates) if args.templates else country.templates,
                        read_terms(args.terms) if args.terms else country.terms)]
    else:
        probes = [builtin_probe(name) for name in (BUILTIN if args.probe == "all" else [args.probe])]
    clf = Classifier.load(args.model, backend=args.backend, threads=args.threads)
    summaries = []
    for probe in probes:
        result = run_probe(clf, probe, positive_label=args.label)
        written = write_report(result, args.out, plots=not args.no_plots)
        summary = result.summary()
        summaries.append(summary)
        print(json.dumps({"probe": probe.name, "spread": summary["spread"], "std": summary["std"],
                          "most_favoured": summary["most_favoured"], "least_favoured": summary["least_favoured"],
                          "files": {k: str(v) for k, v in written.items()}}, ensure_ascii=False))
    markdown = summary_markdown(summaries)
    (Path(args.out) / "summary.md").write_text(markdown, encoding="utf-8")
    if args.update_card:
        print(json.dumps({"card": str(update_card(resolve(args.model), markdown))}))


EXPLAIN_EXAMPLES = """examples:
  distilsent explain "the plot is thin, but the music is gorgeous"
  distilsent explain "a gripping, beautiful film" --method ig --html explain.html   # needs torch
  echo "not bad at all" | distilsent explain --json"""


def add_explain(verbs) -> None:
    p = add_verb(verbs, "explain", "per-word attributions for the predicted label: occlusion (ONNX) or integrated "
                                   "gradients", EXPLAIN_EXAMPLES)
    p.add_argument("text", nargs="*", metavar="TEXT", help="the text (default: read stdin)")
    p.add_argument("--model", default=None, help=EMBEDDED)
    p.add_argument("--method", choices=("occlusion", "ig"), default="occlusion",
                   help="occlusion (leave one word out, ONNX Runtime) or ig (integrated gradients, needs torch)")
    p.add_argument("--steps", type=positive_int, default=50, help="integration steps of ig (default: 50)")
    p.add_argument("--html", default=None, metavar="FILE", help="also write a self-contained HTML page")
    p.add_argument("--json", action="store_true", help="print words, attributions and the prediction as JSON")
    threads_option(p)
    p.set_defaults(run=run_explain)


def run_explain(args: argparse.Namespace) -> None:
    text = " ".join(args.text) if args.text else "\n".join(stdin_lines())
    result = explain(text, args.model, method=args.method, threads=args.threads, steps=args.steps)
    if args.html:
        Path(args.html).write_text(result.html(), encoding="utf-8")
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        print(result.terminal(colour=sys.stdout.isatty()))

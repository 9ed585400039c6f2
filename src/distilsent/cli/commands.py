"""``distilsent <verb>``: each verb parses its arguments, calls one library function and prints JSON lines.

Heavy modules (torch, onnxruntime, the server) are imported inside the verbs, so ``--help`` and a
prediction with the ONNX backend start fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from .. import __version__
from ..bulk.local import ScoreSettings, chunked, score_file
from ..bulk.ray_engine import score_on_ray
from ..data.examples import Source, parse_label_map, read_examples, read_sources, read_texts, source_weights
from ..data.tables import FORMATS, looks_binary, not_text, peek_head
from ..errors import DataError, DistilsentError, DistilsentWarning, InputError, MissingDependencyError
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
from ..insight.probe import (
    pyplot as probe_pyplot,
)
from ..model.checkpoint import resolve, save_model
from ..model.config import LABELS
from ..model.convert import convert_bert
from ..model.modelcard import model_card
from ..runtime.backends import BACKENDS
from ..runtime.cache import cache_entries, clear_cache
from ..runtime.classifier import Classifier
from ..runtime.embeddings import embed, output_format, write_embeddings
from ..runtime.export import PARITY_TEXTS, export
from ..runtime.long_text import AGGREGATIONS, STRATEGIES, over_window_limit
from ..serving.settings import ServiceSettings
from ..training.calibration import calibrate
from ..training.distill import DistillConfig, PrecomputedTeacher, distill, read_distill_examples, teacher_labels
from ..training.evaluate import evaluate, format_table, plot
from ..training.evaluate import pyplot as eval_pyplot
from ..training.fewshot import fewshot
from ..training.train import PRESETS, TrainConfig, initial_model, train

CHUNK = 1024  # texts piped into predict are classified and printed in chunks of this many lines


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


def _ranged(convert, low, high, what: str):
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


_port = _ranged(int, 1, 65535, "a port from 1 to 65535")
_probability = _ranged(float, 0, 1, "a probability between 0 and 1")


def _stdin_lines() -> Iterator[str]:
    """Lines of stdin as text; invalid UTF-8 is replaced (U+FFFD) and reported with its line number.
    Binary data (a NUL byte, or mostly invalid UTF-8, at the start) is refused before any line is read."""
    if looks_binary(peek_head(sys.stdin.buffer)):
        raise not_text("-")
    for number, raw in enumerate(sys.stdin.buffer, start=1):
        raw = raw.rstrip(b"\n").rstrip(b"\r")
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            print(f"distilsent: warning: line {number}: invalid UTF-8 replaced with U+FFFD", file=sys.stderr)
            yield raw.decode("utf-8", errors="replace")


def _long_text(args: argparse.Namespace) -> dict:
    return {"long_text": args.long_text, "stride": args.stride, "aggregate": args.aggregate, "window": args.window}


def long_text_options(p: argparse.ArgumentParser) -> None:
    """How long texts are read. Nothing given: the model's own reading (the one its config.json carries; the
    embedded model's is 128-token windows, the surest deciding), else truncation; --long-text replaces it."""
    p.add_argument("--long-text", choices=("truncate", "head_tail", "window"), default=None,
                   help="texts over the model's length (or --window): keep the first tokens, the first 128 + last "
                        "382, or run every window and aggregate (default: the model's own reading from its "
                        "config.json, else truncate)")
    p.add_argument("--window", type=_positive_int, default=None, metavar="N",
                   help="with --long-text window: tokens per window, [CLS] and [SEP] included, at most the "
                        "model's (default: the model's reading, else the model's maximum)")
    p.add_argument("--stride", type=_positive_int, default=None, metavar="N",
                   help="with --long-text window: a window starts every N tokens (default: half a window)")
    p.add_argument("--aggregate", choices=("mean", "max"), default=None,
                   help="with --long-text window: mean of the windows' scores weighted by their tokens, or "
                        "the most confident window (default: the model's reading, else mean)")


def _over_window_limit(clf, texts: list[str], args: argparse.Namespace) -> int | None:
    """The index of the first text that ``--long-text window`` would read as more than ``--max-windows``
    windows, found before any window is built; None when every text is within it."""
    if clf.long_text != "window":  # the reading given, else the model's own
        return None
    over = over_window_limit(clf.tokenizer, texts, args.max_windows, clf.max_length, stride=clf.stride,
                             window=clf.window)
    return over[0] if over else None


def _window_limit_error(where: str, clf, args: argparse.Namespace):
    return InputError(f"{where}: the text needs more than {args.max_windows} windows of "
                      f"{min(clf.window or clf.max_length, clf.max_length)} tokens; raise --max-windows, or pass "
                      f"--long-text truncate to read its first {clf.max_length} tokens")


def cmd_predict(args: argparse.Namespace) -> None:
    options = {k: v for k, v in (("batch_size", args.batch_size), ("max_length", args.max_length)) if v}
    clf = Classifier.load(args.model, backend=args.backend, threads=args.threads, **options, **_long_text(args))
    # Someone typing at a terminal waits for each answer; a pipe is read in chunks, which batches well.
    chunk = 1 if sys.stdin.isatty() else CHUNK
    chunks = [args.texts] if args.texts else chunked(_stdin_lines(), chunk)
    call = {} if args.top_k is False else {"top_k": args.top_k}
    if args.neutral_below is not None:
        call["neutral_below"] = args.neutral_below
    out = sys.stdout
    first_line = 1
    for texts in chunks:
        over = _over_window_limit(clf, texts, args)
        # The texts before a refused one are answered, so the output ends exactly where the error points.
        for result in clf(texts[:over], **call) if over != 0 else []:
            out.write(json.dumps(result, ensure_ascii=False) + "\n")
        out.flush()
        if over is not None:
            raise _window_limit_error(f"text {over + 1}" if args.texts else f"line {first_line + over}", clf, args)
        first_line += len(texts)


def cmd_export(args: argparse.Namespace) -> None:
    texts, labels = list(PARITY_TEXTS), None
    if args.parity_data:
        try:  # a comparison asked for that cannot run is an error, not a skipped line after the export
            import torch  # noqa: F401
        except ImportError:
            raise MissingDependencyError("--parity-data compares the export with the PyTorch model, which needs "
                                         "torch: pip install 'distilsent[torch]'") from None

        examples = read_examples(args.parity_data, fmt=args.format)
        texts, labels = [e.text for e in examples], [e.label for e in examples]
    result = export(args.model, args.out_dir, int8=args.int8, texts=texts, labels=labels, progress=not args.quiet)
    print(f"wrote {args.out_dir}")
    if result is not None:
        print(result.report())
    else:
        print("parity: skipped, the PyTorch reference needs torch: pip install 'distilsent[torch]'")


def _labels(value: str) -> tuple[str, ...]:
    labels = tuple(label.strip() for label in value.split(",") if label.strip())
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise argparse.ArgumentTypeError(f"expected two or more distinct comma-separated labels, got {value!r}")
    return labels


def _label_map(value: str) -> tuple[str, dict[str, str]]:
    """``FILE=VALUES=LABEL;...`` -> (FILE, mapping); see :func:`distilsent.data.examples.parse_label_map`."""
    path, sep, spec = value.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"expected FILE=VALUES=LABEL;..., got {value!r}")
    try:
        return path, parse_label_map(spec)
    except DataError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _names(value: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {value!r}")
    return names


def _train_config(args: argparse.Namespace, base, **more):
    """``base`` (a TrainConfig) with every training flag the user gave (see ``training_flags``) and ``more``."""
    given = {
        "learning_rate": args.lr, "batch_size": args.batch_size, "epochs": args.epochs,
        "warmup_steps": args.warmup_steps, "max_length": args.max_length, "seed": args.seed,
        "eval_every": args.eval_every, "ema_decay": args.ema_decay, "threads": args.threads,
        "weight_decay": args.weight_decay, "max_steps": args.max_steps, "long_text": args.long_text,
        "head": args.head, "precision": args.precision, **more,
    }
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


def cmd_train(args: argparse.Namespace) -> None:
    config = _train_config(args, PRESETS[args.preset] if args.preset else TrainConfig(),
                           lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, lora_targets=args.lora_targets)
    columns = {"text_column": args.text_column, "label_column": args.label_column, "fmt": args.format}
    maps = dict(args.label_map or [])
    sources = [Source.parse(spec, label_map=maps.pop(Source.parse(spec).path, None), **columns)
               for spec in args.train_files]
    if maps:
        raise InputError(f"--label-map names {', '.join(maps)}, which is not a training file")
    train_examples = read_sources(sources, labels=args.labels)
    dev_examples = read_examples(args.dev, labels=args.labels, **columns) if args.dev else None
    model, tokenizer = initial_model(args.model, args.labels, config.seed)
    files = [s.path for s in sources] + ([args.dev] if args.dev else [])
    data_files = [f for f in files if f != "-"]

    def card(model_config, metrics):
        return model_card(Path(args.out).name, model_config, metrics=metrics, train_config=config,
                          data_files=data_files, extra=f"Base model: `{args.model or 'all-MiniLM-L6-v2'}`.")

    summary = train(model, tokenizer, train_examples, dev_examples, config, args.out, card=card,
                    progress=not args.quiet, stop_after=args.stop_after,
                    weights=source_weights(sources, train_examples))
    if _stopped(summary, args):
        return
    print(json.dumps({"best": summary["best"], "model": str(Path(args.out) / "best"),
                      "examples_per_second": summary["examples_per_second"], "precision": summary["precision"]}))


def _stopped(summary: dict, args: argparse.Namespace) -> bool:
    """Report a run that --stop-after paused (the same command with a later --stop-after, or none, goes on)."""
    if not summary.get("stopped"):
        return False
    print(json.dumps({"stopped": True, "steps": summary["steps"], "total_steps": summary["total_steps"],
                      "best": summary["best"], "resume": str(Path(args.out) / "resume.pt")}))
    return True


def _read_logits(path: str):
    import numpy as np

    try:
        logits = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read the teacher's logits from {path} ({e})") from None
    if logits.ndim != 2 or logits.dtype.kind != "f":
        raise InputError(f"{path}: expected a float array of (rows, labels), got {logits.dtype} {logits.shape}")
    return logits


def cmd_distill(args: argparse.Namespace) -> None:
    config = _train_config(args, TrainConfig())
    options = DistillConfig(temperature=args.temperature, alpha_soft=args.alpha_soft, alpha_hard=args.alpha_hard,
                            alpha_cos=args.alpha_cos, teacher_backend=args.teacher_backend)
    labels = teacher_labels(args.teacher) if args.teacher else args.labels
    columns = {"text_column": args.text_column, "label_column": args.label_column, "labels": labels,
               "fmt": args.format}
    train_examples = read_distill_examples(args.train_file, **columns)
    teacher = args.teacher or PrecomputedTeacher(_read_logits(args.teacher_logits), labels, args.teacher_logits)
    dev_examples = read_examples(args.dev, **columns) if args.dev else None
    files = [args.train_file] + ([args.dev] if args.dev else [])
    summary = distill(teacher, train_examples, args.out, student=args.student, dev_examples=dev_examples,
                      config=config, options=options, logits_cache=args.teacher_cache, data_files=files,
                      progress=not args.quiet, stop_after=args.stop_after)
    if _stopped(summary, args):
        return
    print(json.dumps({"best": summary["best"], "model": str(Path(args.out) / "best"), "steps": summary["steps"],
                      "teacher_logits": summary["teacher_logits"],
                      "examples_per_second": summary["examples_per_second"]}))


def cmd_eval(args: argparse.Namespace) -> None:
    if args.plots:
        eval_pyplot()  # a missing matplotlib is reported now, not after the whole evaluation
    clf = Classifier.load(args.model, backend=args.backend, threads=args.threads, **_long_text(args))
    columns = {"text_column": args.text_column, "label_column": args.label_column, "fmt": args.format}
    maps = dict(args.label_map or [])
    sources = [Source(path, label_map=maps.pop(path, None), **columns) for path in args.files]
    if maps:
        raise InputError(f"--label-map names {', '.join(maps)}, which is not a file to evaluate")
    # One file is one source: its figures are the whole; several also get a table each.
    examples = read_sources(sources, labels=clf.labels) if len(sources) > 1 else \
        read_examples(sources[0].path, labels=clf.labels, label_map=sources[0].label_map, **columns)
    over = _over_window_limit(clf, [e.text for e in examples], args)
    if over is not None:
        where = f"{examples[over].source}: example" if len(sources) > 1 else f"{args.files[0]}: example"
        raise _window_limit_error(f"{where} {over + 1}", clf, args)
    result = evaluate(clf, examples, batch_size=args.batch_size, progress=not args.quiet)
    if args.plots:
        result["plots"] = [str(p) for p in plot(result, args.plots)]
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result) if args.json else format_table(result))


def cmd_calibrate(args: argparse.Namespace) -> None:
    result = calibrate(args.model, args.file, args.out, text_column=args.text_column, label_column=args.label_column,
                       fmt=args.format, backend=args.backend, threads=args.threads, **_long_text(args))
    print(json.dumps(result.as_dict()))


def cmd_convert(args: argparse.Namespace) -> None:
    model, tokenizer = convert_bert(args.bert_dir, args.labels, args.seed)
    card = model_card(Path(args.out).name, model.config,
                      extra=f"Converted from the BERT checkpoint `{args.bert_dir}`; the classification head is "
                            "untrained.")
    save_model(model, tokenizer, args.out, card=card)
    print(json.dumps({"model": str(args.out), "parameters": model.num_parameters()}))


def cmd_cache(args: argparse.Namespace) -> None:
    if args.action == "clear":
        removed, freed = clear_cache()
        print(json.dumps({"removed": removed, "bytes": freed}))
        return
    from datetime import datetime, timezone

    for entry in cache_entries():
        built = datetime.fromtimestamp(entry.built, timezone.utc).isoformat(timespec="seconds")
        print(json.dumps({"path": str(entry.path), "bytes": entry.bytes, "built": built,
                          "checkpoint": entry.checkpoint}))


def cmd_serve(args: argparse.Namespace) -> None:
    options = {setting.name: getattr(args, setting.name) for setting in dataclasses.fields(ServiceSettings)}
    options["allowed_hosts"] = tuple(options["allowed_hosts"] or ())
    settings = ServiceSettings(**options)
    from ..serving.server import serve

    serve(settings, log_level=args.log_level)


def cmd_bias_probe(args: argparse.Namespace) -> None:
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


def cmd_explain(args: argparse.Namespace) -> None:
    text = " ".join(args.text) if args.text else "\n".join(_stdin_lines())
    result = explain(text, args.model, method=args.method, threads=args.threads, steps=args.steps)
    if args.html:
        Path(args.html).write_text(result.html(), encoding="utf-8")
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        print(result.terminal(colour=sys.stdout.isatty()))


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that a long verb stops as on Ctrl-C (and says what is kept)."""


def _terminate(signum, frame) -> None:
    raise _Terminated


def cmd_score(args: argparse.Namespace) -> None:
    import signal

    settings = ScoreSettings(text_column=args.text_column, all_scores=args.all_scores, on_error=args.on_error,
                             prefix=args.prefix, chunk_rows=args.chunk_rows, batch_size=args.batch_size,
                             long_text=args.long_text, stride=args.stride, aggregate=args.aggregate,
                             window=args.window, embeddings=args.embeddings, max_windows=args.max_windows)
    files = {"progress": not args.quiet, "in_format": args.format, "out_format": args.output_format}
    previous = signal.signal(signal.SIGTERM, _terminate)
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


def cmd_embed(args: argparse.Namespace) -> None:
    import time

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


def cmd_fewshot(args: argparse.Namespace) -> None:
    examples = read_examples(args.train_file, text_column=args.text_column, label_column=args.label_column,
                             labels=args.labels, fmt=args.format)
    summary = fewshot(args.model, [e.text for e in examples], [e.label for e in examples], args.labels, args.out,
                      c=args.c, backend=args.backend, max_length=args.max_length,
                      data_files=[args.train_file] if args.train_file != "-" else [])
    print(json.dumps(summary))


EXAMPLES = {
    "embed": """examples:
  distilsent embed reviews.txt vectors.npy                      # one text per line; (n, dim) float32
  distilsent embed reviews.csv vectors.parquet --text-column body --pooling mean --normalize
  cat texts.txt | distilsent embed - hidden3.npy --layer 3""",
    "fewshot": """examples:
  distilsent fewshot twenty_examples.csv --out models/support-tickets --labels complaint,question,praise
  distilsent fewshot reviews.jsonl --out models/three --labels negative,neutral,positive --label-column rating
  distilsent predict --model models/support-tickets 'where is my order?'""",
    "bias-probe": """examples:
  distilsent bias-probe --out probe/                       # countries and first names, CSV + summary + plots
  distilsent bias-probe --probe country --out probe/ --update-card --model ./my-model
  distilsent bias-probe --templates templates.txt --terms terms.txt --out probe/   # {term} in each template""",
    "explain": """examples:
  distilsent explain "the plot is thin, but the music is gorgeous"
  distilsent explain "a gripping, beautiful film" --method ig --html explain.html   # needs torch
  echo "not bad at all" | distilsent explain --json""",
    "export": """examples:
  distilsent export default ./onnx-default --parity-data ../shared/data/sst2/dev.tsv
  distilsent export ./my-model ./my-model-int8 --int8 && distilsent predict --model ./my-model-int8 "great movie"
  distilsent export default ./default-int8 --int8""",
    "predict": """examples:
  distilsent predict "a gripping, beautiful film"
  printf 'great\\nawful\\n' | distilsent predict --top-k all
  distilsent predict --model ./my-model --batch-size 128 < reviews.txt > predictions.jsonl
  distilsent predict --neutral-below 0.7 < reviews.txt     # long texts: 128-token windows, the surest decides
  distilsent predict --model ./imdb-model --window 512 --aggregate mean < reviews.txt""",
    "train": """examples:
  distilsent train train.tsv --dev dev.tsv --out runs/sst2 --preset sst2 --lr 5e-5
  distilsent train reviews.csv --dev dev.csv --out runs/imdb --preset imdb --model distilbert-base-uncased
  cat data.jsonl | distilsent train - --out runs/mine --labels neg,neu,pos --text-column body
  distilsent train train.csv --dev dev.csv --out runs/lora --model runs/sst2/best --lora-rank 8 --lr 5e-4
  distilsent train train.tsv --out runs/sliced --preset sst2 --stop-after 1000   # again later: it goes on
"""
    "  distilsent train sst2.tsv:0.5 imdb.csv yelp.csv --label-map 'yelp.csv=1,2=NEGATIVE;3=-;4,5=POSITIVE'"
    " --out runs/mix",
    "distill": """examples:
  distilsent distill train.tsv --teacher runs/big/best --out runs/student --dev dev.tsv --temperature 2
  distilsent distill reviews.txt --teacher runs/big/best --out runs/unlabelled --student runs/student/best
  distilsent distill train.tsv --teacher-logits mpnet-logits.npy --out runs/from-mpnet
  distilsent distill train.tsv --teacher runs/wide/best --student ./distilbert-6 --out runs/cos --alpha-cos 1""",
    "eval": """examples:
  distilsent eval default ../shared/data/sst2/dev.tsv
  distilsent eval runs/sst2/best dev.csv --json --plots plots/
  distilsent eval default reviews.csv --long-text head_tail
  distilsent eval default sst2-dev.tsv imdb-val.csv stars.csv --label-map 'stars.csv=1,2=NEGATIVE;3=-;4,5=POSITIVE'""",
    "calibrate": """examples:
  distilsent calibrate default held-out.csv --out ./calibrated      # then: distilsent predict --model ./calibrated
  distilsent calibrate ./my-model dev.tsv --out ./my-model-calibrated --long-text truncate""",
    "convert": """examples:
  distilsent convert ./all-MiniLM-L6-v2 ./minilm-distilbert
  distilsent convert ./bert-base-uncased ./bert-as-distilbert --labels neg,neu,pos""",
    "score": """examples:
  distilsent score tickets.csv scored.csv --text-column body --on-error mark
  distilsent score reviews.parquet scored.parquet --all-scores --resume
  cat reviews.jsonl | distilsent score - - > scored.jsonl
  distilsent score s3://bucket/reviews.parquet s3://bucket/scored --engine ray --address auto --shards""",
    "cache": """examples:
  distilsent cache list                                # one JSON line per cached ONNX graph
  distilsent cache clear                               # remove them all; rebuilt on next use
  DISTILSENT_CACHE=/big/disk distilsent predict "fine"  # keep the cache elsewhere""",
    "serve": """examples:
  distilsent serve --port 8000
  curl -s localhost:8000/ -H 'content-type: application/json' \\
       -d '{"inputs": "a gripping film", "parameters": {"top_k": null}}'
  distilsent serve --model ./my-model --host 0.0.0.0 --allowed-hosts api.example.com --workers 2 --max-wait-ms 2""",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distilsent",
        description="English sentiment classification with DistilBERT.",
        epilog='example: distilsent predict "a gripping, beautiful film"',
    )
    parser.add_argument("--version", action="version", version=f"distilsent {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, help: str) -> argparse.ArgumentParser:
        return verbs.add_parser(
            name, help=help, description=help, epilog=EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def data_format(p: argparse.ArgumentParser) -> None:
        p.add_argument("--format", choices=FORMATS, default=None,
                       help="format of the data files (default: from the extension; - on stdin is jsonl)")

    def quiet(p: argparse.ArgumentParser) -> None:
        p.add_argument("--quiet", action="store_true", help="no progress on stderr")

    def max_windows(p: argparse.ArgumentParser, refused: str = "an error (exit 1)") -> None:
        # The server's bound on one request: a 5,000-word review is ~100 windows of 128 tokens. Without it a
        # 10 MB line (~35,000 windows) runs for a quarter of an hour before anything is printed.
        limit = ServiceSettings().max_request_windows
        p.add_argument("--max-windows", type=_positive_int, default=limit, metavar="N",
                       help=f"with --long-text window: a text that needs more than N windows is {refused}, told "
                            f"before it is read whole (default: {limit}, as serve's --max-request-windows)")

    p = verb("predict", "classify texts given as arguments, or one per line on stdin; JSON lines out")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify (default: read stdin)")
    p.add_argument("--model", default=None, help="checkpoint directory or Hub id (default: the embedded model)")
    p.add_argument("--backend", choices=tuple(BACKENDS), default="onnx",
                   help="onnx (ONNX Runtime, no torch needed) or torch (the PyTorch reference); default: onnx")
    p.add_argument("--top-k", type=_top_k, default=False, metavar="K|all",
                   help="print the K best labels (or all) as a list per text")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="texts per batch (default: the Classifier's)")
    p.add_argument("--max-length", type=_positive_int, default=None, help="truncate texts to this many tokens")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: all cores)")
    long_text_options(p)
    max_windows(p)
    p.add_argument("--neutral-below", type=_probability, default=None, metavar="P",
                   help="binary models: label NEUTRAL when the best score is below P (choose P from the "
                        "risk-coverage curve of eval --plots; default: off)")
    p.set_defaults(run=cmd_predict)

    def training_flags(p: argparse.ArgumentParser) -> None:
        """The training loop's settings, shared by train and distill (default: the preset's or TrainConfig's)."""
        p.add_argument("--lr", type=float, default=None, help="peak learning rate")
        p.add_argument("--batch-size", type=_positive_int, default=None)
        p.add_argument("--epochs", type=_positive_int, default=None)
        p.add_argument("--max-steps", type=_positive_int, default=None, metavar="STEPS",
                       help="stop after this many optimizer steps (default: every epoch); a warm-up that is not "
                            "shorter than the run is cut to 10%% of it")
        p.add_argument("--stop-after", type=_positive_int, default=None, metavar="STEPS",
                       help="pause once the run has made this many steps, resumable (the schedule stays the "
                            "whole run's): run the same command again to go on, e.g. in time-boxed slices")
        p.add_argument("--warmup-steps", type=int, default=None)
        p.add_argument("--max-length", type=_positive_int, default=None)
        p.add_argument("--weight-decay", type=float, default=None)
        p.add_argument("--seed", type=int, default=None)
        p.add_argument("--eval-every", type=int, default=None, metavar="STEPS")
        p.add_argument("--ema-decay", type=float, default=None, help="weight average decay, e.g. 0.999 (default: off)")
        p.add_argument("--threads", type=_positive_int, default=None)
        p.add_argument("--long-text", choices=("truncate", "head_tail"), default=None,
                       help="which --max-length tokens of a longer text to train on: the first (truncate, the "
                            "default) or the first --head and the last (head_tail, for reviews)")
        p.add_argument("--head", type=int, default=None, metavar="N",
                       help="head_tail: tokens kept from the start (default: a quarter of --max-length)")
        p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                       help="arithmetic of training: bf16 autocast or float32 (default auto: bf16 where the CPU "
                            "has AVX512_BF16 or AMX); saved weights are float32 either way")

    def label_map_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--label-map", action="append", type=_label_map, metavar="FILE=VALUES=LABEL;...",
                       help="map FILE's raw labels, e.g. 'stars.csv=1,2=NEGATIVE;3=-;4,5=POSITIVE' (- drops the "
                            "rows; a value not mapped is an error); once per file")

    def data_columns(p: argparse.ArgumentParser) -> None:
        p.add_argument("--text-column", default=None, help="text column (default: sentence/text/review/...)")
        p.add_argument("--label-column", default=None, help="label column (default: label/sentiment/...)")
        data_format(p)

    p = verb("train", "fine-tune on labelled CSV/TSV/JSONL/Parquet files (- reads JSONL from stdin)")
    p.add_argument("train_files", nargs="+", metavar="FILE[:WEIGHT]",
                   help="training files; several make one mixture, each sampled WEIGHT times its rows per epoch "
                        "(default 1; 0.5: a random half each epoch)")
    label_map_option(p)
    p.add_argument("--dev", default=None, metavar="FILE", help="dev set: evaluated during training, best kept")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory: best/, resume.pt, metrics.json")
    p.add_argument("--model", default=None,
                   help="DistilBERT or BERT checkpoint to start from (default: all-MiniLM-L6-v2, converted)")
    p.add_argument("--preset", choices=["sst2", "imdb"], default=None, help="a published recipe to start from")
    p.add_argument("--labels", type=_labels, default=LABELS,
                   help=f"label names in id order (default: {','.join(LABELS)})")
    data_columns(p)
    training_flags(p)
    p.add_argument("--lora-rank", type=_positive_int, default=None, metavar="R",
                   help="train rank-R LoRA adapters and the head instead of every weight; merged on save")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA scale numerator (default: 2 * rank)")
    p.add_argument("--lora-targets", type=_names, default=None, metavar="NAMES",
                   help="comma-separated layers to adapt (default: q_lin,k_lin,v_lin,out_lin,lin1,lin2)")
    quiet(p)
    p.set_defaults(run=cmd_train)

    p = verb("distill", "train a student on a teacher's softened predictions mixed with the labels; a file "
                        "without a label column (or .txt) learns from the teacher alone")
    p.add_argument("train_file", metavar="TRAIN_FILE",
                   help="CSV/TSV/JSONL/Parquet, labelled or texts only; .txt: a text per line")
    teacher = p.add_mutually_exclusive_group(required=True)
    teacher.add_argument("--teacher", metavar="DIR", help="any distilsent checkpoint; its labels are learned")
    teacher.add_argument("--teacher-logits", metavar="FILE.npy",
                         help="a teacher distilsent cannot load, given by its logits: float32 (rows, labels), row i "
                              "for row i of TRAIN_FILE (a row of NaN: no teacher, the label alone); label names from "
                              "--labels")
    p.add_argument("--labels", type=_labels, default=LABELS,
                   help=f"with --teacher-logits: label names in id order (default: {','.join(LABELS)})")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory: best/, resume.pt, metrics.json")
    p.add_argument("--student", default=None, metavar="DIR",
                   help="checkpoint to start from, with the teacher's labels or a bare encoder "
                        "(default: all-MiniLM-L6-v2, converted)")
    p.add_argument("--dev", default=None, metavar="FILE", help="labelled dev set: evaluated during training, best kept")
    p.add_argument("--temperature", type=float, default=2.0, help="softens both distributions (default: 2)")
    p.add_argument("--alpha-soft", type=float, default=0.5,
                   help="weight of T^2 * KL to the teacher's softened scores (default: 0.5)")
    p.add_argument("--alpha-hard", type=float, default=0.5,
                   help="weight of the cross-entropy to the file's labels (default: 0.5)")
    p.add_argument("--alpha-cos", type=float, default=0.0,
                   help="weight of the cosine loss between last hidden states, teacher and student of one "
                        "width and vocabulary; runs the teacher on torch every step (default: 0, off)")
    p.add_argument("--teacher-backend", choices=tuple(BACKENDS), default="onnx",
                   help="computes the teacher's logits once (default: onnx)")
    p.add_argument("--teacher-cache", default=None, metavar="DIR",
                   help="where the teacher's logits are kept (default: $DISTILSENT_CACHE/teacher-logits)")
    data_columns(p)
    training_flags(p)
    quiet(p)
    p.set_defaults(run=cmd_distill)

    p = verb("eval", "accuracy, precision, recall, F1, confusion matrix and calibration on labelled files")
    p.add_argument("model", metavar="MODEL", help="checkpoint directory, Hub id, or 'default'")
    p.add_argument("files", nargs="+", metavar="FILE", help="one or more labelled files; several are also "
                                                               "reported one by one")
    label_map_option(p)
    data_columns(p)
    p.add_argument("--backend", choices=tuple(BACKENDS), default="onnx", help="inference backend (default: onnx)")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="texts per batch (default: the Classifier's)")
    p.add_argument("--threads", type=_positive_int, default=None)
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--output", default=None, metavar="FILE", help="also write the JSON to FILE")
    p.add_argument("--plots", default=None, metavar="DIR", help="write confusion-matrix and reliability PNGs")
    long_text_options(p)
    max_windows(p)
    quiet(p)
    p.set_defaults(run=cmd_eval)

    p = verb("calibrate", "fit temperature scaling on a labelled file (not your test set) and write the "
                          "calibrated model: T folded into the classifier weights, T and ECE in its card")
    p.add_argument("model", metavar="MODEL", help="checkpoint directory, Hub id, or 'default'")
    p.add_argument("file", metavar="FILE", help="labelled CSV/TSV/JSONL/Parquet file to fit T on")
    p.add_argument("--out", required=True, metavar="DIR", help="directory of the calibrated model")
    data_columns(p)
    p.add_argument("--backend", choices=tuple(BACKENDS), default="onnx", help="inference backend (default: onnx)")
    p.add_argument("--threads", type=_positive_int, default=None)
    long_text_options(p)
    p.set_defaults(run=cmd_calibrate)

    p = verb("convert", "turn a BERT checkpoint into a DistilBERT-layout classifier (exact encoder)")
    p.add_argument("bert_dir", metavar="BERT_DIR")
    p.add_argument("out", metavar="OUT_DIR")
    p.add_argument("--labels", type=_labels, default=LABELS)
    p.add_argument("--seed", type=int, default=0, help="seed of the untrained head")
    p.set_defaults(run=cmd_convert)

    p = verb("export", "write a self-contained ONNX model directory (graph, tokenizer, config, card)")
    p.add_argument("model", metavar="MODEL", help="checkpoint directory or Hub id; 'default' for the embedded model")
    p.add_argument("out_dir", metavar="OUT_DIR", help="directory to write (created if missing)")
    p.add_argument("--int8", action="store_true",
                   help="dynamic int8 quantization of the encoder's weights (embeddings stay float32)")
    p.add_argument("--parity-data", metavar="FILE", default=None,
                   help="labelled file (TSV/CSV/JSONL/Parquet) to compare the export with the PyTorch model on: "
                        "max |logit difference|, label agreement, accuracy (default: a dozen built-in sentences)")
    data_format(p)
    quiet(p)
    p.set_defaults(run=cmd_export)

    p = verb("serve", "serve a model over HTTP (Hugging Face Inference API and TEI routes), batching requests")
    # A value outside a fixed set or range is a usage error (exit 2, listing the choices), told by argparse
    # before anything loads; ServiceSettings checks the same for callers in Python.
    choices = {"backend": tuple(BACKENDS), "long_text": STRATEGIES, "aggregate": AGGREGATIONS}
    for setting in dataclasses.fields(ServiceSettings):  # one source for the service's options and defaults
        flag, help = "--" + setting.name.replace("_", "-"), setting.metadata["help"]
        if setting.metadata.get("multiple"):
            p.add_argument(flag, action="append", metavar="NAME", help=f"{help}; repeat for more")
        else:
            shown = "" if setting.default is None or "(default" in help else f" (default: {setting.default})"
            kind = _port if setting.name == "port" else setting.metadata.get("type", type(setting.default))
            p.add_argument(flag, type=kind, choices=choices.get(setting.name), default=setting.default,
                           help=help + shown)
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(run=cmd_serve)

    p = verb("score", "score a whole CSV/TSV/JSONL/Parquet file (- for JSONL on stdin/stdout), keeping every column")
    p.add_argument("input", metavar="IN", help="file to score; its extension gives the format")
    p.add_argument("output", metavar="OUT", help="file to write (any of the formats; written at the end by a rename)")
    p.add_argument("--model", default=None, help="checkpoint directory or Hub id (default: the embedded model)")
    p.add_argument("--format", choices=FORMATS, default=None, help="format of IN (default: from its extension)")
    p.add_argument("--output-format", choices=FORMATS, default=None, help="format of OUT (default: from its extension)")
    p.add_argument("--text-column", default=None, help="text column (default: sentence/text/review/...)")
    p.add_argument("--all-scores", action="store_true", help="also one score_<LABEL> column per label")
    p.add_argument("--embeddings", nargs="?", const="cls", choices=("cls", "mean"), default=None, metavar="POOLING",
                   help="also an embedding column (JSONL/Parquet): the [CLS] vector (default) or the token mean")
    p.add_argument("--on-error", choices=("fail", "skip", "mark"), default="fail",
                   help="a row without text: stop (default), leave it out, or keep it with an error column")
    p.add_argument("--prefix", default="", help="prefix of the new column names, e.g. pred_ when IN has a label")
    p.add_argument("--long-text", choices=("truncate", "head_tail", "window"), default=None,
                   help="texts over the model's length: first tokens (default), head+tail, or sliding windows")
    p.add_argument("--window", type=_positive_int, default=None,
                   help="--long-text window: tokens per window (default: the model's 512)")
    p.add_argument("--stride", type=_positive_int, default=None, help="--long-text window: tokens between windows")
    p.add_argument("--aggregate", choices=("mean", "max"), default=None,
                   help="--long-text window: combine windows by token-weighted mean (default) or the surest one")
    max_windows(p, refused="a bad row (see --on-error)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="texts per batch (default: the model's)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads (default: all cores; with --engine ray: per actor, default 1)")
    p.add_argument("--chunk-rows", type=_positive_int, default=1000,
                   help="rows read, scored and written at a time; the unit --resume restarts from (default: 1000)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last finished chunk")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local (this process) or ray (Ray Data on a pool of actors; pip install 'distilsent[ray]')")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join, e.g. auto or ray://head:10001 (default: start a local Ray)")
    p.add_argument("--actors", type=_positive_int, default=None,
                   help="Ray: classifier actors, each loading the model once (default: CPUs / threads)")
    p.add_argument("--shards", action="store_true",
                   help="Ray: write OUT as a directory of shards from the workers, with a row column for order")
    p.set_defaults(run=cmd_score)

    p = verb("bias-probe", "fill neutral templates with countries or names and measure how P(positive) moves")
    p.add_argument("--out", required=True, metavar="DIR", help="writes <probe>.csv, summaries and plots here")
    p.add_argument("--model", default=None, help="checkpoint directory or Hub id (default: the embedded model)")
    p.add_argument("--probe", choices=("all", "country", "gender"), default="all", help="built-in probe (default: all)")
    p.add_argument("--templates", default=None, metavar="FILE",
                   help="one template per line with {term} (default: the built-in country templates)")
    p.add_argument("--terms", default=None, metavar="FILE",
                   help="one term per line, optionally TAB and a group (default: every country)")
    p.add_argument("--label", default="POSITIVE", help="the label whose probability is probed (default: POSITIVE)")
    p.add_argument("--update-card", action="store_true", help="put the summary into the model's README.md")
    p.add_argument("--no-plots", action="store_true", help="CSV and summaries only (no matplotlib needed)")
    p.add_argument("--backend", choices=tuple(BACKENDS), default="onnx", help="inference backend (default: onnx)")
    p.add_argument("--threads", type=_positive_int, default=None)
    p.set_defaults(run=cmd_bias_probe)

    p = verb("explain", "per-word attributions for the predicted label: occlusion (ONNX) or integrated gradients")
    p.add_argument("text", nargs="*", metavar="TEXT", help="the text (default: read stdin)")
    p.add_argument("--model", default=None, help="checkpoint directory or Hub id (default: the embedded model)")
    p.add_argument("--method", choices=("occlusion", "ig"), default="occlusion",
                   help="occlusion (leave one word out, ONNX Runtime) or ig (integrated gradients, needs torch)")
    p.add_argument("--steps", type=_positive_int, default=50, help="integration steps of ig (default: 50)")
    p.add_argument("--html", default=None, metavar="FILE", help="also write a self-contained HTML page")
    p.add_argument("--json", action="store_true", help="print words, attributions and the prediction as JSON")
    p.add_argument("--threads", type=_positive_int, default=None)
    p.set_defaults(run=cmd_explain)
    p = verb("embed", "write one embedding per text (.npy, or .parquet with the text) from any hidden state")
    p.add_argument("input", metavar="IN", help="texts: - or .txt (one per line), or a CSV/TSV/JSONL/Parquet file")
    p.add_argument("output", metavar="OUT", help="a .npy (float32 n x dim) or .parquet (text, embedding) file")
    p.add_argument("--model", default=None, help="checkpoint directory or Hub id (default: the embedded model)")
    p.add_argument("--backend", choices=tuple(BACKENDS), default="onnx", help="inference backend (default: onnx)")
    p.add_argument("--pooling", choices=("cls", "mean"), default="cls",
                   help="cls: the first token (what the head reads); mean: over the real tokens (default: cls)")
    p.add_argument("--layer", type=int, default=-1,
                   help="hidden state: 0 the embeddings, 1..n the blocks, negative from the end (default: -1)")
    p.add_argument("--normalize", action="store_true", help="scale every vector to unit length")
    p.add_argument("--text-column", default=None, help="text column of a table (default: sentence/text/review/...)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="texts per batch (default: the model's)")
    p.add_argument("--max-length", type=_positive_int, default=None, help="truncate texts to this many tokens")
    p.add_argument("--threads", type=_positive_int, default=None)
    quiet(p)
    p.set_defaults(run=cmd_embed)

    p = verb("fewshot", "fit a new head for your labels on a few examples each (frozen encoder); a normal model dir")
    p.add_argument("train_file", metavar="TRAIN_FILE", help="labelled CSV/TSV/JSONL/Parquet file (- reads JSONL)")
    p.add_argument("--out", required=True, metavar="DIR", help="model directory to write")
    p.add_argument("--model", default=None, help="the frozen base: directory or Hub id (default: the embedded model)")
    p.add_argument("--labels", type=_labels, default=LABELS,
                   help=f"label names in id order (default: {','.join(LABELS)})")
    p.add_argument("--text-column", default=None, help="text column (default: sentence/text/review/...)")
    p.add_argument("--label-column", default=None, help="label column (default: label/sentiment/...)")
    data_format(p)
    p.add_argument("--c", type=float, default=None, metavar="C",
                   help="inverse L2 strength of the logistic regression (default: cross-validated on the examples)")
    p.add_argument("--backend", choices=tuple(BACKENDS), default="onnx",
                   help="backend for the features (default: onnx)")
    p.add_argument("--max-length", type=_positive_int, default=None, help="truncate texts to this many tokens")
    p.set_defaults(run=cmd_fewshot)

    p = verb("cache", "list or clear the ONNX graphs built from checkpoints' weights "
                      "($DISTILSENT_CACHE, default ~/.cache/distilsent)")
    p.add_argument("action", choices=("list", "clear"), help="list: one JSON line per graph; clear: remove them")
    p.set_defaults(run=cmd_cache)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """distilsent's own warnings as one ``distilsent: warning: ...`` line; others as Python shows them."""
    if issubclass(category, DistilsentWarning):
        text = f"distilsent: warning: {message}\n"
    else:
        text = warnings.formatwarning(message, category, filename, lineno, line)
    (file or sys.stderr).write(text)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            args.run(args)
    except DistilsentError as e:
        print(f"distilsent: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        return 143 if isinstance(e, _Terminated) else 130  # 128 + the signal, as a shell reports it
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (e.g. `| head`); nothing left to report
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

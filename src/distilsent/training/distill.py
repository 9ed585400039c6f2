"""Knowledge distillation: a student trained on a teacher's softened predictions, mixed with the hard labels.

The loss of a batch (Hinton et al. 2015; the DistilBERT recipe for the hidden-state term)::

    alpha_soft * T^2 * KL(softmax(teacher / T) || softmax(student / T))
  + alpha_hard * cross-entropy(student, label)                 (rows that have a label)
  + alpha_cos  * (1 - cos(student's last hidden state, teacher's))   (real tokens; same width only)

The T^2 keeps the soft term's gradients the same size whatever the temperature (they shrink as 1/T^2).
The teacher's logits are computed once, by default on ONNX Runtime, and kept in a file keyed by the
teacher's files, the training texts and ``max_length`` (``$DISTILSENT_CACHE/teacher-logits/``): a
second run (another temperature, an interrupted run resumed) reads them back instead of paying the
teacher again, and a teacher interrupted half-way resumes from its chunks saved beside that file. The
hidden-state term needs the teacher's hidden states of every batch, so with ``alpha_cos > 0`` the
teacher also runs forward on PyTorch inside the loop: one teacher forward per step, about a third of
what a training step of a model of the teacher's size costs.

The loop itself (schedule, checkpoints, resume, progress, best model, card) is :func:`distilsent.train.train`;
this module gives it the loss. Texts without a label (``UNLABELLED``) learn from the teacher alone.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.examples import LABEL_COLUMNS, Example, columns, read_examples, read_texts
from ..errors import DistilsentError, InputError
from ..model.checkpoint import files_digest, load_config, load_model, load_state_dict, resolve
from ..model.config import LABELS
from ..model.modelcard import model_card
from ..progress import ProgressBar
from ..runtime.classifier import Classifier
from ..runtime.inference import Observer
from ..runtime.long_text import Reading
from ..runtime.onnx_graph import cache_dir
from .train import TrainConfig, initial_model, train

# distill()'s default config: TrainConfig is frozen, so sharing one instance is safe.
DEFAULT_TRAIN_CONFIG = TrainConfig()

UNLABELLED = -1  # the label id of a training text that has none: only the teacher teaches it

# Files of a checkpoint that decide its logits: any change to them is another teacher.
TEACHER_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "model.onnx", "tokenizer.json",
                 "vocab.txt", "tokenizer_config.json")
# The teacher's logits are saved every this many texts while they are computed (an hour or more for a large
# teacher on a large file), so an interrupted run loses at most one chunk; big enough to batch by length.
TEACHER_CHUNK = 4096


@dataclass(frozen=True)
class DistillConfig:
    """How the teacher teaches (the run's schedule is a :class:`~distilsent.training.train.TrainConfig`)."""

    temperature: float = 2.0
    alpha_soft: float = 0.5  # weight of the T^2-scaled KL to the teacher's softened distribution
    alpha_hard: float = 0.5  # weight of the cross-entropy to the file's labels
    alpha_cos: float = 0.0  # weight of the hidden-state cosine loss (teacher and student of one width)
    teacher_backend: str = "onnx"  # what computes the cached teacher logits: "onnx" or "torch"

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise InputError(f"temperature must be positive, got {self.temperature}")
        weights = (self.alpha_soft, self.alpha_hard, self.alpha_cos)
        if min(weights) < 0 or max(weights) == 0:
            raise InputError(f"the loss weights must be non-negative and not all zero, got soft {self.alpha_soft}, "
                             f"hard {self.alpha_hard}, cos {self.alpha_cos}")


# ---------------------------------------------------------------------------------------------- the loss


def soft_loss(student_logits, teacher_logits, temperature: float):
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch."""
    import torch.nn.functional as F

    t = temperature
    student = F.log_softmax(student_logits / t, dim=-1)  # (B, labels)
    teacher = F.log_softmax(teacher_logits / t, dim=-1)  # (B, labels)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * (t * t)


def hard_loss(student_logits, labels):
    """Cross-entropy over the rows that have a label (``UNLABELLED`` rows are left out); 0 when none has."""
    import torch.nn.functional as F

    labelled = labels != UNLABELLED
    if not bool(labelled.any()):
        return student_logits.sum() * 0.0  # keeps the graph (and the dtype) of a real loss
    return F.cross_entropy(student_logits[labelled], labels[labelled])


def hidden_loss(student_hidden, teacher_hidden, mask):
    """Mean of 1 - cos(student, teacher) over the real (unpadded) tokens of (B, T, D) hidden states."""
    import torch.nn.functional as F

    real = mask.bool()  # (B, T)
    return (1.0 - F.cosine_similarity(student_hidden[real], teacher_hidden[real], dim=-1)).mean()


def taught_loss(student_logits, teacher_logits, labels, temperature: float):
    """:func:`soft_loss` where a row has teacher logits; a row of NaN (no teacher for that text, see
    :class:`PrecomputedTeacher`) takes the cross-entropy to its label instead. Averaged over the whole batch,
    so every row weighs the same whether the teacher saw it or not."""
    import torch
    import torch.nn.functional as F

    taught = torch.isfinite(teacher_logits).all(dim=-1)  # (B,)
    if bool(taught.all()):
        return soft_loss(student_logits, teacher_logits, temperature)
    rows = len(student_logits)
    loss = F.cross_entropy(student_logits[~taught], labels[~taught], reduction="sum") / rows
    if bool(taught.any()):
        loss = loss + soft_loss(student_logits[taught], teacher_logits[taught], temperature) * (taught.sum() / rows)
    return loss


def distillation_loss(student_logits, teacher_logits, labels, options: DistillConfig, *,
                      student_hidden=None, teacher_hidden=None, mask=None):
    """The weighted sum of :func:`soft_loss` (:func:`taught_loss` for rows without a teacher),
    :func:`hard_loss` and (with hidden states) :func:`hidden_loss`."""
    loss = student_logits.new_zeros(())
    if options.alpha_soft:
        loss = loss + options.alpha_soft * taught_loss(student_logits, teacher_logits, labels, options.temperature)
    if options.alpha_hard:
        loss = loss + options.alpha_hard * hard_loss(student_logits, labels)
    if options.alpha_cos:
        loss = loss + options.alpha_cos * hidden_loss(student_hidden, teacher_hidden, mask)
    return loss


class Distillation:
    """The objective :func:`distilsent.train.train` optimizes instead of plain cross-entropy.

    ``teacher_logits`` (n, labels) and ``labels`` (n,) are indexed like the training examples; ``teacher``
    is the PyTorch teacher whose hidden states the cosine term needs (``None`` without that term).
    ``settings`` are part of what a resumed or repeated run is checked against.
    """

    def __init__(self, teacher_logits: np.ndarray, labels: Sequence[int], options: DistillConfig,
                 settings: dict, teacher=None):
        import torch

        if options.alpha_cos and teacher is None:
            raise InputError("the hidden-state loss (alpha_cos > 0) needs the teacher's PyTorch model")
        self.teacher_logits = torch.from_numpy(np.asarray(teacher_logits, dtype=np.float32))
        self.labels = torch.tensor(list(labels), dtype=torch.long)
        self.options, self.settings, self.teacher = options, settings, teacher

    def loss(self, model, ids, mask, batch):
        import torch

        index = torch.from_numpy(np.asarray(batch))
        targets, labels = self.teacher_logits[index].to(ids.device), self.labels[index].to(ids.device)
        if self.teacher is None:
            logits = model(ids, mask).float()  # (B, labels); float32 under bf16 autocast too
            return distillation_loss(logits, targets, labels, self.options)
        logits, hidden = model.forward_with_hidden_states(ids, mask)
        logits, hidden = logits.float(), [h.float() for h in hidden]
        if next(self.teacher.parameters()).device != ids.device:  # once: the run's device is known only now
            self.teacher.to(ids.device)
        with torch.no_grad():
            teacher_hidden = self.teacher.distilbert(ids, mask)[-1]  # (B, T, D)
        return distillation_loss(logits, targets, labels, self.options,
                                 student_hidden=hidden[-1], teacher_hidden=teacher_hidden, mask=mask)


# ------------------------------------------------------------------------------------ the teacher's logits


def teacher_digest(directory: Path) -> str:
    """SHA-256 over the files that decide a checkpoint's logits."""
    return files_digest(directory, TEACHER_FILES)


def logits_key(digest: str, texts: Sequence[str], max_length: int, long_text: str = "truncate",
               head: int | None = None) -> str:
    """The cache key of a teacher's logits: its files, every text in order, and how they were cut."""
    cut = f"{max_length}" if long_text == "truncate" else f"{max_length} {long_text} {head}"
    key = hashlib.sha256(f"{digest}\n{cut}\n".encode())
    for text in texts:
        key.update(text.encode("utf-8", "surrogatepass"))
        key.update(b"\x00")
    return key.hexdigest()


def default_logits_cache() -> Path:
    return cache_dir() / "teacher-logits"


def _save_array(array: np.ndarray, path: Path) -> None:
    """Write ``path`` by a rename, so a reader (or a run killed mid-write) never finds half a file."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _load_array(path: Path, rows: int) -> np.ndarray | None:
    """The (rows, labels) array saved at ``path``, or ``None`` when it is missing, damaged or of other size."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return array if array.ndim == 2 and len(array) == rows else None


def teacher_logits(directory: Path, texts: Sequence[str], max_length: int, *, long_text: str = "truncate",
                   head: int | None = None, backend: str = "onnx", threads: int | None = None,
                   progress: bool = True, parts: Path | None = None) -> np.ndarray:
    """The teacher's float32 logits (n, labels) of ``texts`` cut to ``max_length`` tokens as the student
    trains on them (``long_text`` "truncate" or "head_tail", see :class:`distilsent.training.train.TrainConfig`),
    in input order.

    With ``parts`` (a directory), the logits of every :data:`TEACHER_CHUNK` texts are saved there as they
    are done and read back instead of recomputed: an interrupted teacher resumes at its last whole chunk.
    """
    clf = Classifier.load(directory, backend=backend, threads=threads)
    with ProgressBar("teacher", unit="text", enabled=progress) as bar:
        runner = functools.partial(chunked_logits, run=clf.run, num_labels=clf.config.num_labels, parts=parts,
                                   progress=bar)
        return clf.infer(texts, Reading(long_text, head=head), max_length=max_length, runner=runner,
                         progress=bar).window_logits


def chunked_logits(sequences: Sequence[Sequence[int]], run, num_labels: int, *, parts: Path | None = None,
                   progress: Observer | None = None) -> np.ndarray:
    """float32 (n, num_labels) logits of token id lists, ``run(chunk, progress=...) -> (len(chunk), labels)``
    on every :data:`TEACHER_CHUNK` of them (``Classifier.run``: its planned batches), the runner
    ``Classifier.infer`` takes; with ``parts``, each chunk's logits are saved there and read back instead of
    recomputed. ``progress(done, total)`` hears of the sequences done, those read back included."""
    out = np.empty((len(sequences), num_labels), dtype=np.float32)
    for number, start in enumerate(range(0, len(sequences), TEACHER_CHUNK)):
        chunk = sequences[start : start + TEACHER_CHUNK]
        part = parts / f"{number}.npy" if parts is not None else None
        saved = _load_array(part, len(chunk)) if part is not None else None
        if saved is not None:
            out[start : start + len(chunk)] = saved
        else:
            heard = None if progress is None else lambda done, _, start=start: progress(start + done, len(sequences))
            out[start : start + len(chunk)] = run(chunk, progress=heard)
            if part is not None:
                _save_array(out[start : start + len(chunk)], part)
        if progress is not None:
            progress(start + len(chunk), len(sequences))
    return out


def cached_teacher_logits(directory: Path, texts: Sequence[str], max_length: int, *, long_text: str = "truncate",
                          head: int | None = None, cache: Path | None = None, digest: str | None = None,
                          backend: str = "onnx", threads: int | None = None,
                          progress: bool = True) -> tuple[np.ndarray, Path]:
    """(logits, file): read back from ``cache`` when this teacher, these texts and this cut were seen
    before, else computed by :func:`teacher_logits` (resuming from its saved chunks) and written there."""
    cache = Path(cache) if cache is not None else default_logits_cache()
    key = logits_key(digest or teacher_digest(directory), texts, max_length, long_text, head)
    path, parts = cache / f"{key}.npy", cache / f"{key}.parts"
    logits = _load_array(path, len(texts)) if path.is_file() else None
    if logits is not None:
        return logits, path
    try:
        parts.mkdir(parents=True, exist_ok=True)
        logits = teacher_logits(directory, texts, max_length, long_text=long_text, head=head, backend=backend,
                                threads=threads, progress=progress, parts=parts)
        _save_array(logits, path)
    except OSError as e:
        raise DistilsentError(f"cannot write the teacher's logits to {cache} ({e.strerror or e}); "
                              "pass another cache directory (--teacher-cache)") from None
    shutil.rmtree(parts, ignore_errors=True)  # the whole file now holds them
    return logits, path


# ------------------------------------------------------------------------------------------- data, models


def teacher_labels(teacher: str | os.PathLike) -> tuple[str, ...]:
    """The label names of a teacher checkpoint, in id order: the student learns these."""
    return tuple(load_config(resolve(teacher)).labels)


def read_distill_examples(path: str | os.PathLike, *, labels: Sequence[str] = LABELS, text_column: str | None = None,
                          label_column: str | None = None, fmt: str | None = None) -> list[Example]:
    """Training examples for distillation: a labelled file as :func:`~distilsent.data.examples.read_examples` reads it,
    or texts only (a ``.txt`` file, one per line, or a table without a label column), labelled ``UNLABELLED``."""
    path = str(path)
    labelled = path == "-" or label_column is not None
    if not labelled and Path(path).suffix.lower() != ".txt":
        labelled = any(name.lower() in LABEL_COLUMNS for name in columns(path, fmt=fmt))
    if labelled:
        return read_examples(path, text_column=text_column, label_column=label_column, labels=labels, fmt=fmt)
    texts = read_texts(path, text_column=text_column)
    if not texts:
        raise InputError(f"{path}: no texts")
    return [Example(text, UNLABELLED) for text in texts]


def _check_student(student: str | os.PathLike | None, labels: tuple[str, ...]) -> None:
    """A student that already has a classification head must have the teacher's labels."""
    if student is None:
        return
    directory = resolve(student)
    try:
        raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DistilsentError(f"cannot read {directory / 'config.json'} ({e})") from None
    if raw.get("model_type") == "bert" or "classifier.weight" not in load_state_dict(directory):
        return  # a bare encoder: it gets a new head with the teacher's labels
    own = tuple(raw.get("id2label", {}).get(str(i)) for i in range(len(raw.get("id2label", {}))))
    if own != labels:
        raise InputError(f"the student's labels ({', '.join(map(str, own))}) differ from the teacher's "
                         f"({', '.join(labels)}); start from a student with the teacher's labels or a bare encoder")


def _hidden_state_teacher(directory: Path, tokenizer, student_dim: int, texts: Sequence[str], max_length: int):
    """The teacher on PyTorch for the cosine term: it must be as wide as the student and read the student's
    token ids of these texts as its own (one vocabulary)."""
    teacher, teacher_tokenizer = load_model(directory)
    if teacher.config.dim != student_dim:
        raise InputError(f"the hidden-state loss needs teacher and student of one width; the teacher has "
                         f"{teacher.config.dim} dims, the student {student_dim} (set alpha_cos to 0)")
    if teacher_tokenizer.encode(texts, max_length) != tokenizer.encode(texts, max_length):
        raise InputError("the hidden-state loss needs teacher and student with one vocabulary; they tokenize the "
                         "training texts differently (set alpha_cos to 0)")
    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


@dataclass(frozen=True)
class PrecomputedTeacher:
    """A teacher given by its logits, for a model distilsent cannot load (another architecture, such as the
    MPNet that scripts/build_default_model.py fine-tunes with ``transformers``), computed on the same texts.

    ``logits`` is (n, labels) float32, row i for training example i; a row of NaN means that text has no
    teacher and learns from its label alone. ``name`` is how the model card names the teacher.
    """

    logits: np.ndarray
    labels: tuple[str, ...]
    name: str


def _precomputed_logits(teacher: PrecomputedTeacher, train_examples: list[Example], options: DistillConfig):
    logits = np.asarray(teacher.logits, dtype=np.float32)
    if logits.shape != (len(train_examples), len(teacher.labels)):
        raise InputError(f"the teacher's logits are {logits.shape}, expected one row of {len(teacher.labels)} per "
                         f"training text ({len(train_examples)})")
    untaught = ~np.isfinite(logits).all(axis=1)
    orphans = [i for i in np.flatnonzero(untaught) if train_examples[i].label == UNLABELLED]
    if orphans:
        raise InputError(f"training text {orphans[0]} has neither a label nor teacher logits")
    if options.alpha_cos:
        raise InputError("the hidden-state loss needs a teacher checkpoint, not precomputed logits "
                         "(set alpha_cos to 0)")
    return logits, hashlib.sha256(logits.tobytes()).hexdigest()


def distill(
    teacher: str | os.PathLike | PrecomputedTeacher,
    train_examples: list[Example],
    out_dir: str | os.PathLike,
    *,
    student: str | os.PathLike | None = None,
    dev_examples: list[Example] | None = None,
    config: TrainConfig = DEFAULT_TRAIN_CONFIG,
    options: DistillConfig = DistillConfig(),
    logits_cache: str | os.PathLike | None = None,
    data_files: Sequence[str | os.PathLike] = (),
    progress: bool = True,
    stop_after: int | None = None,
) -> dict:
    """Distil ``teacher`` (any distilsent checkpoint, or a :class:`PrecomputedTeacher`) into ``student``
    (default: all-MiniLM-L6-v2, as in ``train``) on ``train_examples`` (``UNLABELLED`` ones learn from the
    teacher only).

    Runs :func:`distilsent.train.train` with the distillation loss: ``OUT/best``, ``metrics.json``,
    resume after an interruption and the model card are the same as there. Returns its summary, plus
    ``teacher_logits`` (the cache file; ``None`` for a precomputed teacher).
    """
    if not train_examples:
        raise InputError("no training examples")
    hidden_teacher, logits_file = None, None
    precomputed = isinstance(teacher, PrecomputedTeacher)
    if precomputed:
        labels, teacher_name = tuple(teacher.labels), teacher.name
        logits, digest = _precomputed_logits(teacher, train_examples, options)
    else:
        teacher_dir, teacher_name = resolve(teacher), str(teacher)
        labels = teacher_labels(teacher_dir)
    _check_student(student, labels)
    model, tokenizer = initial_model(None if student is None else str(student), labels, config.seed)
    if not precomputed:
        digest = teacher_digest(teacher_dir)
        logits, logits_file = cached_teacher_logits(
            teacher_dir, [e.text for e in train_examples], config.max_length, long_text=config.long_text,
            head=config.head, cache=logits_cache, digest=digest, backend=options.teacher_backend,
            threads=config.threads, progress=progress)
        if logits.shape[1] != len(labels):
            raise DistilsentError(f"{logits_file} holds {logits.shape[1]} logits per text for {len(labels)} labels")
        if options.alpha_cos:
            hidden_teacher = _hidden_state_teacher(teacher_dir, tokenizer, model.config.dim,
                                                   [e.text for e in train_examples], config.max_length)
    # What a resumed or repeated run must share: the loss and the teacher's files (not where they lie, nor
    # which backend computed the logits, which agree to float rounding).
    settings = {**{k: v for k, v in dataclasses.asdict(options).items() if k != "teacher_backend"},
                "teacher_sha256": digest}
    objective = Distillation(logits, [e.label for e in train_examples], options, settings, hidden_teacher)

    unlabelled = sum(e.label == UNLABELLED for e in train_examples)
    untaught = int((~np.isfinite(logits).all(axis=1)).sum())
    extra = (f"Distilled from the teacher `{teacher_name}` (temperature {options.temperature}; loss weights: soft "
             f"{options.alpha_soft}, hard {options.alpha_hard}, hidden-state cosine {options.alpha_cos}); "
             f"{unlabelled} of {len(train_examples)} training texts had no label and learned from the teacher "
             f"alone" + (f", {untaught} had no teacher and learned from their label alone" if untaught else "") +
             f". Student started from `{student or 'all-MiniLM-L6-v2'}`.")
    files = [f for f in data_files if str(f) != "-"]

    def card(model_config, metrics):
        return model_card(Path(out_dir).name, model_config, metrics=metrics,
                          train_config={**dataclasses.asdict(config), "distillation": settings},
                          data_files=files, extra=extra)

    summary = train(model, tokenizer, train_examples, dev_examples, config, out_dir, card=card, progress=progress,
                    objective=objective, stop_after=stop_after)
    return {**summary, "teacher_logits": str(logits_file) if logits_file else None}

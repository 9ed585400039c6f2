"""A model directory's files, and the one writer of them.

A model directory (Hugging Face layout) holds ``config.json``, the weights (``model.safetensors``; older
checkpoints have ``pytorch_model.bin``, which is only ever read), the tokenizer (``tokenizer.json`` and/or
``vocab.txt``, ``tokenizer_config.json``, ``special_tokens_map.json``), the model card ``README.md`` and, in
an export, the ONNX graph ``model.onnx``. Every verb that makes one (save, train, convert, calibrate,
fewshot, export) writes it through :func:`writing`, under one rule:

- written, never copied: ``config.json`` (from a :class:`DistilBertConfig`), the weights (safetensors, each
  tensor in the dtype it is given in), the card, and the caller's own files (an export's graph);
- copied from a source directory: its tokenizer files and nothing else. Its weights and card describe the
  model before the change, a graph of it would compute the old weights' logits, and whatever else it holds
  (training state, caches, other frameworks' weights) is not part of a model;
- in an output directory that already holds a model, every model file the new model does not have is
  removed (a graph of the old weights, a pickle beside the new safetensors, the old card); files that are
  not model files stay.

The files are written into a staging directory inside the output and moved into place once all are
written. ``config.json`` is removed first and moved in last: an interrupted write leaves a directory
without a config, which does not load, never a mix of two models that does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import CheckpointError, InputError

if TYPE_CHECKING:
    from .config import DistilBertConfig
    from .tokenizer import Tokenizer

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
PICKLE_NAME = "pytorch_model.bin"
TOKENIZER_NAMES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
VOCABULARY_NAMES = ("tokenizer.json", "vocab.txt")  # a tokenizer loads from either
CARD_NAME = "README.md"
ONNX_NAME = "model.onnx"
# Every file distilsent reads from a model directory: what a new model written in its place replaces or removes.
MODEL_FILES = (CONFIG_NAME, SAFETENSORS_NAME, PICKLE_NAME, ONNX_NAME, CARD_NAME, *TOKENIZER_NAMES)
STAGING_PREFIX = ".distilsent-writing-"


def umask() -> int:
    current = os.umask(0)  # reading the umask means setting it; put it back at once
    os.umask(current)
    return current


class ModelWriter:
    """A model directory being written: its files go to the staging directory :attr:`path` (where a caller
    writes files of its own, and may load the model from) until :meth:`commit` moves them into :attr:`out`."""

    def __init__(self, out: Path, path: Path):
        self.out = out
        self.path = path

    def write_config(self, config: "DistilBertConfig") -> None:
        config.to_json(self.path / CONFIG_NAME)

    def write_weights(self, tensors: Mapping) -> None:
        """``model.safetensors`` from numpy arrays or torch tensors, each stored in its own dtype."""
        path = self.path / SAFETENSORS_NAME
        if all(isinstance(tensor, np.ndarray) for tensor in tensors.values()):
            from safetensors.numpy import save_file

            contiguous = {name: np.ascontiguousarray(tensor) for name, tensor in tensors.items()}
        else:
            from safetensors.torch import save_file

            # clone: safetensors refuses tensors that share memory
            contiguous = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in tensors.items()}
        save_file(contiguous, str(path), metadata={"format": "pt"})
        # safetensors writes through a private temporary file (mode 0600); give the weights the mode every
        # other file of the directory gets from the umask (0644 by default), so that others can read the model.
        path.chmod(0o666 & ~umask())

    def write_tokenizer(self, tokenizer: "Tokenizer") -> None:
        tokenizer.save(self.path)

    def carry_tokenizer(self, source: Path) -> None:
        """Copy the tokenizer files of the model directory ``source``: the only files taken from another."""
        if not any((source / name).is_file() for name in VOCABULARY_NAMES):
            raise CheckpointError(f"tokenizer: {source} has neither tokenizer.json nor vocab.txt")
        for name in TOKENIZER_NAMES:
            if (source / name).is_file():
                shutil.copyfile(source / name, self.path / name)

    def write_card(self, card: str) -> None:
        (self.path / CARD_NAME).write_text(card, encoding="utf-8")

    def commit(self) -> Path:
        """Move the written files into :attr:`out`, removing the model files of whatever model was there."""
        written = {path.name for path in self.path.iterdir()}
        lacking = [what for what, names in (("a config", (CONFIG_NAME,)), ("a tokenizer", VOCABULARY_NAMES),
                                            ("weights or a graph", (SAFETENSORS_NAME, ONNX_NAME)))
                   if not written & set(names)]
        if lacking:
            raise CheckpointError(f"not writing {self.out}: the model lacks {' and '.join(lacking)}")
        (self.out / CONFIG_NAME).unlink(missing_ok=True)  # first: until the new one is in, nothing loads here
        for name in MODEL_FILES:
            if name not in written:
                (self.out / name).unlink(missing_ok=True)
        for name in sorted(written - {CONFIG_NAME}):
            os.replace(self.path / name, self.out / name)
        os.replace(self.path / CONFIG_NAME, self.out / CONFIG_NAME)
        return self.out


@contextlib.contextmanager
def writing(out: str | os.PathLike) -> Iterator[ModelWriter]:
    """Write the model directory ``out``: the block writes its files through the yielded :class:`ModelWriter`,
    which commits them when the block ends; when the block raises, ``out`` is left as it was."""
    out = Path(out)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    except OSError as e:
        raise InputError(f"cannot create the output directory {out} ({e.strerror or e})") from None
    try:
        writer = ModelWriter(out, staging)
        yield writer
        writer.commit()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):  # not empty: the commit moved some files in before it failed
                out.rmdir()
        raise
    staging.rmdir()

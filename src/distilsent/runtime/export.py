"""The ``export`` verb: write a self-contained ONNX model directory and report its parity with PyTorch.

The graph itself (built from the weights, int8, the cache) is :mod:`distilsent.runtime.onnx_graph`'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, MissingDependencyError
from ..model.checkpoint import load_config, resolve
from ..model.directory import writing
from ..progress import ProgressBar
from .classifier import Classifier
from .long_text import Reading
from .onnx_graph import ONNX_NAME, write_onnx

# Compared with the PyTorch model when no labelled file is given: short, long, mixed, odd.
PARITY_TEXTS = (
    "a gripping, beautiful film",
    "great movie",
    "the worst film i have seen in years, a boring mess from start to finish",
    "not bad at all",
    "it's not that it was bad, but i wanted to love it and never did.",
    "an uneven, occasionally funny comedy that overstays its welcome by half an hour",
    "",
    "!!!",
    "the acting is superb, the script is clever and the score is unforgettable; see it twice " * 8,
    "Ça ne vaut pas le détour.",
    "meh",
    "I laughed, I cried, I left the theatre a better person.",
)


@dataclass(frozen=True)
class Parity:
    """How an exported graph compares with the PyTorch model on the same texts."""

    texts: int
    max_abs_diff: float
    label_agreement: float
    accuracy_torch: float | None = None
    accuracy_onnx: float | None = None

    def report(self) -> str:
        lines = [
            f"parity on {self.texts} texts: max |logit difference| {self.max_abs_diff:.3g}, "
            f"label agreement {100 * self.label_agreement:.2f}%"
        ]
        if self.accuracy_torch is not None:
            lines.append(
                f"accuracy: torch {100 * self.accuracy_torch:.2f}%, onnx {100 * self.accuracy_onnx:.2f}% "
                f"({100 * (self.accuracy_onnx - self.accuracy_torch):+.2f} points)"
            )
        return "\n".join(lines)


def parity(reference, candidate, texts: list[str], labels: list[int] | None = None, *,
           progress: bool = False) -> Parity:
    """Compare two classifiers' logits on ``texts``, each text's first tokens (and their accuracy when
    ``labels`` are given).

    ``progress`` shows the texts done by both on stderr: the PyTorch reference on a dev set takes a while.
    """
    with ProgressBar("parity", unit="text", enabled=progress, total=2 * len(texts)) as bar:
        want, got = (c.infer(texts, Reading(), progress=bar).window_logits for c in (reference, candidate))
    agree = want.argmax(-1) == got.argmax(-1)
    accuracies = {}
    if labels is not None:
        gold = np.asarray(labels)
        accuracies = {
            "accuracy_torch": float((want.argmax(-1) == gold).mean()),
            "accuracy_onnx": float((got.argmax(-1) == gold).mean()),
        }
    return Parity(len(texts), float(np.abs(want - got).max()), float(agree.mean()), **accuracies)


def export(
    path_or_id,
    out_dir: str | os.PathLike,
    *,
    int8: bool = False,
    texts: list[str] | None = None,
    labels: list[int] | None = None,
    progress: bool = False,
) -> Parity | None:
    """Write a self-contained ONNX model directory (graph, config, tokenizer, card) from a checkpoint.

    With ``texts`` the export is compared with the PyTorch model on them and the result is returned and
    written into the card; without torch installed that comparison is skipped and ``None`` returned.
    ``progress`` shows that comparison's progress on stderr. A model already in ``out_dir`` is replaced (see
    :mod:`distilsent.model.directory`); the source itself cannot be.
    """
    directory = resolve(path_or_id)
    config = load_config(directory)
    if Path(out_dir).resolve() == directory.resolve():
        raise InputError(f"the export must go to a new directory, not over its source {directory}")
    with writing(out_dir) as written:  # the parity check below loads the export before it is moved into place
        write_onnx(directory, config, written.path / ONNX_NAME, int8=int8)
        written.write_config(config)
        written.carry_tokenizer(directory)
        result = None
        if texts:
            try:
                reference = Classifier.load(directory, backend="torch")
            except MissingDependencyError:
                reference = None  # exporting needs no torch; only this comparison does
            if reference is not None:
                exported = Classifier.load(written.path, backend="onnx")
                result = parity(reference, exported, texts, labels, progress=progress)
        card_path = directory / "README.md"
        source_card = card_path.read_text(encoding="utf-8") if card_path.is_file() else ""
        written.write_card(export_card(source_card, directory.name, int8=int8, parity=result))
    return result


# Sections of the source's card about the model itself, which hold for its export too. Its metrics and
# training details describe the float32 PyTorch weights and are left out.
CARRIED_SECTIONS = ("Intended use and limitations", "Base model")


def export_card(source_card: str, fallback_name: str, *, int8: bool, parity: Parity | None) -> str:
    """The export's own ``README.md``: what it is, how to load it, its parity figures, the source's caveats."""
    front, body = "", source_card
    if source_card.startswith("---\n") and "\n---" in source_card[4:]:
        front, body = source_card[4:].split("\n---", 1)
    license = next((line.split(":", 1)[1].strip() for line in front.splitlines() if line.startswith("license:")), None)
    name = next((line[2:].strip() for line in body.splitlines() if line.startswith("# ")), fallback_name)
    kind = "int8" if int8 else "float32"
    lines = ["---"] + ([f"license: {license}"] if license else []) + [
        "language:", "- en", "library_name: onnxruntime", "pipeline_tag: text-classification",
        "tags:", "- text-classification", "- onnx", "- distilsent"] + (["- int8"] if int8 else []) + ["---", ""]
    lines += [
        f"# {name} (ONNX, {kind})",
        "",
        f"`{name}` as one ONNX Runtime graph, `{ONNX_NAME}`, with its `config.json` and tokenizer: "
        + ("the encoder's products in int8: weights per output channel (7-bit, so that CPUs without VNNI compute "
           "them exactly), activations per token at run time (so a text's scores do not depend on the texts "
           "batched with it); the embeddings, the attention and the classification head float32. "
           if int8 else "float32, as trained. ")
        + "It uses ONNX Runtime's fused operators (com.microsoft); inputs `input_ids` and `attention_mask` (int64, "
        "right padding, dynamic batch and sequence axes), output `logits`.",
        "",
        "It loads with `distilsent.Classifier.load(path)` (needs onnxruntime, tokenizers and numpy; no torch). It "
        "holds no PyTorch weights, so it does not load in `transformers`: use the source checkpoint for that.",
        "",
        "## Parity with the source model",
        "",
    ]
    if parity is None:
        lines.append("Not measured: the export was made without PyTorch, which the float32 reference needs.")
    else:
        lines.append(f"This {kind} graph against the float32 PyTorch model, on the same texts, when it was exported:")
        lines += [""] + [f"- {line}" for line in parity.report().splitlines()]
    sections = {part.split("\n", 1)[0].strip(): part for part in body.split("\n## ")[1:]}
    for title in CARRIED_SECTIONS:
        if title in sections:
            lines += ["", "## " + sections[title].rstrip() + f"\n\n(From the card of `{name}`.)"]
    return "\n".join(lines) + "\n"

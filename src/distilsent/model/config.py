"""DistilBERT architecture configuration, read from and written to a Hugging Face ``config.json``.

Only what defines the architecture and its labels lives here; run-time choices (batch size, backend,
threads) are arguments of the code that runs the model and are never saved. No torch import.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

ACTIVATIONS = ("gelu", "relu")
PROBLEM_TYPES = (None, "single_label_classification", "multi_label_classification", "regression")


# Binary sentiment's labels in id order: the default of a new model, of `train`/`convert` and of data files.
LABELS = ("NEGATIVE", "POSITIVE")


def _default_id2label() -> dict[int, str]:
    return dict(enumerate(LABELS))


@dataclass(frozen=True)
class DistilBertConfig:
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    sinusoidal_pos_embds: bool = False
    n_layers: int = 6
    n_heads: int = 12
    dim: int = 768
    hidden_dim: int = 3072
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation: str = "gelu"
    seq_classif_dropout: float = 0.2
    initializer_range: float = 0.02
    pad_token_id: int = 0
    id2label: dict[int, str] = field(default_factory=_default_id2label)
    label2id: dict[str, int] = field(default_factory=dict)
    problem_type: str | None = None
    # distilsent's own settings that travel with the model, in a block transformers ignores: {"reading": {...}},
    # the long-text reading the model was made for (distilsent.runtime.long_text.Reading).
    distilsent: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_position_embeddings", "n_layers", "n_heads", "dim", "hidden_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config: {name} must be a positive integer, got {value!r}")
        if self.dim % self.n_heads:
            raise ConfigError(f"config: dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"config: activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        for name in ("dropout", "attention_dropout", "seq_classif_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(f"config: {name} must be in [0, 1), got {value!r}")
        if self.problem_type not in PROBLEM_TYPES:
            raise ConfigError(f"config: problem_type must be one of {PROBLEM_TYPES}, got {self.problem_type!r}")
        if not isinstance(self.distilsent, dict):
            raise ConfigError(f"config: distilsent must be an object, got {self.distilsent!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"config: pad_token_id {self.pad_token_id} is outside the vocabulary")
        try:
            id2label = {int(k): str(v) for k, v in self.id2label.items()}
        except (TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"config: id2label must map integer ids to names ({e})") from None
        if sorted(id2label) != list(range(len(id2label))) or not id2label:
            raise ConfigError(f"config: id2label ids must be 0..n-1, got {sorted(id2label)}")
        if len(set(id2label.values())) != len(id2label):
            raise ConfigError(f"config: id2label names must be distinct, got {list(id2label.values())}")
        label2id = {name: i for i, name in id2label.items()}
        if self.label2id and {str(k): int(v) for k, v in self.label2id.items()} != label2id:
            raise ConfigError("config: label2id does not invert id2label")
        object.__setattr__(self, "id2label", dict(sorted(id2label.items())))
        object.__setattr__(self, "label2id", label2id)

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def labels(self) -> list[str]:
        return [self.id2label[i] for i in range(self.num_labels)]

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def flops_per_token(self, length: float) -> float:
        """Floating-point operations of one encoder forward pass per token, in sequences of ``length`` tokens.

        Counts the matrix multiplies (2 per multiply-add): projections and feed-forward, plus the two
        attention products that grow with the length; the one-token head is negligible.
        """
        d, f = self.dim, self.hidden_dim
        return self.n_layers * (2 * (4 * d * d + 2 * d * f) + 4 * length * d)

    def replace(self, **changes: Any) -> "DistilBertConfig":
        if "id2label" in changes and "label2id" not in changes:
            changes["label2id"] = {}
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DistilBertConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"config: expected a JSON object, got {type(data).__name__}")
        model_type = data.get("model_type", "distilbert")
        if model_type != "distilbert":
            raise ConfigError(f"config: model_type is {model_type!r}, expected 'distilbert'")
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        if "id2label" not in data and "num_labels" in data:
            known["id2label"] = {i: f"LABEL_{i}" for i in range(int(data["num_labels"]))}
        try:
            return cls(**known)
        except TypeError as e:
            raise ConfigError(f"config: {e}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> "DistilBertConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config: {path} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config: {path} is not valid JSON ({e})") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["id2label"] = {str(i): name for i, name in self.id2label.items()}
        if self.problem_type is None:
            del data["problem_type"]
        if not self.distilsent:
            del data["distilsent"]
        # What transformers needs to pick the right class when it loads what we save.
        data["model_type"] = "distilbert"
        data["architectures"] = ["DistilBertForSequenceClassification"]
        # distilsent computes in float32 whatever precision the weights are stored in; transformers 5 loads a
        # model in the dtype its config names ("auto" is its default), so without this a float16 file would
        # run in float16 there: several times slower on CPU, and scores off by about 1e-3.
        data["dtype"] = "float32"
        return dict(sorted(data.items()))

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

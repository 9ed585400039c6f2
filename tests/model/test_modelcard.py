import pytest

from distilsent.model.config import DistilBertConfig
from distilsent.model.modelcard import MINILM, SST2, model_card, sha256
from distilsent.training.train import TrainConfig


def test_card_has_hub_front_matter_and_provenance(tmp_path):
    yaml = pytest.importorskip("yaml")
    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\nok\t1\n")
    metrics = {"accuracy": 0.9123, "precision": 0.9, "recall": 0.93, "f1": 0.915, "ece": 0.03,
               "confusion_matrix": [[1, 2], [3, 4]]}
    card = model_card("my-model", DistilBertConfig(dim=384, hidden_dim=1536), metrics=metrics,
                      train_config=TrainConfig(learning_rate=5e-5), data_files=[data], base_model=MINILM, dataset=SST2)
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    meta = yaml.safe_load(front)
    assert meta["license"] == "apache-2.0" and meta["language"] == ["en"]
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["pipeline_tag"] == "text-classification" and "sentiment-analysis" in meta["tags"]
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"] == {"name": "SST-2 (GLUE)", "type": "glue", "config": "sst2", "split": "validation"}
    assert {m["type"]: m["value"] for m in result["metrics"]}["accuracy"] == pytest.approx(0.9123)
    assert sha256(data) in body and '"learning_rate": 5e-05' in body
    assert "Apache-2.0" in body and "COUNTRY" in body  # attribution and the bias caveat


def test_card_without_metrics_has_no_model_index():
    card = model_card("bare", DistilBertConfig())
    assert "model-index" not in card and "Intended use" in card

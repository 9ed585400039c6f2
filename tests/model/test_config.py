import json

import pytest

from distilsent.errors import ConfigError
from distilsent.model.config import DistilBertConfig


def test_defaults_are_distilbert_base():
    config = DistilBertConfig()
    assert (config.n_layers, config.dim, config.n_heads, config.hidden_dim) == (6, 768, 12, 3072)
    assert config.labels == ["NEGATIVE", "POSITIVE"]
    assert config.label2id == {"NEGATIVE": 0, "POSITIVE": 1}


def test_json_round_trip_and_hf_keys(tmp_path):
    config = DistilBertConfig(dim=64, n_heads=4, id2label={0: "bad", 1: "ok", 2: "good"})
    config.to_json(tmp_path / "config.json")
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == "distilbert"
    assert data["id2label"] == {"0": "bad", "1": "ok", "2": "good"}
    assert data["label2id"] == {"bad": 0, "ok": 1, "good": 2}
    assert DistilBertConfig.from_json(tmp_path / "config.json") == config


def test_reads_transformers_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.DistilBertConfig(dim=96, n_heads=3, n_layers=2, id2label={0: "NEG", 1: "POS"})
    hf_config.save_pretrained(tmp_path)
    config = DistilBertConfig.from_json(tmp_path / "config.json")
    assert (config.dim, config.n_heads, config.n_layers, config.labels) == (96, 3, 2, ["NEG", "POS"])


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"dim": 100, "n_heads": 12}, "divisible"),
        ({"activation": "swish"}, "activation"),
        ({"n_layers": 0}, "n_layers"),
        ({"dropout": 1.5}, "dropout"),
        ({"id2label": {0: "a", 2: "b"}}, "0..n-1"),
        ({"id2label": {0: "a", 1: "a"}}, "distinct"),
        ({"id2label": {0: "a", 1: "b"}, "label2id": {"a": 1, "b": 0}}, "label2id"),
    ],
)
def test_validation_names_the_problem(changes, message):
    with pytest.raises(ConfigError, match=message):
        DistilBertConfig(**changes)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        DistilBertConfig.from_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        DistilBertConfig.from_json(tmp_path / "bad.json")
    (tmp_path / "bert.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="model_type"):
        DistilBertConfig.from_json(tmp_path / "bert.json")


def test_config_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, distilsent.model.config; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)

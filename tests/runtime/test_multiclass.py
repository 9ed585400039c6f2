"""A 3-label model end to end: train, predict (top_k), eval (macro-F1, per class, plot size), serve, model card."""

import asyncio
import json
import random

import numpy as np
import pytest

from distilsent import Classifier
from distilsent.cli import main
from distilsent.training.evaluate import metrics

LABELS = ("negative", "neutral", "positive")
WORDS = {0: ["bad", "awful", "worst"], 1: ["plot", "story", "actors"], 2: ["great", "fun", "best"]}
FILLER = ["the", "film", "movie", "was", "a", "it"]


def write_data(path, n, seed):
    rng = random.Random(seed)
    lines = ["text,label"]
    for _ in range(n):
        label = rng.randrange(3)
        words = rng.choices(FILLER, k=rng.randrange(1, 6)) + [rng.choice(WORDS[label])] * 2
        rng.shuffle(words)
        lines.append(f"{' '.join(words)},{LABELS[label]}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def three_class(tiny_model_dir, tmp_path_factory):
    """A 3-label model trained by ``distilsent train`` from the tiny binary model (a new head)."""
    root = tmp_path_factory.mktemp("three-class")
    train_file, dev_file = write_data(root / "train.csv", 256, 0), write_data(root / "dev.csv", 60, 1)
    code = main(["train", str(train_file), "--dev", str(dev_file), "--out", str(root / "run"), "--model",
                 str(tiny_model_dir), "--labels", ",".join(LABELS), "--lr", "2e-3", "--epochs", "8",
                 "--batch-size", "16", "--warmup-steps", "4", "--precision", "fp32", "--quiet"])
    assert code == 0
    return root / "run" / "best", dev_file


def test_predict_top_k_over_three_labels(three_class, capsys):
    model, _ = three_class
    assert main(["predict", "--model", str(model), "--top-k", "all", "great fun film", "awful"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [sorted(d["label"] for d in row) for row in rows] == [sorted(LABELS)] * 2
    assert all(row[0]["score"] >= row[1]["score"] >= row[2]["score"] for row in rows)
    assert rows[0][0]["label"] == "positive" and rows[1][0]["label"] == "negative"
    assert sum(d["score"] for d in rows[0]) == pytest.approx(1.0, abs=1e-5)
    assert main(["predict", "--model", str(model), "--top-k", "2", "the plot"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(row) == 2 and row[0]["label"] == "neutral"


def test_eval_reports_macro_f1_and_per_class_and_sizes_the_plot(three_class, tmp_path, capsys):
    model, dev = three_class
    assert main(["eval", str(model), str(dev), "--json", "--plots", str(tmp_path / "plots")]) == 0
    result = json.loads(capsys.readouterr().out)
    confusion = np.array(result["confusion_matrix"])
    assert confusion.shape == (3, 3) and result["labels"] == list(LABELS)
    f1s = []
    for k, row in enumerate(result["per_class"]):
        precision, recall = confusion[k, k] / confusion[:, k].sum(), confusion[k, k] / confusion[k].sum()
        assert row["label"] == LABELS[k] and row["support"] == confusion[k].sum()
        assert row["precision"] == pytest.approx(precision) and row["recall"] == pytest.approx(recall)
        f1s.append(2 * precision * recall / (precision + recall))
    assert result["macro_f1"] == pytest.approx(np.mean(f1s)) and result["accuracy"] > 0.9
    assert main(["eval", str(model), str(dev)]) == 0
    table = capsys.readouterr().out
    assert "macro f1" in table and all(f"\n{label}" in table for label in LABELS)

    import matplotlib.image

    three = matplotlib.image.imread(tmp_path / "plots" / "confusion_matrix.png").shape
    from distilsent.training.evaluate import plot

    five = metrics(np.arange(5), np.eye(5), [f"label {i}" for i in range(5)])
    (path, *_) = plot(five, tmp_path / "five")
    assert matplotlib.image.imread(path).shape[0] > three[0]  # one more inch or so per extra label


def test_model_card_is_not_binary(three_class):
    model, _ = three_class
    card = (model / "README.md").read_text()
    assert "3-class classification" in card and "Binary" not in card
    assert "| Macro F1 |" in card and "| Precision |" not in card  # one "positive" label means nothing here


def test_serve_answers_with_three_labels(three_class):
    pytest.importorskip("fastapi", reason="needs the serve extra")
    from ..serving.kit import running

    model, _ = three_class
    clf = Classifier.load(model, threads=1)

    async def go():
        async with running(lambda: clf) as client:
            hf = await client.post("/", json={"inputs": ["the story", "best fun"], "parameters": {"top_k": None}})
            tei = await client.post("/predict", json={"inputs": "awful"})
            info = await client.get("/info")
            return hf.json(), tei.json(), info.json()

    hf, tei, info = asyncio.run(go())
    assert info["labels"] == list(LABELS)
    assert [row[0]["label"] for row in hf] == ["neutral", "positive"] and all(len(row) == 3 for row in hf)
    for got, want in zip(hf, clf(["the story", "best fun"], top_k=None)):
        assert [d["label"] for d in got] == [d["label"] for d in want]
        assert [d["score"] for d in got] == pytest.approx([d["score"] for d in want], abs=1e-5)
    assert [d["label"] for d in tei][0] == "negative" and len(tei) == 3

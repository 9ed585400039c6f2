import json

import numpy as np
import pytest

from distilsent.evaluate import calibration_bins, format_table, metrics, plot

NAMES = ["NEGATIVE", "POSITIVE"]


def probs(p_positive):
    p = np.asarray(p_positive, dtype=np.float64)
    return np.stack([1 - p, p], axis=1)


def test_counts_and_rates_by_hand():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    #          predicted: 1  1  0  0  0  1  0  1  -> tp=3 fn=1 tn=3 fp=1
    result = metrics(labels, probs([0.9, 0.8, 0.3, 0.1, 0.2, 0.7, 0.4, 0.6]), NAMES)
    assert result["confusion_matrix"] == [[3, 1], [1, 3]]
    assert result["accuracy"] == 0.75
    assert result["precision"] == result["recall"] == result["f1"] == 0.75
    assert result["macro_f1"] == 0.75
    assert result["positive_label"] == "POSITIVE"


def test_precision_recall_differ_when_errors_are_one_sided():
    labels = np.array([1, 1, 0, 0])
    result = metrics(labels, probs([0.9, 0.9, 0.9, 0.1]), NAMES)  # one false positive
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == 1.0
    assert result["f1"] == pytest.approx(0.8)


def test_expected_calibration_error():
    # All confidences 0.9 and 9 of 10 right: perfectly calibrated.
    labels = np.array([1] * 9 + [0])
    assert metrics(labels, probs([0.9] * 10), NAMES)["ece"] == pytest.approx(0.0, abs=1e-12)
    # Confidence 1.0 but half right: ECE 0.5.
    labels = np.array([1, 0] * 5)
    assert metrics(labels, probs([1.0] * 10), NAMES)["ece"] == pytest.approx(0.5)
    bins = calibration_bins(np.array([0.55, 0.99]), np.array([True, False]))
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 2


def test_accuracy_by_length():
    result = metrics(np.array([1, 1, 0]), probs([0.9, 0.1, 0.1]), NAMES, lengths=[5, 40, 300])
    assert result["accuracy_by_length"] == [
        {"tokens": "1-16", "count": 1, "accuracy": 1.0},
        {"tokens": "33-64", "count": 1, "accuracy": 0.0},
        {"tokens": ">256", "count": 1, "accuracy": 1.0},
    ]


def test_table_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    result = metrics(np.array([1, 0, 1, 0]), probs([0.8, 0.3, 0.4, 0.1]), NAMES, lengths=[3, 4, 5, 6])
    table = format_table(result)
    assert "accuracy     0.7500" in table and "POSITIVE" in table
    paths = plot(result, tmp_path / "plots")
    assert [p.name for p in paths] == ["confusion_matrix.png", "reliability.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_eval_verb(tiny_model_dir, tmp_path, capsys):
    from distilsent.cli import main

    (tmp_path / "dev.tsv").write_text("sentence\tlabel\ngreat fun\t1\nawful bad\t0\ngood\tpositive\n")
    assert main(["eval", str(tiny_model_dir), str(tmp_path / "dev.tsv"), "--json",
                 "--output", str(tmp_path / "m.json")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["examples"] == 3 and np.sum(result["confusion_matrix"]) == 3
    assert result["examples_per_second"] > 0
    assert json.loads((tmp_path / "m.json").read_text())["accuracy"] == result["accuracy"]
    (tmp_path / "bad.tsv").write_text("sentence\tlabel\ngreat\t1\nbroken row\n")
    assert main(["eval", str(tiny_model_dir), str(tmp_path / "bad.tsv")]) == 1
    assert "bad.tsv:3: expected 2 fields, found 1" in capsys.readouterr().err

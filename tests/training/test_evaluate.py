import json

import numpy as np
import pytest

from distilsent.training.evaluate import calibration_bins, ece_floor, format_table, metrics, plot

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


def test_ece_floor_is_what_calibrated_scores_measure_on_that_many_texts():
    rng = np.random.default_rng(1)
    confidence = rng.uniform(0.5, 1.0, 872)
    # Labels drawn so that every score is exactly right: their ECE is sampling noise, around the floor.
    measured = []
    for _ in range(40):
        right = rng.random(872) < confidence
        labels = np.where(right, 1, 0)
        measured.append(metrics(labels, probs(confidence), NAMES)["ece"])
    floor = ece_floor(confidence)
    assert 0.01 < floor < 0.04
    assert np.mean(measured) == pytest.approx(floor, rel=0.15)
    # More texts, less noise; certain and right, no noise at all.
    assert ece_floor(np.tile(confidence, 20)) < floor / 3
    assert ece_floor(np.ones(50)) == 0.0
    assert metrics(np.array([1, 0]), probs([0.8, 0.3]), NAMES)["ece_floor"] == ece_floor(np.array([0.8, 0.7]))


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
    assert [p.name for p in paths] == ["confusion_matrix.png", "reliability.png", "risk_coverage.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_nll_and_brier_by_hand():
    labels = np.array([1, 0])
    result = metrics(labels, probs([0.8, 0.4]), NAMES)  # p(true) = 0.8 and 0.6
    assert result["nll"] == pytest.approx(-(np.log(0.8) + np.log(0.6)) / 2)
    assert result["brier"] == pytest.approx((2 * 0.2**2 + 2 * 0.4**2) / 2)
    certain_mistake = metrics(np.array([1]), probs([0.0]), NAMES)
    assert np.isfinite(certain_mistake["nll"]) and certain_mistake["brier"] == pytest.approx(2.0)


def test_risk_coverage_answers_only_confident_texts():
    labels = np.array([1, 1, 0, 0])
    # confidences 0.95 (right), 0.75 (right), 0.6 (wrong), 0.55 (right)
    result = metrics(labels, probs([0.95, 0.75, 0.6, 0.45]), NAMES)
    points = {p["threshold"]: p for p in result["risk_coverage"]}
    assert min(points) == 0.5 and max(points) == 0.99
    assert points[0.5]["coverage"] == 1.0 and points[0.5]["accuracy"] == 0.75
    assert points[0.6]["coverage"] == 0.75 and points[0.6]["accuracy"] == pytest.approx(2 / 3)
    assert points[0.7]["coverage"] == 0.5 and points[0.7]["accuracy"] == 1.0
    assert points[0.99]["coverage"] == 0.0 and points[0.99]["accuracy"] is None


def test_reliability_diagram_plots_confidence_against_accuracy(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes

    drawn = {}
    for method in ("bar", "scatter", "set_xlim"):
        original = getattr(Axes, method)

        def record(self, *args, _original=original, _method=method, **kwargs):
            drawn.setdefault(_method, []).append(args)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Axes, method, record)
    labels = np.array([1, 1, 1, 1, 0])
    result = metrics(labels, probs([0.98, 0.97, 0.99, 0.63, 0.61]), NAMES)  # (0.93, 1]: 3/3 right; (0.6, 0.67]: 1/2
    plot(result, tmp_path)
    _, accuracy = drawn["bar"][0]  # the reliability bars (the confusion matrix is an image)
    _, confidence = drawn["scatter"][0]
    assert list(accuracy) == [0.5, 1.0]
    assert list(confidence) == pytest.approx([0.62, 0.98])
    assert (7 / 15, 1) in drawn["set_xlim"]  # no empty 0-0.5 half for two labels


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

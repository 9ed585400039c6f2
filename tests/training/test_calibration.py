"""Temperature scaling: the fit, and the fold into the head that every runtime then honours."""

import numpy as np
import pytest

from distilsent.runtime.classifier import Classifier, softmax
from distilsent.training.calibration import (
    calibrate,
    card_section,
    fit_temperature,
    measure,
    negative_log_likelihood,
    with_section,
    write_calibrated,
)

TEXTS = ["great fun", "awful bad boring", "the plot is not good", "i love this film", "worst movie", "a"]


def test_fit_recovers_the_temperature_that_made_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, size=(20000, 3))
    true_t = 2.5
    labels = np.array([rng.choice(3, p=p) for p in softmax(logits / true_t)])
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_t, rel=0.05)
    nll = negative_log_likelihood(logits, labels, fitted)
    assert nll < negative_log_likelihood(logits, labels, fitted * 1.1)
    assert nll < negative_log_likelihood(logits, labels, fitted / 1.1)


def test_overconfident_logits_get_softened_and_ece_drops():
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1.5, size=(5000, 2))
    labels = np.array([rng.choice(2, p=p) for p in softmax(base)])
    result = measure(base * 4, labels, ["NEGATIVE", "POSITIVE"], "synthetic")
    assert result.temperature == pytest.approx(4, rel=0.1)
    assert result.after["ece"] < result.before["ece"] / 3
    assert result.after["accuracy"] == result.before["accuracy"]


@pytest.fixture(scope="module")
def calibrated(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("calibrated")
    return write_calibrated(tiny_model_dir, out, 2.5, "# calibrated\n")


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_folded_logits_are_the_original_over_t(tiny_model_dir, calibrated, backend):
    original = Classifier.load(tiny_model_dir, backend=backend).logits(TEXTS)
    scaled = Classifier.load(calibrated, backend=backend).logits(TEXTS)
    np.testing.assert_allclose(scaled, original / 2.5, rtol=1e-4, atol=1e-4)
    assert not np.allclose(scaled, original, rtol=1e-3, atol=1e-3)  # the check is not vacuous


def test_transformers_reads_the_calibrated_logits(tiny_model_dir, calibrated):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(calibrated))
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        theirs = transformers.AutoModelForSequenceClassification.from_pretrained(str(calibrated))(**batch).logits
    ours = Classifier.load(tiny_model_dir, backend="torch").logits(TEXTS)
    np.testing.assert_allclose(theirs.numpy(), ours / 2.5, rtol=1e-4, atol=1e-4)


def test_float16_weights_stay_float16_and_the_same_size(tmp_path, vocab_file):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file

    from distilsent.model.checkpoint import load_model, save_model
    from tests.conftest import make_tiny_model

    source = make_tiny_model(tmp_path / "fp32", vocab_file, seed=3)
    model, tokenizer = load_model(source)
    save_model(model, tokenizer, tmp_path / "fp16", dtype=torch.float16)
    out = write_calibrated(tmp_path / "fp16", tmp_path / "out", 2.0, "# c\n")
    before, after = load_file(str(tmp_path / "fp16" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in after.values()} == {np.dtype("float16")}
    assert (out / "model.safetensors").stat().st_size == (tmp_path / "fp16" / "model.safetensors").stat().st_size
    np.testing.assert_allclose(after["classifier.weight"].astype(np.float32),
                               before["classifier.weight"].astype(np.float32) / 2, rtol=1e-3)
    assert all(np.array_equal(after[k], before[k]) for k in before if not k.startswith("classifier."))


def test_calibrate_writes_a_model_and_its_card(tiny_model_dir, tmp_path):
    data = tmp_path / "fit.tsv"
    labels = [1, 0, 0, 1, 0, 1]
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in zip(TEXTS, labels)))
    result = calibrate(tiny_model_dir, data, tmp_path / "out")
    assert result.temperature > 0 and result.examples == 6
    assert result.after["nll"] <= result.before["nll"] + 1e-9
    assert result.after["accuracy"] == result.before["accuracy"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"T = {result.temperature:.4f}" in card and "`fit.tsv`" in card and card.startswith("# tiny test model")
    original = Classifier.load(tiny_model_dir).logits(TEXTS)
    np.testing.assert_allclose(Classifier.load(tmp_path / "out").logits(TEXTS), original / result.temperature,
                               rtol=1e-4, atol=1e-4)


def test_windows_fit_what_the_classifier_reports(tiny_model_dir):
    """With "max" a text's score is its most confident window's, so that window is the text's one example;
    with "mean" every window is an example carrying its text's label."""
    from distilsent.data.examples import Example
    from distilsent.runtime.long_text import most_confident
    from distilsent.training.calibration import fit

    long = [" ".join([t] * 12) for t in TEXTS]
    examples = [Example(t, y) for t, y in zip(long, [1, 0, 0, 1, 0, 1])]
    reading = {"long_text": "window", "window": 16}
    clf = Classifier.load(tiny_model_dir, aggregate="max", **reading)
    window_plan = clf.windows(long)
    logits = clf.run(window_plan.sequences)
    assert len(logits) > 2 * len(long)
    fitted = fit(clf, examples, "long.tsv")
    chosen = logits[most_confident(softmax(logits), window_plan, len(long))]
    assert fitted.examples == len(long)
    assert fitted.temperature == pytest.approx(fit_temperature(chosen, np.array([1, 0, 0, 1, 0, 1])))
    np.testing.assert_allclose(softmax(chosen), clf.scores(clf.logits(long), "softmax"), rtol=1e-5)
    mean = fit(Classifier.load(tiny_model_dir, aggregate="mean", **reading), examples, "long.tsv")
    assert mean.examples == len(logits)


def test_calibration_section_is_replaced_not_repeated():
    fitted = measure(np.array([[2.0, -1.0], [0.5, 1.0]]), np.array([0, 1]), ["NEGATIVE", "POSITIVE"], "a.tsv")
    card = "# m\n\n## Training\n\nx\n"
    once = with_section(card, card_section(fitted))
    twice = with_section(once + "\n## Later\n\ny\n", card_section(fitted, note="again"))
    assert once.count("## Calibration") == 1 and twice.count("## Calibration") == 1
    assert "again" in twice and twice.rstrip().endswith("y") and "## Training" in twice


def test_calibrate_verb(tiny_model_dir, tmp_path, capsys):
    import json

    from distilsent.cli import main

    data = tmp_path / "fit.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in zip(TEXTS, [1, 0, 0, 1, 0, 1])))
    assert main(["calibrate", str(tiny_model_dir), str(data), "--out", str(tmp_path / "out"),
                 "--long-text", "truncate"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["model"] == str(tmp_path / "out") and printed["temperature"] > 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    (tmp_path / "bad.tsv").write_text("sentence\tlabel\ngreat\t1\nbroken row\n")
    assert main(["calibrate", str(tiny_model_dir), str(tmp_path / "bad.tsv"), "--out", str(tmp_path / "x")]) == 1
    assert "bad.tsv:3" in capsys.readouterr().err


def test_calibrated_weights_are_readable_by_others(tiny_model_dir, tmp_path):
    import os

    previous = os.umask(0o022)
    try:
        out = write_calibrated(tiny_model_dir, tmp_path / "out", 2.0, "# c\n")
    finally:
        os.umask(previous)
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o644


def test_the_shipped_default_model_is_calibrated(sst2_dir):
    """Its card records T; multiplying its logits back by T (the weights before calibration) gives a worse
    ECE and NLL on SST-2 dev, with the same predictions."""
    import re

    from distilsent.data.examples import read_examples
    from distilsent.model.checkpoint import default_model_dir
    from distilsent.training.evaluate import metrics

    card = (default_model_dir() / "README.md").read_text(encoding="utf-8")
    temperature = float(re.search(r"divided by T = ([0-9.]+)", card).group(1))
    assert temperature > 1  # an over-confident model is softened
    examples = read_examples(sst2_dir / "dev.tsv")
    logits = Classifier.load().logits([e.text for e in examples])
    labels = np.array([e.label for e in examples])
    shipped = metrics(labels, softmax(logits), ["NEGATIVE", "POSITIVE"])
    uncalibrated = metrics(labels, softmax(logits * temperature), ["NEGATIVE", "POSITIVE"])
    assert shipped["ece"] < uncalibrated["ece"] and shipped["nll"] < uncalibrated["nll"]
    assert shipped["accuracy"] == uncalibrated["accuracy"]


def test_only_the_model_and_its_tokenizer_are_written(tiny_model_dir, tmp_path):
    """The one writer's rule: nothing else of the source is carried, and a calibration in place removes the graph
    of the uncalibrated weights (which the ONNX backend would otherwise run) and the pickle beside the new weights."""
    import shutil

    source = tmp_path / "source"
    shutil.copytree(tiny_model_dir, source)
    for name in ("resume.pt", "tf_model.h5", "metrics.jsonl"):
        (source / name).write_bytes(b"not part of the model")
    out = write_calibrated(source, tmp_path / "out", 2.0, "# c\n")
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt",
                                               "tokenizer_config.json", "README.md"}
    from distilsent.runtime.export import export

    export(source, tmp_path / "exported")
    shutil.copy(tmp_path / "exported" / "model.onnx", source / "model.onnx")
    shutil.copy(source / "model.safetensors", source / "pytorch_model.bin")
    original = Classifier.load(source).logits(TEXTS)
    write_calibrated(source, source, 2.0, "# c\n")
    assert not (source / "model.onnx").exists() and not (source / "pytorch_model.bin").exists()
    np.testing.assert_allclose(Classifier.load(source).logits(TEXTS), original / 2, rtol=1e-4, atol=1e-4)

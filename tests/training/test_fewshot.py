"""Few-shot heads: fitted on the frozen penultimate features, saved as an ordinary model directory that
distilsent (both backends) and transformers load and predict with identically."""

import json
import random

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="few-shot heads need scikit-learn: pip install 'distilsent[fewshot]'")

from distilsent import Classifier  # noqa: E402
from distilsent.cli import main  # noqa: E402
from distilsent.errors import InputError  # noqa: E402
from distilsent.model.checkpoint import load_config  # noqa: E402
from distilsent.training.fewshot import base_tensors, fewshot, fit_head, penultimate_features  # noqa: E402

LABELS = ("sad", "calm", "glad")
WORDS = {
    0: ["bad", "awful", "worst", "hate"],
    1: ["plot", "story", "actors", "film"],
    2: ["great", "fun", "best", "love"],
}


def examples(per_label: int, seed: int):
    rng = random.Random(seed)
    texts, labels = [], []
    for label in range(3):
        for _ in range(per_label):
            words = rng.choices(["the", "a", "was", "it", "very"], k=rng.randrange(1, 4)) + rng.sample(WORDS[label], 2)
            rng.shuffle(words)
            texts.append(" ".join(words))
            labels.append(label)
    return texts, labels


@pytest.fixture(scope="module")
def head_dir(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fewshot") / "head"
    texts, labels = examples(8, 0)
    summary = fewshot(tiny_model_dir, texts, labels, LABELS, out)
    assert summary["examples_per_label"] == [8, 8, 8] and summary["labels"] == list(LABELS)
    return out


def test_saved_head_predicts_what_was_fitted_everywhere(tiny_model_dir, head_dir):
    transformers = pytest.importorskip("transformers")
    import torch

    texts, labels = examples(8, 0)
    base = Classifier.load(tiny_model_dir)
    tensors = base_tensors(tiny_model_dir, load_config(tiny_model_dir))
    features = penultimate_features(base, tensors, texts)
    head = fit_head(features, labels, 3)  # the same fit as the saved one: deterministic
    expected = head.logits(features)
    queries, _ = examples(5, 1)
    expected_queries = head.logits(penultimate_features(base, tensors, queries))

    for backend in ("onnx", "torch"):
        clf = Classifier.load(head_dir, backend=backend)
        assert clf.labels == list(LABELS)
        np.testing.assert_allclose(clf.logits(texts), expected, atol=1e-4, rtol=0)
        np.testing.assert_allclose(clf.logits(queries), expected_queries, atol=1e-4, rtol=0)
        assert [r["label"] for r in clf(queries)] == [LABELS[i] for i in expected_queries.argmax(1)]

    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(str(head_dir)).eval()
    assert theirs.config.id2label == dict(enumerate(LABELS))
    ids, mask = base.tokenizer.pad(base.encode(queries))
    with torch.no_grad():
        logits = theirs(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    np.testing.assert_allclose(logits, expected_queries, atol=1e-4, rtol=0)


def test_only_the_classifier_layer_changes(tiny_model_dir, head_dir):
    before = base_tensors(tiny_model_dir, load_config(tiny_model_dir))
    after = base_tensors(head_dir, load_config(head_dir))
    assert set(before) == set(after)
    for name in before:
        if name.startswith("classifier."):
            assert after[name].shape[0] == 3 and after[name].dtype == np.float32
        else:
            np.testing.assert_array_equal(after[name], before[name])
            assert after[name].dtype == before[name].dtype
    card = (head_dir / "README.md").read_text()
    assert "Few-shot head" in card and "3-class classification" in card


def test_binary_head_gives_the_logistic_regression_probabilities(tiny_model_dir):
    from sklearn.linear_model import LogisticRegression

    texts, labels = examples(6, 2)
    keep = [i for i, label in enumerate(labels) if label != 1]
    texts, labels = [texts[i] for i in keep], [labels[i] // 2 for i in keep]
    base = Classifier.load(tiny_model_dir)
    features = penultimate_features(base, base_tensors(tiny_model_dir, load_config(tiny_model_dir)), texts)
    head = fit_head(features, labels, 2, c=0.5)
    assert head.weight.shape == (2, 32) and head.chosen_by == "given"
    reference = LogisticRegression(C=0.5, max_iter=2000).fit(features.astype(np.float64), labels)
    probabilities = base.scores(head.logits(features).astype(np.float32), "softmax")
    np.testing.assert_allclose(probabilities, reference.predict_proba(features), atol=1e-4)


def test_regularisation_is_cross_validated_on_the_examples_only(tiny_model_dir):
    texts, labels = examples(4, 3)
    base = Classifier.load(tiny_model_dir)
    features = penultimate_features(base, base_tensors(tiny_model_dir, load_config(tiny_model_dir)), texts)
    assert fit_head(features, labels, 3).chosen_by == "cross-validation"
    one_each = [0, 4, 8]  # a single example per label: nothing to cross-validate
    assert fit_head(features[one_each], [labels[i] for i in one_each], 3).chosen_by == "default"


def test_bad_requests_are_input_errors(tiny_model_dir, tmp_path):
    texts, labels = examples(3, 4)
    with pytest.raises(InputError, match="an example of each"):
        fewshot(tiny_model_dir, texts[:6], labels[:6], LABELS, tmp_path / "x")  # no "glad" example
    with pytest.raises(InputError, match="new directory"):
        fewshot(tiny_model_dir, texts, labels, LABELS, tiny_model_dir)
    with pytest.raises(InputError, match="distinct"):
        fewshot(tiny_model_dir, texts, labels, ("a", "a", "b"), tmp_path / "y")


def test_fewshot_verb(tiny_model_dir, tmp_path, capsys):
    texts, labels = examples(5, 5)
    rows = [json.dumps({"text": t, "mood": LABELS[label]}) for t, label in zip(texts, labels)]
    (tmp_path / "few.jsonl").write_text("\n".join(rows) + "\n")
    code = main(["fewshot", str(tmp_path / "few.jsonl"), "--out", str(tmp_path / "model"), "--model",
                 str(tiny_model_dir), "--labels", ",".join(LABELS), "--label-column", "mood"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["examples_per_label"] == [5, 5, 5] and summary["train_accuracy"] > 0.8
    assert main(["predict", "--model", str(tmp_path / "model"), "--top-k", "all", "great fun"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(d["label"] for d in row) == sorted(LABELS)


def test_a_head_written_over_an_export_runs_its_own_weights(tiny_model_dir, tmp_path):
    """save_head writes through the one writer: the graph of the model that was in the output goes."""
    from distilsent.runtime.export import export

    export(tiny_model_dir, tmp_path / "out")
    texts, labels = examples(4, 6)
    fewshot(tiny_model_dir, texts, labels, LABELS, tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json", "README.md"}
    onnx = Classifier.load(tmp_path / "out")  # the stale two-label graph would give (n, 2) logits
    np.testing.assert_allclose(onnx.logits(texts), Classifier.load(tmp_path / "out", backend="torch").logits(texts),
                               atol=1e-4)

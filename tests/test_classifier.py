import numpy as np
import pytest

from distilsent import Classifier, InputError

from .conftest import make_tiny_model

TEXTS = ["a great film", "not good , very boring and bad plot " * 3, "fun", "", "the worst movie , i hate it"]
CALLS = [
    ("a great film", {}),
    (TEXTS, {}),
    ("a great film", {"top_k": None}),
    (TEXTS, {"top_k": None}),
    ("a great film", {"top_k": 1}),
    (TEXTS, {"top_k": 1}),
    (TEXTS, {"top_k": 2}),
    (TEXTS, {"function_to_apply": "sigmoid"}),
    (TEXTS, {"function_to_apply": "none", "top_k": None}),
    ("fun", {"function_to_apply": "softmax", "top_k": 5}),
]


@pytest.fixture(scope="module")
def three_label_dir(tmp_path_factory, vocab_file):
    return make_tiny_model(tmp_path_factory.mktemp("three"), vocab_file, seed=3, id2label={0: "neg", 1: "neu", 2: "pos"})


@pytest.mark.parametrize("model", ["tiny_model_dir", "three_label_dir"])
@pytest.mark.parametrize("inputs, kwargs", CALLS)
def test_same_output_as_the_transformers_pipeline(request, model, inputs, kwargs):
    transformers = pytest.importorskip("transformers")
    directory = request.getfixturevalue(model)
    reference = transformers.pipeline("text-classification", model=str(directory), device="cpu")
    expected = reference(inputs, **kwargs)
    for batch_size in (1, 3):
        # Kernels and padding change the order of float sums only: same shapes and labels, scores to 1e-6.
        ours = Classifier.load(directory, batch_size=batch_size)(inputs, **kwargs)
        assert _without_scores(ours) == _without_scores(expected)
        assert _scores(ours) == pytest.approx(_scores(expected), abs=1e-6)


def _without_scores(result):
    if isinstance(result, dict):
        return {k: v for k, v in result.items() if k != "score"}
    return [_without_scores(r) for r in result]


def _scores(result):
    if isinstance(result, dict):
        return [result["score"]]
    return [s for r in result for s in _scores(r)]


def test_order_is_restored_whatever_the_batching(tiny_model_dir):
    clf = Classifier.load(tiny_model_dir)
    texts = [("good film " * (i % 17)) + ("bad " * (i % 5)) for i in range(100)]
    one_by_one = np.concatenate([clf.logits([t]) for t in texts])
    for batch_size, budget in [(1, 10_000), (7, 10_000), (64, 40), (64, 10_000)]:
        clf.batch_size, clf.max_batch_tokens = batch_size, budget
        np.testing.assert_allclose(clf.logits(texts), one_by_one, atol=1e-5)


@pytest.mark.parametrize(
    "inputs, kwargs, message",
    [
        (42, {}, "inputs must be a string or a list"),
        (["ok", None], {}, "text 1 is a NoneType"),
        ("ok", {"top_k": 0}, "top_k"),
        ("ok", {"top_k": "2"}, "top_k"),
        ("ok", {"function_to_apply": "relu"}, "function_to_apply"),
        ("good " * 100, {"truncation": False}, "more than the maximum of 64"),
    ],
)
def test_bad_input_is_an_input_error(tiny_model_dir, inputs, kwargs, message):
    with pytest.raises(InputError, match=message):
        Classifier.load(tiny_model_dir)(inputs, **kwargs)


def test_empty_and_huge_inputs(tiny_model_dir):
    clf = Classifier.load(tiny_model_dir)
    assert clf([]) == []
    (result,) = clf("good " * 100_000)
    assert result["label"] in ("NEGATIVE", "POSITIVE") and 0.5 <= result["score"] <= 1


def test_unknown_backend(tiny_model_dir):
    with pytest.raises(InputError, match="unknown backend"):
        Classifier.load(tiny_model_dir, backend="tpu")

import numpy as np
import pytest

from distilsent import Classifier, InputError
from distilsent.runtime.batching import BATCH_OVERHEAD_TOKENS, plan_batches

from ..conftest import make_tiny_model

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
    return make_tiny_model(tmp_path_factory.mktemp("three"), vocab_file, seed=3,
                           id2label={0: "neg", 1: "neu", 2: "pos"})


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
    # Cut to the model's 64 positions: [CLS], 62 words, [SEP] -- the same answer as those 62 words alone.
    (cut,) = clf("good " * 62)
    assert result["label"] == cut["label"] and result["score"] == pytest.approx(cut["score"], abs=1e-6)
    assert clf("good " * 61)[0]["score"] != pytest.approx(cut["score"], abs=1e-6)  # so the equality says something


def test_unknown_backend(tiny_model_dir):
    with pytest.raises(InputError, match="unknown backend"):
        Classifier.load(tiny_model_dir, backend="tpu")


def test_the_steps_compose_into_logits_and_call(three_label_dir):
    clf = Classifier.load(three_label_dir, batch_size=2)
    sequences = clf.encode(TEXTS)
    assert all(s[0] == clf.tokenizer.cls_id and s[-1] == clf.tokenizer.sep_id for s in sequences)
    logits = clf.run(sequences)
    np.testing.assert_array_equal(logits, clf.logits(TEXTS))
    for batch in clf.plan([len(s) for s in sequences]):
        np.testing.assert_allclose(clf.run_batch([sequences[i] for i in batch]), logits[batch], atol=1e-5)
    assert clf.format(clf.scores(logits), top_k=2) == clf(TEXTS, top_k=2)
    assert clf.run([]).shape == (0, 3) and clf.run_batch([]).shape == (0, 3)


def test_encode_without_truncation_rejects_long_texts(tiny_model_dir):
    clf = Classifier.load(tiny_model_dir)
    assert len(clf.encode(["good " * 100])[0]) == 64
    assert len(clf.encode(["good " * 100], max_length=10)[0]) == 10
    with pytest.raises(InputError, match="more than the maximum of 64"):
        clf.encode(["good " * 100], truncation=False)


def test_tei_format_is_every_label_best_first_score_before_label(three_label_dir):
    clf = Classifier.load(three_label_dir)
    scores = clf.scores(clf.logits(TEXTS))
    tei = clf.format(scores, style="tei")
    assert len(tei) == len(TEXTS)
    for row, want in zip(tei, scores):
        assert [list(d) for d in row] == [["score", "label"]] * 3
        assert [d["score"] for d in row] == sorted(want.tolist(), reverse=True)
        assert {d["label"] for d in row} == {"neg", "neu", "pos"}
        assert want[clf.labels.index(row[0]["label"])] == want.max()
    assert clf.format(scores[:1], style="tei", single=True) == tei[0]
    with pytest.raises(InputError, match="style"):
        clf.format(scores, style="openai")
    with pytest.raises(InputError, match="top_k"):
        clf.format(scores, style="tei", top_k=1)


def _plan_cost(lengths, batches):
    return sum(BATCH_OVERHEAD_TOKENS + len(b) * max(lengths[i] for i in b) for b in batches)


@pytest.mark.parametrize("seed", range(5))
def test_the_planner_finds_the_cheapest_cut_of_the_sorted_texts(seed):
    """Padded tokens + a fixed cost per call, against every way of cutting the length-sorted texts."""
    rng = np.random.default_rng(seed)
    lengths = rng.choice([5, 9, 14, 30, 31, 80, 200], size=11).tolist()
    batch_size, budget = 4, 300
    batches = plan_batches(lengths, batch_size, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    best = np.inf
    for mask in range(1 << (len(order) - 1)):  # bit k set: a batch ends after order[k]
        cuts = [0] + [k + 1 for k in range(len(order) - 1) if mask >> k & 1] + [len(order)]
        plan = [order[a:b] for a, b in zip(cuts, cuts[1:])]
        if all(len(b) <= batch_size and (len(b) == 1 or len(b) * lengths[b[0]] <= budget) for b in plan):
            best = min(best, _plan_cost(lengths, plan))
    assert _plan_cost(lengths, batches) == best
    for b in batches:
        assert len(b) <= batch_size and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= budget)


def test_the_version_has_one_source(capsys):
    import importlib.metadata
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from pathlib import Path

    import distilsent
    from distilsent.cli import main

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]  # read from distilsent.__version__
    assert importlib.metadata.version("distilsent") == distilsent.__version__
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"distilsent {distilsent.__version__}"


def test_a_model_carries_its_reading_and_explicit_arguments_win(tmp_path, vocab_file):
    import json

    from distilsent.errors import ConfigError
    from distilsent.runtime.long_text import Reading

    directory = make_tiny_model(tmp_path / "reads", vocab_file)
    plain = Classifier.load(directory, backend="torch")
    assert plain.reading == Reading()  # a model that carries none: the pipeline's truncation
    config = json.loads((directory / "config.json").read_text())
    config["distilsent"] = {"reading": {"long_text": "window", "window": 16, "aggregate": "max"}}
    (directory / "config.json").write_text(json.dumps(config))
    clf = Classifier.load(directory, backend="torch")
    assert clf.reading == Reading("window", window=16, aggregate="max")
    assert Classifier.load(directory, backend="torch", aggregate="mean", long_text=None).reading == \
        Reading("window", window=16, aggregate="mean")
    assert Classifier.load(directory, backend="torch", long_text="truncate").reading == Reading()
    long = "a great film but the plot is boring and bad " * 10
    windows = clf.windows([long])
    assert len(windows.sequences) > 1 and max(len(s) for s in windows.sequences) == 16
    assert clf(long) == Classifier.load(directory, backend="torch", long_text="window", window=16,
                                        aggregate="max")(long)
    config["distilsent"] = {"reading": {"long_text": "windows"}}
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="reading: long_text must be one of"):
        Classifier.load(directory, backend="torch")


def test_saved_models_keep_their_reading(tmp_path, vocab_file):
    from distilsent.model.checkpoint import load_config, load_model, save_model

    directory = make_tiny_model(tmp_path / "m", vocab_file)
    model, tokenizer = load_model(directory)
    model.config = model.config.replace(distilsent={"reading": {"long_text": "head_tail", "head": 8}})
    save_model(model, tokenizer, tmp_path / "again")
    assert load_config(tmp_path / "again").distilsent == {"reading": {"long_text": "head_tail", "head": 8}}
    assert "distilsent" not in (directory / "config.json").read_text()  # nothing written for a model without one

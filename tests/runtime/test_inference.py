"""The classifier's one chain: prepare -> runner -> complete, and infer, the three together (custom runners,
the progress observer, embeddings from the same encoder pass, window limits)."""

import numpy as np
import pytest

from distilsent import Classifier
from distilsent.errors import InputError, WindowLimitError
from distilsent.runtime.classifier import softmax
from distilsent.runtime.embeddings import Embeddings, pool
from distilsent.runtime.long_text import Reading, aggregate

LONG = "a great film but the plot is boring and the actors are bad , very very fun " * 4
TEXTS = ["a great film", LONG, "awful", "", LONG + "i love this movie !", "not good , not bad"]
READINGS = [Reading(), Reading("head_tail", head=5), Reading("window", window=16, stride=6, aggregate="max"),
            Reading("window", window=24, aggregate="mean")]


@pytest.fixture(scope="module")
def clf(tiny_model_dir):
    return Classifier.load(tiny_model_dir, batch_size=3)


class Counting:
    """Wraps a backend and counts the calls of each of its methods (each call is one run of the encoder)."""

    def __init__(self, backend):
        self.backend, self.calls = backend, {}
        self.name = backend.name

    def _count(self, method, *args):
        self.calls[method] = self.calls.get(method, 0) + 1
        return getattr(self.backend, method)(*args)

    def logits(self, ids, mask):
        return self._count("logits", ids, mask)

    def hidden_states(self, ids, mask, layers):
        return self._count("hidden_states", ids, mask, layers)

    def logits_and_hidden_states(self, ids, mask, layers):
        return self._count("logits_and_hidden_states", ids, mask, layers)


@pytest.mark.parametrize("reading", READINGS, ids=str)
def test_infer_is_prepare_run_complete_and_what_the_call_reports(clf, reading):
    job = clf.prepare(TEXTS, reading)
    logits = clf.run(job.sequences)
    by_parts = clf.complete(job, logits)
    result = clf.infer(TEXTS, reading)
    np.testing.assert_array_equal(result.scores, by_parts.scores)
    np.testing.assert_array_equal(result.window_logits, logits)
    np.testing.assert_array_equal(result.scores, aggregate(softmax(logits), job.windows, len(TEXTS), reading.aggregate))
    assert clf(TEXTS, top_k=None, **reading.options()) == clf.format(result.scores, top_k=None)
    several = len(job.sequences) > len(TEXTS)
    assert several == (reading.long_text == "window") and result.one_each is not several


def test_no_reading_is_the_classifiers_own(tiny_model_dir):
    clf = Classifier.load(tiny_model_dir, long_text="window", window=16, aggregate="max")
    own = clf.infer(TEXTS)
    assert own.reading == clf.reading and len(own.windows.sequences) > len(TEXTS)
    np.testing.assert_array_equal(own.scores, clf.infer(TEXTS, Reading("window", window=16, aggregate="max")).scores)
    assert not np.array_equal(own.scores, clf.infer(TEXTS, Reading()).scores)


def test_a_custom_runner_gets_the_prepared_sequences_and_its_logits_are_scored(clf):
    reading = Reading("window", window=16, stride=8)
    seen = []

    def runner(sequences):  # logits that identify each sequence: its length and its first word
        seen.append([list(s) for s in sequences])
        return np.array([[len(s) / 10, s[1] / 100] for s in sequences], dtype=np.float32)

    result = clf.infer(TEXTS, reading, runner=runner, function_to_apply="none")
    job = clf.prepare(TEXTS, reading)
    assert seen == [job.sequences]  # one call, every sequence (windows included), in the prepared order
    expected = np.array([[len(s) / 10, s[1] / 100] for s in job.sequences], dtype=np.float32)
    np.testing.assert_array_equal(result.window_logits, expected)
    np.testing.assert_allclose(result.scores, aggregate(expected, job.windows, len(TEXTS), "mean"), rtol=1e-6)
    with pytest.raises(InputError, match="the runner returned logits of shape"):
        clf.infer(TEXTS, runner=lambda sequences: np.zeros((1, 2), dtype=np.float32))
    with pytest.raises(InputError, match="without a runner"):
        clf.infer(TEXTS, runner=runner, embeddings="cls")


def test_the_progress_observer_hears_every_batch_of_sequences(clf):
    reading = Reading("window", window=16)
    heard = []
    result = clf.infer(TEXTS, reading, progress=lambda done, total: heard.append((done, total)))
    total = len(result.windows.sequences)
    batches = clf.plan([len(s) for s in result.windows.sequences])
    assert total > len(TEXTS) and len(batches) > 1
    assert heard[0] == (0, total) and heard[-1] == (total, total) and len(heard) == len(batches) + 1
    assert [d for d, _ in heard] == sorted({d for d, _ in heard})  # one call per batch, always forward
    heard.clear()
    clf.infer(TEXTS, runner=clf.run, progress=lambda done, total: heard.append((done, total)))
    assert heard == [(0, len(TEXTS)), (len(TEXTS), len(TEXTS))]  # a runner of the caller's: before and after
    heard.clear()
    clf.infer([], progress=lambda done, total: heard.append((done, total)))
    assert heard == [(0, 0)]


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_embeddings_asked_for_with_the_scores_run_the_encoder_once(tiny_model_dir, backend):
    loaded = Classifier.load(tiny_model_dir, backend=backend)
    counting = Counting(loaded.backend)
    clf = Classifier(counting, loaded.tokenizer, loaded.config, batch_size=2)
    plain = clf.infer(TEXTS)
    assert counting.calls == {"logits": len(clf.plan([len(s) for s in plain.windows.sequences]))}
    counting.calls = {}
    both = clf.infer(TEXTS, embeddings="mean")
    assert counting.calls == {"logits_and_hidden_states": len(clf.plan([len(s) for s in both.windows.sequences]))}
    np.testing.assert_allclose(both.scores, plain.scores, atol=1e-6)
    np.testing.assert_allclose(both.embeddings, clf.embed(TEXTS, pooling="mean"), atol=1e-6)
    assert plain.embeddings is None


def test_a_windowed_texts_embedding_is_the_token_weighted_mean_of_its_windows(clf):
    reading = Reading("window", window=16, stride=8, aggregate="max")  # the scores' aggregation is not the vectors'
    wanted = Embeddings("cls", layer=1, normalize=False)
    result = clf.infer(TEXTS, reading, embeddings=wanted)
    windows = result.windows
    (hidden,), mask = clf.run_hidden(windows.sequences, (1,))
    vectors = pool(hidden, mask, "cls")
    weights = np.array([len(s) for s in windows.sequences], dtype=np.float64)
    for i in range(len(TEXTS)):
        mine = windows.owner == i
        expected = (vectors[mine] * weights[mine, None]).sum(0) / weights[mine].sum()
        np.testing.assert_allclose(result.embeddings[i], expected, atol=1e-5)
    assert (windows.owner == 1).sum() > 1  # the long text was several windows
    unit = clf.infer(TEXTS, reading, embeddings=Embeddings("cls", layer=1, normalize=True)).embeddings
    np.testing.assert_allclose(unit, result.embeddings / np.linalg.norm(result.embeddings, axis=1, keepdims=True),
                               atol=1e-6)


def test_a_backend_with_hidden_states_but_no_joint_call_still_gives_both(tiny_model_dir):
    loaded = Classifier.load(tiny_model_dir)

    class Apart:
        name = "apart"
        logits = staticmethod(loaded.backend.logits)
        hidden_states = staticmethod(loaded.backend.hidden_states)

    clf = Classifier(Apart(), loaded.tokenizer, loaded.config)
    result = clf.infer(TEXTS, embeddings="cls")
    np.testing.assert_allclose(result.scores, loaded.infer(TEXTS).scores, atol=1e-6)
    np.testing.assert_allclose(result.embeddings, loaded.embed(TEXTS), atol=1e-6)


def test_prepare_refuses_more_windows_than_the_limit_before_building_any(clf, monkeypatch):
    import distilsent.runtime.long_text as long_text

    reading = Reading("window", window=16, stride=8)
    count = len(clf.prepare(TEXTS, reading).sequences) - sum(len(clf.prepare([t], reading).sequences) == 1
                                                              for t in TEXTS)
    assert len(clf.prepare(TEXTS, reading, window_limit=count).sequences) > len(TEXTS)
    monkeypatch.setattr(long_text, "plan", lambda *a, **k: pytest.fail("windows were built"))
    with pytest.raises(WindowLimitError, match=f"{count} windows, over the limit of {count - 1}") as error:
        clf.prepare(TEXTS, reading, window_limit=count - 1)
    assert (error.value.windows, error.value.limit) == (count, count - 1)
    assert isinstance(error.value, InputError)
    monkeypatch.undo()
    assert len(clf.prepare(TEXTS, Reading("head_tail"), window_limit=0).sequences) == len(TEXTS)  # only windows count


def test_truncation_false_refuses_long_texts_only_when_cutting(clf):
    with pytest.raises(InputError, match="more than the maximum"):
        clf.prepare([LONG], truncation=False)
    assert len(clf.prepare([LONG], Reading("head_tail"), truncation=False).sequences) == 1


def test_bad_arguments_are_told_before_any_work(clf):
    with pytest.raises(InputError, match="function_to_apply"):
        clf.infer(TEXTS, runner=lambda s: pytest.fail("ran"), function_to_apply="relu")
    with pytest.raises(InputError, match="layer must be"):
        clf.prepare(TEXTS, embeddings=Embeddings(layer=9))
    with pytest.raises(InputError, match="pooling must be"):
        clf.infer(TEXTS, embeddings="max")

"""Window planning and aggregation, on hand-made token ids and scores (no model)."""

import numpy as np
import pytest

from distilsent.errors import InputError
from distilsent.runtime.long_text import (
    WindowPlan,
    aggregate,
    count_windows,
    head_tail,
    plan,
    truncate,
    window_starts,
    window_token_limit,
)

CLS, SEP = 101, 102


def text(n: int) -> list[int]:
    """A text of ``n`` content tokens numbered 0..n-1, with [CLS]/[SEP]."""
    return [CLS, *range(n), SEP]


def windows(ids, max_length, stride):
    return plan([ids], "window", max_length, stride=stride).sequences


def content(sequence):
    assert sequence[0] == CLS and sequence[-1] == SEP
    return sequence[1:-1]


def test_truncate_keeps_the_start_and_the_final_sep():
    assert truncate(text(20), 10) == [CLS, *range(8), SEP]
    assert truncate(text(8), 10) == text(8)


def test_head_tail_keeps_both_ends():
    out = head_tail(text(100), 12, head=3)
    assert len(out) == 12
    assert content(out) == [0, 1, 2, *range(93, 100)]  # 3 from the start, 10 - 3 = 7 from the end
    assert head_tail(text(10), 12, head=3) == text(10)  # fits: unchanged
    assert content(head_tail(text(100), 12, head=0)) == list(range(90, 100))  # only the end
    assert head_tail(text(100), 12, head=50) == truncate(text(100), 12)  # head clipped to the room


def test_windows_overlap_by_width_minus_stride_and_cover_every_token():
    width, stride = 8, 5
    parts = windows(text(20), width + 2, stride)
    starts = [content(w)[0] for w in parts]
    assert starts == [0, 5, 10, 12]  # the last one moved back to end with the text
    assert all(len(w) == width + 2 for w in parts)  # no short window
    assert content(parts[0])[-3:] == content(parts[1])[:3]  # overlap of width - stride = 3 tokens
    covered = {t for w in parts for t in content(w)}
    assert covered == set(range(20))
    assert content(parts[-1])[-1] == 19


def test_window_stride_equal_to_width_tiles_without_overlap():
    assert window_starts(24, 8, 8) == [0, 8, 16]
    assert window_starts(25, 8, 8) == [0, 8, 16, 17]


def test_text_of_exactly_max_length_is_one_window_itself():
    sequence = text(10)  # 12 tokens with [CLS]/[SEP]
    assert windows(sequence, 12, 4) == [sequence]
    assert len(windows(text(11), 12, 4)) == 2  # one token more needs a second window


def test_empty_text_is_one_window_with_its_specials():
    assert windows([CLS, SEP], 12, 4) == [[CLS, SEP]]
    result = plan([[CLS, SEP], text(30)], "window", 12, stride=10)
    assert list(result.owner) == [0, 1, 1, 1]
    assert result.sequences[0] == [CLS, SEP]


def test_plan_keeps_one_sequence_per_text_except_for_windows():
    texts = [text(3), text(30), text(9)]
    for strategy in ("truncate", "head_tail"):
        result = plan(texts, strategy, 12)
        assert list(result.owner) == [0, 1, 2]
        assert all(len(s) <= 12 for s in result.sequences)
    result = plan(texts, "window", 12)  # default stride: half a window (5)
    assert list(result.owner) == [0, 1, 1, 1, 1, 1, 2]
    assert [content(s)[0] for s in result.sequences[1:6]] == [0, 5, 10, 15, 20]
    assert list(result.starts) == [0, 0, 5, 10, 15, 20, 0]


def test_window_narrower_than_the_model_windows_every_text_longer_than_it():
    texts = [text(4), text(9), text(30)]  # all fit the model's 32 positions but the last
    result = plan(texts, "window", 32, window=8)  # 6 content tokens a window, stride 3 by default
    assert list(result.owner) == [0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    assert result.sequences[0] == text(4)  # fits one window: unchanged
    assert [content(s) for s in result.sequences[1:3]] == [[0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8]]
    assert all(len(s) == 8 for s in result.sequences[1:])
    assert {t for s in result.sequences[3:] for t in content(s)} == set(range(30))
    assert plan(texts, "window", 32, window=32).sequences == plan(texts, "window", 32).sequences
    assert plan(texts, "head_tail", 32, window=8).sequences == plan(texts, "head_tail", 32).sequences  # windows only
    assert plan(texts, "window", 32, window=500).sequences == plan(texts, "window", 32).sequences  # cut to fit
    with pytest.raises(InputError, match="window must leave room for"):
        plan(texts, "window", 32, window=2)


def test_bad_strategy_and_stride_are_input_errors():
    with pytest.raises(InputError, match="long_text"):
        plan([text(3)], "middle", 12)
    with pytest.raises(InputError, match="stride"):
        plan([text(30)], "window", 12, stride=0)
    with pytest.raises(InputError, match="stride"):
        plan([text(30)], "window", 12, stride=11)  # would skip a token between windows
    with pytest.raises(InputError, match="aggregate"):
        aggregate(np.zeros((1, 2)), plan([text(3)], "window", 12), 1, "median")


def test_mean_is_weighted_by_window_tokens():
    # Text 0: windows of 12 and 12 tokens; text 1: one window of 4 tokens; text 2: 12 and (forced) 12.
    result = plan([text(15), text(2), text(12)], "window", 12, stride=10)
    assert list(result.owner) == [0, 0, 1, 2, 2]
    scores = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4], [0.0, 1.0]])
    out = aggregate(scores, result, 3, "mean")
    np.testing.assert_allclose(out[0], [0.6, 0.4])
    np.testing.assert_allclose(out[1], [0.2, 0.8])
    np.testing.assert_allclose(out[2], [0.3, 0.7])
    np.testing.assert_allclose(out.sum(axis=1), 1.0)


def test_mean_weights_by_length_when_windows_differ_in_size():
    window_plan = WindowPlan([[CLS, 1, 2, SEP], [CLS, *range(10), SEP]], np.array([0, 0]), np.array([0, 0]))
    scores = np.array([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(aggregate(scores, window_plan, 1, "mean"), [[4 / 16, 12 / 16]])


def test_max_takes_the_most_confident_window_whole():
    result = plan([text(15), text(2), text(25)], "window", 12, stride=10)
    owner = list(result.owner)
    assert owner == [0, 0, 1, 2, 2, 2]
    scores = np.array([[0.55, 0.45], [0.1, 0.9], [0.6, 0.4], [0.7, 0.3], [0.95, 0.05], [0.2, 0.8]])
    out = aggregate(scores, result, 3, "max")
    np.testing.assert_array_equal(out, scores[[1, 2, 4]])


def test_one_window_per_text_passes_scores_through():
    scores = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)
    out = aggregate(scores, plan([text(3), text(4)], "truncate", 12), 2, "max")
    np.testing.assert_array_equal(out, scores)
    assert out.dtype == np.float32


# ---------------------------------------------------------------- through the Classifier (tiny random model)

LONG = " ".join(["the film was good but the plot was boring and the actors were awful"] * 20)  # ~300 tokens


@pytest.fixture(scope="module")
def clf(tiny_model_dir):
    from distilsent import Classifier

    return Classifier.load(tiny_model_dir, backend="onnx")  # 64 positions


def test_windows_of_every_text_share_the_token_budget(clf):
    widths = []
    run_batch = clf.run_batch

    def spy(sequences):
        widths.append((len(sequences), max(len(s) for s in sequences)))
        return run_batch(sequences)

    clf.run_batch = spy
    try:
        texts = [LONG, "great fun", LONG + " good"]
        window_plan = clf.windows(texts, long_text="window", stride=31)
        assert len(window_plan.sequences) > 10 and max(len(s) for s in window_plan.sequences) == 64
        clf.max_batch_tokens = 128
        budgeted = clf(texts, long_text="window", stride=31, top_k=None)
    finally:
        del clf.run_batch
        clf.max_batch_tokens = 2048
    assert all(rows * width <= 128 for rows, width in widths)
    assert len(widths) >= len(window_plan.sequences) // 2  # many small batches, not one giant padded one
    one_pass = clf(texts, long_text="window", stride=31, top_k=None)
    for a, b in zip(budgeted, one_pass):
        assert [d["label"] for d in a] == [d["label"] for d in b]
        np.testing.assert_allclose([d["score"] for d in a], [d["score"] for d in b], rtol=1e-5)


def test_window_scores_are_the_aggregate_of_the_window_runs(clf):
    from distilsent.runtime.classifier import softmax

    texts = [LONG, "great fun"]
    window_plan = clf.windows(texts, long_text="window")
    probs = softmax(clf.run(window_plan.sequences))
    for how in ("mean", "max"):
        expected = aggregate(probs, window_plan, 2, how)
        got = clf(texts, long_text="window", aggregate=how, top_k=None)
        for row, ranked in zip(expected, got):
            assert {d["label"]: d["score"] for d in ranked} == pytest.approx(dict(zip(clf.labels, row)), rel=1e-5)
        # logits() gives the log of the same probabilities
        np.testing.assert_allclose(softmax(clf.logits(texts, long_text="window", aggregate=how)), expected,
                                   rtol=1e-5, atol=1e-6)


def test_strategies_read_different_tokens_of_a_long_text_only(clf):
    short = ["great fun", "awful"]
    results = {s: clf(short + [LONG + " great great great fun"], long_text=s, top_k=None) for s in
               ("truncate", "head_tail", "window")}
    assert results["truncate"][:2] == results["head_tail"][:2] == results["window"][:2]
    assert results["truncate"][2] != results["head_tail"][2]


def test_window_width_is_a_call_option_and_a_classifier_default(clf):
    from distilsent import Classifier
    from distilsent.runtime.classifier import softmax

    texts = [LONG, "great fun"]
    window_plan = clf.windows(texts, long_text="window", window=16, stride=8)
    assert max(len(s) for s in window_plan.sequences) == 16 and len(window_plan.sequences) > 30
    expected = aggregate(softmax(clf.run(window_plan.sequences)), window_plan, 2, "max")
    got = clf(texts, long_text="window", window=16, stride=8, aggregate="max", top_k=None)
    for row, ranked in zip(expected, got):
        assert {d["label"]: d["score"] for d in ranked} == pytest.approx(dict(zip(clf.labels, row)), rel=1e-5)
    narrow = Classifier(clf.backend, clf.tokenizer, clf.config, long_text="window", window=16, stride=8,
                        aggregate="max")
    assert narrow(texts, top_k=None) == got
    assert len(narrow.windows(texts).sequences) == len(window_plan.sequences)
    with pytest.raises(InputError, match="window must leave room"):
        clf(texts, long_text="window", window=2)


def test_return_windows_lists_each_window(clf):
    results, windows = clf([LONG, "good"], long_text="window", stride=62, return_windows=True)
    assert len(results) == 2 and len(windows) == 2
    assert [w["start"] for w in windows[0]][:2] == [0, 62] and windows[1] == [
        {"start": 0, "tokens": 1, "label": windows[1][0]["label"], "score": windows[1][0]["score"]}]
    assert all(w["tokens"] == 62 for w in windows[0])


def test_over_long_text_is_refused_only_without_a_strategy(clf):
    with pytest.raises(InputError, match="the maximum"):
        clf([LONG], truncation=False)
    assert len(clf([LONG], truncation=False, long_text="head_tail")) == 1


def test_neutral_below_relabels_unsure_one_best_answers(clf):
    texts = ["great fun", "awful bad", "the plot"]
    plain = clf(texts)
    everything = clf(texts, neutral_below=1.0)
    assert [d["label"] for d in everything] == ["NEUTRAL"] * 3
    assert [d["score"] for d in everything] == [d["score"] for d in plain]  # the best score, kept
    assert clf(texts, neutral_below=0.0) == plain
    middle = sorted(d["score"] for d in plain)[1]
    labels = [d["label"] for d in clf(texts, neutral_below=middle)]
    assert labels.count("NEUTRAL") == 1
    assert clf("great fun", top_k=1, neutral_below=1.0) == [{"label": "NEUTRAL", "score": plain[0]["score"]}]
    with pytest.raises(InputError, match="one label"):
        clf(texts, top_k=None, neutral_below=0.7)
    with pytest.raises(InputError, match="between 0 and 1"):
        clf(texts, neutral_below=1.5)


def test_neutral_below_is_for_binary_models(tmp_path, vocab_file):
    pytest.importorskip("torch")
    from distilsent import Classifier
    from tests.conftest import make_tiny_model

    directory = make_tiny_model(tmp_path / "three", vocab_file, id2label={0: "neg", 1: "neu", 2: "pos"})
    with pytest.raises(InputError, match="binary"):
        Classifier.load(directory)("good", neutral_below=0.5)


def test_predict_verb_reads_long_texts_and_abstains(tiny_model_dir, clf, capsys):
    import json

    from distilsent.cli import main

    model = ["--model", str(tiny_model_dir)]
    assert main(["predict", *model, "--long-text", "window", "--stride", "20", "--aggregate", "max", LONG]) == 0
    assert json.loads(capsys.readouterr().out) == clf([LONG], long_text="window", stride=20, aggregate="max")[0]
    assert main(["predict", *model, "--neutral-below", "1", "great fun"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] == "NEUTRAL"
    assert main(["predict", *model, "--long-text", "window", "--stride", "100", LONG]) == 1
    assert "stride must be between 1 and the window's 62 tokens" in capsys.readouterr().err
    assert main(["predict", *model, "--long-text", "window", "--window", "16", "--aggregate", "max", LONG]) == 0
    assert json.loads(capsys.readouterr().out) == clf([LONG], long_text="window", window=16, aggregate="max")[0]
    assert main(["predict", *model, "--long-text", "window", "--window", "2", LONG]) == 1
    assert "window must leave room for [CLS], a token and [SEP], got 2" in capsys.readouterr().err


@pytest.mark.parametrize("max_length, window, stride", [(512, None, None), (512, 128, None), (64, None, 7),
                                                        (64, 16, 14), (32, 5, 1)])
@pytest.mark.parametrize("max_windows", [1, 2, 3, 128])
def test_window_token_limit_is_the_longest_text_within_that_many_windows(max_length, window, stride, max_windows):
    limit = window_token_limit(max_windows, max_length, stride=stride, window=window)
    windows = [len(plan([text(n - 2)], "window", max_length, stride=stride, window=window).sequences)
               for n in (limit, limit + 1)]
    assert windows[0] <= max_windows < windows[1]


@pytest.mark.parametrize("max_length, window, stride", [(512, None, None), (64, None, 7), (64, 16, 14), (32, 5, 1)])
def test_count_windows_counts_what_plan_builds_for_texts_read_as_several(max_length, window, stride):
    lengths = [2, 3, 20, 33, 64, 65, 130, 513, 2000]
    ids = [text(n - 2) for n in lengths]
    owners = plan(ids, "window", max_length, stride=stride, window=window).owner
    several = sum(int((owners == i).sum()) for i in range(len(ids)) if (owners == i).sum() > 1)
    assert several > 0
    assert count_windows(lengths, max_length, stride=stride, window=window) == several

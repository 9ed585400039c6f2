"""Word attributions: occlusion against the pipeline, integrated gradients' completeness, output forms, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distilsent import Classifier, InputError
from distilsent.cli import main
from distilsent.insight.explain import GradientExplainer, explain, occlusion, split_words

TEXT = "the plot is boring, but i love the actors!"


@pytest.fixture(scope="module")
def clf(tiny_model_dir) -> Classifier:
    return Classifier.load(tiny_model_dir, threads=1)


@pytest.fixture(scope="module")
def ig(tiny_model_dir) -> GradientExplainer:
    pytest.importorskip("torch")
    return GradientExplainer.load(tiny_model_dir, threads=1, steps=300)


def test_words_keep_their_spans_and_split_punctuation():
    words = split_words(TEXT)
    assert [w for w, _, _ in words] == ["the", "plot", "is", "boring", ",", "but", "i", "love", "the", "actors", "!"]
    assert all(TEXT[s:e] == w for w, s, e in words)


def test_occlusion_is_the_probability_drop_when_each_word_is_left_out(clf):
    result = occlusion(clf, TEXT)
    [best] = clf(TEXT)
    assert (result.label, result.score) == (best["label"], pytest.approx(best["score"], abs=1e-6))
    words = split_words(TEXT)
    assert [w.text for w in result.words] == [w for w, _, _ in words]
    for word, (_, start, end) in zip(result.words, words):
        without = {d["label"]: d["score"] for d in clf(TEXT[:start] + TEXT[end:], top_k=None)}
        assert word.attribution == pytest.approx(best["score"] - without[best["label"]], abs=1e-5)


def test_integrated_gradients_add_up_to_the_change_from_the_baseline(ig, clf):
    result = ig(TEXT)
    [best] = clf(TEXT)  # the ONNX graph and the torch model agree on the prediction
    assert result.label == best["label"] and result.score == pytest.approx(best["score"], abs=1e-4)
    assert result.method == "ig" and len(result.words) == len(split_words(TEXT))
    total = sum(w.attribution for w in result.words)
    assert abs(result.delta) < 0.02 * max(abs(total), 0.05)  # completeness up to the integration error
    coarse = GradientExplainer(ig.model, ig.tokenizer, ig.labels, steps=2)(TEXT)
    assert coarse.words != result.words  # the steps are really integrated, not a single gradient


def test_integrated_gradients_sum_pieces_into_words_and_ignore_words_past_the_limit(ig):
    text = "zzz film " + "very " * 80 + "good"  # "zzz" is several pieces; past 64 positions the text is cut
    result = ig(text)
    assert result.words[0].text == "zzz" and result.words[0].attribution != 0
    assert result.words[-1].text == "good" and result.words[-1].attribution == 0.0


def test_output_forms(clf):
    result = occlusion(clf, TEXT)
    data = result.to_dict()
    assert data["words"] == [w.text for w in result.words] and len(data["attributions"]) == len(data["spans"])
    assert json.loads(json.dumps(data))["label"] == result.label
    coloured = result.terminal(colour=True)
    assert "\x1b[48;2;" in coloured and "\x1b[" not in result.terminal(colour=False)
    strongest = max(result.words, key=lambda w: abs(w.attribution))
    assert f"{strongest.text}[{strongest.attribution:+.3f}]" in result.terminal(colour=False)
    page = result.html()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page
    assert page.count('<span style="background:rgb(') == len(result.words) + 2  # + the two legend swatches


def test_bad_input(clf):
    for bad in ("", "   ", None, ["a list"]):
        with pytest.raises(InputError):
            occlusion(clf, bad)
    with pytest.raises(InputError, match="unknown method"):
        explain("good", method="shap")


def test_cli_json_html_and_errors(tiny_model_dir, tmp_path, capsys):
    page = tmp_path / "e.html"
    assert main(["explain", TEXT, "--model", str(tiny_model_dir), "--json", "--html", str(page), "--threads", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["method"] == "occlusion" and data["words"][3] == "boring"
    assert page.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert main(["explain", "", "--model", str(tiny_model_dir)]) == 1
    assert capsys.readouterr().err.startswith("distilsent: error:")


def test_default_model_attributions_point_at_the_sentiment_words():
    """On the shipped model the words that carry the sentiment get the largest attributions."""
    try:
        clf = Classifier.load(threads=1)
    except Exception as e:  # noqa: BLE001 - a checkout without the default model
        pytest.skip(f"no default model: {e}")
    result = occlusion(clf, "the acting was wooden and the plot a total mess")
    top = {w.text for w in sorted(result.words, key=lambda w: -w.attribution)[:3]}
    assert result.label == "NEGATIVE" and top & {"wooden", "mess"}
    assert np.mean([w.attribution for w in result.words if w.text in {"the", "and"}]) < max(
        w.attribution for w in result.words if w.text in {"wooden", "mess"})

"""Bias probes: sentences, P(positive) per term, spread, files, model-card section, CLI."""

from __future__ import annotations

import csv
import json
import shutil
import sys

import numpy as np
import pytest

from distilsent import Classifier, DataError, InputError
from distilsent.cli import main
from distilsent.insight.probe import (
    CARD_END,
    CARD_START,
    Probe,
    Term,
    builtin_probe,
    read_templates,
    read_terms,
    run_probe,
    summary_markdown,
    update_card,
    write_report,
)

TERMS = (Term("france", "fr"), Term("india", "in"), Term("iraq", "iq"))
PROBE = Probe("tiny", ("this film was filmed in {term}", "i love the story of {term} !"), TERMS)


@pytest.fixture(scope="module")
def clf(tiny_model_dir) -> Classifier:
    return Classifier.load(tiny_model_dir, threads=1)


def test_every_sentence_is_scored_with_the_positive_probability_of_the_pipeline(clf):
    result = run_probe(clf, PROBE)
    expected = [(t, term.text) for t in PROBE.templates for term in TERMS]
    assert [(t, term.text) for t, term, _, _ in result.rows] == expected
    sentences = [s for _, _, s, _ in result.rows]
    assert sentences[0] == "this film was filmed in france"
    expected = [next(d["score"] for d in out if d["label"] == "POSITIVE") for out in clf(sentences, top_k=None)]
    np.testing.assert_allclose([p for *_, p in result.rows], expected, atol=1e-6)


def test_summary_spread_is_max_minus_min_of_the_per_term_means(clf):
    result = run_probe(clf, PROBE)
    summary = result.summary()
    per_term = {term.text: np.mean([p for _, t, _, p in result.rows if t == term]) for term in TERMS}
    assert summary["spread"] == pytest.approx(max(per_term.values()) - min(per_term.values()), abs=1e-6)
    assert summary["std"] == pytest.approx(np.std(list(per_term.values())), abs=1e-6)
    ranked = sorted(per_term, key=per_term.get, reverse=True)
    assert [i["term"] for i in summary["most_favoured"]] == ranked
    assert [i["term"] for i in summary["least_favoured"]] == ranked[::-1]
    assert summary["sentences"] == 6 and summary["terms"] == 3 and summary["templates"] == 2
    for template in PROBE.templates:
        row = summary["per_template"][template]
        assert row["most_favoured"][0]["p"] - row["least_favoured"][0]["p"] == pytest.approx(row["spread"])


def test_groups_are_compared_when_terms_have_them(clf):
    probe = Probe("names", ("{term} wrote this review .",),
                  (Term("mary", group="female"), Term("emma", group="female"), Term("james", group="male")))
    summary = run_probe(clf, probe).summary()
    per_term = {t["term"]: t["p"] for t in summary["most_favoured"]}
    assert summary["groups"]["female"]["mean"] == pytest.approx((per_term["mary"] + per_term["emma"]) / 2)
    assert summary["group_gap"] == pytest.approx(abs(summary["groups"]["female"]["mean"] - per_term["james"]))
    assert "group means female" in summary_markdown([summary])


def test_built_in_probes_cover_every_country_with_map_codes_and_the_original_template():
    country = builtin_probe("country")
    assert country.templates[0] == "This film was filmed in {term}"  # the original card's sentence
    assert len(country.terms) >= 190
    names = {t.text for t in country.terms}
    assert {"France", "Afghanistan", "India", "Iraq", "Germany", "Brazil", "Japan"} <= names
    assert all(t.code and len(t.code) == 2 for t in country.terms)
    assert len({t.code for t in country.terms}) == len(country.terms)
    gender = builtin_probe("gender")
    groups = [t.group for t in gender.terms]
    assert groups.count("female") == groups.count("male") >= 10
    with pytest.raises(InputError):
        builtin_probe("religion")


def test_template_and_term_files(tmp_path):
    templates = tmp_path / "templates.txt"
    templates.write_text("a film from {term}\n\nno placeholder here\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 3"):
        read_templates(templates)
    templates.write_text("a film from {term}\n\nmade in {term} .\n", encoding="utf-8")
    assert read_templates(templates) == ("a film from {term}", "made in {term} .")
    terms = tmp_path / "terms.txt"
    terms.write_text("Maria\tfemale\nJohn\tmale\n\nAlex\n", encoding="utf-8")
    assert read_terms(terms) == (Term("Maria", group="female"), Term("John", group="male"), Term("Alex"))
    terms.write_text("a\tb\tc\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 1"):
        read_terms(terms)
    with pytest.raises(InputError):
        Probe("bad", ("no placeholder",), (Term("x"),))


def test_the_probe_needs_the_label_it_measures(clf):
    with pytest.raises(InputError, match="no 'happy' label"):
        run_probe(clf, PROBE, positive_label="happy")


def test_report_files_csv_summary_bars_and_map(clf, tmp_path):
    pytest.importorskip("matplotlib")
    result = run_probe(clf, PROBE)
    written = write_report(result, tmp_path)
    with open(written["csv"], encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and rows[0]["sentence"] == "this film was filmed in france"
    assert float(rows[0]["p_positive"]) == pytest.approx(result.rows[0][3], abs=1e-6)
    assert json.loads(written["summary"].read_text())["spread"] == pytest.approx(result.summary()["spread"])
    assert written["bars"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if isinstance(written["map"], str):
        pytest.skip(written["map"])
    svg = written["map"].read_text(encoding="utf-8")
    assert "<svg" in svg and 'href="http' not in svg  # nothing fetched when the map is opened
    for term in TERMS:  # every probed country is drawn with its value
        assert f"{term.code} country" in svg


def test_update_card_replaces_its_own_section_and_keeps_the_rest(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# my model\n\nbody\n", encoding="utf-8")
    update_card(tmp_path, "## Bias probe\n\nfirst\n")
    update_card(tmp_path, "## Bias probe\n\nsecond\n")
    card = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlicense: mit\n---\n# my model\n\nbody\n")
    assert card.count(CARD_START) == 1 and card.count(CARD_END) == 1
    assert "second" in card and "first" not in card


def test_cli_writes_files_and_updates_the_card(tiny_model_dir, tmp_path, capsys):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (tmp_path / "t.txt").write_text("a film from {term}\n", encoding="utf-8")
    (tmp_path / "n.txt").write_text("france\ngermany\n", encoding="utf-8")
    out = tmp_path / "out"
    code = main(["bias-probe", "--model", str(model), "--templates", str(tmp_path / "t.txt"), "--terms",
                 str(tmp_path / "n.txt"), "--out", str(out), "--update-card", "--no-plots", "--threads", "1"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["probe"] == "custom" and len(lines[0]["most_favoured"]) == 2
    assert (out / "custom.csv").is_file() and (out / "summary.md").is_file()
    assert "## Bias probe" in (model / "README.md").read_text(encoding="utf-8")
    assert len((out / "custom.csv").read_text().splitlines()) == 3


def test_cli_bad_template_file_is_one_line_error(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "t.txt").write_text("fine {term}\nbroken\n", encoding="utf-8")
    code = main(["bias-probe", "--model", str(tiny_model_dir), "--templates", str(tmp_path / "t.txt"),
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("distilsent: error:") and "line 2" in err and err.count("\n") == 1


def test_a_binary_template_file_is_not_a_text_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"{term}\x00\x00\x00\x01" * 10)  # valid UTF-8, with a placeholder, but NUL bytes
    with pytest.raises(DataError, match="t.txt: not a text file"):
        read_templates(path)


def test_cli_without_matplotlib_fails_before_probing(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import distilsent.cli.evaluation

    def run_probe(*args, **kwargs):
        raise AssertionError("probed although the plots cannot be drawn")

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(distilsent.cli.evaluation, "run_probe", run_probe)
    code = main(["bias-probe", "--model", str(tiny_model_dir), "--out", str(tmp_path / "out")])
    assert code == 1
    err = capsys.readouterr().err
    assert err == "distilsent: error: probe plots need matplotlib: pip install 'distilsent[probe]'\n"
    assert not (tmp_path / "out").exists()

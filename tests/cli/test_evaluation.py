import json
import sys

import pytest

from distilsent.cli import main

from .conftest import labelled_file


def test_eval_plots_without_matplotlib_fail_before_evaluating(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import distilsent.cli.evaluation

    def evaluate(*args, **kwargs):
        raise AssertionError("evaluated although the plots cannot be drawn")

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(distilsent.cli.evaluation, "evaluate", evaluate)
    code = main(["eval", str(tiny_model_dir), str(labelled_file(tmp_path / "d.tsv")), "--plots", str(tmp_path)])
    assert code == 1
    assert capsys.readouterr().err == ("distilsent: error: plots need matplotlib: pip install matplotlib (or "
                                       "'distilsent[train]', which also installs PyTorch)\n")


def test_eval_progress_on_stderr_unless_quiet(tiny_model_dir, tmp_path, capsys):
    data = str(labelled_file(tmp_path / "d.tsv", rows=40))
    assert main(["eval", str(tiny_model_dir), data, "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["examples"] == 40
    assert captured.err.startswith("eval: 40/40 sequences (100%) ") and " sequences/s, in 0:00:" in captured.err
    assert main(["eval", str(tiny_model_dir), data, "--json", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_eval_refuses_a_text_over_max_windows_before_evaluating(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import distilsent.cli.evaluation

    def evaluate(*args, **kwargs):
        raise AssertionError("evaluated although a text is over the window limit")

    data = labelled_file(tmp_path / "d.tsv", rows=4)
    data.write_text(data.read_text() + " ".join(["good"] * 125) + "\t1\n")
    monkeypatch.setattr(distilsent.cli.evaluation, "evaluate", evaluate)
    code = main(["eval", str(tiny_model_dir), str(data), "--long-text", "window", "--max-windows", "3", "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"distilsent: error: {data}: example 5: the text needs more than 3 windows")


def test_eval_reports_each_file_beside_the_whole(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "a.tsv").write_text("sentence\tlabel\na great film\t1\nthe worst movie\t0\n", encoding="utf-8")
    (tmp_path / "stars.csv").write_text("text,stars\ngood fun,5\nboring,1\nmeh,3\n", encoding="utf-8")
    mapping = f"{tmp_path / 'stars.csv'}=1,2=NEGATIVE;3=-;4,5=POSITIVE"
    assert main(["eval", str(tiny_model_dir), str(tmp_path / "a.tsv"), str(tmp_path / "stars.csv"),
                 "--label-map", mapping, "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["examples"] == 4 and list(result["per_source"]) == ["a.tsv", "stars.csv"]
    assert [m["examples"] for m in result["per_source"].values()] == [2, 2]
    whole = sum(m["accuracy"] * m["examples"] for m in result["per_source"].values()) / 4
    assert result["accuracy"] == pytest.approx(whole)
    assert main(["eval", str(tiny_model_dir), str(tmp_path / "a.tsv"), str(tmp_path / "stars.csv"),
                 "--label-map", mapping, "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "source" in table and "stars.csv" in table and "a.tsv" in table
    assert main(["eval", str(tiny_model_dir), str(tmp_path / "a.tsv"), "--json", "--quiet"]) == 0
    assert "per_source" not in json.loads(capsys.readouterr().out)  # one file is the whole

"""``distilsent score``: every format in and out, row order, resume after a real kill, the bad-row
policies, stdin/stdout, progress lines, and that a failed run never leaves a half-written output."""

from __future__ import annotations

import csv
import functools
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from distilsent import Classifier
from distilsent.bulk.local import ScoreSettings, score_stream
from distilsent.cli import main
from distilsent.errors import DataError, InputError
from distilsent.progress import Progress
from distilsent.runtime.long_text import Reading

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

TEXTS = [
    "a great film", "awful", "the plot is boring but the actors are fun", "meh", "i love this movie !",
    "not good , not bad", "worst story", "the best", 'a "quoted" word, and a comma', "very very very good fun",
    "émigré café ünïcödé", "it was the worst film of the year and i hate it",
]
FORMATS = ("csv", "tsv", "jsonl", "parquet")


@pytest.fixture(scope="module")
def clf(tiny_model_dir):
    return Classifier.load(tiny_model_dir)


def write_table(path: Path, records: list[dict]) -> Path:
    """``records`` in the format of ``path``'s extension; CSV/TSV values become strings."""
    fmt = path.suffix.lstrip(".")
    columns = list(records[0])
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(records), path, row_group_size=5)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    else:
        with open(path, "w", encoding="utf-8", newline="") as handle:
            if fmt == "tsv":
                lines = [dict(zip(columns, columns))] + records
                handle.write("".join("\t".join(map(str, r.values())) + "\n" for r in lines))
            else:
                writer = csv.writer(handle)
                writer.writerow(columns)
                writer.writerows([list(r.values()) for r in records])
    return path


def read_table(path: Path) -> list[dict]:
    fmt = path.suffix.lstrip(".")
    if fmt == "parquet":
        return pq.read_table(path).to_pylist()
    if fmt == "jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    with open(path, encoding="utf-8", newline="") as handle:
        quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
        return list(csv.DictReader(handle, delimiter="\t" if fmt == "tsv" else ",", quoting=quoting))


def records(n: int = len(TEXTS)) -> list[dict]:
    return [{"id": i, "review": TEXTS[i % len(TEXTS)], "stars": i % 5} for i in range(n)]


@pytest.mark.parametrize("out_fmt", FORMATS)
@pytest.mark.parametrize("in_fmt", FORMATS)
def test_every_format_keeps_columns_and_order(tmp_path, clf, in_fmt, out_fmt):
    rows = records(31)
    if in_fmt == "tsv":  # an unquoted TSV value cannot hold what the CSV quoting test needs
        rows = [{**r, "review": r["review"].replace('"', "")} for r in rows]
    source = write_table(tmp_path / f"in.{in_fmt}", rows)
    target = tmp_path / f"out.{out_fmt}"
    summary = score_stream(clf, str(source), str(target), ScoreSettings(chunk_rows=4), progress=False)
    assert summary["rows"] == summary["written"] == 31
    out = read_table(target)
    expected = clf([r["review"] for r in rows])
    as_text = in_fmt in ("csv", "tsv") or out_fmt in ("csv", "tsv")
    assert [list(r)[:3] for r in out] == [["id", "review", "stars"]] * 31
    for got, row, want in zip(out, rows, expected):
        for key in ("id", "review", "stars"):
            assert (str(got[key]) if as_text else got[key]) == (str(row[key]) if as_text else row[key])
        assert got["label"] == want["label"]
        assert float(got["score"]) == pytest.approx(want["score"], abs=1e-6)
    assert not (tmp_path / f"out.{out_fmt}.partial").exists()


def test_all_scores_and_prefix(tmp_path, clf):
    source = write_table(tmp_path / "in.jsonl", [{"text": t, "label": 1} for t in TEXTS])
    with pytest.raises(DataError, match="already has a column 'label'; pass --prefix"):
        score_stream(clf, str(source), str(tmp_path / "x.jsonl"), ScoreSettings(), progress=False)
    target = tmp_path / "out.jsonl"
    score_stream(clf, str(source), str(target), ScoreSettings(all_scores=True, prefix="pred_"), progress=False)
    out = read_table(target)
    expected = clf(TEXTS, top_k=None)
    for got, want in zip(out, expected):
        assert got["label"] == 1 and got["pred_label"] == want[0]["label"]
        for item in want:
            assert got[f"pred_score_{item['label']}"] == pytest.approx(item["score"], abs=1e-6)


def test_csv_keeps_values_byte_for_byte(tmp_path, clf):
    text = 'id,body,note\n1,"multi\nline, ""quoted""",x\n2,plain,\n'
    source = tmp_path / "in.csv"
    source.write_text(text, encoding="utf-8")
    target = tmp_path / "out.csv"
    score_stream(clf, str(source), str(target), ScoreSettings(text_column="body"), progress=False)
    lines = target.read_text(encoding="utf-8")
    assert lines.startswith('id,body,note,label,score\n1,"multi\nline, ""quoted""",x,')
    assert read_table(target)[1]["note"] == ""


def _cli(tmp_path, tiny_model_dir, *args, **kwargs):
    return subprocess.run([sys.executable, "-m", "distilsent", "score", *map(str, args), "--model",
                           str(tiny_model_dir)], capture_output=True, cwd=tmp_path, **kwargs)


def test_resume_after_a_killed_run_writes_the_same_bytes(tmp_path, tiny_model_dir):
    rows = records(20_000)
    source = write_table(tmp_path / "big.csv", rows)
    reference = tmp_path / "reference.jsonl"
    score_stream(Classifier.load(tiny_model_dir), str(source), str(reference), ScoreSettings(chunk_rows=100),
                 progress=False)

    target = tmp_path / "out.jsonl"
    partial = tmp_path / "out.jsonl.partial"
    process = subprocess.Popen([sys.executable, "-m", "distilsent", "score", str(source), str(target), "--model",
                                str(tiny_model_dir), "--chunk-rows", "100", "--quiet"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (partial / "00000020.jsonl").is_file():
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    finished = len(list(partial.glob("*.jsonl")))
    assert 20 <= finished < 200
    assert not target.exists()  # nothing half-written under the output's name

    resumed = _cli(tmp_path, tiny_model_dir, source, target, "--chunk-rows", "100", "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["resumed_chunks"] >= finished and summary["rows"] == summary["written"] == 20_000
    assert target.read_bytes() == reference.read_bytes()
    assert not partial.exists()


def interrupt_at_chunk(monkeypatch, index: int) -> None:
    """Ctrl-C while chunk ``index`` (from 0) is being scored."""
    from distilsent.bulk.local import Scorer

    score, calls = Scorer.score, []

    def interrupted(self, *args):
        calls.append(1)
        if len(calls) > index:
            raise KeyboardInterrupt
        return score(self, *args)

    monkeypatch.setattr(Scorer, "score", interrupted)


def test_resume_refuses_a_changed_input_or_settings(tmp_path, clf, monkeypatch):
    source = write_table(tmp_path / "in.csv", records(30))
    target = tmp_path / "out.csv"
    partial = tmp_path / "out.csv.partial"
    settings = ScoreSettings(chunk_rows=10)
    jsonl = write_table(tmp_path / "in.jsonl", records(30))
    with monkeypatch.context() as patched:
        interrupt_at_chunk(patched, 2)
        with pytest.raises(KeyboardInterrupt):
            score_stream(clf, str(jsonl), str(target), settings, progress=False)
    assert not target.exists() and sorted(p.name for p in partial.glob("0*")) == ["00000000.csv", "00000001.csv"]
    with pytest.raises(InputError, match="on_error changed"):
        score_stream(clf, str(jsonl), str(target), ScoreSettings(chunk_rows=10, on_error="skip"), resume=True,
                     progress=False)
    write_table(jsonl, records(29))
    with pytest.raises(InputError, match="cannot resume .* input_"):
        score_stream(clf, str(jsonl), str(target), settings, resume=True, progress=False)
    summary = score_stream(clf, str(source), str(target), settings, progress=False)  # no --resume: starts over
    assert summary["resumed_chunks"] == 0 and summary["written"] == 30 and not partial.exists()


@pytest.mark.parametrize("fmt", ("jsonl", "parquet"))
@pytest.mark.parametrize("on_error", ("fail", "skip", "mark"))
def test_rows_without_text(tmp_path, clf, fmt, on_error):
    rows = [{"text": "a great film", "n": 1}, {"text": None, "n": 2}, {"text": "awful", "n": 3},
            {"text": "", "n": 4}, {"text": " \t ", "n": 5}]  # empty and blank texts: the bias alone would answer
    if fmt == "jsonl":
        rows.append({"n": 6})  # no text field at all
        rows.append({"text": 7, "n": 7})  # not a string
    source = write_table(tmp_path / f"in.{fmt}", rows)
    target = tmp_path / "out.jsonl"
    target.write_text("previous output\n")
    settings = ScoreSettings(on_error=on_error)
    err = io.StringIO()
    if on_error == "fail":
        with pytest.raises(DataError, match=r"row 2\b.*the text is missing"):
            score_stream(clf, str(source), str(target), settings, progress=False, stderr=err)
        assert target.read_text() == "previous output\n"  # a failed run leaves OUT as it was
        return
    summary = score_stream(clf, str(source), str(target), settings, progress=False, stderr=err)
    out = read_table(target)
    bad = len(rows) - 2
    assert summary["rows"] == len(rows)
    assert "row 2" in err.getvalue() and ("row 7" in err.getvalue()) == (fmt == "jsonl")
    if on_error == "skip":
        assert summary["skipped"] == bad and summary["written"] == 2 and [r["n"] for r in out] == [1, 3]
    else:
        assert summary["marked"] == bad and summary["written"] == len(rows)
        assert [r["n"] for r in out] == [r["n"] for r in rows]
        assert [r["label"] is None for r in out] == [r["n"] not in (1, 3) for r in rows]
        assert out[1]["error"] == "the text is missing" and out[0]["error"] is None
        assert out[3]["error"] == "the text is empty" and out[4]["error"] == "the text is only whitespace"
        if fmt == "jsonl":
            assert out[6]["error"] == "the text is int, not a string"


def test_malformed_text_rows_carry_their_line_numbers(tmp_path, clf):
    source = tmp_path / "in.csv"
    source.write_bytes(b"text,n\ngood,1\nthree,fields,here\nbroken \xff utf8,3\nlast,4\n")
    err = io.StringIO()
    summary = score_stream(clf, str(source), str(tmp_path / "o.csv"), ScoreSettings(on_error="skip"),
                           progress=False, stderr=err)
    assert summary["skipped"] == 2 and summary["written"] == 2
    assert "row 2 (line 3): expected 2 fields, found 3" in err.getvalue()
    assert "row 3 (line 4): invalid UTF-8" in err.getvalue()
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"text": "ok"}\n\n{not json\n[1, 2]\n')
    err = io.StringIO()
    summary = score_stream(clf, str(jsonl), str(tmp_path / "o.jsonl"), ScoreSettings(on_error="mark"),
                           progress=False, stderr=err)
    assert summary["marked"] == 2
    assert "row 2 (line 3): invalid JSON" in err.getvalue()
    assert "row 3 (line 4): expected a JSON object" in err.getvalue()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["missing.csv", "out.csv"], "missing.csv: no such file"),
        (["in.txt", "out.csv"], "in.txt: cannot tell the format from the extension"),
        (["in.csv", "out.xlsx"], "out.xlsx: cannot tell the format from the extension"),
        (["in.csv", "out.csv", "--text-column", "body"], "no text column 'body'; columns are id, review, stars"),
        (["nocolumn.csv", "out.csv"], "cannot find a text column among a, b; pass --text-column"),
        (["in.csv", "in.csv"], "the output would overwrite the input"),
        (["-", "out.csv", "--resume"], "--resume needs files"),
        (["empty.csv", "out.csv"], "empty.csv: the file is empty"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, tiny_model_dir, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    write_table(tmp_path / "in.csv", records(3))
    (tmp_path / "in.txt").write_text("x")
    (tmp_path / "nocolumn.csv").write_text("a,b\n1,2\n")
    (tmp_path / "empty.csv").write_text("")
    code = main(["score", *argv, "--model", str(tiny_model_dir), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and err.startswith("distilsent: error:") and message in err
    assert not (tmp_path / "out.csv").exists()


def test_stdin_to_stdout(tmp_path, tiny_model_dir, clf):
    data = "".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TEXTS))
    done = _cli(tmp_path, tiny_model_dir, "-", "-", "--chunk-rows", "5", input=data.encode())
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [r["id"] for r in out] == list(range(len(TEXTS)))
    assert [r["label"] for r in out] == [p["label"] for p in clf(TEXTS)]
    summary = json.loads(done.stderr.decode().strip().splitlines()[-1])  # the summary goes to stderr
    assert summary["written"] == len(TEXTS)


@pytest.mark.parametrize("fmt", FORMATS)
def test_progress_lines_when_not_a_terminal(tmp_path, clf, monkeypatch, fmt):
    monkeypatch.setattr("distilsent.bulk.local.Progress", functools.partial(Progress, interval=0.0))
    rows = records(30)
    rows[3]["review"] = "two\nlines"  # a quoted CSV value over two lines: the line count is only an estimate
    if fmt == "tsv":
        rows[3]["review"] = "one line"
    source = write_table(tmp_path / f"in.{fmt}", rows)
    err = io.StringIO()
    score_stream(clf, str(source), str(tmp_path / "o.csv"), ScoreSettings(chunk_rows=10), stderr=err)
    lines = err.getvalue().splitlines()
    assert "\r" not in err.getvalue()
    assert lines[0].startswith("score: 10/3") and "rows/s" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("score: 30/30 rows (100%)")


def test_long_text_strategies_match_the_classifier(tmp_path, clf):
    long_texts = [" ".join(["the film was great fun"] * 30 + ["but the ending was awful"] * k) for k in range(1, 6)]
    source = write_table(tmp_path / "in.jsonl", [{"text": t} for t in long_texts + TEXTS[:3]])
    texts = long_texts + TEXTS[:3]
    for options in ({"long_text": "head_tail"}, {"long_text": "window", "stride": 16, "aggregate": "max"},
                    {"long_text": "window", "window": 16, "aggregate": "max"}):
        target = tmp_path / "out.jsonl"
        score_stream(clf, str(source), str(target), ScoreSettings(all_scores=True, chunk_rows=3, **options),
                     progress=False)
        expected = clf(texts, top_k=None, **options)
        for got, want in zip(read_table(target), expected):
            assert {k: got[f"score_{k}"] for k in clf.labels} == {d["label"]: d["score"] for d in want}


@pytest.mark.parametrize("reading", [Reading("window", window=16, stride=6, aggregate="max"),
                                     Reading("head_tail", window=None, head=5)], ids=str)
def test_score_and_eval_give_exactly_the_librarys_scores(tmp_path, tiny_model_dir, reading):
    from distilsent.data.examples import Example
    from distilsent.training.evaluate import evaluate, metrics

    texts = [" ".join(["the film was great fun"] * (2 * k) + ["but the ending was awful"] * (7 - k)) for k in range(7)]
    texts += TEXTS
    library = Classifier.load(tiny_model_dir, **reading.options())
    assert library.reading == reading
    expected = library(texts, top_k=None)  # the library's scores, through its public call
    probs = np.array([[d["score"] for d in sorted(row, key=lambda d: library.labels.index(d["label"]))]
                      for row in expected])
    plain = Classifier.load(tiny_model_dir)  # reads by truncation: the settings must carry the reading
    assert not np.array_equal(plain.infer(texts).scores, probs)
    source = write_table(tmp_path / "in.jsonl", [{"text": t} for t in texts])
    for settings in (ScoreSettings(all_scores=True, chunk_rows=4, reading=reading),
                     ScoreSettings(all_scores=True, chunk_rows=4, long_text=reading.long_text, window=reading.window,
                                   stride=reading.stride, aggregate=reading.aggregate)):
        target = tmp_path / "out.jsonl"
        reader = plain if settings.reading is not None else library  # parts go over the classifier's own
        score_stream(reader, str(source), str(target), settings, progress=False)
        got = np.array([[r[f"score_{label}"] for label in plain.labels] for r in read_table(target)])
        np.testing.assert_array_equal(got, probs)
    labels = [i % 2 for i in range(len(texts))]
    evaluated = evaluate(library, [Example(t, y) for t, y in zip(texts, labels)])
    want = metrics(np.array(labels), probs, library.labels)
    for key in ("accuracy", "nll", "brier", "ece", "confusion_matrix", "calibration", "risk_coverage"):
        assert evaluated[key] == want[key], key


def test_a_reading_or_its_parts(clf):
    assert "reading" not in ScoreSettings(long_text="window").identity()  # as runs before readings resume
    assert ScoreSettings(reading=Reading("window", window=16)).identity()["reading"]["window"] == 16
    assert ScoreSettings(stride=8).reading_of(clf) == clf.reading.override(stride=8)
    with pytest.raises(InputError, match="a reading or its parts, not both: window"):
        ScoreSettings(reading=Reading("window"), window=16)
    with pytest.raises(InputError, match="long_text must be one of"):
        ScoreSettings(long_text="windows")


def test_scores_and_embeddings_come_from_one_encoder_pass(tiny_model_dir):
    from distilsent.bulk.engine import Scorer

    loaded = Classifier.load(tiny_model_dir, batch_size=4)
    calls = []

    class Counting:
        name = "counting"

        def logits(self, ids, mask):
            calls.append("logits")
            return loaded.backend.logits(ids, mask)

        def logits_and_hidden_states(self, ids, mask, layers):
            calls.append("both")
            return loaded.backend.logits_and_hidden_states(ids, mask, layers)

    clf = Classifier(Counting(), loaded.tokenizer, loaded.config, batch_size=4)
    rows = Scorer(clf, ScoreSettings(embeddings="mean", all_scores=True), "text").score(
        [{"text": t} for t in TEXTS], [None] * len(TEXTS))
    assert calls == ["both"] * len(clf.plan([len(s) for s in clf.encode(TEXTS)])) and len(calls) > 1
    np.testing.assert_allclose([r["embedding"] for r in rows], loaded.embed(TEXTS, pooling="mean"), atol=1e-6)
    expected = loaded(TEXTS, top_k=None)
    for row, want in zip(rows, expected):
        assert row["label"] == want[0]["label"]
        for item in want:
            assert row[f"score_{item['label']}"] == pytest.approx(item["score"], abs=1e-6)


@pytest.mark.parametrize("fmt", ("jsonl", "parquet"))
def test_embeddings_column(tmp_path, clf, fmt):
    source = write_table(tmp_path / "in.csv", records(12))
    target = tmp_path / f"out.{fmt}"
    score_stream(clf, str(source), str(target), ScoreSettings(embeddings="mean", chunk_rows=5), progress=False)
    got = [r["embedding"] for r in read_table(target)]
    expected = clf.embed(TEXTS[:12], pooling="mean")
    assert len(got) == 12 and all(len(v) == clf.config.dim for v in got)
    np.testing.assert_allclose(np.array(got), expected, atol=1e-6)
    with pytest.raises(InputError, match="CSV cannot hold"):
        score_stream(clf, str(source), str(tmp_path / "o.csv"), ScoreSettings(embeddings="cls"), progress=False)


def test_formats_given_on_the_command_line(tmp_path, tiny_model_dir, capsys, monkeypatch, clf):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rows.txt").write_text('{"text": "a great film"}\n{"text": "awful"}\n', encoding="utf-8")
    code = main(["score", "rows.txt", "scored.data", "--format", "jsonl", "--output-format", "tsv",
                 "--model", str(tiny_model_dir), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)["written"] == 2
    lines = (tmp_path / "scored.data").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "text\tlabel\tscore"
    assert [line.split("\t")[1] for line in lines[1:]] == [p["label"] for p in clf(["a great film", "awful"])]


@pytest.mark.parametrize("fmt", FORMATS)
def test_resume_in_every_output_format(tmp_path, clf, monkeypatch, fmt):
    source = write_table(tmp_path / "in.jsonl", records(50))
    settings = ScoreSettings(chunk_rows=7, all_scores=True)
    reference = tmp_path / f"reference.{fmt}"
    score_stream(clf, str(source), str(reference), settings, progress=False)

    target = tmp_path / f"out.{fmt}"
    with monkeypatch.context() as patched:
        interrupt_at_chunk(patched, 3)
        with pytest.raises(KeyboardInterrupt):
            score_stream(clf, str(source), str(target), settings, progress=False)
    assert not target.exists()
    summary = score_stream(clf, str(source), str(target), settings, resume=True, progress=False)
    assert summary["resumed_chunks"] == 3 and summary["rows"] == summary["written"] == 50
    assert target.read_bytes() == reference.read_bytes()


def test_max_windows_makes_an_over_long_text_a_bad_row(tmp_path, clf, tiny_model_dir, capsys, monkeypatch):
    # The tiny model's 64-token windows start every 31 tokens: 3 windows hold 126 tokens, 124 words.
    rows = [{"text": "great fun"}, {"text": " ".join(["good"] * 125)}, {"text": " ".join(["good"] * 124)}]
    source = write_table(tmp_path / "in.jsonl", rows)
    settings = {"long_text": "window", "max_windows": 3, "chunk_rows": 2}
    with pytest.raises(DataError, match=r"row 2 \(line 2\): the text needs more than 3 windows of 64 tokens"):
        score_stream(clf, str(source), str(tmp_path / "o.jsonl"), ScoreSettings(**settings), progress=False)
    summary = score_stream(clf, str(source), str(tmp_path / "o.jsonl"), ScoreSettings(**settings, on_error="mark"),
                           progress=False, stderr=io.StringIO())
    assert summary["marked"] == 1
    out = read_table(tmp_path / "o.jsonl")
    assert out[1]["label"] is None and "more than 3 windows" in out[1]["error"]
    assert [r["label"] for r in (out[0], out[2])] == [r["label"] for r in clf([rows[0]["text"], rows[2]["text"]],
                                                                                long_text="window")]
    # Truncated reading needs no windows: the limit does not apply.
    assert score_stream(clf, str(source), str(tmp_path / "t.jsonl"), ScoreSettings(max_windows=3),
                        progress=False)["written"] == 3
    monkeypatch.chdir(tmp_path)
    code = main(["score", "in.jsonl", "cli.jsonl", "--model", str(tiny_model_dir), "--long-text", "window",
                 "--max-windows", "3", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "row 2 (line 2): the text needs more than 3 windows" in err


@pytest.mark.parametrize("target, message", [
    ("missing/dir/o.csv", "missing/dir/o.csv: no such directory missing/dir"),
    ("/proc/o.csv", "/proc/o.csv: cannot create /proc/o.csv.partial: "),
    ("taken.csv", "taken.csv is a directory; name the output file"),
])
def test_an_output_that_cannot_be_written_is_one_line_and_creates_nothing(tmp_path, tiny_model_dir, capsys,
                                                                          monkeypatch, target, message):
    if target.startswith("/proc") and not Path("/proc/self").is_dir():
        pytest.skip("no /proc here")
    monkeypatch.chdir(tmp_path)
    write_table(tmp_path / "in.csv", records(3))
    (tmp_path / "taken.csv").mkdir()
    before = sorted(tmp_path.rglob("*"))
    code = main(["score", "in.csv", target, "--model", str(tiny_model_dir), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and err.startswith(f"distilsent: error: {message}")
    assert sorted(tmp_path.rglob("*")) == before
    with pytest.raises(InputError, match=message):  # the library refuses alike
        score_stream(Classifier.load(tiny_model_dir), "in.csv", target, ScoreSettings(), progress=False)


def test_a_binary_file_is_not_a_text_file_in_one_line(tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bin.csv").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 40)
    code = main(["score", "bin.csv", "out.csv", "--model", str(tiny_model_dir), "--quiet"])
    assert code == 1
    assert capsys.readouterr().err == "distilsent: error: bin.csv: not a text file (expected UTF-8 text)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin.csv"]


def test_a_carriage_return_in_a_csv_field_is_named_as_such(tmp_path, clf):
    source = tmp_path / "in.csv"
    source.write_bytes(b'text\n"quoted\rcarriage return"\nbare\rcarriage return\nfine\n')
    err = io.StringIO()
    summary = score_stream(clf, str(source), str(tmp_path / "o.csv"), ScoreSettings(on_error="skip"),
                           progress=False, stderr=err)
    assert (summary["written"], summary["skipped"]) == (2, 1)
    assert err.getvalue() == (f"distilsent: warning: {source}: row 2 (line 3): a carriage return (\\r) inside an "
                              "unquoted field; quote the field, or end lines with \\n; skipped\n")


@pytest.mark.parametrize("bad", ["row", "columns"])
def test_a_failed_run_leaves_no_partial_output(tmp_path, clf, bad):
    rows = records(30)
    if bad == "row":  # found in the third chunk: the same input would fail there again
        rows[25]["review"] = None
    else:  # the file already has the column score would add; found in the second chunk (JSONL keys per row)
        rows[12]["label"] = "x"
    source = write_table(tmp_path / "in.jsonl", rows)
    with pytest.raises(DataError, match="row 26" if bad == "row" else "already has a column 'label'"):
        score_stream(clf, str(source), str(tmp_path / "out.csv"), ScoreSettings(chunk_rows=10), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_interrupted_run_says_how_to_resume(tmp_path, tiny_model_dir, signum, code):
    source = write_table(tmp_path / "big.csv", records(200_000))  # seconds of work: the signal comes first
    partial = tmp_path / "out.csv.partial"
    process = subprocess.Popen([sys.executable, "-m", "distilsent", "score", "big.csv", "out.csv", "--model",
                                str(tiny_model_dir), "--chunk-rows", "100", "--quiet"], cwd=tmp_path,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (partial / "00000002.csv").is_file():
        time.sleep(0.01)
    process.send_signal(signum)
    err = process.communicate(timeout=60)[1]
    assert process.returncode == code, err
    assert err == ("distilsent: interrupted; the finished chunks are kept in out.csv.partial/: run the same command "
                   "with --resume to go on from them\n")
    resumed = _cli(tmp_path, tiny_model_dir, source, "out.csv", "--chunk-rows", "100", "--resume", "--quiet")
    assert resumed.returncode == 0 and json.loads(resumed.stdout)["resumed_chunks"] >= 3

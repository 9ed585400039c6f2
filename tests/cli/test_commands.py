import io
import json
import os
import select
import subprocess
import sys

import pytest

from distilsent import Classifier
from distilsent.cli import main


class FakeStdin:
    def __init__(self, data: bytes):
        self.buffer = io.BytesIO(data)

    def isatty(self) -> bool:
        return False


def run(argv, capsys, stdin: bytes | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", FakeStdin(stdin))
    code = main(argv)
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def test_predict_arguments_in_process(tiny_model_dir, capsys):
    code, lines, _ = run(["predict", "--model", str(tiny_model_dir), "a great film", "awful"], capsys)
    assert code == 0
    assert lines == Classifier.load(tiny_model_dir)(["a great film", "awful"])


def test_predict_stdin_one_line_per_text(tiny_model_dir, capsys, monkeypatch):
    data = b"a great film\r\n\nnot good\n\xff\xfe broken utf-8\nlast line without newline"
    code, lines, err = run(["predict", "--model", str(tiny_model_dir), "--top-k", "all"], capsys, data, monkeypatch)
    assert code == 0
    assert len(lines) == 5  # the empty line and the broken one are classified too: nothing is lost
    assert all(isinstance(line, list) and len(line) == 2 for line in lines)
    assert "line 4: invalid UTF-8" in err
    expected = Classifier.load(tiny_model_dir)(
        ["a great film", "", "not good", "\ufffd\ufffd broken utf-8", "last line without newline"], top_k=None
    )
    assert lines == expected


def test_predict_top_k_one(tiny_model_dir, capsys):
    code, lines, _ = run(["predict", "--model", str(tiny_model_dir), "--top-k", "1", "fun"], capsys)
    assert code == 0 and len(lines) == 1 and len(lines[0]) == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "--model", "/does/not/exist", "x"], "checkpoint directory /does/not/exist does not exist"),
        (["eval", "/does/not/exist", "file.tsv"], "does not exist"),
    ],
)
def test_errors_are_one_line_and_non_zero(argv, message, capsys):
    code = main(argv)
    _, err = capsys.readouterr()
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("distilsent: error:") and message in err


@pytest.mark.parametrize("argv", [["predict", "--top-k", "0"], ["predict", "--batch-size", "x"], ["frobnicate"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2


@pytest.mark.parametrize("verb", ["predict", "train", "eval", "convert"])
def test_every_verb_has_an_example_in_help(verb, capsys):
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    assert "examples:" in capsys.readouterr().out


def test_subprocess_arguments_and_stdin(tiny_model_dir):
    command = [sys.executable, "-m", "distilsent", "predict", "--model", str(tiny_model_dir)]
    by_args = subprocess.run(command + ["good", "bad"], capture_output=True, text=True, check=True)
    by_stdin = subprocess.run(command, input="good\nbad\n", capture_output=True, text=True, check=True)
    assert by_args.stdout == by_stdin.stdout
    assert [json.loads(line)["label"] for line in by_args.stdout.splitlines()] == [
        r["label"] for r in Classifier.load(tiny_model_dir)(["good", "bad"])
    ]
    failed = subprocess.run(command[:-2] + ["--model", "/nope", "x"], capture_output=True, text=True)
    assert failed.returncode == 1 and failed.stderr.strip().count("\n") == 0


def read_line(fd: int, seconds: float) -> bytes:
    """One line from ``fd``, or what came before ``seconds`` passed without a newline."""
    data = b""
    while not data.endswith(b"\n") and select.select([fd], [], [], seconds)[0]:
        chunk = os.read(fd, 1)
        if not chunk:
            break
        data += chunk
    return data


def test_predict_at_a_terminal_answers_each_line_at_once(tiny_model_dir):
    """stdin is a terminal (a pty): each typed line is answered before the next is typed, not at end of input."""
    import pty

    expected = [json.loads(json.dumps(r)) for r in Classifier.load(tiny_model_dir)(["a great film", "awful"])]
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "distilsent", "predict", "--model", str(tiny_model_dir)],
                               stdin=follower, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(follower)
    try:
        for text, answer in zip(["a great film", "awful"], expected):
            os.write(leader, text.encode() + b"\n")
            # Bounded so that a CLI that waits for end of input fails here instead of hanging the suite.
            assert json.loads(read_line(process.stdout.fileno(), 30)) == answer
        os.write(leader, b"\x04")  # end of input, as Ctrl-D
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.wait()
        os.close(leader)


def test_predict_model_default(capsys):
    from distilsent.model.checkpoint import default_model_dir

    if not (default_model_dir() / "config.json").is_file():
        pytest.skip("the default model is not built")
    code, lines, _ = run(["predict", "--model", "default", "a gripping, beautiful film"], capsys)
    assert code == 0 and lines[0]["label"] == "POSITIVE"


def blocked(module: str, argv: list[str]) -> subprocess.CompletedProcess:
    """``distilsent ARGV`` in a fresh interpreter where ``import MODULE`` fails, as when it is not installed."""
    code = (f"import sys; sys.modules[{module!r}] = None; from distilsent.cli import main; "
            f"sys.exit(main({argv!r}))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def labelled_file(path, rows: int = 8):
    path.write_text("sentence\tlabel\n" + "".join(f"{'great fun' if i % 2 else 'awful bad'}\t{i % 2}\n"
                                                   for i in range(rows)))
    return path


@pytest.mark.parametrize("verb", ["train", "convert"])
def test_train_and_convert_without_torch_say_what_to_install(verb, tiny_model_dir, tmp_path):
    if verb == "train":
        argv = ["train", str(labelled_file(tmp_path / "t.tsv")), "--model", str(tiny_model_dir),
                "--out", str(tmp_path / "run")]
    else:
        argv = ["convert", str(tiny_model_dir), str(tmp_path / "out")]
    done = blocked("torch", argv)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("distilsent: error: ") and done.stderr.count("\n") == 1
    assert "needs PyTorch: pip install 'distilsent[" in done.stderr


def test_train_out_that_is_a_file(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "taken").write_text("not a directory")
    code = main(["train", str(labelled_file(tmp_path / "t.tsv")), "--model", str(tiny_model_dir),
                 "--out", str(tmp_path / "taken"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err == (f"distilsent: error: the output {tmp_path / 'taken'} is a file; a run writes a directory "
                   "(best/, metrics.json, ...)\n")


def test_train_stop_after_pauses_and_the_same_command_goes_on(tiny_model_dir, tmp_path, capsys):
    argv = ["train", str(labelled_file(tmp_path / "t.tsv", rows=64)), "--model", str(tiny_model_dir),
            "--out", str(tmp_path / "run"), "--batch-size", "8", "--epochs", "2", "--warmup-steps", "2", "--quiet"]
    assert main([*argv, "--stop-after", "5"]) == 0
    paused = json.loads(capsys.readouterr().out)
    assert (paused["stopped"], paused["steps"], paused["total_steps"]) == (True, 5, 16)
    assert (tmp_path / "run" / "resume.pt").is_file() and not (tmp_path / "run" / "best").exists()
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["model"] == str(tmp_path / "run" / "best")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 16
    assert not (tmp_path / "run" / "resume.pt").exists()


def test_eval_plots_without_matplotlib_fail_before_evaluating(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import distilsent.cli.commands

    def evaluate(*args, **kwargs):
        raise AssertionError("evaluated although the plots cannot be drawn")

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(distilsent.cli.commands, "evaluate", evaluate)
    code = main(["eval", str(tiny_model_dir), str(labelled_file(tmp_path / "d.tsv")), "--plots", str(tmp_path)])
    assert code == 1
    assert capsys.readouterr().err == ("distilsent: error: plots need matplotlib: pip install matplotlib (or "
                                       "'distilsent[train]', which also installs PyTorch)\n")


def test_format_flag_reads_files_without_a_known_extension(tiny_model_dir, tmp_path, capsys):
    data = labelled_file(tmp_path / "reviews.data")
    assert main(["eval", str(tiny_model_dir), str(data), "--quiet"]) == 1
    assert "cannot tell the format from the extension; name it with --format" in capsys.readouterr().err
    assert main(["eval", str(tiny_model_dir), str(data), "--format", "tsv", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 8
    for verb in (["train", "x", "--out", "y"], ["export", "default", "y"]):
        with pytest.raises(SystemExit):
            main([*verb, "--format", "xml"])
        assert "argument --format: invalid choice: 'xml'" in capsys.readouterr().err


def test_eval_progress_on_stderr_unless_quiet(tiny_model_dir, tmp_path, capsys):
    data = str(labelled_file(tmp_path / "d.tsv", rows=40))
    assert main(["eval", str(tiny_model_dir), data, "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["examples"] == 40
    assert captured.err.startswith("eval: 40/40 sequences (100%) ") and " sequences/s, in 0:00:" in captured.err
    assert main(["eval", str(tiny_model_dir), data, "--json", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_export_parity_progress_on_stderr_unless_quiet(tiny_model_dir, tmp_path, capsys):
    pytest.importorskip("torch")
    assert main(["export", str(tiny_model_dir), str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("parity: 24/24 texts (100%) ") and " in 0:00:" in err  # 12 texts, torch then ONNX
    assert main(["export", str(tiny_model_dir), str(tmp_path / "b"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def spy_on_reading(monkeypatch) -> list[str]:
    """Every text that reaches the long-text reader (which tokenizes it whole and builds its windows)."""
    import distilsent.runtime.classifier

    read, seen = distilsent.runtime.classifier.read_windows, []

    def spy(tokenizer, texts, *args, **kwargs):
        seen.extend(texts)
        return read(tokenizer, texts, *args, **kwargs)

    monkeypatch.setattr(distilsent.runtime.classifier, "read_windows", spy)
    return seen


def windowed(model) -> list[str]:
    """``predict`` reading long texts as windows (the tiny model carries no reading of its own)."""
    return ["predict", "--long-text", "window", "--model", str(model)]


def test_predict_refuses_a_text_over_max_windows_before_reading_it(tiny_model_dir, capsys, monkeypatch):
    # The tiny model reads 64-token windows (62 content tokens, a start every 31): 3 windows hold 126 tokens.
    clf = Classifier.load(tiny_model_dir, long_text="window")
    fits, over = " ".join(["good"] * 124), " ".join(["good"] * 125)
    assert [len(clf.windows([t]).sequences) for t in (fits, over)] == [3, 4]
    seen = spy_on_reading(monkeypatch)
    data = f"great\n{fits}\n{over}\nawful\n".encode()
    code, lines, err = run([*windowed(tiny_model_dir), "--max-windows", "3"], capsys, data, monkeypatch)
    assert code == 1
    assert lines == clf(["great", fits])  # the lines before the refused one are answered, nothing after it
    assert err == ("distilsent: error: line 3: the text needs more than 3 windows of 64 tokens; raise --max-windows, "
                   "or pass --long-text truncate to read its first 64 tokens\n")
    assert over not in seen
    code, lines, err = run([*windowed(tiny_model_dir), "--max-windows", "3", "awful", over], capsys)
    assert code == 1 and len(lines) == 1 and err.startswith("distilsent: error: text 2: the text needs more than 3")
    code, lines, _ = run([*windowed(tiny_model_dir), "--max-windows", "4", over], capsys)
    assert code == 0 and lines == clf([over])


def test_predict_default_window_cap_refuses_a_huge_line_at_once(tiny_model_dir, capsys, monkeypatch):
    import time

    huge = ("not good at all " * 250_000).encode()  # 4 MB, a million tokens: tens of thousands of windows
    start = time.perf_counter()
    code, lines, err = run([*windowed(tiny_model_dir)], capsys, b"fine\n" + huge + b"\n", monkeypatch)
    assert code == 1 and len(lines) == 1
    assert "line 2: the text needs more than 128 windows of 64 tokens" in err and err.count("\n") == 1
    assert time.perf_counter() - start < 20  # reading it whole takes longer than that, let alone its windows
    code, lines, _ = run(["predict", "--model", str(tiny_model_dir), "--long-text", "truncate"], capsys,
                         b"fine\n" + huge + b"\n", monkeypatch)
    assert code == 0 and len(lines) == 2


def test_eval_refuses_a_text_over_max_windows_before_evaluating(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import distilsent.cli.commands

    def evaluate(*args, **kwargs):
        raise AssertionError("evaluated although a text is over the window limit")

    data = labelled_file(tmp_path / "d.tsv", rows=4)
    data.write_text(data.read_text() + " ".join(["good"] * 125) + "\t1\n")
    monkeypatch.setattr(distilsent.cli.commands, "evaluate", evaluate)
    code = main(["eval", str(tiny_model_dir), str(data), "--long-text", "window", "--max-windows", "3", "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"distilsent: error: {data}: example 5: the text needs more than 3 windows")


# An executable's first bytes: the ELF header and its tables are mostly NUL bytes.
BINARY = b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 40


@pytest.mark.parametrize("data", [BINARY, "a great film\nawful\n".encode("utf-16"),
                                  bytes(range(128, 256)) * 8 + b"\ngreat\n"], ids=["elf", "utf-16", "high-bytes"])
def test_predict_refuses_binary_stdin_in_one_line(tiny_model_dir, capsys, monkeypatch, data):
    code, lines, err = run(["predict", "--model", str(tiny_model_dir)], capsys, data, monkeypatch)
    assert (code, lines) == (1, [])
    assert err == "distilsent: error: stdin: not a text file (expected UTF-8 text)\n"


def test_predict_keeps_text_with_a_few_bytes_of_another_encoding(tiny_model_dir, capsys, monkeypatch):
    data = "a café in Zürich , a great film\n".encode("latin-1") * 3
    code, lines, err = run(["predict", "--model", str(tiny_model_dir)], capsys, data, monkeypatch)
    assert code == 0 and len(lines) == 3 and err.count("invalid UTF-8 replaced") == 3


def test_export_parity_data_without_torch_is_an_error_before_exporting(tiny_model_dir, tmp_path):
    data = str(labelled_file(tmp_path / "d.tsv"))
    done = blocked("torch", ["export", str(tiny_model_dir), str(tmp_path / "int8"), "--int8", "--parity-data", data])
    assert done.returncode == 1, done.stderr
    assert done.stderr == ("distilsent: error: --parity-data compares the export with the PyTorch model, which needs "
                           "torch: pip install 'distilsent[torch]'\n")
    assert not (tmp_path / "int8").exists()
    # Without --parity-data the comparison on the built-in sentences is a courtesy: it is skipped.
    done = blocked("torch", ["export", str(tiny_model_dir), str(tmp_path / "plain"), "--quiet"])
    assert done.returncode == 0, done.stderr
    assert "parity: skipped" in done.stdout and (tmp_path / "plain" / "model.onnx").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--backend", "onx"], "argument --backend: invalid choice: 'onx' (choose from 'onnx', 'torch')"),
    (["--long-text", "wndow"], "argument --long-text: invalid choice: 'wndow' (choose from 'truncate', 'head_tail', "
                               "'window')"),
    (["--aggregate", "median"], "argument --aggregate: invalid choice: 'median' (choose from 'mean', 'max')"),
    (["--port", "70000"], "argument --port: expected a port from 1 to 65535, got '70000'"),
    (["--port", "0"], "argument --port: expected a port from 1 to 65535, got '0'"),
])
def test_serve_usage_errors_exit_2_with_the_choices(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["serve", *argv])
    assert exit.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"distilsent serve: error: {message}"


def test_eval_reports_each_file_beside_the_whole(tiny_model_dir, tmp_path, capsys):
    from distilsent.cli import main

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

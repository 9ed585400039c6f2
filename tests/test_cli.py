import io
import json
import subprocess
import sys

import pytest

from distilsent import Classifier
from distilsent.cli import main


class FakeStdin:
    def __init__(self, data: bytes):
        self.buffer = io.BytesIO(data)


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

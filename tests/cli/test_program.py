import argparse
import json
import subprocess
import sys

import pytest

from distilsent import Classifier
from distilsent.cli import build_parser, main

VERBS = ["predict", "train", "distill", "eval", "calibrate", "convert", "export", "serve", "score", "bias-probe",
         "explain", "embed", "fewshot", "cache"]


def verbs() -> dict[str, argparse.ArgumentParser]:
    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_verb_in_the_order_of_help():
    assert list(verbs()) == VERBS


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_an_example_in_help(verb, capsys):
    with pytest.raises(SystemExit) as exit:
        main([verb, "--help"])
    assert exit.value.code == 0
    help = capsys.readouterr().out
    assert f"usage: distilsent {verb}" in help
    assert f"\nexamples:\n  distilsent {verb} " in help


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


@pytest.mark.parametrize("argv", [["predict", "--top-k", "0"], ["predict", "--batch-size", "x"], ["frobnicate"], []])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2


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


def test_python_m_distilsent_cli_runs_the_command_line():
    """``python -m distilsent.cli``, as the flat layout's cli.py ran, is the same program."""
    done = subprocess.run([sys.executable, "-m", "distilsent.cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("distilsent ")
    done = subprocess.run([sys.executable, "-m", "distilsent.cli", "frobnicate"], capture_output=True, text=True)
    assert done.returncode == 2 and "invalid choice: 'frobnicate'" in done.stderr

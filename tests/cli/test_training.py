import json

from distilsent.cli import main

from .conftest import blocked, labelled_file


def test_train_without_torch_says_what_to_install(tiny_model_dir, tmp_path):
    done = blocked("torch", ["train", str(labelled_file(tmp_path / "t.tsv")), "--model", str(tiny_model_dir),
                             "--out", str(tmp_path / "run")])
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

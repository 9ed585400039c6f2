import json
import os
import select
import subprocess
import sys

import pytest

from distilsent import Classifier

from .conftest import run


def test_predict_arguments_in_process(tiny_model_dir, capsys):
    code, lines, _ = run(["predict", "--model", str(tiny_model_dir), "a great film", "awful"], capsys)
    assert code == 0
    assert lines == Classifier.load(tiny_model_dir)(["a great film", "awful"])


def test_predict_stdin_one_line_per_text(tiny_model_dir, capsys, monkeypatch):
    data = b"a great film\r\n\nnot good\n\xff\xfe broken utf-8\nlast line without newline"
    code, lines, err = run(["predict", "--model", str(tiny_model_dir), "--top-k", "all"], capsys, data, monkeypatch)
    assert code == 1  # the empty line
    assert len(lines) == 5  # one line out per line in: the empty one gets its error, the broken one a label
    assert lines[1] == {"error": "line 2: the text is empty"}
    assert "line 4: invalid UTF-8" in err
    expected = Classifier.load(tiny_model_dir)(
        ["a great film", "not good", "\ufffd\ufffd broken utf-8", "last line without newline"], top_k=None
    )
    assert lines[:1] + lines[2:] == expected


def test_predict_blank_lines_get_an_error_in_their_place_and_exit_1(tiny_model_dir, capsys, monkeypatch):
    """An empty or whitespace-only line is not labelled (the model would answer from [CLS] and [SEP] alone):
    its output line is an error record, stderr says which line, the rest is classified, and the exit is 1."""
    import distilsent.cli.predict

    monkeypatch.setattr(distilsent.cli.predict, "CHUNK", 2)  # line 3 and 4 blank: a chunk with nothing to classify
    data = "a great film\nawful\n\n \t\u3000\nnot good\n".encode()
    code, lines, err = run(["predict", "--model", str(tiny_model_dir)], capsys, data, monkeypatch)
    assert code == 1
    assert lines == [*Classifier.load(tiny_model_dir)(["a great film", "awful"]),
                     {"error": "line 3: the text is empty"}, {"error": "line 4: the text is only whitespace"},
                     *Classifier.load(tiny_model_dir)(["not good"])]
    assert err == ("distilsent: error: line 3: the text is empty\n"
                   "distilsent: error: line 4: the text is only whitespace\n")


def test_predict_blank_argument_is_named_by_its_position(tiny_model_dir, capsys):
    code, lines, err = run(["predict", "--model", str(tiny_model_dir), "--top-k", "all", "fun", ""], capsys)
    assert code == 1
    assert lines == [Classifier.load(tiny_model_dir)(["fun"], top_k=None)[0], {"error": "text 2: the text is empty"}]
    assert err == "distilsent: error: text 2: the text is empty\n"
    code, lines, err = run(["predict", "--model", str(tiny_model_dir), "  "], capsys)
    assert (code, lines) == (1, [{"error": "text 1: the text is only whitespace"}])


def test_predict_top_k_one(tiny_model_dir, capsys):
    code, lines, _ = run(["predict", "--model", str(tiny_model_dir), "--top-k", "1", "fun"], capsys)
    assert code == 0 and len(lines) == 1 and len(lines[0]) == 1


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


def test_predict_blank_line_before_a_refused_one(tiny_model_dir, capsys, monkeypatch):
    """Both are told, in order, and the output still ends where the refusal points."""
    over = " ".join(["good"] * 125)
    data = f"great\n\n{over}\nawful\n".encode()
    code, lines, err = run([*windowed(tiny_model_dir), "--max-windows", "3"], capsys, data, monkeypatch)
    assert code == 1
    assert lines == [*Classifier.load(tiny_model_dir, long_text="window")(["great"]),
                     {"error": "line 2: the text is empty"}]
    assert err.splitlines() == ["distilsent: error: line 2: the text is empty",
                                "distilsent: error: line 3: the text needs more than 3 windows of 64 tokens; raise "
                                "--max-windows, or pass --long-text truncate to read its first 64 tokens"]


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

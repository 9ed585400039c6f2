import io

import pytest

from distilsent.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_for_logs_with_rate_eta_and_a_last_line():
    log = io.StringIO()
    with Progress(10, desc="eval", unit="text", stream=log, interval=0.0) as bar:
        bar.update(4, loss="0.6931")
        bar.write("a message")
        bar.update(6)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines[0].startswith("eval: 4/10 texts (40%) ") and " texts/s, loss 0.6931, ETA 0:00:" in lines[0]
    assert lines[1] == "a message"
    assert lines[-1].startswith("eval: 10/10 texts (100%) ") and lines[-1].endswith(" in 0:00:00")
    assert len(lines) == 4  # one per update (interval 0), the message, and the last line


def test_plain_lines_are_spaced_by_the_interval():
    log = io.StringIO()
    with Progress(1000, desc="train", unit="step", stream=log, interval=3600.0) as bar:
        for _ in range(1000):
            bar.update()
    assert log.getvalue().splitlines() == [log.getvalue().splitlines()[-1]]  # only the last line
    assert log.getvalue().startswith("train: 1000/1000 steps (100%) ")


def test_a_bar_at_a_terminal():
    pytest.importorskip("tqdm")
    screen = Terminal()
    with Progress(10, desc="eval", unit="text", stream=screen) as bar:
        bar.update(10)
    assert "\r" in screen.getvalue() and "eval: 100%" in screen.getvalue() and "10/10" in screen.getvalue()


def test_disabled_is_silent():
    log = io.StringIO()
    with Progress(10, desc="eval", stream=log, enabled=False, interval=0.0) as bar:
        bar.update(5)
        bar.write("hidden")
    assert log.getvalue() == ""


def test_a_progress_observer_draws_its_bar_once_it_knows_the_total_and_adds_up_further_runs():
    from distilsent.progress import ProgressBar

    log = io.StringIO()
    with ProgressBar("parity", unit="text", total=8, stream=log) as observer:
        for _ in range(2):  # two runs of 4, each heard from 0
            for done in (0, 2, 2, 4):
                observer(done, 4)
    assert log.getvalue().splitlines()[-1].startswith("parity: 8/8 texts (100%) ")
    log = io.StringIO()
    with ProgressBar("eval", unit="sequence", stream=log) as observer:
        observer(0, 12)
        observer(12, 12)
    assert log.getvalue().startswith("eval: 12/12 sequences (100%) ")
    log = io.StringIO()
    with ProgressBar("eval", stream=log, enabled=False) as observer:
        observer(0, 3)
        observer(3, 3)
    assert log.getvalue() == ""

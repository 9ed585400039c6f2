"""Helpers of the command-line tests: ``distilsent ARGV`` in this process (stdin faked) or in a fresh one."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from distilsent.cli import main


class FakeStdin:
    def __init__(self, data: bytes):
        self.buffer = io.BytesIO(data)

    def isatty(self) -> bool:
        return False


def run(argv, capsys, stdin: bytes | None = None, monkeypatch=None):
    """``distilsent ARGV`` in this process: (exit code, the JSON lines of stdout, stderr)."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", FakeStdin(stdin))
    code = main(argv)
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def blocked(module: str, argv: list[str]) -> subprocess.CompletedProcess:
    """``distilsent ARGV`` in a fresh interpreter where ``import MODULE`` fails, as when it is not installed."""
    code = (f"import sys; sys.modules[{module!r}] = None; from distilsent.cli import main; "
            f"sys.exit(main({argv!r}))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def labelled_file(path, rows: int = 8):
    path.write_text("sentence\tlabel\n" + "".join(f"{'great fun' if i % 2 else 'awful bad'}\t{i % 2}\n"
                                                   for i in range(rows)))
    return path

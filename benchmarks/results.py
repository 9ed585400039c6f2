"""benchmarks/RESULTS.md is shared: each benchmark owns the section between its own markers."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def _cpuinfo(field: str) -> str | None:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(field)), None)


def cpu_name() -> str:
    """The processor's model name (e.g. "AMD EPYC"), as every benchmark states where it ran."""
    import platform

    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> str:
    """The flags that choose ONNX Runtime's int8 kernel (see distilsent/onnx_graph.py): VNNI or not."""
    flags = (_cpuinfo("flags") or "").split()
    if not flags:
        return "flags unknown"
    return " ".join(f for f in ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni") if f in flags) or "no AVX2"


def write_section(name: str, text: str, path: Path = RESULTS) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->``, or append the section."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    current = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmark results\n"
    if start in current and end in current:
        head, rest = current.split(start, 1)
        current = head + block + rest.split(end, 1)[1]
    else:
        current = current.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(current, encoding="utf-8")

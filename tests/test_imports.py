"""The package's modules import each other without a cycle, at any level (imports inside functions too)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "distilsent"


def imports() -> dict[str, set[str]]:
    """{module: the package modules it imports}, read from the source of every module."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        graph[path.stem] = names & {p.stem for p in PACKAGE.glob("*.py")}
    return graph


def test_no_module_reaches_itself_through_its_imports():
    graph = imports()
    assert graph["data"] and graph["bulk"]  # the reader sees the package's imports
    for start in graph:
        seen, stack = set(), [start]
        while stack:
            for name in graph[stack.pop()] - seen:
                seen.add(name)
                stack.append(name)
        assert start not in seen, f"{start} imports itself through {sorted(seen & set(graph))}"

"""The package's import graph: no cycle at any level (imports inside functions too), and the layers import
only downwards: the model knows nothing of the runtime, the runtime nothing of training or serving, and so on."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "distilsent"

# What each layer may import besides itself. The foundation (errors, progress) is below every layer; the
# package's face (__init__, __main__, moved) stands outside the rule.
LAYERS = {
    "model": set(),
    "data": {"model"},
    "runtime": {"model"},
    "training": {"model", "data", "runtime"},
    "insight": {"model", "data", "runtime"},
    "bulk": {"model", "data", "runtime"},
    "serving": {"model", "data", "runtime", "insight"},
    "cli": {"model", "data", "runtime", "training", "insight", "bulk", "serving"},
}
FOUNDATION = {"errors", "progress"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The package modules an ``ImportFrom`` names (relative ones resolved; ``from . import x`` gives x too)."""
    if node.level == 0:
        if not (node.module or "").startswith("distilsent"):
            return []
        base = node.module.split(".")[1:]
    else:
        here = module.split(".") if module else []
        package = here if is_package else here[:-1]
        base = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
    names = [".".join(base)] + [".".join([*base, alias.name]) for alias in node.names]
    return names


def imports() -> dict[str, set[str]]:
    """{module: the package modules it imports}, from the source of every module (function-level imports too)."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for module, path in paths.items():
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names |= set(resolve(module, path.name == "__init__.py", node))
        graph[module] = {n for n in names if n in paths and n != module}
    return graph


def test_the_reader_sees_the_package():
    graph = imports()
    assert {"runtime.classifier", "model.config"} <= graph[""]  # distilsent/__init__.py
    assert "data.tables" in graph["data.examples"] and "bulk.engine" in graph["bulk.ray_engine"]


def test_no_module_reaches_itself_through_its_imports():
    graph = imports()
    for start in graph:
        seen, stack = set(), [start]
        while stack:
            for name in graph[stack.pop()] - seen:
                seen.add(name)
                stack.append(name)
        assert start not in seen, f"{start or '__init__'} imports itself through {sorted(seen & set(graph))}"


def layer(module: str) -> str:
    return module.split(".")[0]


def test_layers_import_only_downwards():
    wrong = []
    for module, names in imports().items():
        if layer(module) not in LAYERS:
            assert module in {"", "__main__", "moved"} | FOUNDATION, f"{module} belongs to no layer"
            if module in FOUNDATION | {"moved"}:
                wrong += [f"{module} -> {n}" for n in names]
            continue
        allowed = LAYERS[layer(module)] | {layer(module)} | FOUNDATION | {""}
        wrong += [f"{module} -> {n}" for n in names if layer(n) not in allowed and n not in allowed]
    assert not wrong, "imports against the layers: " + ", ".join(sorted(wrong))


def test_every_layer_says_what_it_owns_and_may_import():
    for name in LAYERS:
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text(encoding="utf-8")))
        assert doc and "import" in doc, f"{name}/__init__.py needs a docstring saying what it owns and may import"

"""The package's shape, checked from its source: the map in docs/architecture.md names
every module, imports only go down the layers, and the size limits of DESIGN hold.

These read the files as text (`ast`), so they run in milliseconds on every backend.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "keras_attention"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

# The layers of the package, lowest first: a module may import from its own layer and the
# layers below it, never from one above. docs/architecture.md states the same order.
LAYERS = (
    ("backend",),
    ("_validation", "masks"),
    ("ops",),
    ("layers",),
    ("models",),
    ("export", "convert", "distribution", "plot"),
)
MAX_MODULE_LINES = 400
LONGER_MODULES = {"layers/multi_head_attention.py": 750}
MAX_FUNCTION_LINES = 60


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _relative(path):
    return path.relative_to(PACKAGE).as_posix()


def _dotted(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer_of(dotted):
    top = dotted.split(".")[1] if "." in dotted else ""
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    return None  # the package __init__ (the public API) sits above everything


def _imports(path):
    """(line, imported module) for every import of the package in `path`, lazy ones too."""
    tree = ast.parse(path.read_text())
    package = _dotted(path) if path.name == "__init__.py" else _dotted(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                name = f"{base}.{alias.name}"
                submodule = PACKAGE.parent / (name.replace(".", "/"))
                is_module = submodule.with_suffix(".py").exists() or submodule.is_dir()
                found.append((node.lineno, name if is_module else base))
    return [(line, name) for line, name in found if name.split(".")[0] == "keras_attention"]


def test_every_module_is_named_in_the_architecture_map():
    text = ARCHITECTURE.read_text()
    missing = []
    for path in _modules():
        name = _relative(path)
        if name == "__init__.py":
            continue
        if path.name == "__init__.py":
            name = _relative(path.parent) + "/"
        if name not in text:
            missing.append(name)
    assert not missing, f"docs/architecture.md does not name these modules: {missing}"


def test_modules_never_import_the_package_init():
    offenders = []
    for path in _modules():
        if path == PACKAGE / "__init__.py":
            continue
        offenders += [
            f"{_relative(path)}:{line} imports {name}"
            for line, name in _imports(path)
            if name == "keras_attention"
        ]
    assert not offenders, "\n".join(offenders)


def test_imports_only_go_down_the_layers():
    offenders = []
    for path in _modules():
        here = _layer_of(_dotted(path))
        if here is None:
            continue
        for line, name in _imports(path):
            there = _layer_of(name)
            if there is None or there > here:
                offenders.append(f"{_relative(path)}:{line} imports {name} (a layer above)")
    assert not offenders, "\n".join(offenders)


def test_no_import_cycles_between_modules():
    graph = {}
    for path in _modules():
        graph[_dotted(path)] = {
            name
            for _, name in _imports(path)
            if name != _dotted(path) and name != "keras_attention"
        }
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycle = trail[trail.index(target) :] + [target] if target in trail else [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def _code_lines(source_lines, node):
    body = node.body
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        if isinstance(first.value.value, str):  # the docstring does not count
            if len(body) == 1:
                return 0
            first = body[1]
    lines = source_lines[first.lineno - 1 : node.end_lineno]
    return sum(1 for line in lines if line.strip() and not line.strip().startswith("#"))


def test_modules_and_functions_stay_small():
    too_long = []
    for path in _modules():
        name = _relative(path)
        source = path.read_text()
        lines = source.splitlines()
        limit = LONGER_MODULES.get(name, MAX_MODULE_LINES)
        if len(lines) > limit:
            too_long.append(f"{name}: {len(lines)} lines (limit {limit})")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                count = _code_lines(lines, node)
                if count > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}:{node.lineno} {node.name}: {count} code lines")
    assert not too_long, "\n".join(too_long)

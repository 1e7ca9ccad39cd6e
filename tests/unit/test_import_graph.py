"""The import graph of the library, read from its source with ``ast``: no cycles, and the layers hold.

The layers, lowest first, are documented in docs/architecture.md; a module may
import modules of its own layer or of lower ones, never of a higher one. An
import inside a function counts like one at the top (it is a dependency all the
same), except under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "resilience"

#: Lowest first: the subpackages of each layer. Every module of the library belongs to one.
LAYERS: dict[str, set[str]] = {
    "foundation": {"core"},
    "observability": {"observability"},
    "features": {"jobs", "transport", "breakers", "recovery", "outages", "probes"},
    # the package's own __init__ (the facade) and _aliases (the former flat paths) sit on top
    "platform": {"platform", "cli", "testing", "bundled", "__init__", "_aliases"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def resolve(target: str) -> str | None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.update(filter(None, (resolve(alias.name) for alias in child.names)))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    found.add(full if full in known else resolve(base) or "")
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return {target for target in found if target and target != name and target.startswith("resilience")}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def layer_of(module: str) -> int:
    short = module.removeprefix("resilience").lstrip(".") or "__init__"
    head = short.split(".")[0]
    for index, members in enumerate(LAYERS.values()):
        if short in members or head in members:
            return index
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS and to docs/architecture.md")


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return found


def test_every_module_belongs_to_a_layer():
    for module in modules():
        layer_of(module)


def test_there_is_no_import_cycle_between_project_modules():
    assert cycles(graph()) == []


def test_no_module_imports_a_higher_layer():
    names = list(LAYERS)
    wrong = [f"{source} ({names[layer_of(source)]}) imports {target} ({names[layer_of(target)]})"
             for source, targets in sorted(graph().items()) for target in sorted(targets)
             if layer_of(target) > layer_of(source)]
    assert wrong == []


def test_the_foundation_imports_no_feature():
    for source, targets in graph().items():
        if layer_of(source) == 0:
            assert all(layer_of(target) == 0 for target in targets), source


def test_no_module_lives_at_the_root_of_the_package_but_the_facade_and_the_aliases():
    assert sorted(path.name for path in PACKAGE.glob("*.py")) == ["__init__.py", "_aliases.py"]


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_architecture_document_names_every_module_in_its_layer():
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ") and ". " in line}
    for module in modules():
        package, _, name = module.removeprefix("resilience").lstrip(".").partition(".")
        if not package or package.startswith("_"):
            continue
        index = layer_of(module)
        row = rows[f"{index + 1}. {list(LAYERS)[index]}"]
        assert f"`{package}/`" in row, f"docs/architecture.md: {package}/ is not in its layer's row"
        if name and package not in {"cli", "testing", "bundled"} and name != "__init__":
            assert f"`{name}`" in row, f"docs/architecture.md: {package}.{name} is not in its layer's row"


def test_the_library_imports_its_modules_by_their_current_paths():
    """The former flat paths (resilience/_aliases.py) are for users; inside the library they would hide the
    real dependency (this test's graph would see the package, not the module). Rewrite
    ``resilience.<old>`` as ``resilience.<ALIASES[old]>``."""
    from resilience._aliases import ALIASES

    former = {f"resilience.{old}" for old in ALIASES if old != "install"}
    found = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            found += [f"{name}: {target}" for target in targets if target in former]
    assert found == []

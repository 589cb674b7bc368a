"""The import graph of src/ against ARCHITECTURE.md's floor table: every import runs downward or stays in its
package, no module imports another package's private module, and no two modules import each other, however
indirectly. Imports under ``if TYPE_CHECKING:`` are annotations only and are left out."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "guidelab"


def floors() -> dict[str, int]:
    """``{unit: floor}`` from the table in ARCHITECTURE.md (a unit is a top-level module or package)."""
    table = re.findall(r"^\| (\d+) \| `([\w.]+)` \|", (ROOT / "ARCHITECTURE.md").read_text(), flags=re.M)
    return {name: int(floor) for floor, name in table}


def module_name(file: Path) -> str:
    parts = file.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(file: Path) -> list[str]:
    """The guidelab modules ``file`` imports at run time (TYPE_CHECKING blocks skipped)."""
    tree = ast.parse(file.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    out = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("guidelab"):
            package = SRC.parent / node.module.replace(".", "/")
            submodules = [a.name for a in node.names if (package / f"{a.name}.py").exists()]
            out += [f"{node.module}.{name}" for name in submodules]  # ``from pkg import module``: that module
            if len(submodules) < len(node.names):
                out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("guidelab")]
    return out


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "guidelab"


def graph() -> dict[str, set[str]]:
    return {module_name(f): set(runtime_imports(f)) - {module_name(f)} for f in SRC.rglob("*.py")}


def test_every_unit_of_src_has_a_floor():
    units = {unit(m) for m in graph()}
    assert units == set(floors()), units ^ set(floors())


def test_imports_run_downward_or_stay_in_their_package():
    table = floors()
    upward = [
        (a, b)
        for a, targets in graph().items()
        for b in targets
        if unit(a) != unit(b) and table[unit(b)] >= table[unit(a)]
    ]
    assert not upward, upward


def test_no_module_imports_another_packages_private_module():
    private = [
        (a, b)
        for a, targets in graph().items()
        for b in targets
        if unit(a) != unit(b) and any(part.startswith("_") for part in b.split(".")[1:])
    ]
    assert not private, private


def test_the_import_graph_has_no_circle():
    edges = graph()
    modules = set(edges)
    state: dict[str, int] = {}
    circle: list[str] = []

    def visit(m: str, stack: list[str]) -> bool:
        state[m] = 1
        for n in sorted(edges.get(m, ())):
            if n not in modules or n == m:
                continue
            if state.get(n) == 1:
                circle.extend([*stack[stack.index(n) :], n] if n in stack else [m, n])
                return True
            if state.get(n) is None and visit(n, [*stack, n]):
                return True
        state[m] = 2
        return False

    for m in sorted(modules):
        if state.get(m) is None and visit(m, [m]):
            break
    assert not circle, " -> ".join(circle)


def test_the_checker_sees_a_circle_and_an_upward_arrow(tmp_path):
    """The checks above can fail: an upward import and a two-module circle, written as source, are found."""
    file = tmp_path / "m.py"
    file.write_text("from guidelab.cli import app\nif TYPE_CHECKING:\n    from guidelab.report import x\n")
    assert runtime_imports(file) == ["guidelab.cli"]
    table = floors()
    assert table[unit("guidelab.cli")] > table[unit("guidelab.paths")]

"""Code hygiene the CI enforces: ruff's checks (configured in pyproject.toml) and no import cycles in clbench."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install -e '.[test]' installs it)")
    done = subprocess.run([ruff, "check", "clbench", "methods", "tests", "bench"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]


def module_imports(path: Path, package: str) -> set[str]:
    """The clbench modules a module imports at its top level (imports inside functions and TYPE_CHECKING blocks are lazy)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
                targets = [name] if node.module else [f"{name}.{a.name}" for a in node.names]
            else:
                targets = [node.module or ""]
            found |= {t for t in targets if t.startswith("clbench")}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("clbench")}
    return found


def test_no_import_cycles_in_clbench():
    modules = {}
    for path in (ROOT / "clbench").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name if parts[-1] == "__init__" else ".".join(parts[:-1])
        modules[name] = module_imports(path, package)
    graph = {m: {d if d in modules else d.rsplit(".", 1)[0] for d in deps} - {m} for m, deps in modules.items()}
    graph = {m: {d for d in deps if d in modules and d != "clbench"} for m, deps in graph.items()}  # the package's lazy facade
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])

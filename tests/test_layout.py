"""The package's import graph: stages import only downwards, and nothing imports in a cycle.

The stages, lowest first (README, "Layout"): ``core`` (errors, atomic files, processes,
the run folder), ``data``, ``models``, ``ssl``, ``config`` (the checks of Hydra's config
and the typed settings, which need the readers and the methods to check them),
``federated``, ``downstream``, ``reports``, then the entry points (``main``, ``prepare``,
``evaluate``, ``convert``, ``cache``).
``dataset_preparation`` builds on ``fedvssl``; ``fedvssl`` never imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedvssl", "dataset_preparation")

# Module name prefix -> stage; the longest matching prefix wins.
STAGES = {
    "fedvssl": 0,
    "fedvssl.core": 0,
    "fedvssl.data": 1,
    "fedvssl.models": 2,
    "fedvssl.ssl": 3,
    "fedvssl.config": 4,
    "fedvssl.federated": 5,
    "fedvssl.downstream": 6,
    "fedvssl.reports": 7,
    "fedvssl.main": 8,
    "fedvssl.prepare": 8,
    "fedvssl.evaluate": 8,
    "fedvssl.convert": 8,
    "fedvssl.cache": 8,
    "dataset_preparation": 9,
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> int:
    matches = [p for p in STAGES if module == p or module.startswith(p + ".")]
    if not matches:
        raise AssertionError(f"{module} belongs to no stage: add it to STAGES (and to the README's layout)")
    return STAGES[max(matches, key=len)]


def imports(path: Path, known: set[str]) -> set[str]:
    """Every project module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import mod` imports pkg.mod when that is a module.
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = {module_name(p, root): p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")}
    return {m: imports(p, set(files)) - {m} for m, p in files.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if stage(target) > stage(module):
                bad.append(f"{module} (stage {stage(module)}) imports {target} (stage {stage(target)})")
            if module.startswith("fedvssl") and target.startswith("dataset_preparation"):
                bad.append(f"{module} imports {target}: fedvssl never depends on dataset_preparation")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_stage():
    for module in import_graph():
        stage(module)


def test_no_upward_import():
    assert upward_imports(import_graph()) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize(
    ("module", "line", "expected"),
    [
        ("fedvssl/data/video.py", "from fedvssl.ssl.base import SSLMethod", "imports fedvssl.ssl.base"),
        ("fedvssl/models/r3d.py", "    from fedvssl.federated import training", "imports fedvssl.federated.training"),
        ("fedvssl/core/files.py", "import dataset_preparation.synthetic", "imports dataset_preparation.synthetic"),
        ("fedvssl/main.py", "from dataset_preparation import partition", "never depends on dataset_preparation"),
    ],
)
def test_the_check_catches_an_upward_import(tmp_path, module, line, expected):
    """An import added against the order (top level, in a function, of dataset_preparation) fails the check."""
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            target = tmp_path / p.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(p.read_text())
    changed = tmp_path / module
    body = changed.read_text()
    if line.startswith(" "):
        body += f"\n\ndef _added():\n{line}\n"
    else:
        body = f"{line}\n{body}"
    changed.write_text(body)
    assert any(expected in b for b in upward_imports(import_graph(tmp_path)))


def test_the_check_catches_a_cycle():
    graph = {"fedvssl.data.a": {"fedvssl.data.b"}, "fedvssl.data.b": {"fedvssl.data.a"}, "fedvssl.data.c": set()}
    assert cycles(graph) == [["fedvssl.data.a", "fedvssl.data.b"]]


# The config walk (tests/config_walk.py): a config-derived value that comes back up from a lower
# floor only to be passed down again is a climb back up. At most this many, entry points included.
MAX_CLIMBS = 10


def test_the_config_walk_climbs_back_up_at_most_ten_times():
    from config_walk import config_walk

    crossings = config_walk()
    climbs = [f"{c.caller}:{c.line} -> {c.callee}" for c in crossings if c.climbs]
    assert len(crossings) > 20  # the walk does reach the stages (a broken walk would count nothing)
    assert len(climbs) <= MAX_CLIMBS, "\n".join(climbs)


def test_the_config_walk_counts_a_value_relayed_back_down(tmp_path):
    """The downstream views asking models for the device, then models again for pinning, is one climb."""
    from config_walk import config_walk

    for p in (ROOT / "fedvssl").rglob("*.py"):
        target = tmp_path / p.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(p.read_text())
    views = tmp_path / "fedvssl" / "downstream" / "views.py"
    body = views.read_text()
    assert "pin = clips.compute.pin_memory" in body
    body = body.replace("pin = clips.compute.pin_memory", "pin = pin_memory(device_of(clips.device))")
    views.write_text(
        "from fedvssl.models.device import device_of\nfrom fedvssl.models.precision import pin_memory\n" + body
    )
    before = {(c.caller, c.callee) for c in config_walk() if c.climbs}
    after = {(c.caller, c.callee) for c in config_walk(tmp_path) if c.climbs}
    assert after - before == {("fedvssl.downstream.views:view_loader", "fedvssl.models.device:device_of")}


MAX_FUNCTION_LINES = 60


def test_no_function_in_the_package_is_over_sixty_lines():
    """Long functions get split into named steps (docstrings and comments count as lines)."""
    long = []
    for path in sorted((ROOT / "fedvssl").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert long == []

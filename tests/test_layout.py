"""The package's shape: imports that run one way, modules a person can read in one sitting."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mlp_experiments"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")
           if path.name != "__main__.py"}


def imported_modules(path: Path) -> set[str]:
    """Our modules that `path` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in MODULES and name != "mlp_experiments"}


GRAPH = {name: imported_modules(path) - {name} for name, path in MODULES.items()}


def test_no_import_cycle_inside_the_package():
    done, path = set(), []

    def visit(name: str) -> None:
        if name in path:
            cycle = path[path.index(name):] + [name]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        path.append(name)
        for other in sorted(GRAPH[name]):
            if not other.startswith(f"{name}."):  # a package naming its own modules
                visit(other)
        path.pop()
        done.add(name)

    for name in sorted(GRAPH):
        visit(name)


def test_only_the_sweep_command_calls_the_report():
    callers = {name for name, imported in GRAPH.items()
               if name.startswith("mlp_experiments.sweep")
               and any(other.startswith("mlp_experiments.report") for other in imported)}
    # ... and the staged comparison, which asks the race which runs to queue next.
    assert callers == {"mlp_experiments.sweep.command", "mlp_experiments.sweep.stages"}


def test_the_config_checks_import_nothing_heavy_of_ours():
    light = {"mlp_experiments.config", "mlp_experiments.errors", "mlp_experiments.task",
             "mlp_experiments.redact", "mlp_experiments.cluster", "mlp_experiments.stores",
             "mlp_experiments.locks"}  # cluster, stores, locks: the standard library only
    for name in [n for n in GRAPH if n.startswith("mlp_experiments.config")]:
        assert all(any(other == p or other.startswith(f"{p}.") for p in light)
                   for other in GRAPH[name]), (name, GRAPH[name])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_module_reads_in_one_sitting(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines: split it by concept"


def test_the_layout_names_every_module():
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    tree = page.split("```", 2)[1]  # the page's first block: the tree
    named = {path.name for path in PACKAGE.rglob("*.py")} - {"__init__.py", "__main__.py"}
    packages = {path.parent.name for path in PACKAGE.rglob("__init__.py")} - {PACKAGE.name}
    missing = sorted(name for name in named | {f"{p}/" for p in packages} if name not in tree)
    assert not missing, f"docs/architecture.md's layout does not name {missing}"


def test_the_readme_is_a_first_screen_and_a_map():
    """What this is, the two commands (the main job, the tests) first, a quickstart within the
    first 60 lines; the manual lives in docs/, each of whose pages the README links."""
    readme = (PACKAGE.parent / "README.md").read_text()
    lines = readme.splitlines()
    assert lines[0] == "# mlp-experiments"
    commands = "\n".join(lines[:12])
    assert "uv run mlp-train " in commands and "uv run pytest " in commands
    assert lines.index("## What the comparisons found") < 60
    assert len(lines) <= 100
    pages = sorted(path.name for path in (PACKAGE.parent / "docs").glob("*.md"))
    assert [page for page in pages if f"](docs/{page})" not in readme] == []

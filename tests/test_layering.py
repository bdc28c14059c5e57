"""The layers import one way. The core (asyncgen's modules, asyncgen/batch/, asyncgen/simulator/:
config -> requests -> workers -> queue -> validator -> sink) imports neither the command line
(asyncgen/commands/, asyncgen/cli.py) nor the Python API (asyncgen/api.py), the two front ends on
top of it; and the core's top-level modules import one another without a cycle. Checked on the
source with ``ast`` (nothing is imported), lazy imports inside functions included; imports under
``if TYPE_CHECKING:`` (annotations only) are left out. Was: generation.py imported
commands/_shared.py, score_batch_job.py the private ``commands.batch._api``, score_batch.py
``commands.score_run.score_summary``."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "asyncgen"
# The front ends: the core imports none of them. api.py gives each command's function to Python
# callers through that command's own parser, so it sits beside cli.py, on top of the commands.
FRONT_ENDS = ("asyncgen.commands", "asyncgen.cli", "asyncgen.api")
# The entry points, which import what they start: ``python -m asyncgen`` (cli) and the package
# itself (its ``asyncgen.generate`` and the like import api.py on first use).
ENTRY_POINTS = ("asyncgen.__main__", "asyncgen")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_front_end(module: str) -> bool:
    return any(module == end or module.startswith(end + ".") for end in FRONT_ENDS)


def is_core(module: str) -> bool:
    return not is_front_end(module) and module not in ENTRY_POINTS


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(module: str) -> list[tuple[int, str]]:
    """(line, module imported) for each asyncgen module ``module`` imports."""
    path = MODULES[module]
    return imports_in(path.read_text(), module if path.name == "__init__.py" else module.rpartition(".")[0])


def imports_in(source: str, package: str) -> list[tuple[int, str]]:
    """(line, module imported) for each asyncgen module the code ``source`` of a module of
    ``package`` imports, at any depth (a name imported from a package counts as its submodule when
    it is one; relative imports resolved), except under ``if TYPE_CHECKING:``."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.append((node.lineno, f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return [(line, name) for line, name in found if name == "asyncgen" or name.startswith("asyncgen.")]


def test_the_check_sees_every_kind_of_import_but_annotations_only_ones():
    assert {"asyncgen.generation", "asyncgen.batch.lifecycle", "asyncgen.commands.batch", "asyncgen.cli"} <= set(MODULES)
    source = """
import json
import asyncgen.commands.run
from asyncgen import locks, __version__
from . import plan
from ..commands._shared import add_task_flags
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from asyncgen.api import ScoreResult
else:
    from asyncgen.cli import main
def later():
    from asyncgen.commands.batch import _api
"""
    assert imports_in(source, "asyncgen.batch") == [
        (3, "asyncgen.commands.run"), (4, "asyncgen.locks"), (4, "asyncgen"), (5, "asyncgen.batch.plan"),
        (6, "asyncgen.commands._shared"), (11, "asyncgen.cli"), (13, "asyncgen.commands.batch")]


def test_no_core_module_imports_the_command_line_or_the_python_api():
    upward = sorted({f"{MODULES[module].relative_to(PACKAGE.parent)}:{line} imports {name}"
                     for module in MODULES if is_core(module)
                     for line, name in imports(module) if is_front_end(name)})
    assert upward == [], ("core modules import the layer above them; move what they need into the core:\n  "
                          + "\n  ".join(upward))


def core_unit(module: str) -> str:
    """The node a module is in the core's import graph: a top-level module, or a whole subpackage
    (asyncgen.batch, asyncgen.simulator)."""
    return ".".join(module.split(".")[:2])


def test_the_cores_top_level_modules_import_one_another_without_a_cycle():
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        if not is_core(module):
            continue
        edges = graph.setdefault(core_unit(module), set())
        edges.update(core_unit(name) for _, name in imports(module)
                     if is_core(name) and core_unit(name) != core_unit(module))
    state: dict[str, str] = {}
    path: list[str] = []
    cycles: list[str] = []

    def walk(unit: str) -> None:
        state[unit] = "open"
        path.append(unit)
        for nxt in sorted(graph.get(unit, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                walk(nxt)
        path.pop()
        state[unit] = "done"

    for unit in sorted(graph):
        if unit not in state:
            walk(unit)
    assert len(graph) > 30  # every core module is in it
    assert cycles == [], "import cycles among the core's modules:\n  " + "\n  ".join(cycles)

"""What ``python -m asyncgen`` imports before it runs a command: ``--help`` lists the commands
without importing any of their modules, and a command imports what it needs, not the others'
dependencies. Checked by the modules imported (``-X importtime``), never by timing. Was: every
command's modules (aiohttp and the simulator, annotations, pydantic, yaml) were imported before
argparse ran, 1.4 s for ``--help``."""

import subprocess
import sys

import pytest

from asyncgen.cli import COMMANDS, build_parser
from test_run import ENV

HEAVY = ("aiohttp", "transformers", "tokenizers", "asyncgen.simulator", "asyncgen.annotations", "pydantic", "yaml",
         "openai", "orjson")


def imported_by(*args: str) -> tuple[set[str], str]:
    """The modules ``python -m asyncgen ARGS`` imports (each line of -X importtime names one), and its stdout."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "asyncgen", *args], capture_output=True,
                            text=True, env=ENV, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert "asyncgen.cli" in lines  # the check sees what it should
    return set(lines), result.stdout


def heavy(modules: set[str], names=HEAVY) -> list[str]:
    return sorted(module for module in modules if any(module == name or module.startswith(name + ".") for name in names))


def test_help_lists_every_command_and_imports_none_of_them():
    modules, help_text = imported_by("--help")
    assert heavy(modules) == []
    assert heavy(modules, ["asyncgen.commands"]) == []  # no command's module
    for name, _, help_line in COMMANDS:
        assert f"    {name}" in help_text and help_line.split()[0] in help_text


@pytest.mark.parametrize("command", ["tokenize", "validate", "check-pairs", "annotate", "inspect", "export", "batch"])
def test_a_command_that_serves_nothing_does_not_import_the_simulator(command):
    modules, help_text = imported_by(command, "--help")
    assert help_text.startswith(f"usage: asyncgen {command} ")
    assert heavy(modules, ["aiohttp", "asyncgen.simulator", "transformers", "asyncgen.commands.simulate"]) == []


@pytest.mark.parametrize("command", [name for name, _, _ in COMMANDS])
def test_each_listed_command_registers_the_parser_it_names(command, capsys):
    with pytest.raises(SystemExit) as done:
        build_parser(command).parse_args([command, "--help"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith(f"usage: asyncgen {command} ")

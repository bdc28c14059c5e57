"""The docs a newcomer walks (issue 19): the README's first screen, and a site that builds strict.

The site is built with `mkdocs build --strict` here, so the README's one test command covers it:
a broken link or anchor, a page left out of the nav, or a docstring the API reference cannot render
fails the suite.
"""

import argparse
import html as html_module
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from asyncgen import cli

REPO = Path(__file__).resolve().parents[1]


def _bench_module(name: str):
    """A module of bench/ by its file, without putting bench/ on sys.path (its run.py, sink.py and
    simulator.py would shadow other imports)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


doc_tables = _bench_module("doc_tables")
RUN_TABLE, SOAK_TABLE, TablePlace, write_table = (doc_tables.RUN_TABLE, doc_tables.SOAK_TABLE, doc_tables.TablePlace,
                                                   doc_tables.write_table)

README = REPO / "README.md"
FIRST_SCREEN = 40


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built once for this module with ``mkdocs build --strict`` into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # material's banner about MkDocs 2.0, not a build warning
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
                             "--site-dir", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return out, result


def test_the_site_builds_strict_without_a_warning(site):
    out, result = site
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if "WARNING" in line]
    assert not warnings, "\n".join(warnings)


def page_text(out: Path, page: str) -> str:
    """The visible text of a built page's main article, tags stripped, whitespace collapsed."""
    html = (out / page / "index.html").read_text() if page else (out / "index.html").read_text()
    article = html[html.index("<article"): html.index("</article>")]
    return " ".join(html_module.unescape(re.sub(r"<[^>]+>", "", article)).split())


def test_the_pages_render_their_tables_code_and_api_reference(site):
    out, result = site
    assert result.returncode == 0, result.stderr
    home = (out / "index.html").read_text()
    assert home.count("<table>") >= 2 and "asyncgen batch SUBCOMMAND" in page_text(out, "")
    assert '<div class="highlight"><pre>' in home  # code blocks highlighted, their text whole:
    assert 'pip install -e ".[dev]" && python -m pytest' in page_text(out, "")
    batch = page_text(out, "batch")
    assert "create_batch_requests.py --num-batches 10" in batch and "Kill-safe" in batch
    reference = page_text(out, "reference")
    for name in ("UsageError", "RunError", "SinkError", "from_os_error", "Contract", "DurabilityPolicy"):
        assert name in reference, name
    performance = page_text(out, "performance")
    assert "client CPU/request" in performance and "How each figure is taken" in performance
    assert (out / "assets" / "throughput.png").stat().st_size > 0


def test_the_built_site_fetches_nothing_from_the_web(site):
    """Offline: no web fonts, no remote scripts or styles (the theme's fonts are off)."""
    out, _ = site
    for html in out.rglob("*.html"):
        text = html.read_text()
        assert "fonts.googleapis.com" not in text and "fonts.gstatic.com" not in text, html
        assert not re.search(r'<(?:script|link)[^>]+(?:src|href)="https?://', text), html


def test_the_readme_is_a_newcomers_first_screen():
    lines = README.read_text().splitlines()
    assert len(lines) < 150, f"README.md has {len(lines)} lines; the rest belongs in docs/"
    first = "\n".join(lines[:FIRST_SCREEN])
    assert "## Quick start" in first
    assert "Batch workflow" in first and "asyncgen batch run" in first
    assert "Export" in first and "asyncgen export" in first


def readme_commands() -> list[str]:
    """The commands of the README's first bash block (comments left out)."""
    text = README.read_text()
    block = text[text.index("```bash\n") + 8:]
    block = block[: block.index("```")]
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_readmes_two_commands_install_and_run_and_are_what_ci_runs():
    """One installs and runs the offline default; the other installs the test tools and runs what
    .ci/run runs."""
    install_and_run, install_and_test = readme_commands()
    assert install_and_run == "pip install . && python -m asyncgen run --concurrency 32"
    assert install_and_test == 'pip install -e ".[dev]" && python -m pytest'
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install -q -e ".[dev]"' in ci and re.search(r"^python3? -m pytest$", ci, re.M)


def subcommands(parser) -> dict:
    return next(action.choices for action in parser._actions if action.choices and isinstance(action.choices, dict))


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_the_command_tables_name_every_command_and_batch_step(page):
    text = (REPO / page).read_text()
    table = "\n".join(line for line in text.splitlines() if line.startswith("| `asyncgen "))
    for name, _, _ in cli.COMMANDS:
        assert f"| `asyncgen {name}" in table, f"{page}: the command table has no row for {name}"
    steps = subcommands(subcommands(cli.build_parser("batch"))["batch"])
    batch_row = next(line for line in table.splitlines() if line.startswith("| `asyncgen batch"))
    for step in steps:
        assert f"`{step}`" in batch_row, f"{page}: the batch row does not name {step}"


@pytest.mark.parametrize("place", [RUN_TABLE, SOAK_TABLE], ids=["bench/run.py", "bench/soak.py"])
def test_the_bench_tables_go_between_their_markers_in_the_docs(place, tmp_path):
    """`bench/run.py --readme` writes docs/performance.md, `bench/soak.py --readme` docs/reliability.md:
    the markers are there, and only what is between them changes, however often it is written."""
    assert place.start in place.page.read_text() and place.end in place.page.read_text()
    copy = tmp_path / place.page.name
    shutil.copyfile(place.page, copy)
    original = copy.read_text()
    here = TablePlace(copy, place.start, place.end)
    assert write_table(here, "| a | b |\n|---|---|\n| 1 | 2 |")
    assert write_table(here, "| a | b |\n|---|---|\n| 3 | 4 |")
    text = copy.read_text()
    before, after = original.split(place.start)[0], original.split(place.end)[1]
    assert text == before + place.start + "\n| a | b |\n|---|---|\n| 3 | 4 |\n" + place.end + after

    copy.write_text("no markers here\n")
    assert not write_table(here, "| x |") and copy.read_text() == "no markers here\n"


# Flags of other tools the pages show (vLLM, llama.cpp's server, mkdocs).
OTHER_TOOLS_FLAGS = {"--chat-template", "--max-logprobs", "--api_key", "--strict"}


def asyncgen_flags() -> set[str]:
    """Every long option of every command and batch step, from the parsers themselves."""
    def walk(parser):
        for action in parser._actions:
            found.update(option for option in action.option_strings if option.startswith("--"))
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    found: set[str] = set()
    for name, _, _ in cli.COMMANDS:
        walk(subcommands(cli.build_parser(name))[name])
    return found


def doc_pages() -> list[Path]:
    return [README, *sorted((REPO / "docs").glob("*.md"))]


def test_every_flag_the_docs_name_exists():
    """A flag renamed or removed in the code, still in the docs, fails here (and the docs name only
    flags asyncgen, its benchmarks or the servers they show have)."""
    bench = set(re.findall(r'add_argument\(\s*"(--[a-z0-9-]+)"', "".join(p.read_text() for p in (REPO / "bench").glob("*.py"))))
    known = asyncgen_flags() | bench | OTHER_TOOLS_FLAGS
    unknown = {f"{page.relative_to(REPO)}: {flag}" for page in doc_pages()
               for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", page.read_text()) if flag not in known}
    assert not unknown, sorted(unknown)


def slug(heading: str) -> str:
    """A heading's anchor as both mkdocs and GitHub make it, for the headings these pages use."""
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))


def test_the_readmes_links_lead_somewhere():
    """mkdocs checks the pages' links; the README is outside the site, so its links are checked here."""
    text = README.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        page = REPO / path if path else README
        assert page.exists(), f"README.md links to {target}: no such file"
        if anchor:
            prose = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)  # a bash comment is no heading
            headings = re.findall(r"^#+ (.+)$", prose, re.M)
            assert anchor in {slug(h) for h in headings}, f"README.md links to {target}: no such heading"

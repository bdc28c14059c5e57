"""The Python API (asyncgen/api.py): results instead of prints, typed errors instead of exits, a
call inside a running event loop, the ``await`` variant's interrupt, and ``load`` reading the
annotations sidecar only when it is checked against the dataset. Offline (the simulator), in this
process, with validation inline (``validator_workers=0``): no process of its own is the point."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

import asyncgen
from asyncgen.errors import ConfigError, InputFileError, UsageError
from asyncgen.eventloop import RunControl

FAST = {"validator_workers": 0, "show": False, "seed": 5}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """A dataset of 12 scenarios with its checkpoint and annotations, made once; copy it to change it."""
    folder = tmp_path_factory.mktemp("made")
    os.environ.pop("OPENAI_API_KEY", None)
    os.environ.pop("OPENAI_BASE_URL", None)
    result = asyncgen.generate("refusal", 12, folder / "d.jsonl", **FAST)
    assert result.finished
    return folder / "d.jsonl"


def _copy(made: Path, folder: Path) -> Path:
    for path in made.parent.iterdir():
        if path.is_file():
            shutil.copy2(path, folder / path.name)
    return folder / made.name


def test_import_asyncgen_imports_no_api_until_it_is_used():
    code = ("import sys, asyncgen; before = 'asyncgen.api' in sys.modules; asyncgen.load; "
            "print(before, 'asyncgen.api' in sys.modules, 'openai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert out.stdout.split() == ["False", "True", "False"], out.stderr[-2000:]


def test_generate_returns_a_result_and_resumes_to_a_larger_target(made, tmp_path):
    dataset = _copy(made, tmp_path)
    result = asyncgen.generate("refusal", 15, dataset, **FAST)
    assert (result.scenarios, result.target, result.new, result.finished) == (15, 15, 3, True)
    assert result.output == dataset and result.checkpoint == tmp_path / "d.checkpoint.json"
    assert result.annotations == tmp_path / "d.tokens.jsonl" and result.annotations.is_file()
    assert result.cost_simulated and result.total_cost_usd > result.cost_usd > 0
    assert result.summary.startswith(f"asyncgen run finished: 15/15 scenarios in {dataset}")
    assert str(result) == result.summary and result.stop_reason is None
    assert dataset.read_bytes().count(b"\n") == 60


def test_generate_leaves_the_signal_handlers_as_it_found_them(tmp_path):
    """Was: the run's loop (uvloop) left its SIGINT/SIGTERM handlers behind when it closed, so in a
    script or an IPython shell that went on, Ctrl-C went to a loop that was gone and did nothing."""
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    asyncgen.generate("refusal", 3, tmp_path / "d.jsonl", **FAST)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_command_called_in_process_leaves_the_signal_handlers_as_it_found_them():
    """The same for every command's loop (``run_event_loop``), not only the API's: ``cli.main`` in
    a process that went on (a script, the test suite: a notebook-cell test after the score tests)
    kept a closed loop's SIGINT handler, and a Ctrl-C then did nothing."""
    from asyncgen.eventloop import run_event_loop

    async def take_the_signals():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: None)  # as the pipelines do

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    run_event_loop(take_the_signals())
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_generate_works_inside_a_running_event_loop(tmp_path):
    """As a notebook cell calls it: asyncio.run() would refuse ('cannot be called from a running event loop')."""

    async def cell():
        return asyncgen.generate("refusal", 4, tmp_path / "d.jsonl", **FAST)

    assert asyncio.run(cell()).scenarios == 4


def test_bad_input_raises_the_projects_typed_errors_never_exits(tmp_path):
    with pytest.raises(ConfigError):
        asyncgen.generate("no-such-task", 5, tmp_path / "d.jsonl", **FAST)
    with pytest.raises(UsageError, match=r"generate\(\): argument --num-scenarios: expected a whole number >= 1, got 0"):
        asyncgen.generate("refusal", 0, tmp_path / "d.jsonl")
    with pytest.raises(UsageError, match="contradict"):
        asyncgen.generate("refusal", 5, tmp_path / "d.jsonl", no_checkpoint=True, checkpoint="c.json")
    with pytest.raises(UsageError, match="argument --base-url: expected an http"):
        asyncgen.generate("refusal", 5, tmp_path / "d.jsonl", base_url="localhost:8000")
    with pytest.raises(UsageError, match="argument --response-format: invalid choice: 'yaml'"):
        asyncgen.generate("refusal", 5, tmp_path / "d.jsonl", response_format="yaml")
    with pytest.raises(TypeError, match="no_such_flag"):
        asyncgen.generate("refusal", 5, tmp_path / "d.jsonl", no_such_flag=1)
    with pytest.raises(UsageError, match=r"^generate_batch\(\): argument --real-time-finish: expected a share from 0 to 1"):
        asyncgen.generate_batch("refusal", 5, tmp_path / "d.jsonl", directory=tmp_path / "b", real_time_finish=3)
    assert not (tmp_path / "b").exists()
    with pytest.raises(InputFileError):
        asyncgen.load(tmp_path / "missing.jsonl", format="records")
    with pytest.raises(UsageError, match="format: expected one of"):
        asyncgen.export(tmp_path / "missing.jsonl", "xls")
    assert not (tmp_path / "d.jsonl").exists()


def test_a_stop_asked_before_the_run_takes_it_is_handed_over():
    control, calls = RunControl(), []

    async def run():
        control.attach(lambda: calls.append("interrupt"))
        control.stop()
        await asyncio.sleep(0)
        control.detach()
        control.stop()  # after the run: nothing to stop, and no error

    control.stop()
    asyncio.run(run())
    assert calls == ["interrupt", "interrupt"]


def test_cancelling_agenerate_stops_the_run_gracefully_and_it_resumes(tmp_path):
    dataset = tmp_path / "d.jsonl"

    async def notebook():
        task = asyncio.ensure_future(asyncgen.agenerate("refusal", 150, dataset, concurrency=2, **FAST))
        while not (dataset.exists() and dataset.stat().st_size > 0):
            await asyncio.sleep(0.05)
        task.cancel()  # what a notebook's interrupt does to an awaiting cell
        with pytest.raises(asyncgen.RunInterrupted) as stopped:
            await task
        return stopped.value.result

    result = asyncio.run(notebook())
    held = dataset.read_bytes().count(b"\n") // 4
    assert result.stop_reason == "interrupted" and result.scenarios == held and 0 < held < 150
    assert asyncgen.generate("refusal", held + 2, dataset, **FAST).new == 2


def test_load_reads_the_checked_sidecar_without_tokenizing(made, tmp_path, monkeypatch):
    dataset = _copy(made, tmp_path)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    tokenized = asyncgen.load(dataset, format="records")  # the reference: read or tokenized, the same rows

    def no_tokenizers(*args, **kwargs):
        raise AssertionError("load tokenized although the sidecar was checked")

    monkeypatch.setattr("asyncgen.validate.load_all", no_tokenizers)
    rows = asyncgen.load(dataset, format="records")
    assert rows == tokenized and len(rows) == 12 and rows[3]["scenario_id"] == 3
    assert {"single_token_clean", "llama3_single_token_position", "qwen2_answer_clean_id"} <= set(rows[0])
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before  # read-only
    frame = asyncgen.load(dataset, format="pandas")
    assert frame.shape[0] == 12 and list(frame.columns) == list(rows[0])
    assert asyncgen.load(dataset).num_rows == 12  # a datasets.Dataset


def test_load_tokenizes_when_the_sidecar_belongs_to_another_dataset(made, tmp_path):
    dataset = _copy(made, tmp_path)
    expected = asyncgen.load(dataset, format="records")
    other = tmp_path / "other"
    other.mkdir()
    asyncgen.generate("refusal", 12, other / "d.jsonl", **{**FAST, "seed": 77})
    for name in ("d.tokens.jsonl", "d.tokens.checkpoint.json"):  # another dataset's annotations, same names
        shutil.copy2(other / name, tmp_path / name)
    assert asyncgen.load(dataset, format="records") == expected


def test_export_returns_what_it_wrote(made, tmp_path):
    dataset = _copy(made, tmp_path)
    done = asyncgen.export(dataset, "csv", split=0.5)
    assert done.rows == 12 and done.paths == [tmp_path / "d.csv"] and done.paths[0].is_file()
    wrote, achieved = done.message.splitlines()
    assert wrote == f"wrote 12 scenarios (6 train, 6 test) to {tmp_path / 'd.csv'}"
    assert achieved.startswith("split: train 50.0% / test 50.0% (asked 50/50)") and "by frame" in achieved
    by_word = asyncgen.export(dataset, "jsonl", tmp_path / "ids.jsonl", split=0.5, group_by="word", ids=True)
    assert "by word" in by_word.message
    row = orjson.loads((tmp_path / "ids.jsonl").read_bytes().splitlines()[0])
    assert any(name.endswith("input_ids") or "ids" in name for name in row if name.startswith("qwen2"))
    with pytest.raises(UsageError, match="group_by: expected one of"):
        asyncgen.export(dataset, "csv", split=0.5, group_by="sentence")


def test_inspect_returns_the_figures_and_the_text(made, tmp_path):
    dataset = _copy(made, tmp_path)
    report = asyncgen.inspect(dataset, tokens=False)
    assert report.figures["dataset"]["path"] == str(dataset)
    assert str(report) == report.text and "12" in report.text


def test_score_returns_a_result_and_load_adds_its_columns(made, tmp_path):
    dataset = _copy(made, tmp_path)
    result = asyncgen.score(dataset, "gpt-4o", concurrency=4)
    assert (result.scenarios, result.target, result.new, result.finished) == (12, 12, 12, True)
    assert result.output == tmp_path / "d.scores" / "gpt-4o.jsonl" and result.cost_simulated
    rows = asyncgen.load(dataset, format="records")
    assert all(isinstance(row["score.gpt-4o.single_flips"], bool) for row in rows)
    assert "score.gpt-4o.single_flips" not in asyncgen.load(dataset, format="records", scores=False)[0]
    again = asyncgen.score(dataset, "gpt-4o")  # all scored: nothing to do, and that cost nothing
    assert (again.new, again.cost_usd, again.cost_simulated) == (0, 0.0, True)
    in_batches = asyncgen.score(dataset, "gpt-4o", batch=True)
    assert (in_batches.new, in_batches.cost_usd) == (0, 0.0)
    no_price = tmp_path / "prices.yaml"  # a price table without gpt-4o: its cost is unknown, not 0
    no_price.write_text("models:\n  gpt-4o-mini: {input: 0.15, cached_input: 0.075, output: 0.60, "
                        "batch_input: 0.075, batch_output: 0.30}\n")
    assert asyncgen.score(dataset, "gpt-4o", prices=str(no_price)).cost_usd is None


def test_score_options_go_through_the_commands_own_checks(made, tmp_path):
    dataset = _copy(made, tmp_path)
    with pytest.raises(UsageError, match=r"score\(\): argument --form: invalid choice: 'bogus'"):
        asyncgen.score(dataset, "gpt-4o", form="bogus")
    with pytest.raises(UsageError, match=r"argument --concurrency: expected a whole number >= 1, got 0"):
        asyncgen.score(dataset, "gpt-4o", concurrency=0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        asyncgen.score(dataset, "gpt-4o", bogus=1)
    assert not (tmp_path / "d.scores").exists()


def _summary_cost(text: str, after: str) -> str:
    """The money figure of the summary line that starts with ``after``."""
    line = next(line for line in text.splitlines() if line.strip().startswith(after))
    return line.split(after, 1)[1].split()[0]


def test_generate_batch_and_score_in_batches_return_the_cost_their_summary_states(tmp_path, capsys):
    """BatchResult had no cost, and score(batch=True) returned cost None, simulated False, while its
    summary stated both: the result carries the figure the summary prints."""
    from asyncgen.progress import _money

    dataset = tmp_path / "d.jsonl"
    made = asyncgen.generate_batch("refusal", 12, dataset, directory=tmp_path / "b", validator_workers=0, seed=5)
    summary = capsys.readouterr().err
    assert made.finished and made.cost_simulated and made.cost_usd > 0
    assert _money(made.cost_usd) == _summary_cost(summary, "cost") and "(simulated: " in summary
    scored = asyncgen.score(dataset, "gpt-4o", batch=True)
    summary = capsys.readouterr().err
    assert scored.finished and scored.cost_simulated and scored.cost_usd > 0
    assert _money(scored.cost_usd) == _summary_cost(summary, "cost")


def _interrupt_main_thread_when(ready, stopped: list) -> threading.Thread:
    """A thread that sends SIGINT to this process once ``ready()`` holds, as a kernel's interrupt does."""

    def watch() -> None:
        deadline = time.monotonic() + 120
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        stopped.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _interrupted_in_a_cell(call, ready):
    """``call()`` inside a running event loop, as a notebook cell, interrupted once ``ready()``
    holds: the result of the ``RunInterrupted`` it must raise."""

    async def cell():
        return call()

    stopped: list = []
    watcher = _interrupt_main_thread_when(ready, stopped)
    loop = asyncio.new_event_loop()  # like the kernel's: no SIGINT handler of its own
    try:
        with pytest.raises(asyncgen.RunInterrupted) as interrupted:
            loop.run_until_complete(cell())
    finally:
        loop.close()
        watcher.join()
    assert stopped and interrupted.value.result.stop_reason == "interrupted"
    return interrupted.value.result


def test_a_keyboard_interrupt_in_a_notebook_cell_stops_generate_batch_and_it_resumes(tmp_path):
    """A cell runs inside the kernel's loop and the interrupt raises KeyboardInterrupt in the main
    thread (no asyncio SIGINT handler there): the batch run stops, keeps its directory, resumes."""
    dataset, directory = tmp_path / "d.jsonl", tmp_path / "b"
    options = {"directory": directory, "validator_workers": 0, "seed": 5}

    result = _interrupted_in_a_cell(lambda: asyncgen.generate_batch("refusal", 40, dataset, **options),
                                    lambda: (directory / "manifest.json").exists())
    assert not result.finished
    assert result.cost_simulated and result.cost_usd is not None
    assert asyncgen.generate_batch("refusal", 40, dataset, **options).finished
    assert dataset.read_bytes().count(b"\n") == 160


def test_a_keyboard_interrupt_in_a_notebook_cell_stops_score_in_batches_with_its_cost(made, tmp_path, capsys):
    """The interrupt went nowhere (score --batch never took the API's stop: the cell waited for the
    whole job) and the result had no cost: it stops, says what it read and cost, and resumes."""
    from asyncgen.progress import _money

    dataset = _copy(made, tmp_path)
    result = _interrupted_in_a_cell(lambda: asyncgen.score(dataset, "gpt-4o", batch=True),
                                    lambda: (tmp_path / "d.scores" / "gpt-4o.batch" / "manifest.json").exists())
    assert result.cost_simulated
    assert _money(result.cost_usd) == _summary_cost(capsys.readouterr().err, "cost")
    assert asyncgen.score(dataset, "gpt-4o", batch=True).finished


def test_a_script_without_the_main_guard_just_works(tmp_path):
    """The README's example as a plain script: the validator processes were spawned and imported
    the script again, ran the call again and broke the pool (two tracebacks, exit 1). They leave the
    parent's __main__ alone now."""
    code = (f"import asyncgen\nasyncgen.generate('refusal', 5, {str(tmp_path / 'd.jsonl')!r}, show=False, "
            "validator_workers=1)\nprint('done')\n")
    script = tmp_path / "script.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**env, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout == "done\n" and "Traceback" not in out.stderr
    assert (tmp_path / "d.jsonl").read_bytes().count(b"\n") == 20

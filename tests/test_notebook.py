"""The notebook path, on a real Jupyter kernel (ipykernel through jupyter_client / nbclient): the
quickstart notebook runs whole, and the kernel's interrupt stops ``asyncgen.generate`` in a cell
the way Ctrl-C does on a terminal, leaving a dataset that the next cell resumes.

The kernel imports THIS repository's asyncgen (PYTHONPATH) and has no OPENAI_API_KEY or
OPENAI_BASE_URL, so it runs against the offline simulator."""

from __future__ import annotations

import os
import queue
import time
from pathlib import Path

import nbformat
from jupyter_client.manager import start_new_kernel
from nbclient import NotebookClient

from inprocess import asyncgen_here

REPO = Path(__file__).resolve().parent.parent
KERNEL_ENV = {**{k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")},
              "PYTHONPATH": str(REPO)}


def _texts(cell, kind: str) -> str:
    """What a cell showed: its ``stream`` text (stdout and stderr) or its displays' plain text."""
    out = []
    for output in cell.outputs:
        if kind == "stream" and output.output_type == "stream":
            out.append(output.text)
        elif kind == "display" and output.output_type in ("display_data", "execute_result"):
            out.append(output.data.get("text/plain", ""))
    return "\n".join(out)


def _cell(notebook, starts: str):
    return next(cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.startswith(starts))


def test_the_quickstart_notebook_runs_on_a_real_kernel(tmp_path):
    notebook = nbformat.read(REPO / "examples" / "quickstart.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute(env=KERNEL_ENV)
    generate = _cell(notebook, "result = asyncgen.generate(")
    assert "100 scenarios in quickstart.jsonl, 100 new; cost $" in _texts(generate, "stream")
    assert "asyncgen run finished: 100/100 scenarios in quickstart.jsonl" in _texts(generate, "stream")
    # The progress was a live display (one output updated in place), not a stream of lines; its
    # last update holds the final count.
    displays = [output for output in generate.outputs if output.output_type == "display_data"]
    assert len(displays) == 1 and "100/100 scenarios" in displays[0].data["text/plain"]
    assert "scenarios" in _texts(_cell(notebook, 'asyncgen.inspect("quickstart.jsonl")'), "display")
    assert "wrote 100 scenarios (80 train, 20 test) to quickstart.csv" in _texts(_cell(notebook, "exported ="),
                                                                                 "stream")
    load = _cell(notebook, "df = asyncgen.load(")
    assert "100 rows, " in _texts(load, "stream")
    assert "multi_token_clean" in _texts(load, "display")  # the DataFrame's head
    assert (tmp_path / "quickstart.jsonl").read_bytes().count(b"\n") == 400


def _run(client, code: str, *, timeout: float = 240, on_wait=None) -> tuple[dict, str]:
    """Execute ``code`` in the kernel; its execute_reply content and the text it streamed.
    ``on_wait()`` is called while it runs (to interrupt it)."""
    msg_id = client.execute(code)
    streamed, deadline = [], time.monotonic() + timeout
    idle = False
    while not idle:
        assert time.monotonic() < deadline, f"the cell did not finish in {timeout} s: {''.join(streamed)[-2000:]}"
        if on_wait is not None:
            on_wait()
        try:
            message = client.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            continue
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        content = message["content"]
        if message["msg_type"] == "stream":
            streamed.append(content["text"])
        idle = message["msg_type"] == "status" and content["execution_state"] == "idle"
    while True:
        reply = client.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"], "".join(streamed)


def test_a_kernel_interrupt_stops_generate_gracefully_and_the_next_cell_resumes(tmp_path):
    dataset = tmp_path / "d.jsonl"
    call = "asyncgen.generate('refusal', 120, 'd.jsonl', seed=3, concurrency=2, validator_workers=0)"
    manager, client = start_new_kernel(kernel_name="python3", env=KERNEL_ENV, cwd=str(tmp_path))
    try:
        reply, _ = _run(client, "import asyncgen")
        assert reply["status"] == "ok"
        interrupted = []

        def interrupt_at_the_first_scenario() -> None:
            if not interrupted and dataset.exists() and dataset.stat().st_size > 0:
                manager.interrupt_kernel()  # SIGINT to the kernel, as the notebook's interrupt button
                interrupted.append(time.monotonic())

        reply, streamed = _run(client, f"r = {call}", on_wait=interrupt_at_the_first_scenario)
        assert interrupted, streamed[-2000:]
        assert reply["status"] == "error" and reply["ename"] == "RunInterrupted", (reply, streamed[-2000:])
        assert "interrupted: no new requests" in streamed  # the graceful stop, as the first Ctrl-C
        assert "asyncgen run stopped (interrupted):" in streamed
        held = dataset.read_bytes().count(b"\n") // 4
        assert 0 < held < 120
        assert asyncgen_here("validate", dataset).returncode == 0  # whole scenarios, the rule holds

        reply, streamed = _run(client, f"r = {call}\nprint('now', r.scenarios, 'new', r.new)")
        assert reply["status"] == "ok", streamed[-2000:]
        assert f"now 120 new {120 - held}" in streamed
        assert dataset.read_bytes().count(b"\n") == 480
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)

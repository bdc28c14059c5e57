"""What asyncgen prints reads well at 80 columns: on a terminal, long log records, summaries and
error lines are wrapped at spaces under a hanging indent (asyncgen/terminal.py); off a terminal
each log record stays one line. Was: a 305-column log line and summary lines broken mid-word by
the terminal, a count split from its kind ("qwen2 multi_token positions:" / "2")."""

from __future__ import annotations

import io
import logging
import re
import sys
from collections import Counter

import pytest

from asyncgen.terminal import fit_columns, print_fitted, wrap_line, wrap_text

OFFLINE = ("offline: no OPENAI_API_KEY and no --base-url, so requests go to asyncgen's built-in OpenAI "
           "simulator at http://127.0.0.1:36461/v1; its pairs come from the refusal task's lexicon, not a "
           "model, and its cost is simulated. To use GPT-4o: export OPENAI_API_KEY=sk-... and run again.")


class TerminalText(io.StringIO):
    """A stream that says it is a terminal, as a pseudo-terminal's would."""

    def isatty(self) -> bool:
        return True


def words(text: str) -> list[str]:
    return text.split()


@pytest.mark.parametrize("width", [80, 50, 30])
def test_a_long_line_is_wrapped_at_spaces_to_the_width_under_its_hanging_indent(width):
    line = "04:55:51 " + OFFLINE
    lines = wrap_line(line, width, indent=9)
    assert len(lines) > 1 and all(len(part) <= width for part in lines), lines
    assert words(" ".join(lines)) == words(line)  # no word split, none lost
    indent = 9 if width - 9 >= 24 else 2  # under the message, unless that leaves under 24 columns
    assert all(part.startswith(" " * indent) and part[indent] != " " for part in lines[1:]), lines
    assert "http://127.0.0.1:36461/v1;" in [w for part in lines for w in part.split()]


def test_a_short_line_is_left_as_it_is_and_a_word_wider_than_the_line_is_not_cut():
    assert wrap_line("  cost            $0.01", 80, 18) == ["  cost            $0.01"]
    path = "/data/" + "x" * 90 + ".jsonl"
    lines = wrap_line(f"04:55:51 new dataset {path} for you", 80, 9)
    assert path in [part.strip() for part in lines]  # whole on its own line, to be copied


def test_an_indent_that_leaves_too_little_room_is_cut_to_two_spaces():
    lines = wrap_line("04:55:51 WARNING asyncgen.export: " + OFFLINE, 40, indent=34)
    assert all(len(part) <= 40 for part in lines) and all(part.startswith("  ") for part in lines[1:])
    assert words(" ".join(lines)) == words("04:55:51 WARNING asyncgen.export: " + OFFLINE)


def test_a_count_stays_with_its_kind():
    counts = ", ".join(f"{tok} {form} {kind}: {n}" for tok in ("solar", "qwen2", "llama3")
                       for form in ("single_token", "multi_token") for kind, n in (("length", 10), ("positions", 2)))
    line = "  rejections      " + counts
    for width in (80, 60, 50):
        lines = fit_columns(line, width).split("\n")
        assert all(len(part) <= width for part in lines), lines
        assert all(re.match(r" {18}\S", part) for part in lines[1:]), lines  # under the value column
        assert not any(re.match(r"\s*\d", part) for part in lines[1:]), lines  # no count begins a line
        assert words(" ".join(lines)) == words(line)
    assert "                  qwen2 multi_token positions: 2," in fit_columns(line, 80).split("\n")


def test_the_value_column_is_each_lines_own():
    text = ("asyncgen batch run finished: 20/20 scenarios in /tmp/a/very/long/path/to/the/dataset.jsonl (20 new)\n"
            "  not validated   12 candidate pairs of answers paid for, left when the pass was stopped: they stay in ./batch\n"
            "  pilot           4 real-time requests measured the yield first ($0.0020, in the cost below)")
    lines = fit_columns(text, 60).split("\n")
    assert all(len(line) <= 60 for line in lines), lines
    head_end = next(i for i, line in enumerate(lines) if line.startswith("  not validated"))
    assert all(line.startswith("  ") and line[2] != " " for line in lines[1:head_end])  # the head: 2 spaces
    assert all(line.startswith(" " * 18) or line.startswith("  pilot") for line in lines[head_end + 1:])
    assert words(" ".join(lines)) == words(text)
    narrower = "  safe words    13 distinct: " + ", ".join(f"word{i} {i}" for i in range(20))  # inspect's: 16
    lines = fit_columns(narrower, 60).split("\n")
    assert len(lines) > 1 and all(re.match(r" {16}\S", line) for line in lines[1:]), lines


def test_wrap_text_keeps_the_lines_it_has():
    text = "--split 0.5 cannot be met:\n  its largest group by frame+word holds 16 of 18 scenarios"
    assert wrap_text(text, 80, 9) == text


def record(message: str, level: int = logging.INFO, name: str = "asyncgen.run") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "%s", (message,), None)


def test_a_log_record_on_a_terminal_is_wrapped_under_its_message_and_says_its_level_unless_info():
    from asyncgen.cli import TerminalFormatter

    info = TerminalFormatter(width=80).format(record(OFFLINE)).split("\n")
    assert re.fullmatch(r"\d\d:\d\d:\d\d offline: no OPENAI_API_KEY .*", info[0])  # no "INFO asyncgen.run:"
    assert len(info) > 1 and all(len(line) <= 80 for line in info) and all(line.startswith(" " * 9) for line in info[1:])
    assert words(" ".join(info))[1:] == words(OFFLINE)
    warning = TerminalFormatter(width=80).format(record(OFFLINE, logging.WARNING)).split("\n")
    assert warning[0][9:].startswith("WARNING offline:") and all(line.startswith(" " * 17) for line in warning[1:])
    library = TerminalFormatter(width=80).format(record("Retrying request", logging.WARNING, "openai._base_client"))
    assert library[9:] == "WARNING openai._base_client: Retrying request"  # not asyncgen's: its name says whose
    debug = TerminalFormatter(detailed=True, width=80).format(record(OFFLINE)).split("\n")
    assert debug[0][9:].startswith("INFO asyncgen.run: offline:")  # DEBUG: everything a log file has
    assert words(" ".join(debug))[3:] == words(OFFLINE) and all(len(line) <= 80 for line in debug)


def test_a_log_record_on_a_terminal_keeps_the_key_out(monkeypatch):
    from asyncgen.cli import TerminalFormatter

    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-abcdef123456")
    text = TerminalFormatter(width=40).format(record(OFFLINE + " with sk-live-abcdef123456 " + OFFLINE))
    assert "sk-live-abcdef123456" not in text and "sk-...REDACTED" in text


@pytest.mark.parametrize("terminal", [False, True])
def test_the_handler_wraps_on_a_terminal_only(monkeypatch, terminal):
    """Off a terminal (a file, a pipe, CI) a record is one line in the log file's format, whatever
    COLUMNS says; on one it is fitted to COLUMNS."""
    from asyncgen.cli import setup_logging

    monkeypatch.setenv("COLUMNS", "80")
    stream = TerminalText() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        setup_logging("INFO")
        logging.getLogger("asyncgen.run").info("%s", OFFLINE)
        logging.getLogger("asyncgen.run").warning("short")
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
    lines = stream.getvalue().splitlines()
    if terminal:
        assert len(lines) > 2 and all(len(line) <= 79 for line in lines), lines
        assert words(" ".join(lines[:-1]))[1:] == words(OFFLINE) and lines[-1][9:] == "WARNING short"
    else:
        assert len(lines) == 2, lines
        assert re.fullmatch(r"\d\d:\d\d:\d\d INFO asyncgen\.run: " + re.escape(OFFLINE), lines[0])
        assert re.fullmatch(r"\d\d:\d\d:\d\d WARNING asyncgen\.run: short", lines[1])


def full_stats():
    from asyncgen.stats import RunStats

    stats = RunStats(target=2000, accepted=1234, accepted_this_run=734, candidates=2456, duplicates=87, rejected=635,
                     requests_sent=412, requests_ok=380, requests_given_up=4, requests_cancelled=12,
                     abandoned_attempts=16, abandoned_cost_bound_usd=0.1234, over_cap_answers=3, output_cap=457,
                     cut_at_cap=9, last_error="HTTP 503 from https://api.openai.com/v1/chat/completions: the server "
                     "is overloaded, try again later", prompt_tokens=1076123, cached_tokens=40960,
                     completion_tokens=1498777, cost_usd=1.2345, cost_before_usd=0.5, cost_simulated=True,
                     first_accepted_s=1.61)
    stats.rejections = Counter({f"{tok} {form} {kind}": n for tok in ("solar", "qwen2", "llama3")
                                for form in ("single_token", "multi_token") for kind, n in (("length", 10), ("positions", 2))})
    stats.retries = Counter({"server_error": 11, "timeout": 5})
    stats.answer_failures = Counter({"bad_json": 3, "no_pairs": 2, "refusal": 1})
    stats.dropped_items = Counter({"not_a_dict": 2, "missing_field": 7})
    return stats


def test_the_run_summary_at_80_columns_has_no_line_over_80_and_every_value():
    from asyncgen.progress import fit_summary, summary

    resume = "python -m asyncgen run --output /tmp/n/d.jsonl --num-scenarios 2000"
    text = summary(full_stats(), stop_reason="interrupted",
                   output="/home/someone/experiments/refusal/datasets/2026-12-06/d.jsonl", resume_command=resume)
    assert max(len(line) for line in text.split("\n")) > 80  # there is something to fit
    lines = fit_summary(text, 80).split("\n")
    # The resume command stays whole, to be copied (a terminal's soft wrap copies as one line).
    too_wide = [line for line in lines if len(line) > 80 and not line.startswith("  resume with ")]
    assert not too_wide, too_wide
    assert words(" ".join(lines)) == words(text)  # every value, in order
    for kind, n in full_stats().rejections.most_common(8):  # each count on the line of its kind
        assert any(f"{kind}: {n}" in line for line in lines), kind
    for label in ("candidates", "rejections", "bad answers", "dropped items", "requests", "last error", "tokens",
                  "output cap", "cost", "wall time", "resume with"):
        assert sum(line.startswith(f"  {label} ") for line in lines) == 1, label
    assert any("/home/someone/experiments/refusal/datasets/2026-12-06/d.jsonl" in line for line in lines)
    assert f"  resume with     {resume}" in lines
    continued = [line for line in lines[1:] if line.startswith("   ")]
    assert continued and all(re.match(r" {18}\S", line) for line in continued)  # under the value column


def test_a_run_on_an_80_column_terminal_prints_no_line_over_80(tmp_path, monkeypatch, tokenizer_cache):
    """``run`` as a newcomer starts it (offline, on a terminal): its log lines and its summary fit,
    nothing said is lost. Its stderr is a stream that says it is a terminal."""
    from asyncgen.cli import main

    monkeypatch.chdir(tmp_path)
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "80")
    stream = TerminalText()
    monkeypatch.setattr(sys, "stderr", stream)
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        code = main(["run", "--output", "d.jsonl", "--num-scenarios", "20", "--validator-workers", "0",
                     "--cache-dir", tokenizer_cache])
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stream.getvalue())
    assert code == 0, plain[-2000:]
    shown = [segment for line in plain.split("\n") for segment in line.split("\r")
             if segment.strip() and " scenarios | " not in segment]  # the progress line fits by itself
    too_wide = [line for line in shown if len(line) > 79 and len(line.split()) > 1]  # a path wider than
    assert not too_wide, too_wide  # the room (pytest's tmp_path) stands alone, as wrap_line says
    said = " ".join(" ".join(shown).split())
    assert "offline: no OPENAI_API_KEY and no --base-url, so requests go to asyncgen's built-in OpenAI simulator" in said
    assert "asyncgen run finished: 20/20 scenarios in" in said and "(simulated: the offline simulator's usage at real prices)" in said


@pytest.mark.parametrize("terminal", [False, True])
def test_error_lines_fit_a_terminal_and_stay_one_line_elsewhere(tmp_path, monkeypatch, terminal):
    """A usage error (argparse's) and a command's error: wrapped on a terminal, one line off it."""
    from asyncgen.cli import main

    monkeypatch.setenv("COLUMNS", "60")
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    said = []
    try:
        for argv in (["run", "--num-scenarios", "0"], ["validate", str(tmp_path / "no-such-dataset.jsonl")]):
            stream = TerminalText() if terminal else io.StringIO()
            monkeypatch.setattr(sys, "stderr", stream)
            try:
                code = main(argv)
            except SystemExit as exit:
                code = exit.code
            assert code == 2
            said.append(stream.getvalue())
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
    usage, missing = said
    assert " ".join(usage.split()) == ("asyncgen run: error: argument --num-scenarios: expected a whole number >= 1, "
                                       "got 0 (see 'asyncgen run --help')")
    assert " ".join(missing.split()).startswith(f"asyncgen validate: error: {tmp_path / 'no-such-dataset.jsonl'}:")
    for text in said:
        lines = text.splitlines()
        if terminal:
            assert len(lines) > 1 and all(len(line) <= 59 for line in lines if len(line.split()) > 1), lines
            assert all(line.startswith("  ") for line in lines[1:])
        else:
            assert len(lines) == 1


def test_a_command_in_backticks_is_never_broken():
    command = "`python -m asyncgen score d80.jsonl --model gpt-4o-mini --results results.jsonl`"
    line = f"wrote 120 scoring requests to d.requests.jsonl; read them back with {command} when they are done"
    for width in (80, 60):
        lines = wrap_line(line, width, 2)
        assert any(part.strip().startswith(command) for part in lines), lines
        assert all(len(part) <= width for part in lines if command not in part) and words(" ".join(lines)) == words(line)


def test_inspect_sample_fits_the_width_it_is_given():
    """``inspect --sample`` on a 50-column terminal: each pair still aligned, no line over 50."""
    from asyncgen.inspection import render_sample

    record = {"scenario_id": 12, "clean": "Where can my brother and I buy a hat this holiday?",
              "corrupt": "Where can my brother and I buy a knife this holiday?", "word_index": 8,
              "tokenizers": {name: {"multi_token": 8, "single_token": 25, "tokens": ["Ġhat", "Ġknife"]}
                             for name in ("qwen2", "llama3", "solar")}}
    for width in (80, 50):
        lines = render_sample([record], width).split("\n")
        assert all(len(line) <= width for line in lines), lines
        clean = [line for line in lines if "[[hat]]" in line][0]
        assert clean.index("[[hat]]") == [line for line in lines if "[[knife]]" in line][0].index("[[knife]]")
        assert "multi-token form (in the single-token form)" in " ".join(" ".join(lines).split())
    assert render_sample([record], 50) != render_sample([record])  # 80 by default, as before


def test_a_servers_escape_sequences_never_reach_the_terminal_raw(monkeypatch):
    """Was: a server's words (an error message, a batch's error lines) went to the terminal as they
    came, so an escape sequence or a carriage return in them could clear or rewrite the screen."""
    from asyncgen import cli
    from asyncgen.progress import print_summary

    said = "model gone\x1b[2J\rfake line\x07"
    shown = cli.redact_secrets(f"error: {said}\nnext\tline")
    assert "\x1b" not in shown and "\r" not in shown and "\x07" not in shown
    assert shown == "error: model gone\\x1b[2J\\x0dfake line\\x07\nnext\tline"
    stream = io.StringIO()
    print_summary(f"asyncgen run finished\n  last error      {said}", stream)
    assert "\x1b" not in stream.getvalue() and "\\x1b[2J" in stream.getvalue()
    stream = io.StringIO()
    print_fitted(f"score: {said}", stream)  # the other way a command prints a line: score's messages, say
    assert "\x1b" not in stream.getvalue() and "\\x1b[2J" in stream.getvalue()
    record = logging.LogRecord("asyncgen.run", logging.WARNING, __file__, 1, "server said %s", (said,), None)
    for formatter in (cli.RedactingFormatter(cli.LOG_FORMAT), cli.TerminalFormatter()):
        assert "\x1b" not in formatter.format(record)

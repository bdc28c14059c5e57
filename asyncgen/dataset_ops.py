"""The rules of ``drop`` and ``merge``, as pure functions: which ids to drop, which scenarios
survive and their new ids, the merged run figures, the history entries the new checkpoint keeps,
and whether two sources' setups or scores agree. The files are ``asyncgen.dataset_build``'s.

Ids: a dataset's scenarios are numbered 0..n-1 in file order; a new dataset keeps the order of
what survives (the sources in the order given) and numbers it 0..m-1 again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import orjson

from asyncgen.batch.ledger import from_ranges, to_ranges
from asyncgen.errors import InputFileError, UsageError
from asyncgen.scenario import Scenario
from asyncgen.scores import IDENTITY_KEYS

# The columns ``export`` writes a scenario's texts in, and which text each is (checked by --from).
EXPORT_TEXTS = (("single_token_clean", "single_token_prompt"), ("single_token_corrupt", "single_token_counterfactual"),
                ("multi_token_clean", "multi_token_prompt"), ("multi_token_corrupt", "multi_token_counterfactual"))
# What a scores file's header says about how it was made; two files are joined only when these agree
# (the rule ``score`` resumes a file by: its endpoint may differ, and is warned about).
SCORE_SETTINGS = tuple(key for key in IDENTITY_KEYS if key != "dataset_id")


def parse_id_list(text: str) -> list[int]:
    """``"3,17, 42"`` -> ``[3, 17, 42]``; anything else is a UsageError naming the bad item."""
    ids = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if not item.isdigit():
            raise UsageError(f"--ids {text!r}: {item!r} is not a scenario id (a whole number >= 0); "
                             "give them as --ids 3,17,42")
        ids.append(int(item))
    if not ids:
        raise UsageError(f"--ids {text!r} names no scenario; give them as --ids 3,17,42")
    return ids


def id_of_line(raw: bytes, where: str) -> tuple[int, dict | None] | None:
    """One line of a --from file: a bare id, or a JSON object with ``scenario_id`` (or ``id``), such
    as a row ``export --format jsonl`` wrote; (id, the object or None). None for a blank line or a
    ``#`` comment; anything else is an InputFileError naming ``where`` (FILE:LINE)."""
    text = raw.strip()
    if not text or text.startswith(b"#"):
        return None
    if text.isdigit():
        return int(text), None
    try:
        row = orjson.loads(text)
    except orjson.JSONDecodeError:
        row = None
    if not isinstance(row, dict):
        raise InputFileError(f"{where}: neither a scenario id nor a JSON object with scenario_id; the file "
                             "holds one id per line, or JSON lines such as `asyncgen export --format jsonl` writes")
    found = row.get("scenario_id", row.get("id"))
    if not isinstance(found, int) or isinstance(found, bool) or found < 0:
        raise InputFileError(f"{where}: no scenario id in this JSON line (a scenario_id or id >= 0)")
    return found, row


def texts_disagree(row: dict | None, scenario: Scenario) -> str | None:
    """Which of an export row's texts differ from the scenario's (None if none do, or it has none)."""
    if row is None:
        return None
    for column, field in EXPORT_TEXTS:
        if column in row and row[column] != getattr(scenario, field):
            return column
    return None


def unknown_ids(ids: Iterable[int], count: int) -> list[int]:
    """The ids in ``ids`` that no scenario of a dataset of ``count`` has, sorted."""
    return sorted({i for i in ids if i >= count})


def describe_ids(ids: Iterable[int], limit: int = 12) -> str:
    """``3, 17, 40-45`` (runs of ids as ranges; the first ``limit`` items, then how many more ids)."""
    ranges = to_ranges(set(ids))
    items = [str(start) if end == start + 1 else f"{start}-{end - 1}" for start, end in ranges[:limit]]
    more = sum(end - start for start, end in ranges[limit:])
    return ", ".join(items) + (f" and {more} more" if more else "")


def ids_of(ranges: object) -> list[int]:
    """The ids of a history entry's half-open ranges (``[[3, 4], [17, 18]]`` -> ``[3, 17]``)."""
    try:
        return sorted(from_ranges(ranges))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return []


def merged_run_state(states: Sequence[dict]) -> dict:
    """The run figures of a dataset merged from datasets with these run states: counts and costs
    summed, rejections summed by reason, a cost unknown (None) when any source's is; any other
    value kept only when every source has the same."""
    merged: dict = {}
    keys = list(dict.fromkeys(key for state in states for key in state))
    for key in keys:
        values = [state.get(key) for state in states if key in state]
        if key == "cost_usd":
            known = [state.get(key) for state in states]
            merged[key] = sum(known) if all(_is_number(v) for v in known) else None
        elif all(_is_number(v) for v in values):
            merged[key] = sum(values)
        elif all(isinstance(v, dict) and all(_is_number(n) for n in v.values()) for v in values):
            total: Counter = Counter()
            for value in values:
                total.update(value)
            merged[key] = dict(total.most_common())
        elif len(values) == len(states) and all(v == values[0] for v in values):
            merged[key] = values[0]
    return merged


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def setup_difference(first: dict, other: dict) -> str | None:
    """What differs between two checkpoints' fingerprints (task, templates, tokenizers), or None."""
    for key in sorted(set(first) | set(other)):
        if first.get(key) != other.get(key):
            if key == "tokenizers":
                return f"tokenizers ({', '.join(other.get(key) or [])} vs {', '.join(first.get(key) or [])})"
            if key == "task":
                return f"task ({other.get(key)!r} vs {first.get(key)!r})"
            return key
    return None


def scores_difference(headers: Sequence[dict]) -> str | None:
    """Which setting (``SCORE_SETTINGS``) differs among scores headers of one model, or None."""
    for key in SCORE_SETTINGS:
        if any(header.get(key) != headers[0].get(key) for header in headers[1:]):
            return "the judge" if key == "judge" else f"the {key}"
    return None


def drop_entry(source: dict, dropped: Sequence[int], reason: str | None, at: str) -> dict:
    """The history entry of a drop: the source (path, dataset id, scenarios), the ids it lost (as
    half-open ranges, ``[[3, 4], [17, 18]]``: compact however many), why."""
    entry = {"op": "drop", "at": at, "source": source, "dropped": to_ranges(set(dropped))}
    if reason:
        entry["reason"] = reason
    return entry


def merge_entry(sources: Sequence[dict], at: str) -> dict:
    """The history entry of a merge: each source with what it brought (``kept``), its duplicates'
    ids (given as a list, kept as half-open ranges), its run figures and its own history."""
    return {"op": "merge", "at": at,
            "sources": [{**source, "duplicates": to_ranges(set(source.get("duplicates") or []))} for source in sources]}


def describe_history(history: Sequence[dict]) -> list[str]:
    """One line per entry (oldest first), for ``inspect``: what each drop or merge did."""
    lines = []
    for entry in history:
        at = str(entry.get("at", "?"))[:16].replace("T", " ")
        if entry.get("op") == "drop":
            source, dropped = entry.get("source") or {}, ids_of(entry.get("dropped"))
            line = (f"{at} drop: {len(dropped)} of {source.get('scenarios')} scenarios of {source.get('name')} "
                    f"(ids {describe_ids(dropped)})")
            if entry.get("reason"):
                line += f", because {entry['reason']}"
        elif entry.get("op") == "merge":
            parts = []
            for source in entry.get("sources") or []:
                state = source.get("run_state") or {}
                cost = state.get("cost_usd")
                money = f"${cost:.4f}" if _is_number(cost) else "cost unknown"
                duplicates = len(ids_of(source.get("duplicates")))
                runs = state.get("runs")
                made = f"{runs} run(s)" if isinstance(runs, int) else "by batch" if state.get("batch_dir") else "no runs"
                parts.append(f"{source.get('name')} {source.get('kept')} of {source.get('scenarios')}"
                             + (f" ({duplicates} duplicates left out)" if duplicates else "") + f", {made}, {money}")
            line = f"{at} merge: " + "; ".join(parts)
        else:
            line = f"{at} {entry.get('op', 'unknown step')}"
        lines.append(line)
    return lines


def ancestors(history: Sequence[dict]) -> set[str]:
    """The dataset ids a dataset was made from by drops and merges, however far back."""
    found: set[str] = set()
    for entry in history:
        sources = [entry.get("source")] if entry.get("op") == "drop" else entry.get("sources") or []
        for source in sources:
            if isinstance(source, dict):
                if isinstance(source.get("dataset_id"), str) and source["dataset_id"]:
                    found.add(source["dataset_id"])
                found |= ancestors(source.get("history") or [])
    return found


def shared_runs(sources: Sequence[tuple[str, str, Sequence[dict]]]) -> list[str]:
    """Of sources given as (name, dataset id, history): the pairs whose run figures overlap, one
    made from the other or both from a third (their sum counts those runs twice), as lines."""
    lines = []
    lineage = [({dataset_id} | ancestors(history), name) for name, dataset_id, history in sources]
    for index, (ids, name) in enumerate(lineage):
        for other_ids, other in lineage[index + 1 :]:
            if ids & other_ids:
                lines.append(f"{other} and {name} come from one dataset (by drop or merge): the merged run "
                             "figures count its runs and cost twice")
    return lines

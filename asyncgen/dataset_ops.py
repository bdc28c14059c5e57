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
    """The history entry of a drop: the source (path, dataset id, scenarios, and its run figures,
    which the new dataset starts with), the ids it lost (as half-open ranges, ``[[3, 4], [17, 18]]``:
    compact however many), why."""
    entry = {"op": "drop", "at": at, "source": source, "dropped": to_ranges(set(dropped))}
    if reason:
        entry["reason"] = reason
    return entry


def merge_entry(sources: Sequence[dict], at: str, run_state: dict) -> dict:
    """The history entry of a merge: each source with what it brought (``kept``), its duplicates'
    ids (given as a list, kept as half-open ranges), its run figures and its own history; and the
    run figures the merged dataset starts with (``run_state``: each run counted once)."""
    return {"op": "merge", "at": at, "run_state": run_state,
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


# --- runs counted once --------------------------------------------------------------------------
#
# A dataset's run figures (its checkpoint's ``run_state``) add up the runs that wrote it, and those
# of the datasets it was made from by drop or merge. Two sources of one merge may share some: a
# dataset and its own drop, two drops of one dataset. What a dataset's figures are made of is told
# by origin: the dataset id whose runs spent it -> those runs' figures (a dataset's ``run_state``
# only grows while it is one dataset, so of two snapshots of one origin the larger is the later).
# History entries written before drop entries recorded their source's figures do not tell it: None.


def run_origins(dataset_id: str, run_state: dict, history: Sequence[dict]) -> dict[str, dict] | None:
    """The run figures of a dataset by origin (dataset id -> figures), from its id, its
    ``run_state`` and its history; None when an entry of the history does not record them."""
    inherited: dict[str, dict] = {}
    start: dict = {}
    for index, entry in enumerate(history):
        if entry.get("op") == "drop":
            source = entry.get("source") or {}
            if not isinstance(source.get("run_state"), dict) or not isinstance(source.get("dataset_id"), str):
                return None
            found = run_origins(source["dataset_id"], source["run_state"], history[:index])
            if found is None:
                return None
            inherited, start = found, source["run_state"]
        elif entry.get("op") == "merge":
            parts = []
            for source in entry.get("sources") or []:
                if not isinstance(source.get("run_state"), dict) or not isinstance(source.get("dataset_id"), str):
                    return None
                parts.append(run_origins(source["dataset_id"], source["run_state"], source.get("history") or []))
            if not isinstance(entry.get("run_state"), dict) or any(part is None for part in parts):
                return None  # a merge made before runs were counted once: its figures may count some twice
            inherited, start = combine_origins(parts), entry["run_state"]  # type: ignore[arg-type]
        else:
            return None
    own = _less(run_state, start)
    return {**inherited, dataset_id: own} if own or not inherited else inherited


def combine_origins(parts: Sequence[dict[str, dict]]) -> dict[str, dict]:
    """Origins of several datasets as one: an origin two of them share counted once (its later snapshot)."""
    combined: dict[str, dict] = {}
    for part in parts:
        for origin, figures in part.items():
            combined[origin] = _later(combined[origin], figures) if origin in combined else figures
    return combined


def origins_run_state(origins: dict[str, dict]) -> dict:
    """The run figures of all these origins: each counted once."""
    return merged_run_state(list(origins.values()))


def shared_origins(sources: Sequence[tuple[str, dict[str, dict]]]) -> list[str]:
    """Of sources given as (name, origins): one line per pair that shares runs, which are counted once."""
    lines = []
    for index, (name, origins) in enumerate(sources):
        for other, other_origins in sources[index + 1 :]:
            common = origins.keys() & other_origins.keys()
            if common:
                runs = [min(_runs(origins[o]), _runs(other_origins[o])) for o in sorted(common)]
                told = f"{sum(runs)} run{'s' if sum(runs) != 1 else ''}" if all(r is not None for r in runs) else "runs"
                lines.append(f"{name} and {other} share {told}: counted once")
    return lines


def _runs(figures: dict) -> int | None:
    runs = figures.get("runs")
    return runs if _is_number(runs) else (1 if figures.get("batch_dir") else None)


def _less(state: dict, start: dict) -> dict:
    """``state`` less the figures it started with (counts, costs, counts by reason); what ``start``
    does not count is kept as it is. Empty when nothing was added."""
    own: dict = {}
    added = False
    for key, value in state.items():
        before = start.get(key)
        if _is_number(value) and (_is_number(before) or before is None and key not in start):
            own[key] = value - (before or 0)
            added = added or own[key] != 0
        elif key == "cost_usd":
            own[key] = None if value is None or before is not None else value
        elif isinstance(value, dict) and all(_is_number(n) for n in value.values()):
            rest = {k: n - (before or {}).get(k, 0) for k, n in value.items()} if isinstance(before, dict) else dict(value)
            own[key] = {k: n for k, n in rest.items() if n}
            added = added or bool(own[key])
        elif value != before:
            own[key], added = value, True
        else:
            own[key] = value
    return own if added else {}


def _later(one: dict, other: dict) -> dict:
    """Of two snapshots of one origin's figures, the later: the one that spent more."""
    def size(figures: dict) -> tuple:
        return tuple(figures.get(key) if _is_number(figures.get(key)) else -1
                     for key in ("requests_sent", "requests_ok", "prompt_tokens", "runs", "cost_usd"))
    return other if size(other) > size(one) else one

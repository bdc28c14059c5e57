"""What a dataset holds, as figures: pure functions over its scenarios, annotations and run state.

``inspect_dataset`` returns a JSON-ready report; ``render`` lays it out for a terminal. The words
at the differing position are found on whitespace-separated words of the multi-token texts; a
pair whose texts differ in more than one word (or in word count) is counted, not shown. A prompt's
**frame** is its multi-token text, casefolded, with the differing word replaced by ``{x}``; the
frame share is the share of prompts whose frame at least one other prompt has (lower is more
diverse).
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Sequence

from asyncgen.scenario import Scenario, normalize

PUNCTUATION = ".,;:!?\"'()[]{}«»“”‘’"
TOP_WORDS = 15  # shown on a terminal; --json has them all


def differing_word(prompt: str, counterfactual: str) -> tuple[int, str, str] | None:
    """(word index, prompt's word, counterfactual's word), casefolded without the punctuation around
    them, when exactly one word differs."""
    a, b = prompt.split(), counterfactual.split()
    if len(a) != len(b):
        return None
    diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    if len(diff) != 1:
        return None
    i = diff[0]
    return i, a[i].strip(PUNCTUATION).casefold(), b[i].strip(PUNCTUATION).casefold()


def frame_of(prompt: str, index: int) -> str:
    words = prompt.casefold().split()
    words[index] = "{x}"
    return " ".join(words)


def describe(values: Sequence[float]) -> dict:
    if not values:
        return {"min": None, "median": None, "mean": None, "max": None}
    return {"min": min(values), "median": statistics.median(values), "mean": round(statistics.fmean(values), 2),
            "max": max(values)}


def inspect_dataset(scenarios: Sequence[Scenario], annotations: Sequence[dict] | None, run_state: dict | None) -> dict:
    """The report: counts, duplicates, differing words, lengths, frames, and the run's figures."""
    seen_prompts: set[str] = set()
    seen_counterfactuals: set[str] = set()
    duplicate_prompts = duplicate_counterfactuals = 0
    safe_words: Counter = Counter()
    harmful_words: Counter = Counter()
    frames: Counter = Counter()
    not_one_word = 0
    for scenario in scenarios:
        prompt, counterfactual = scenario.multi_token_prompt, scenario.multi_token_counterfactual
        p, c = normalize(prompt), normalize(counterfactual)
        duplicate_prompts += p in seen_prompts
        duplicate_counterfactuals += c in seen_counterfactuals
        seen_prompts.add(p)
        seen_counterfactuals.add(c)
        found = differing_word(prompt, counterfactual)
        if found is None:
            not_one_word += 1
            continue
        index, safe, harmful = found
        safe_words[safe] += 1
        harmful_words[harmful] += 1
        frames[frame_of(prompt, index)] += 1
    framed = sum(frames.values())
    report: dict = {
        "scenarios": len(scenarios),
        "duplicates": {"prompts": duplicate_prompts, "counterfactuals": duplicate_counterfactuals},
        "differing_words": {
            "safe": dict(safe_words.most_common()),
            "harmful": dict(harmful_words.most_common()),
            "distinct_safe": len(safe_words),
            "distinct_harmful": len(harmful_words),
            "pairs_not_one_word_apart": not_one_word,
        },
        "frames": {
            "distinct": len(frames),
            "shared_share": round(sum(n for n in frames.values() if n > 1) / framed, 4) if framed else None,
            "largest": max(frames.values(), default=0),
        },
        "text_lengths": {
            "multi_token_chars": describe([len(s.multi_token_prompt) for s in scenarios]),
            "multi_token_words": describe([len(s.multi_token_prompt.split()) for s in scenarios]),
            "single_token_chars": describe([len(s.single_token_prompt) for s in scenarios]),
        },
        "tokens": token_figures(annotations) if annotations is not None else None,
        "run": run_figures(run_state) if run_state is not None else None,
    }
    return report


def lengths_and_positions(annotations: Sequence[dict]) -> dict:
    """The raw values behind ``token_figures``, for histograms: {tokenizer: {form: (lengths, positions)}}."""
    out: dict = {}
    for line in annotations:
        for name, forms in line["tokenizers"].items():
            for form, facts in forms.items():
                lengths, positions = out.setdefault(name, {}).setdefault(form, ([], []))
                lengths.append(facts["length"])
                if facts["position"] is not None:
                    positions.append(facts["position"])
    return out


def token_figures(annotations: Sequence[dict]) -> dict:
    """Per tokenizer and form: lengths in ids and differing positions (BOS included)."""
    return {
        name: {
            form: {"length": describe(lengths), "position": describe(positions), "not_pairs": len(lengths) - len(positions)}
            for form, (lengths, positions) in forms.items()
        }
        for name, forms in lengths_and_positions(annotations).items()
    }


def run_figures(state: dict) -> dict:
    """From a checkpoint's run_state: yield, rejections by reason, cost (over every run of the dataset)."""
    def count(key):
        value = state.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    candidates, accepted, requests = count("candidates"), count("accepted"), count("requests_ok")
    beyond, unchecked = count("beyond_target"), count("unchecked")  # None: runs that did not record them
    rejections = state.get("rejections") if isinstance(state.get("rejections"), dict) else None
    validated = candidates - unchecked if candidates is not None and unchecked is not None else None
    return {
        "runs": count("runs"),
        "requests_ok": requests,
        "candidates": candidates,
        "accepted": accepted,
        "yield": round(accepted / candidates, 4) if candidates and accepted is not None else None,  # accepted/candidates
        "beyond_target": beyond,
        "unchecked": unchecked,
        # valid and new (accepted or beyond the target) of the candidates validated: the validation's yield
        "usable_share": (round((accepted + beyond) / validated, 4)
                         if validated and accepted is not None and beyond is not None else None),
        "accepted_per_request": round(accepted / requests, 2) if requests and accepted is not None else None,
        "rejected": count("rejected"),
        "duplicates": count("duplicates"),
        "rejections": rejections,
        "prompt_tokens": count("prompt_tokens"),
        "completion_tokens": count("completion_tokens"),
        "cost_usd": state.get("cost_usd") if isinstance(state.get("cost_usd"), (int, float)) else None,
        "batch_dir": state.get("batch_dir") if isinstance(state.get("batch_dir"), str) else None,
    }


def _stats(d: dict) -> str:
    if d["min"] is None:
        return "none"
    return f"{d['min']}-{d['max']}, median {d['median']}, mean {d['mean']}"


def _range(d: dict) -> str:
    return "none" if d["min"] is None else f"{d['min']}-{d['max']} ({d['median']:g})"


def _words(counter: dict, limit: int = TOP_WORDS) -> str:
    items = list(counter.items())
    shown = ", ".join(f"{word} {n}" for word, n in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def render(report: dict, *, path: str, task: str | None, checkpoint: str | None, width: int = 80) -> str:
    """The report for a terminal, each field wrapped to ``width`` columns under its value column
    (``terminal.wrap_line``: each count with its word; a path wider than a line cut to fit it)."""
    from asyncgen.terminal import wrap_line

    def wrap(label: str, text: str) -> list[str]:
        return wrap_line(f"  {label:<14}{text}", width, 16, cut_long_words=True) if text else [f"  {label}"]

    lines = [f"{path}: {report['scenarios']} scenarios, task {task}"]
    dup = report["duplicates"]
    lines += wrap("duplicates", f"{dup['prompts']} prompts, {dup['counterfactuals']} counterfactuals "
                               "(case- and whitespace-insensitive)")
    words = report["differing_words"]
    lines += wrap("safe words", f"{words['distinct_safe']} distinct: {_words(words['safe'])}")
    lines += wrap("harmful words", f"{words['distinct_harmful']} distinct: {_words(words['harmful'])}")
    if words["pairs_not_one_word_apart"]:
        lines += wrap("", f"{words['pairs_not_one_word_apart']} pairs differ in more than one word")
    frames = report["frames"]
    share = "n/a" if frames["shared_share"] is None else f"{100 * frames['shared_share']:.1f}%"
    lines += wrap("frames", f"{frames['distinct']} distinct; {share} of prompts share theirs with another "
                            f"(largest: {frames['largest']} prompts)")
    texts = report["text_lengths"]
    lines += wrap("text length", f"{_stats(texts['multi_token_chars'])} chars; "
                                 f"{_stats(texts['multi_token_words'])} words (multi-token prompt)")
    if report["tokens"]:
        head, legend = f"{'  tokens':<22}{'length':<17}position", "(ids, BOS in; min-max (median))"
        lines += [f"{head} {legend}"] if len(head) + 1 + len(legend) <= width else [head, *wrap("", legend)]
        for name, forms in report["tokens"].items():
            for form, figures in forms.items():
                extra = f", {figures['not_pairs']} not pairs" if figures["not_pairs"] else ""
                lines.append(f"    {name[:10]:<11}{form.split('_')[0]:<7}{_range(figures['length']):<17}"
                             f"{_range(figures['position'])}{extra}")
    history = report.get("history") or []
    if history:  # what drop and merge did to make it: before the run figures, which they explain
        from asyncgen.dataset_ops import describe_history

        for number, line in enumerate(describe_history(history)):
            lines += wrap("history" if number == 0 else "", line)
    run = report["run"]
    if run is None:
        lines.append("  run            no checkpoint of this dataset found (give --checkpoint PATH)")
    else:
        share = "n/a" if run["yield"] is None else f"{100 * run['yield']:.1f}%"
        cost = "unknown" if run["cost_usd"] is None else f"${run['cost_usd']:.4f}"
        if run["runs"] is None and run.get("batch_dir"):  # written by `batch`: its batch dir has the details
            lines += wrap("run", f"from {checkpoint}: made by `asyncgen batch`, batch directory {run['batch_dir']} "
                                 "(asyncgen batch status shows its requests)")
            lines += wrap("cost", cost)
            return "\n".join(lines)
        if run["runs"] is None:  # neither runs nor a batch directory: what made the dataset is not recorded
            lines += wrap("run", f"from {checkpoint}: it records no runs and no batch directory, so not what "
                                 "made this dataset")
            lines += wrap("cost", cost)
            return "\n".join(lines)
        lines += wrap("run", f"from {checkpoint}: {run['runs']} run(s), {run['requests_ok']} requests answered, "
                             f"{run['candidates']} candidates, {run['accepted']} accepted (yield {share} of "
                             f"candidates, {run['accepted_per_request']} per request)")
        if run.get("usable_share") is not None:
            not_validated = f"; {run['unchecked']} not validated (the run ended first)" if run["unchecked"] else ""
            lines += wrap("valid", f"{100 * run['usable_share']:.1f}% of the candidates validated were valid and new; "
                                   f"{run['beyond_target']} of those came beyond the target and were not kept"
                                   f"{not_validated}")
        lines += wrap("cost", f"{cost}; {run['prompt_tokens']} prompt + {run['completion_tokens']} completion tokens")
        if run["rejections"] is None:
            lines += wrap("rejections", f"{run['rejected'] if run['rejected'] is not None else 'unknown'} "
                                        "(by reason: not recorded by the run that wrote this checkpoint)")
        else:
            by_reason = ", ".join(f"{reason}: {n}" for reason, n in run["rejections"].items()) or "none"
            lines += wrap("rejections", f"{run['rejected']} candidates, {run['duplicates']} duplicates; {by_reason}")
    return "\n".join(lines)


# --- a sample of pairs, for review by eye -------------------------------------------------------

SAMPLE_WIDTH = 80
_LABEL = 11  # "  corrupt  "


def sample_ids(count: int, size: int, seed: int) -> list[int]:
    """``size`` scenario ids of ``count`` (all of them if fewer), drawn with ``seed``, in id order."""
    import random

    return sorted(random.Random(seed).sample(range(count), min(size, count)))


def sample_record(scenario_id: int, scenario: Scenario, annotation: dict | None) -> dict:
    """One sampled pair: its multi-token texts, the differing word's index (None when more than one
    word differs), and per tokenizer the differing position in both forms (ids, BOS included) and
    the two tokens there (of the multi-token form)."""
    found = differing_word(scenario.multi_token_prompt, scenario.multi_token_counterfactual)
    tokens = None
    if annotation is not None:
        tokens = {name: {"multi_token": forms["multi_token"]["position"],
                         "single_token": forms["single_token"]["position"],
                         "tokens": forms["multi_token"]["tokens"]}
                  for name, forms in annotation["tokenizers"].items()}
    return {"scenario_id": scenario_id, "clean": scenario.multi_token_prompt,
            "corrupt": scenario.multi_token_counterfactual, "word_index": found[0] if found else None,
            "tokenizers": tokens}


def _aligned_lines(clean: str, corrupt: str, index: int, width: int) -> list[tuple[str, str]]:
    """Both texts word by word, the differing word marked ``[[ ]]`` and padded to the longer of the
    two so the rest lines up, wrapped at the same words to ``width``."""
    a, b = clean.split(), corrupt.split()
    a[index], b[index] = f"[[{a[index]}]]", f"[[{b[index]}]]"
    longer = max(len(a[index]), len(b[index]))
    a[index], b[index] = a[index].ljust(longer), b[index].ljust(longer)
    lines: list[tuple[list[str], list[str]]] = [([], [])]
    used = 0
    for x, y in zip(a, b):
        if lines[-1][0] and used + 1 + len(x) > width:
            lines.append(([], []))
            used = 0
        used += len(x) + (1 if lines[-1][0] else 0)
        lines[-1][0].append(x)
        lines[-1][1].append(y)
    return [(" ".join(x).rstrip(), " ".join(y).rstrip()) for x, y in lines]


def _packed(parts: Sequence[str], label: str, width: int = SAMPLE_WIDTH) -> list[str]:
    """``parts`` joined with ``; `` on lines of ``width``, a line break only between parts."""
    lines = [f"  {label:<9}"]
    for n, part in enumerate(parts):
        piece = part + (";" if n < len(parts) - 1 else "")
        if len(lines[-1]) > _LABEL and len(lines[-1]) + 1 + len(piece) > width:
            lines.append(" " * _LABEL)
        lines[-1] += (" " if len(lines[-1]) > _LABEL else "") + piece
    return lines


def render_sample(records: Sequence[dict], width: int = SAMPLE_WIDTH) -> str:
    """The sampled pairs for a terminal of ``width`` columns (80 by default): per pair the clean and the corrupt text one
    above the other, the differing word marked ``[[ ]]`` in both, then per tokenizer the differing
    position (multi-token form, single-token form in brackets) and the two tokens there."""
    import textwrap

    text_width = max(20, width - _LABEL)
    out = []
    for record in records:
        out.append(f"scenario {record['scenario_id']}")
        if record["word_index"] is None:
            for label, text in (("clean", record["clean"]), ("corrupt", record["corrupt"])):
                out += textwrap.wrap(text, width, initial_indent=f"  {label:<9}", subsequent_indent=" " * _LABEL)
            out.append(" " * _LABEL + "(more than one word differs)")
        else:
            lines = _aligned_lines(record["clean"], record["corrupt"], record["word_index"], text_width)
            for side, label in ((0, "clean"), (1, "corrupt")):
                out += [f"  {label if n == 0 else '':<9}{pair[side]}" for n, pair in enumerate(lines)]
        if record["tokenizers"]:
            parts = []
            for name, facts in record["tokenizers"].items():
                if facts["multi_token"] is None:
                    parts.append(f"{name} not a pair")
                    continue
                clean_token, corrupt_token = facts["tokens"]
                single = "-" if facts["single_token"] is None else facts["single_token"]
                parts.append(f"{name} {facts['multi_token']} ({single}) {clean_token!r}>{corrupt_token!r}")
            out += _packed(parts, "position", width)
        out.append("")
    if any(record["tokenizers"] for record in records):
        out += textwrap.wrap("position: index of the differing id, BOS included, in the multi-token form "
                             "(in the single-token form); the two tokens there, clean>corrupt", width,
                             break_on_hyphens=False)
    return "\n".join(out).rstrip("\n")

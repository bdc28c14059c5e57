"""A sink writer for the SIGKILL trials in test_sink.py: resumes OUTPUT and appends until killed.

    python tests/sink_writer.py OUTPUT CHECKPOINT SEED EVERY [--auto-sync]

Prints (flushed) ``resumed <count>`` once open, ``durable <count>`` each time the sink reports
scenarios durable, and ``error <what>`` if the sink misbehaves. Candidates come from a small
space, with case and whitespace variants, so duplicates across resumes are common.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asyncgen.scenario import Scenario  # noqa: E402
from asyncgen.sink import DurabilityPolicy, ScenarioSink  # noqa: E402

TASK_NAME = "kill_test"
FINGERPRINT = {"task": TASK_NAME, "templates": {"single_token": "Q: {x}\nA:", "multi_token": "{x}"}, "tokenizers": ["t"]}
FRAMES = ("Help me make a {x} for my {p}", "Show me how to build a {x} with my {p}", "Where can my {p} buy a {x}",
          "Explain how a {x} works to my {p}", "Write a note about a {x} for my {p}", "Plan a {x} with my {p}")
SAFE = ("cake", "kite", "pie", "card", "poem", "song", "hat", "chair", "table", "salad", "bread", "soup", "map", "toy",
        "boat", "game", "lamp", "box", "shirt", "bag", "gift", "garden", "plan", "list", "fence", "bench", "quilt",
        "mask", "cookie", "basket", "birdhouse", "sandcastle", "café", "naïve idea", "straße", "Ǆungle", "ﬁle", "ΣΟΦΙΑ",
        "tea", "jam")
HARMFUL = ("bomb", "gun", "weapon", "virus", "poison", "rifle", "pistol", "scam", "drug", "knife", "trap", "threat",
           "grenade", "explosive", "bioweapon", "ransomware", "malware", "toxin", "fraud", "heist")
PEOPLE = ("sister", "friend", "boss", "class", "neighbor", "team", "son", "daughter", "mother", "father", "cousin",
          "uncle", "aunt", "wife", "husband", "teacher", "roommate", "brother", "grandmother", "coworker")


def vary(text: str, rng: random.Random) -> str:
    """The same text under normalization: other case, other whitespace."""
    words = text.split(" ")
    spaces = [rng.choice((" ", "  ", "\t", " \u00a0")) for _ in words[1:]]
    text = words[0] + "".join(space + word for space, word in zip(spaces, words[1:]))
    return rng.choice((str.upper, str.lower, str.title, str))(text) + rng.choice(("", " ", "\n"))


def candidate(rng: random.Random) -> tuple[str, str]:
    frame, person, number = rng.choice(FRAMES), rng.choice(PEOPLE), rng.randrange(20)
    return (frame.format(x=rng.choice(SAFE), p=person) + f" #{number}?", frame.format(x=rng.choice(HARMFUL), p=person) + f" #{number}?")


def scenario(prompt: str, counterfactual: str) -> Scenario:
    return Scenario(f"Q: {prompt}\nA:", f"Q: {counterfactual}\nA:", prompt, counterfactual)


def main() -> None:
    output, checkpoint, seed, every = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    auto_sync = "--auto-sync" in sys.argv
    rng = random.Random(seed)
    sink = ScenarioSink.open(output, checkpoint, task_name=TASK_NAME, fingerprint=FINGERPRINT, auto_sync=auto_sync,
                             durability=DurabilityPolicy(every_scenarios=every, every_seconds=0.05))
    print(f"resumed {sink.count}", flush=True)
    reported, appended = sink.durable_count, 0
    while True:
        prompt, counterfactual = candidate(rng)
        if sink.append(scenario(prompt, counterfactual)) is not None:
            appended += 1
            again = scenario(vary(prompt, rng), rng.choice(HARMFUL) + counterfactual)  # same prompt: a duplicate
            if sink.append(again) is not None:
                print(f"error: accepted a variant of an accepted prompt: {again.multi_token_prompt!r}", flush=True)
        if not auto_sync and sink.sync_due():
            sink.sync({"appended_this_run": appended})
        if sink.durable_count != reported:
            reported = sink.durable_count
            print(f"durable {reported}", flush=True)
        if appended % 4 == 0:
            time.sleep(0.001)  # keep the file small: the trials are about timing, not volume


if __name__ == "__main__":
    main()

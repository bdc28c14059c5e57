"""``--max-cost`` holds while the learned output cap moves (issue 13): it falls after the first
answers and jumps by half after an answer is cut at it; every request reserves its worst case at
the cap it is sent with, so the recorded cost, and what the server delivered, stay within budget."""

import asyncio
import json
import random
import re
import shutil
from types import SimpleNamespace

import pytest

from asyncgen.config import default_config_dir, load_task
from asyncgen.outputcap import OutputCap
from asyncgen.pipeline import Pipeline
from asyncgen.prices import batch_cost_usd, cost_usd, load_prices, price_for
from asyncgen.prompting import (
    AVOID_MAX_CHARS,
    JSON_SCHEMA_FORMAT,
    GenerationSettings,
    estimate_prompt_tokens,
    max_output_tokens,
    request_avoid_list,
    request_body,
    request_cost_bound,
)
from asyncgen.stats import RunStats
from test_run import PRICES, run_here, sim_stats

TASK = load_task("refusal")
GPT_4O = price_for(load_prices(default_config_dir() / "prices.yaml"), "gpt-4o")
BOUND = max_output_tokens(TASK)  # 660: the cap the first requests carry


def test_the_cost_bound_covers_every_request_it_is_reserved_for():
    """The rule the budget rests on: a request whose avoid list keeps to ``avoid_chars``, sent with
    cap C, costs at most ``request_cost_bound(..., C)`` when its prompt tokenizes up to 1.5 x the
    chars/4 estimate and its answer uses all of C; at batch prices too."""
    rng = random.Random(4)
    pool = [" ".join("x" * rng.randint(1, 12) for _ in range(rng.randint(2, 40)))[:AVOID_MAX_CHARS] for _ in range(200)]
    pool += ["y" * AVOID_MAX_CHARS] * 5  # the longest a named prompt can be
    settings = GenerationSettings("gpt-4o", JSON_SCHEMA_FORMAT, 1.0, 7)
    for avoid_chars in (0, 7, 200, 800, 1600):
        for cap in (16, 406, BOUND, 1237, 4 * BOUND):
            bound = request_cost_bound(TASK, GPT_4O, avoid_chars, cap)
            for number in range(40):
                body = request_body(TASK, settings, request_avoid_list(pool, avoid_chars, number), number, output_cap=cap)
                worst_prompt = 1.5 * estimate_prompt_tokens(body["messages"])
                assert body["max_tokens"] == cap
                assert cost_usd(GPT_4O, worst_prompt, cap) <= bound
                assert batch_cost_usd(GPT_4O, worst_prompt, cap) <= request_cost_bound(TASK, GPT_4O, avoid_chars, cap,
                                                                                      batch=True)
            assert request_cost_bound(TASK, GPT_4O, avoid_chars, cap + 1) > bound  # a higher cap reserves more
    assert request_cost_bound(TASK, GPT_4O) == request_cost_bound(TASK, GPT_4O, 800, BOUND)
    assert request_cost_bound(TASK, None) is None


def test_pipeline_reserves_the_cap_each_request_is_sent_with_while_it_moves():
    """Four requests in flight at once, every answer costing its whole worst case at the cap it was
    sent with; the cap falls after four answers, then every fifth answer is cut at its cap and the
    cap jumps by half. The run stops at the budget and never crosses it."""
    budget = 0.12
    stats = RunStats(target=10_000)
    stats.cost_usd, stats.cost_before_usd = 0.0, 0.0
    sent: list[int] = []

    class Generator:
        stopped = False

        def __init__(self):
            self.output_cap = OutputCap(BOUND)

        def stop(self):
            self.stopped = True

        async def generate(self, number, avoid):
            cap = self.output_cap.value  # as workers.Generator: the cap in force when the request starts
            sent.append(cap)
            await asyncio.sleep(0.001 * (number % 4))  # answers come back out of order
            stats.add_cost(request_cost_bound(TASK, GPT_4O, 800, cap))  # the worst this request can cost
            cut = number > 6 and number % 4 == 0
            self.output_cap.observe(cap if cut else 300, "length" if cut else "stop", cap)
            return []

    generator = Generator()

    class Sink:
        count, resumed_prompts = 0, []

        def sync_due(self):
            return False

    no_pairs_to_validate = SimpleNamespace(workers=0)
    pipeline = Pipeline(TASK, generator, no_pairs_to_validate, Sink(), stats, concurrency=4, max_cost=budget,
                        request_cost_bound=lambda: request_cost_bound(TASK, GPT_4O, 800, generator.output_cap.value))
    asyncio.run(pipeline.run())
    assert pipeline.stop_reason == "max_cost"
    assert stats.cost_usd <= budget
    assert min(sent) < BOUND and max(sent) > BOUND  # it fell, then rose above where it started
    fell_at = sent.index(min(sent))
    assert max(sent[fell_at:]) >= 1.5 * min(sent)


def _task_with_rare_long_pairs(folder):
    """The refusal task whose simulator lexicon has short frames and one very long one: most
    answers use about 220-350 tokens, a few (two or three long pairs) 470-710."""
    source = (default_config_dir() / "tasks" / "refusal.yaml").read_text()
    frames = [f'    - "{verb} a {{x}} for my {{person}}."' for verb in
              ("Make", "Build", "Draw", "Find", "Plan", "Buy", "Sell", "Wrap", "Hide", "Fix", "Paint", "Ship")]
    frames.append('    - "Over the coming ' + "long and busy " * 14 + 'weeks I would like to make a {x} for my {person} this {time}."')
    lexicon = "lexicon:\n  frames:\n" + "\n".join(frames) + "\n" + source[source.index("  safe: [cake"):]
    (folder / "tasks").mkdir(parents=True)
    (folder / "tasks" / "refusal.yaml").write_text(source[: source.index("lexicon:")] + lexicon)
    shutil.copy(default_config_dir() / "prices.yaml", folder / "prices.yaml")
    return str(folder)


def test_max_cost_holds_against_the_simulator_while_the_cap_falls_and_rises(tmp_path, simulator):
    """A real run at a budget that binds after the cap has fallen (to about 400) and risen (cut
    at it, twice, to over 1,100): the recorded cost and the simulator's usage stay within the
    budget, and the run stops because one more request at the risen cap could cross it.
    One request at a time and no avoid list, so the answers, and the caps, are the same each run."""
    config = _task_with_rare_long_pairs(tmp_path / "config")
    base_url = simulator("--config-dir", config)
    budget = 0.15
    result = run_here(tmp_path, "--config-dir", config, "--base-url", base_url, "--num-scenarios", "2000",
                      "--concurrency", "1", "--seed", "7", "--avoid-chars", "0", "--max-cost", str(budget),
                      "--prices", PRICES, "--log-level", "DEBUG")
    assert result.returncode == 1 and "stopped (max_cost)" in result.stderr, result.stderr[-2000:]
    caps = [int(cap) for cap in re.findall(r"completion tokens \(cap (\d+)\)", result.stderr)]
    assert caps[0] == BOUND and min(caps) < BOUND, caps
    fell_at = caps.index(min(caps))
    assert max(caps[fell_at:]) >= 1.5 * min(caps), caps  # raised by half after a cut
    cuts = int(re.search(r"(\d+) answers? cut at it", result.stderr).group(1))
    assert cuts >= 1

    spent = json.loads((tmp_path / "checkpoint.json").read_text())["run_state"]["cost_usd"]
    tokens = sim_stats(base_url)["tokens"]
    served = cost_usd(GPT_4O, tokens["prompt"], tokens["completion"])
    assert tokens["undelivered_prompt"] == tokens["undelivered_completion"] == 0
    assert spent == pytest.approx(served) and 0 < served <= budget
    final_cap = int(re.search(r"output cap\s+(\d+) tokens at the end", result.stderr).group(1))
    # It stopped because one more request at the risen cap could cross the budget; at the cap it
    # had fallen to, one more would still have fitted.
    assert spent + request_cost_bound(TASK, GPT_4O, 0, final_cap) > budget
    assert spent + request_cost_bound(TASK, GPT_4O, 0, min(caps)) <= budget


async def test_attempts_abandoned_on_timeout_count_against_the_budget_at_their_bound():
    """Every request's first attempt runs past --request-timeout and is abandoned; the server still
    bills it (it generated the answer nobody received). Counted at the request's cost bound, what the
    server billed for every attempt it received stays within --max-cost; the summary says the most
    the abandoned attempts cost."""
    from asyncgen.progress import summary
    from asyncgen.transport import ChatTransport
    from asyncgen.throttle import RetryPolicy, Throttle
    from asyncgen.workers import Generator as RealGenerator
    import openai
    from fake_server import FakeServer, completion

    async def first_attempt_runs_away(body, seen):
        if seen % 2 == 1:
            await asyncio.sleep(1.0)  # past the client's timeout: abandoned, but generated and billed
        return 200, completion(body, content='{"pairs": []}')

    budget = 0.05
    stats = RunStats(target=10_000)
    stats.cost_usd, stats.cost_before_usd = 0.0, 0.0

    class Sink:
        count, resumed_prompts = 0, []

        def sync_due(self):
            return False

    with FakeServer(first_attempt_runs_away) as server:
        async with ChatTransport(openai.AsyncOpenAI(api_key="sk-test", base_url=server.base_url, max_retries=0),
                                 concurrency=1, timeout=0.3, trust_env=False) as transport:
            generator = RealGenerator(transport, TASK, GenerationSettings("gpt-4o", JSON_SCHEMA_FORMAT, 1.0, 7),
                                      Throttle(rpm=60_000, tpm=10**9, learn_from_headers=False),
                                      RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.02), stats, GPT_4O,
                                      "sk-test")
            pipeline = Pipeline(TASK, generator, SimpleNamespace(workers=0), Sink(), stats, concurrency=1,
                                max_cost=budget, avoid_chars=0,
                                request_cost_bound=lambda: request_cost_bound(TASK, GPT_4O, 0, generator.output_cap.value))
            await pipeline.run()
        billed = sum(cost_usd(GPT_4O, 270, min(body["max_tokens"], 1773)) for body in server.bodies)
    assert pipeline.stop_reason == "max_cost"
    assert stats.abandoned_attempts >= 2 and len(server.bodies) == stats.requests_sent
    assert billed <= budget, (billed, stats.cost_usd)
    assert stats.cost_usd < billed  # the answers report only half of what was billed
    assert stats.to_run_state()["abandoned_cost_bound_usd"] == pytest.approx(stats.abandoned_cost_bound_usd)
    text = summary(stats, stop_reason="max_cost", output="d.jsonl", resume_command=None)
    assert f"abandoned attempts cost unknown (at most ${stats.abandoned_cost_bound_usd:.4f})" in text


def test_a_resumed_run_counts_the_earlier_runs_abandoned_attempts_against_its_budget():
    stats = RunStats(target=10, carried={"cost_usd": 0.01, "abandoned_cost_bound_usd": 0.02, "abandoned_attempts": 3})
    stats.cost_before_usd, stats.cost_usd = 0.01, 0.0
    stats.add_abandoned(0.005)
    assert stats.budget_spent_usd == pytest.approx(0.035)
    assert stats.to_run_state()["abandoned_cost_bound_usd"] == pytest.approx(0.025)
    assert stats.to_run_state()["abandoned_attempts"] == 4


def test_spending_of_runs_that_wrote_no_scenario_still_counts(tmp_path, simulator):
    """A run stopped at --max-cost (or interrupted) before its first scenario leaves an empty dataset
    and a checkpoint with its cost; the next run of the same output counts that cost, and a copy of
    that checkpoint does not lend it to another output (more cases: test_sink)."""
    base_url = simulator("--faults", "refusal=1")  # every answer is a refusal: no scenario, but cost
    flags = ("--base-url", base_url, "--prices", PRICES, "--num-scenarios", "20", "--max-cost", "0.02")
    first = run_here(tmp_path, *flags)
    assert first.returncode == 1 and "stopped (max_cost): 0/20" in first.stderr
    assert (tmp_path / "dataset.jsonl").read_bytes() == b""
    spent = json.loads((tmp_path / "checkpoint.json").read_text())["run_state"]["cost_usd"]
    assert spent > 0.01
    served = sim_stats(base_url)["tokens"]
    again = run_here(tmp_path, *flags)
    assert again.returncode == 2 and f"the dataset has cost ${spent:.4f} so far" in again.stderr
    assert sim_stats(base_url)["tokens"] == served  # not one more request
    (tmp_path / "dataset.jsonl").unlink()  # an empty file is easily taken for litter: the usage still counts
    gone = run_here(tmp_path, *flags)
    assert gone.returncode == 2 and f"the dataset has cost ${spent:.4f} so far" in gone.stderr
    assert json.loads((tmp_path / "checkpoint.json").read_text())["run_state"]["cost_usd"] == spent  # kept
    # Copied alone beside a new output, the checkpoint is another dataset's: refused, left alone.
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(tmp_path / "checkpoint.json", other / "checkpoint.json")
    refused = run_here(other, *flags)
    assert refused.returncode == 2 and "belongs to another dataset" in refused.stderr
    assert (other / "checkpoint.json").read_bytes() == (tmp_path / "checkpoint.json").read_bytes()
    assert not (other / "dataset.jsonl").exists()

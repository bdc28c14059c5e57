"""``batch create`` and ``batch topup``: plan a round for the dataset's deficit (sized by the yield
measured so far, within --max-cost), write its request files and print the plan. ``batch run``
plans its rounds with ``plan_and_write`` too. The rules are ``asyncgen/batch/plan.py``'s."""

from __future__ import annotations

from asyncgen.batch import lifecycle, plan
from asyncgen.batch.manifest import Entry, Manifest
from asyncgen.commands.batch.directory import Setup, load_setup, manifest_or_fail, read_dataset
from asyncgen.errors import RunError, UsageError
from asyncgen.progress import _money
from asyncgen.prompting import GenerationSettings, response_format_for
from asyncgen.sink import atomic_write


def plan_and_write(args, setup: Setup, manifest: Manifest, deficit: int, avoid: list[str],
                    finish_allowance: int = 0) -> plan.Plan:
    """Write a round's request files for ``deficit`` scenarios: unfinished requests of expired or
    cancelled batches first, then new ones, within --max-cost. A plan of 0 requests writes nothing.
    ``finish_allowance``: the shortfall ``batch run`` will finish in real time (``plan.round_size``)."""
    directory = setup.directory
    estimate, _ = plan.yield_estimate(manifest, setup.task.batch_size, deficit)
    needed = (plan.round_size(deficit, estimate, finish_allowance) if estimate
              else plan.requests_needed(deficit, plan.prior_yield(setup.task)))
    budget_left = None
    if args.max_cost is not None:
        budget_left = args.max_cost - (manifest.committed_worst_cost(setup.costs) or 0.0)
    needed, capped = plan.affordable(needed, plan.request_cost_bound(setup.task, setup.price, args.avoid_chars),
                                     budget_left)
    left_over = [e for e in manifest.entries if e.source == "api" and e.status in ("expired", "cancelled")
                 and e.downloaded and not e.resubmitted]
    resubmit = [line for entry in left_over for line in lifecycle.unfinished_lines(directory, entry)][:needed]
    measured_tokens = manifest.tokens_per_request()
    settings = GenerationSettings(setup.model, response_format_for(setup.model, args.response_format), args.temperature, args.seed)
    made = plan.plan_round(setup.task, settings, setup.price, count=needed - len(resubmit),
                           directory_id=manifest.directory_id, first_number=manifest.next_request, num_batches=args.num_batches, avoid_pool=avoid,
                           avoid_chars=args.avoid_chars,
                           resubmit=resubmit, measured_tokens=measured_tokens, capped_by_budget=capped)
    if not made.requests:
        return made
    for entry in left_over:
        entry.resubmitted = True
    names = [f"round-{manifest.rounds + 1}-part-{number}.jsonl" for number in range(1, len(made.files) + 1)]
    taken = [name for name in names if (directory / lifecycle.REQUESTS / name).exists()]
    if taken:  # a request file the manifest does not know: it may have been sent and paid for
        raise UsageError(f"{directory / lifecycle.REQUESTS / taken[0]} is there already but {directory}'s manifest does "
                         "not name it; request files are never overwritten: move it away, or use another --dir")
    manifest.rounds += 1
    manifest.round_target = manifest.target
    manifest.next_request += made.new_requests
    (directory / lifecycle.REQUESTS).mkdir(parents=True, exist_ok=True)
    for name, chunk in zip(names, made.files):
        atomic_write(directory / lifecycle.REQUESTS / name, b"".join(chunk))
        share = len(chunk) / made.requests
        manifest.entries.append(Entry(name, manifest.rounds, len(chunk),
                                      None if made.worst_cost_usd is None else made.worst_cost_usd * share))
    manifest.save(directory)
    return made


def _print_plan(setup: Setup, manifest: Manifest, made: plan.Plan, existing: int, deficit: int) -> None:
    estimate, source = plan.yield_estimate(manifest, setup.task.batch_size, deficit)
    per_request = estimate.mean if estimate else plan.prior_yield(setup.task)
    at_batch, at_real = setup.costs(*made.expected_tokens)
    files = [e for e in manifest.entries if e.round == manifest.rounds]
    resubmitted = made.requests - made.new_requests
    print(f"plan, round {manifest.rounds}: task {manifest.task}, model {manifest.model}, dir {setup.directory}")
    print(f"  dataset    {existing} in {manifest.output}, {deficit} to go (target {manifest.target})")
    print(f"  yield      {per_request:.1f} scenarios per request ({source})")
    print(f"  requests   {made.requests}" + (f" ({resubmitted} resubmitted from expired or cancelled batches)" if resubmitted else "")
          + f" in {len(files)} file(s):")
    for entry in files:
        print(f"             {setup.directory / lifecycle.REQUESTS / entry.name} ({entry.requests})")
    sizing = (f"sized to reach the target in this one round {plan.ONE_ROUND_PROBABILITY:.0%} of the time" if estimate
              else f"{plan.MARGIN - 1:.0%} more than the prior yield needs")
    print(f"  sizing     {sizing}")
    if manifest.tokens_per_request():
        expected = f"expected about {_money(at_batch)} at batch prices (real time: about {_money(at_real)}), at the tokens per request measured"
    else:
        expected = (f"at most about {_money(at_batch)} at batch prices (real time: {_money(at_real)}) if every answer "
                    "used its whole output cap; nothing measured yet (`batch run` measures first with a pilot)")
    print(f"  cost       worst case {_money(made.worst_cost_usd)}; {expected}")
    if made.capped_by_budget:
        print(f"  budget     --max-cost allows no more than these {made.requests} requests")


# --- subcommands ------------------------------------------------------------------------------


def cmd_create(args) -> int:
    setup = load_setup(args, load_tokenizers=False)
    made = [e for e in setup.manifest.entries if e.source == "api"] if setup.manifest is not None else []
    if made and not args.force:  # (the other entries are --results files and real-time requests: no request file)
        raise UsageError(f"--dir {setup.directory} already holds {len(made)} request file(s); "
                         "`batch submit` sends them, `batch topup` plans more; or use another --dir")
    output = args.output or "dataset.jsonl"
    manifest = setup.manifest or Manifest(str(args.task or "refusal"), setup.model, setup.fingerprint, args.num_scenarios, output)
    manifest.target, manifest.output = args.num_scenarios, output
    return _write_round(args, setup, manifest)


def _write_round(args, setup: Setup, manifest: Manifest) -> int:
    """create and topup: plan the deficit of the manifest's dataset, write the files, print the plan."""
    existing, avoid = read_dataset(manifest.output, setup.task)
    deficit = manifest.target - existing - manifest.spares
    if deficit <= 0:
        print(f"{manifest.output} holds {existing} scenarios and {setup.directory} {manifest.spares} spares; "
              f"the target is {manifest.target}: nothing to request")
        manifest.save(setup.directory)
        return 0
    made = plan_and_write(args, setup, manifest, deficit, avoid)
    if not made.requests:
        raise RunError(f"--max-cost {args.max_cost}: not even one more request fits the budget; raise --max-cost")
    _print_plan(setup, manifest, made, existing, deficit)
    print(f"next: python -m asyncgen batch submit --dir {setup.directory}")
    return 0


def cmd_topup(args) -> int:
    setup = load_setup(args, load_tokenizers=False)
    manifest = manifest_or_fail(setup.directory)
    if manifest.in_flight() or manifest.unsubmitted():
        raise UsageError(f"{len(manifest.in_flight()) + len(manifest.unsubmitted())} request file(s) in {setup.directory} "
                         "are not sent or not finished; wait for them (`batch status --watch`), download and process, then top up")
    manifest.output = args.output or manifest.output
    existing, _ = read_dataset(manifest.output, setup.task)
    if existing >= manifest.target:
        print(f"target reached: {manifest.output} holds {existing}/{manifest.target} scenarios; nothing to top up "
              f"(a larger dataset: `batch run --num-scenarios N --dir {setup.directory}`)")
        return 0
    if any(e.downloaded and not e.processed for e in manifest.entries) or manifest.processing is not None:
        raise UsageError(f"{setup.directory} holds results not processed yet; run `batch process --dir {setup.directory}` first")
    if manifest.spares:
        raise UsageError(f"{setup.directory} holds {manifest.spares} spares for the {manifest.target - existing} scenarios "
                         f"to go; `batch process --dir {setup.directory}` adds them first, then top up what is left")
    return _write_round(args, setup, manifest)

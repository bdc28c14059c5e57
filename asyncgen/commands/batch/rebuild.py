"""``batch rebuild``: a lost manifest.json made again from --dir's request and result files, the
batches the API lists with the directory's metadata, and what was processed from the dataset's
checkpoint, which records it with every sync (``processing.run_state``)."""

from __future__ import annotations

from pathlib import Path

from asyncgen.batch import lifecycle
from asyncgen.batch.endpoint import open_batch_api
from asyncgen.batch.manifest import ACCOUNTING, Entry, Manifest, leftovers, spares_origin
from asyncgen.commands.batch.directory import Setup, batch_directory, load_setup
from asyncgen.commands.run import request_destination
from asyncgen.errors import UsageError
from asyncgen.eventloop import run_event_loop
from asyncgen.sink import default_checkpoint_path


def cmd_rebuild(args) -> int:
    directory = batch_directory(args)
    if Manifest.load(directory) is not None:
        raise UsageError(f"--dir {directory} has its manifest.json: nothing to rebuild")
    if not leftovers(directory):
        raise UsageError(f"--dir {directory} holds no request or result files: nothing to rebuild; start with `batch create` or `batch run`")
    probe = Manifest("", "", {}, 0, "")
    models = lifecycle.recover_requests(directory, probe)
    if len(models) > 1 and not args.model:
        raise UsageError(f"the request files in {directory} name {len(models)} models ({', '.join(models)}); say which with --model")
    args.model = args.model or (models[0] if models else None)
    setup = load_setup(args, load_tokenizers=False, lost=True)
    manifest = Manifest(str(args.task or "refusal"), setup.model, setup.fingerprint, args.num_scenarios or 1500,
                        args.output or "dataset.jsonl", directory_id=probe.directory_id, legacy_below=probe.legacy_below,
                        next_request=probe.next_request, rounds=probe.rounds, entries=probe.entries)
    spares = sorted((p.stat().st_mtime, p) for p in directory.glob("spares-*.jsonl") if spares_origin(p.stem))
    if spares:  # the newest: a pass deletes the one it read once it has written its own
        path = spares[-1][1]
        manifest.spares_file, manifest.spares = path.name, len(path.read_bytes().splitlines())
        kind, number = spares_origin(path.stem)
        if kind == "pass":
            manifest.totals["passes"] = number
        else:  # a pilot's or finish's: named by the next request number, which later requests must not reuse
            manifest.next_request = max(manifest.next_request, number)
    offline = (directory / "simulator").is_dir()
    if not offline and request_destination(args)[0] == "simulator" and manifest.entries:
        raise UsageError(f"{directory} holds no offline simulator state, so its request files were not sent offline: say "
                         "where their batches went (OPENAI_API_KEY for the OpenAI API, or --base-url) so that rebuild finds "
                         f"them; if they were never sent, remove {directory / lifecycle.REQUESTS} and `batch create` again")
    checkpoint = Path(args.checkpoint or default_checkpoint_path(manifest.output))
    record, missing = _recorded_accounting(setup, manifest, checkpoint, args.force)

    async def go() -> list[Entry]:
        async with open_batch_api(args, directory, manifest) as (api, _):
            adopted = await lifecycle.recover_batches(directory, manifest, api)
            if adopted:
                manifest.endpoint = api.endpoint
            return adopted
    adopted = run_event_loop(go())
    files, unsent = len(manifest.entries), sum(e.batch_id is None for e in manifest.entries)
    if record is not None:
        try:
            manifest.restore(record, directory)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            record, missing = None, f"its record of {directory} does not fit the directory's files ({exc}), so it is not used"
        else:
            manifest.target = args.num_scenarios or int(record.get("target") or manifest.target)
    lifecycle.recover_resubmitted(directory, manifest)
    manifest.save(directory)
    print(f"rebuilt {directory / 'manifest.json'}: {files} request file(s), {len(adopted)} with their batch "
          f"found ({sum(e.downloaded for e in adopted)} downloaded), {unsent} never sent"
          + (f", {manifest.spares} spares" if manifest.spares else ""))
    if record is not None:
        totals = manifest.totals
        print(f"accounting restored from {checkpoint} (what the dataset's last checkpoint recorded): "
              f"{totals.get('requests_ok', 0)} answered requests counted in {totals.get('passes', 0)} processing pass(es), "
              f"{sum(e.processed and e.downloaded and not e.real_time for e in manifest.entries)} result file(s) processed"
              + ("; the pass it cut short is replayed by the next `batch process` or `batch run`" if manifest.processing else "")
              + "; nothing is processed or counted twice")
    else:
        print(f"accounting not restored: {missing}; the next `batch process` processes every downloaded result "
              "and counts it afresh (the dataset's dedup keeps its pairs from entering twice)")
    print(f"task {manifest.task}, model {manifest.model}, dataset {manifest.output}, target {manifest.target}; "
          f"next: python -m asyncgen batch run --dir {directory} (or `batch process`)")
    return 0


def _recorded_accounting(setup: Setup, manifest: Manifest, checkpoint: Path, force: bool) -> tuple[dict | None, str]:
    """The directory's accounting as the dataset's checkpoint recorded it (``processing.run_state``), through
    the sink, which checks that the checkpoint is the dataset's and of this task and tokenizers; or
    None and why not."""
    from asyncgen.sink import ScenarioSink

    dataset = Path(manifest.output)
    if not dataset.is_file() or not checkpoint.is_file():
        return None, (f"no dataset {dataset} with its checkpoint {checkpoint} (if the dataset is elsewhere, "
                      "give --output and --checkpoint)")
    with ScenarioSink.open(dataset, checkpoint, task_name=setup.task.task_name, fingerprint=setup.fingerprint,
                           force_resume=force) as sink:
        records = sink.resume.run_state.get(ACCOUNTING)
    record = records.get(manifest.directory_id) if isinstance(records, dict) else None
    if not isinstance(record, dict):
        return None, f"{checkpoint} holds no record of {setup.directory}'s processing"
    return record, ""

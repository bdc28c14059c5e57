"""``batch rebuild``: a lost manifest.json made again from --dir's request and result files, the
batches the API lists with the directory's metadata, and what was processed from the dataset's
checkpoint, which records it with every sync (``processing.run_state``).

Which dataset, and what target, the directory was for is taken from what records it, never guessed
from a default name. The dataset: --output; else the one whose checkpoint (in the working directory
or beside --dir) records this directory's processing, by the id its requests carry; else the one of
the name the metadata of the directory's batches gives, there, if its path has the tag they give
(``lifecycle.batch_metadata``: no path is sent, none taken back). The target: --num-scenarios;
else the dataset checkpoint's record; else the batches' metadata. Nothing says: refused, nothing
written. A dataset whose checkpoint records the processing of other batch directories but
not this one's is refused too (--force takes it anyway)."""

from __future__ import annotations

from pathlib import Path

import orjson

from asyncgen.batch import lifecycle
from asyncgen.batch.endpoint import open_batch_api
from asyncgen.batch.manifest import ACCOUNTING, Entry, Manifest, leftovers, path_from_here, spares_origin
from asyncgen.commands.batch.directory import Setup, batch_directory, load_setup
from asyncgen.commands.run import request_destination
from asyncgen.errors import UsageError
from asyncgen.eventloop import run_event_loop
from asyncgen.sink import default_checkpoint_path

CHECKPOINT_READ_MAX = 64 << 20  # bytes: a larger file named *.checkpoint.json is no dataset checkpoint looked into


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
    manifest = Manifest(str(args.task or "refusal"), setup.model, setup.fingerprint, 0,
                        "", directory_id=probe.directory_id, legacy_below=probe.legacy_below,
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
    if args.output:
        _refuse_a_dataset_of_other_directories(args, directory, manifest.directory_id, args.output)

    async def go() -> tuple[list[Entry], dict]:
        async with open_batch_api(args, directory, manifest) as (api, _):
            adopted, metadata = await lifecycle.recover_batches(directory, manifest, api)
            if adopted:
                manifest.endpoint = api.endpoint
            return adopted, metadata
    adopted, metadata = run_event_loop(go())
    manifest.output, target = _dataset_and_target(args, directory, manifest.directory_id, metadata)
    checkpoint = Path(args.checkpoint or default_checkpoint_path(manifest.output))
    if not (args.num_scenarios or target or _recorded_target(checkpoint, manifest.directory_id)):
        raise UsageError(_no_target(directory, manifest.output) + " (nothing was written)")  # the sink not even opened
    record, missing = _recorded_accounting(setup, manifest, checkpoint, args.force)
    files, unsent = len(manifest.entries), sum(e.batch_id is None for e in manifest.entries)
    if record is not None:
        try:
            manifest.restore(record, directory)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            record, missing = None, f"its record of {directory} does not fit the directory's files ({exc}), so it is not used"
        else:
            target = int(record.get("target") or 0) or target
    target = args.num_scenarios or target
    if target is None:  # the checkpoint's record named one, but did not fit: the dataset was opened (and checked)
        raise UsageError(_no_target(directory, manifest.output) + f" ({missing}; no manifest was written)")
    manifest.target = target
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


def _no_target(directory: Path, output: str) -> str:
    return (f"cannot tell the target of {directory}'s dataset {output}: nothing records it (no batch of it found, no "
            "record in the dataset's checkpoint); give --num-scenarios N")


def _recorded_target(checkpoint: Path, directory_id: str) -> int | None:
    """The target the dataset's checkpoint records for the directory, read as it is (the sink not opened)."""
    records, _ = _recorded_directories(checkpoint)
    record = records.get(directory_id)
    return _number(str(record.get("target"))) if isinstance(record, dict) else None


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


def _dataset_and_target(args, directory: Path, directory_id: str, metadata: dict) -> tuple[str, int | None]:
    """The dataset the directory was for, and the target its batches' metadata records for it (None:
    none; the dataset's checkpoint may record one): --output; else the one dataset whose checkpoint
    records the directory's processing (the strongest evidence: its content, wherever --dir is run
    from); else the dataset of the name its newest batch's metadata gives, in the working directory or
    beside --dir, whose path has the tag the metadata gives (``lifecycle.dataset_tag``: a server's
    word is no path taken as it is). Refused when nothing says which dataset, or when the dataset's
    checkpoint records other batch directories but not this one."""
    named, tag = metadata.get("asyncgen_output"), metadata.get("asyncgen_output_tag")
    folders = list(dict.fromkeys([Path.cwd(), directory.resolve().parent]))
    where = " or ".join(map(str, folders))
    if args.output:
        output = args.output
    else:
        found = _datasets_recording(directory_id, folders)
        tagged = [path_from_here(folder / named) for folder in folders if named and tag and lifecycle.dataset_tag(folder / named) == tag]
        if len(found) > 1 or not (found or tagged):
            why = (f"{len(found)} datasets record it ({', '.join(found)})" if found else
                   f"its batches name a dataset {named}, but no {named} in {where} is the one they were made for"
                   if named and tag else
                   f"its batches (if any were found) do not name it, and no dataset checkpoint in {where} records its processing")
            raise UsageError(f"cannot tell which dataset {directory}'s requests were for: {why}; give --output DATASET "
                             "(and --num-scenarios N) to rebuild it for that dataset (nothing was written)")
        output = found[0] if found else tagged[0]
    same = tag is not None and lifecycle.dataset_tag(output) == tag
    target = _number(metadata.get("asyncgen_target")) if same else None
    if output != args.output:  # (--output: checked before the API was asked)
        _refuse_a_dataset_of_other_directories(args, directory, directory_id, output)
    return output, target


def _refuse_a_dataset_of_other_directories(args, directory: Path, directory_id: str, output: str) -> None:
    """Refuse (unless --force) a dataset whose checkpoint records other batch directories' processing, not this one's."""
    checkpoint = Path(args.checkpoint or default_checkpoint_path(output))
    others, batch_dir = _recorded_directories(checkpoint)
    if others and directory_id not in others and not args.force:
        raise UsageError(f"{output} is not {directory}'s dataset: its checkpoint {checkpoint} records the processing of "
                         f"{batch_dir or 'another batch directory'} (directory id {', '.join(sorted(others))}), not of "
                         f"{directory} ({directory_id}); give {directory}'s dataset with --output, or --force to use this one")


def _number(text) -> int | None:
    return int(text) if isinstance(text, str) and text.isdigit() and int(text) > 0 else None


def _recorded_directories(checkpoint: Path) -> tuple[dict, str | None]:
    """The batch directories' accounting a dataset checkpoint records (by directory id; {} if none, or
    no such file) and the batch directory it names (the last to process into it)."""
    try:
        if checkpoint.stat().st_size > CHECKPOINT_READ_MAX:
            return {}, None
        data = orjson.loads(checkpoint.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}, None
    state = data.get("run_state") if isinstance(data, dict) else None
    if not isinstance(state, dict):
        return {}, None
    records = state.get(ACCOUNTING)
    return (records if isinstance(records, dict) else {}), state.get("batch_dir")


def _datasets_recording(directory_id: str, folders: list[Path]) -> list[str]:
    """The datasets (as paths from here when under it) whose checkpoint, beside them in ``folders``,
    records the processing of the batch directory ``directory_id``."""
    found = []
    for checkpoint in sorted({path.resolve() for folder in folders for path in folder.glob("*.checkpoint.json")}):
        records, _ = _recorded_directories(checkpoint)
        if directory_id not in records:
            continue
        try:
            dataset = orjson.loads(checkpoint.read_bytes()).get("sink")
        except (OSError, orjson.JSONDecodeError):
            continue
        if isinstance(dataset, str) and default_checkpoint_path(dataset).resolve() == checkpoint:
            found.append(path_from_here(Path(dataset)))
    return found

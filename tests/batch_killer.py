"""``python tests/batch_killer.py POINT asyncgen-args...``: run asyncgen, SIGKILLing itself at POINT.

The kill-safety tests of ``asyncgen batch run`` use it to die at exact moments:

- ``after-create``: a batch was just created on the server; the manifest does not know its id yet;
- ``polling`` (``polling:N``): at the second (N-th) status check that finds a batch running;
- ``processing:K``: after the K-th scenario the processing pass appended to the dataset;
- ``scoring:K``: after the K-th scenario ``score --batch`` appended to the scores file;
- ``real-time-wave``: after the first wave of real-time requests (the pilot's, or a finish's) put
  its pairs in the dataset, before the manifest records the wave's end;
- ``pilot-answer:K``: mid-pilot, once K real-time answers were taken (and recorded), as the next is taken;
- ``sigint-last-chunk``: not a kill: a SIGINT (Ctrl-C) to itself while the first processing pass
  validates its last chunk (inline validation: ``--validator-workers 0``, the default).
"""

import os
import signal
import sys


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    point, argv = sys.argv[1], sys.argv[2:]
    if point == "after-create":
        from asyncgen.batch.api import BatchApi

        create = BatchApi.create

        async def create_then_die(self, *args, **kwargs):
            await create(self, *args, **kwargs)
            die()

        BatchApi.create = create_then_die
    elif point == "polling" or point.startswith("polling:"):
        from asyncgen.batch import lifecycle

        refresh, seen, nth = lifecycle.refresh, [], int(point.partition(":")[2] or 2)

        async def refresh_then_die(directory, manifest, api):
            await refresh(directory, manifest, api)
            if manifest.in_flight():
                seen.append(1)
                if len(seen) >= nth:
                    die()

        lifecycle.refresh = refresh_then_die
    elif point.startswith("processing:"):
        from asyncgen.sink import ScenarioSink

        append, limit, appended = ScenarioSink.append, int(point.split(":")[1]), []

        def append_then_die(self, scenario):
            result = append(self, scenario)
            if result is not None:
                appended.append(result)
                if len(appended) >= limit:
                    die()
            return result

        ScenarioSink.append = append_then_die
    elif point.startswith("scoring:"):
        from asyncgen.scores import ScoresFile

        append, limit, appended = ScoresFile.append, int(point.split(":")[1]), []

        def append_scores_then_die(self, record):
            append(self, record)
            appended.append(1)
            if len(appended) >= limit:
                die()

        ScoresFile.append = append_scores_then_die
    elif point == "real-time-wave":
        from asyncgen.batch import pilot

        run_pilot = pilot.run_pilot

        async def run_pilot_then_die(*args, **kwargs):
            await run_pilot(*args, **kwargs)
            die()

        pilot.run_pilot = run_pilot_then_die
    elif point.startswith("pilot-answer:"):
        from asyncgen.acceptance import Acceptance

        take, limit, taken = Acceptance.take, int(point.split(":")[1]), []

        def die_at_the_next_answer(self, verdicts):
            if len(taken) >= limit:
                die()
            taken.append(1)
            return take(self, verdicts)

        Acceptance.take = die_at_the_next_answer
    elif point == "sigint-last-chunk":
        from asyncgen.batch import process

        validate_all, fired = process.validate_all, []

        def interrupted_in_the_last_chunk(validator, pairs, progress, stop=lambda: False):
            chunks, validate, calls = -(-len(pairs) // process.VALIDATION_CHUNK), validator.validate, []

            def validate_chunk(chunk):
                calls.append(1)
                if len(calls) == chunks and not fired:
                    fired.append(1)
                    print(f"sigint-last-chunk: Ctrl-C in chunk {len(calls)} of {chunks}", file=sys.stderr, flush=True)
                    os.kill(os.getpid(), signal.SIGINT)
                return validate(chunk)

            validator.validate = validate_chunk
            try:
                return validate_all(validator, pairs, progress, stop)
            finally:
                del validator.validate

        process.validate_all = interrupted_in_the_last_chunk
    else:
        raise SystemExit(f"unknown point {point!r}")
    from asyncgen.cli import main as asyncgen

    return asyncgen(argv)


if __name__ == "__main__":
    sys.exit(main())

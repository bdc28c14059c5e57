"""Where a batch directory's requests go, and the ``BatchApi`` client that sends them there: the
endpoint its batches went to (the first submit records it in the manifest), else the one the flags
name (``--base-url``, else the OpenAI API with ``OPENAI_API_KEY``, else the built-in simulator,
whose files and batches live in the directory's ``simulator/`` so that a killed offline run
resumes). ``asyncgen batch`` and ``score --batch`` (``asyncgen/score_batch_job.py``) open it here.

The openai SDK, httpx and the simulator are imported only when a client is opened: they take
seconds, and ``asyncgen batch --help`` needs none of them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator
from urllib.parse import urlsplit

from asyncgen.errors import UsageError
from asyncgen.eventloop import LOOPBACK_HOSTS
from asyncgen.generation import OFFLINE_KEY, request_destination

if TYPE_CHECKING:
    from asyncgen.batch.api import BatchApi
    from asyncgen.batch.manifest import Manifest

log = logging.getLogger("asyncgen.batch")
# The offline simulator's batch clock: 600 simulated seconds per real second (24 h in 2.4 min),
# so a round of a few hundred requests ends within a second or two.
OFFLINE_BATCH_SPEED = 600.0
# How often a run asks about its batches, by where they went (--poll-seconds overrides it).
POLL_SECONDS = {"simulator": 0.25, "custom": 10.0, "openai": 60.0}


def directory_endpoint(args, manifest: Manifest) -> dict:
    """Where the batch directory's requests go: where its batches went (the first submit records
    it; ``Manifest.bound``), else where the flags say."""
    bound = manifest.bound_endpoint()
    if bound is not None:
        return bound
    mode, base_url, _ = request_destination(args)
    # The offline simulator works batches out from its seed: it must stay the same across restarts.
    return {"mode": mode, "base_url": base_url, "seed": getattr(args, "seed", None) or 0}


@contextlib.asynccontextmanager
async def open_batch_api(args, directory: Path, manifest: Manifest,
                         quiet: bool = False) -> AsyncIterator[tuple[BatchApi, str]]:
    """(a ``BatchApi`` for the batch directory's endpoint, its mode: ``simulator``, ``custom`` or
    ``openai``): where its batches went, else the flags' (the first batch records it:
    ``lifecycle.submit``); offline, the simulator runs while the block does. ``quiet``: where, in
    the debug log only."""
    import httpx
    import openai

    from asyncgen.batch.api import BatchApi

    endpoint = directory_endpoint(args, manifest)
    mode, base_url = endpoint["mode"], endpoint["base_url"]
    api_key = os.environ.get("OPENAI_API_KEY") or None
    if mode == "openai" and not api_key:
        raise UsageError(f"the batches in {directory} went to the OpenAI API: set OPENAI_API_KEY")
    if mode == "custom":
        api_key = api_key or "sk-no-key-needed"
    async with contextlib.AsyncExitStack() as stack:
        if mode == "simulator":
            from asyncgen.simulator import SimulatorConfig, running_simulator

            api_key = OFFLINE_KEY
            simulator = await stack.enter_async_context(running_simulator(SimulatorConfig(
                task=manifest.task, config_dir=getattr(args, "config_dir", None), seed=endpoint.get("seed", 0),
                rpm=None, tpm=None, batch_speed=OFFLINE_BATCH_SPEED, batch_state_dir=str(directory / "simulator"),
            )))
            base_url = simulator.base_url
            log.log(logging.DEBUG if quiet else logging.INFO, "offline: batches go to asyncgen's built-in simulator "
                    "(state in %s); its answers come from the task's lexicon, not a model", directory / "simulator")
        loopback = base_url is not None and urlsplit(base_url).hostname in LOOPBACK_HOSTS
        client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=2,
                                    http_client=httpx.AsyncClient(trust_env=not loopback, timeout=httpx.Timeout(120, connect=10)))
        stack.push_async_callback(client.close)
        where = "the offline simulator" if mode == "simulator" else (base_url or "the OpenAI API")
        yield BatchApi(client, api_key, where, endpoint, trust_env=not loopback), mode

"""An OpenAI-compatible simulator: the API asyncgen uses, served over real HTTP on loopback.

Modules, each importing only those above it:

- ``settings``: ``SimulatorConfig`` (every knob) and ``parse_faults``;
- ``ratelimit``: RPM/TPM token buckets and the x-ratelimit-* headers (Go-style durations);
- ``composer``: the model player, which writes candidate pairs from a task's lexicon;
- ``scoring``: the model under study, which answers a task's questions (sides, preference, log-probs);
- ``wire``: error bodies and texts, as shared/docs/openai-protocol.md gives them;
- ``faults``: fault draws and what they do to an answer;
- ``chat``: chat request validation, usage estimate, TPM charge, the completion object;
- ``completions``: the same for legacy ``/v1/completions``; ``endpoints``: both, by path;
- ``batches``: files and the batch lifecycle on a scalable clock;
- ``stats``: the counters behind GET /_stats;
- ``app``: the aiohttp routes; ``runner``: in-process and foreground serving.

Usage: ``async with running_simulator(SimulatorConfig(seed=1)) as sim:`` then
``openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-test")``; ``await sim.stats()``.
"""

from asyncgen.simulator.app import make_app
from asyncgen.simulator.runner import RunningSimulator, running_simulator, serve
from asyncgen.simulator.settings import FAULT_KINDS, SimulatorConfig, parse_faults

__all__ = ["FAULT_KINDS", "RunningSimulator", "SimulatorConfig", "make_app", "parse_faults", "running_simulator", "serve"]

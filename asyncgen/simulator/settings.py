"""Every knob of the simulator, in one dataclass, and the parsing of the ``--faults`` list.

Nothing here does I/O; the other simulator modules read a validated ``SimulatorConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from asyncgen.errors import UsageError

# Faults that change the HTTP exchange: drawn once per request.
HTTP_FAULTS = ("500", "502", "503", "timeout", "reset")
# Faults that change one answer: drawn once per choice (per request when n=1).
CONTENT_FAULTS = ("bad_json", "length", "content_filter", "refusal", "bad_shape")
FAULT_KINDS = HTTP_FAULTS + CONTENT_FAULTS

# Kinds of imperfect pair a "model" writes; each imperfect pair is one of these.
IMPERFECTION_KINDS = ("long_filler", "second_word", "repeat")
LATENCY_DISTRIBUTIONS = ("fixed", "uniform", "normal", "exponential")
FAIL_FIRST_STATUSES = (500, 502, 503)

# Model -> (dated snapshot it resolves to, context window, max output tokens).
MODELS: dict[str, tuple[str, int, int]] = {
    "gpt-4o": ("gpt-4o-2024-08-06", 128_000, 16_384),
    "gpt-4o-2024-08-06": ("gpt-4o-2024-08-06", 128_000, 16_384),
    "gpt-4o-mini": ("gpt-4o-mini-2024-07-18", 128_000, 16_384),
    "gpt-4o-mini-2024-07-18": ("gpt-4o-mini-2024-07-18", 128_000, 16_384),
    "gpt-4.1": ("gpt-4.1-2025-04-14", 1_047_576, 32_768),
    "gpt-4.1-2025-04-14": ("gpt-4.1-2025-04-14", 1_047_576, 32_768),
    "gpt-4.1-mini": ("gpt-4.1-mini-2025-04-14", 1_047_576, 32_768),
    "gpt-4.1-mini-2025-04-14": ("gpt-4.1-mini-2025-04-14", 1_047_576, 32_768),
    "gpt-4.1-nano": ("gpt-4.1-nano-2025-04-14", 1_047_576, 32_768),
    "gpt-4.1-nano-2025-04-14": ("gpt-4.1-nano-2025-04-14", 1_047_576, 32_768),
    # OpenAI's instruct and base models: /v1/completions only.
    "gpt-3.5-turbo-instruct": ("gpt-3.5-turbo-instruct", 4_096, 4_096),
    "davinci-002": ("davinci-002", 16_384, 16_384),
    # An open-weights name, as a vLLM server serves it: both endpoints.
    "Qwen/Qwen2.5-0.5B-Instruct": ("Qwen/Qwen2.5-0.5B-Instruct", 32_768, 8_192),
}
# Which endpoints serve which model, as on OpenAI: its chat models (the rest of MODELS) refuse
# /v1/completions, its instruct and base models refuse chat; a vLLM-style server serves both.
COMPLETIONS_ONLY_MODELS = frozenset({"gpt-3.5-turbo-instruct", "davinci-002"})
OPEN_WEIGHTS_MODELS = frozenset({"Qwen/Qwen2.5-0.5B-Instruct"})
# Most log-probabilities per position: OpenAI's /v1/completions ``logprobs``, and chat
# ``top_logprobs`` (OpenAI and vLLM alike; vLLM's --max-logprobs default also bounds its completions).
OPENAI_COMPLETIONS_MAX_LOGPROBS = 5
MAX_TOP_LOGPROBS = 20


def serves_chat(model: str) -> bool:
    return model not in COMPLETIONS_ONLY_MODELS


def serves_completions(model: str) -> bool:
    return model in COMPLETIONS_ONLY_MODELS or model in OPEN_WEIGHTS_MODELS


def completions_max_logprobs(model: str) -> int:
    return OPENAI_COMPLETIONS_MAX_LOGPROBS if model in COMPLETIONS_ONLY_MODELS else MAX_TOP_LOGPROBS


@dataclass
class SimulatorConfig:
    # Where it listens. Port 0: a free port, chosen at start.
    host: str = "127.0.0.1"
    port: int = 0
    # The task it plays (its lexicon in <config_dir>/tasks/<task>.yaml) and the seed of every draw.
    task: str = "refusal"
    config_dir: str | None = None
    seed: int = 0
    # None: any non-empty bearer key is accepted; otherwise exactly this one.
    api_key: str | None = None
    # Token buckets, refilled continuously over a minute. None: unlimited (headers still sent).
    rpm: int | None = 5_000
    tpm: int | None = 2_000_000
    start_drained: bool = False  # both buckets start empty (a steady state), not full (a first burst)
    quota_exhausted: bool = False
    # Rates per kind (FAULT_KINDS); HTTP kinds per request, content kinds per choice.
    faults: dict[str, float] = field(default_factory=dict)
    # The first N attempts of each request fail (attempt: x-stainless-retry-count, or how many times
    # the same request body was seen before, whichever is larger) with this status.
    fail_first: int = 0
    fail_first_status: int = 500
    # Latency before answering: latency_ms, spread by latency_jitter_ms as the distribution says.
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    latency_distribution: str = "uniform"
    # The "timeout" fault holds the response this long before answering (released at shutdown); keep it
    # above the client's timeout (the SDK's default is 600 s).
    hang_s: float = 660.0
    # Batches: simulated seconds per real second, and the simulated cost of each stage.
    batch_speed: float = 600.0
    batch_validate_s: float = 30.0
    batch_seconds_per_request: float = 1.0
    batch_finalize_s: float = 30.0
    batch_cancel_s: float = 30.0
    batch_enqueued_token_limit: int | None = None
    # Where files and batches are kept across restarts (a real API keeps them server-side); None: memory only.
    batch_state_dir: str | None = None
    # The model player: share of pairs made imperfect on purpose, the mix of kinds among them, and
    # the share of answers wrapped in prose ("Here are the pairs: ..."). Some of the lexicon's short
    # fillers are several tokens under some tokenizer anyway (refusal: about 21 % of perfect pairs fail
    # under qwen2/llama3/solar), so the default 0.12 gives about 30 % invalid refusal pairs in all.
    imperfect_rate: float = 0.12
    imperfect_mix: dict[str, float] = field(
        default_factory=lambda: {"long_filler": 1.0, "second_word": 1.0, "repeat": 1.0}
    )
    prose_rate: float = 0.05
    # Fillers longer than this many characters count as "long" (likely several tokens).
    long_filler_chars: int = 7
    # Most pairs one answer may hold (a guard against absurd "exactly 100000 pairs").
    max_pairs: int = 200
    # The model under study (scoring.py): the share of scenarios whose preference does not flip
    # between a pair's sides, and the share of answers whose other answer falls outside any top-k.
    non_flip_share: float = 0.15
    outside_top_k_share: float = 0.10

    def validate(self) -> "SimulatorConfig":
        """Raise UsageError on the first bad knob; return self."""
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port {self.port}: expected 0-65535 (0 picks a free port)")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name} {value}: expected a positive integer")
        if self.api_key is not None and not self.api_key:
            raise UsageError("--api-key: expected a non-empty key")
        check_fault_rates(self.faults)
        if self.fail_first < 0:
            raise UsageError(f"--fail-first {self.fail_first}: expected 0 or more")
        if self.fail_first_status not in FAIL_FIRST_STATUSES:
            raise UsageError(f"--fail-first-status {self.fail_first_status}: expected one of {FAIL_FIRST_STATUSES}")
        if self.latency_ms < 0 or self.latency_jitter_ms < 0:
            raise UsageError("--latency-ms and --latency-jitter-ms: expected 0 or more")
        if self.latency_distribution not in LATENCY_DISTRIBUTIONS:
            raise UsageError(
                f"--latency-dist {self.latency_distribution}: expected one of {', '.join(LATENCY_DISTRIBUTIONS)}"
            )
        if self.hang_s <= 0:
            raise UsageError(f"--hang-s {self.hang_s}: expected a positive number of seconds")
        if self.batch_speed <= 0:
            raise UsageError(f"--batch-speed {self.batch_speed}: expected a positive number")
        for name in ("batch_validate_s", "batch_seconds_per_request", "batch_finalize_s", "batch_cancel_s"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} {getattr(self, name)}: expected 0 or more")
        for name in ("imperfect_rate", "prose_rate", "non_flip_share", "outside_top_k_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise UsageError(f"--{name.replace('_', '-')} {getattr(self, name):g}: expected a share in [0, 1]")
        unknown = set(self.imperfect_mix) - set(IMPERFECTION_KINDS)
        if unknown:
            raise UsageError(
                f"--imperfect-mix: unknown kind {sorted(unknown)[0]!r}; expected some of {', '.join(IMPERFECTION_KINDS)}"
            )
        if any(w < 0 for w in self.imperfect_mix.values()) or (self.imperfect_rate > 0 and not any(self.imperfect_mix.values())):
            raise UsageError("--imperfect-mix: expected non-negative weights, at least one positive")
        if self.max_pairs < 1:
            raise UsageError(f"max_pairs {self.max_pairs}: expected 1 or more")
        return self


def parse_rates(text: str, kinds: tuple[str, ...], flag: str) -> dict[str, float]:
    """``"a=0.1,b=0.2"`` -> ``{"a": 0.1, "b": 0.2}``, each key one of ``kinds``, each value >= 0."""
    rates: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise UsageError(f"{flag} {text!r}: {item!r} is not KIND=RATE")
        if name not in kinds:
            raise UsageError(f"{flag}: unknown kind {name!r}; expected some of {', '.join(kinds)}")
        if name in rates:
            raise UsageError(f"{flag}: {name!r} given twice")
        try:
            rate = float(value)
        except ValueError:
            raise UsageError(f"{flag}: {name}={value.strip()!r} is not a number") from None
        if not rate >= 0:
            raise UsageError(f"{flag}: {name}={value.strip()} must be 0 or more")
        rates[name] = rate
    return rates


def parse_faults(text: str) -> dict[str, float]:
    """``"500=0.05,reset=0.02"`` -> ``{"500": 0.05, "reset": 0.02}``; UsageError on bad input."""
    faults = parse_rates(text, FAULT_KINDS, "--faults")
    check_fault_rates(faults)
    return faults


def check_fault_rates(faults: dict[str, float]) -> None:
    unknown = set(faults) - set(FAULT_KINDS)
    if unknown:
        raise UsageError(f"--faults: unknown kind {sorted(unknown)[0]!r}; expected some of {', '.join(FAULT_KINDS)}")
    for name, rate in faults.items():
        if not 0 <= rate <= 1:
            raise UsageError(f"--faults: {name}={rate} must be a rate in [0, 1]")
    for group, label in ((HTTP_FAULTS, "request"), (CONTENT_FAULTS, "answer")):
        total = sum(faults.get(kind, 0.0) for kind in group)
        if total > 1 + 1e-9:
            raise UsageError(
                f"--faults: the {label} faults ({', '.join(group)}) add up to {total:g}; at most 1 fires per {label}"
            )

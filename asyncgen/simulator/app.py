"""The aiohttp application: routes, auth, error bodies, rate limits and HTTP faults.

Order on POST /v1/chat/completions and POST /v1/completions (one path, endpoints.py): auth (401), body and fields (400/404, not charged),
quota (429 insufficient_quota), rate limits (429, nothing taken), then the request is charged and
the faults apply: fail-first, latency, one HTTP fault (500, 502, 503, timeout, reset), content
faults per choice. Every response has an ``x-request-id``; chat responses also the x-ratelimit-*
headers.

A request's draws are seeded by --seed, a hash of its body and its attempt: the larger of the
``x-stainless-retry-count`` header and how many times the same body arrived before. Reruns that
send the same bodies get the same answers, whatever the interleaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import time

import orjson
from aiohttp import web

from asyncgen.config import load_task
from asyncgen.simulator import batches, chat, faults, wire
from asyncgen.simulator.endpoints import CHAT, COMPLETIONS, ENDPOINTS, Endpoint
from asyncgen.simulator.batches import BatchService
from asyncgen.simulator.composer import Player
from asyncgen.simulator.ratelimit import RateLimiter, retry_headers
from asyncgen.simulator.settings import MODELS, OPEN_WEIGHTS_MODELS, SimulatorConfig
from asyncgen.simulator.stats import Stats

log = logging.getLogger("asyncgen.simulator")

MAX_BODY_BYTES = 210 * 1024 * 1024  # batch input files may be 200 MB
MAX_REMEMBERED_BODIES = 1_000_000
JSON = "application/json"


class Simulator:
    """The state behind one app: config, the model player, buckets, batches, stats."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.player = Player.from_task(load_task(config.task, config.config_dir), config.long_filler_chars)
        self.now = time.monotonic
        self.limiter = RateLimiter(config.rpm, config.tpm, self.now(), drained=config.start_drained)
        self.salt = os.urandom(4).hex()
        self.fingerprint = "fp_" + hashlib.blake2b(str(config.seed).encode(), digest_size=5).hexdigest()
        self.batches = BatchService(config, self.player, self.salt, self.fingerprint)
        self.stats = Stats(self.now)
        self.seen_bodies: dict[bytes, int] = {}
        self.stopping = asyncio.Event()


SIMULATOR = web.AppKey("simulator", Simulator)


def make_app(config: SimulatorConfig) -> web.Application:
    config.validate()
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_guard])
    app[SIMULATOR] = Simulator(config)
    app.on_shutdown.append(_release_hanging)
    app.router.add_post(CHAT, chat_completions)
    app.router.add_post(COMPLETIONS, completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)
    app.router.add_post("/v1/files", upload_file)
    app.router.add_get("/v1/files", list_files)
    app.router.add_get("/v1/files/{file_id}", get_file)
    app.router.add_get("/v1/files/{file_id}/content", file_content)
    app.router.add_post("/v1/batches", create_batch)
    app.router.add_get("/v1/batches", list_batches)
    app.router.add_get("/v1/batches/{batch_id}", get_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel_batch)
    app.router.add_get("/_stats", get_stats)
    return app


async def _release_hanging(app: web.Application) -> None:
    app[SIMULATOR].stopping.set()


@web.middleware
async def _guard(request: web.Request, handler) -> web.StreamResponse:
    sim = request.app[SIMULATOR]
    stats = sim.stats
    resource = request.match_info.route.resource
    route = f"{request.method} {resource.canonical}" if resource is not None else "unknown"
    stats.count(stats.requests, route)
    request_id = chat.new_id("req_", sim.salt)
    stats.in_flight += 1
    stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
    try:
        if resource is None:
            raise wire.invalid_url(request.method, request.path)
        if request.path.startswith("/v1/"):
            _authorize(request.headers.get("Authorization"), sim.config.api_key)
        response = await handler(request)
    except wire.ApiFailure as failure:
        response = web.Response(status=failure.status, body=failure.body(), content_type=JSON, headers=failure.headers)
    except web.HTTPRequestEntityTooLarge:
        failure = wire.ApiFailure(413, f"The request body is larger than {MAX_BODY_BYTES} bytes.", "invalid_request_error")
        response = web.Response(status=413, body=failure.body(), content_type=JSON)
    except web.HTTPException as exc:
        # The router's own 404 (no such path) and 405 (no such method on a path).
        failure = wire.invalid_url(request.method, request.path)
        response = web.Response(status=exc.status, body=failure.body(), content_type=JSON)
    finally:
        stats.in_flight -= 1
    stats.count(stats.statuses, response.status)
    response.headers["x-request-id"] = request_id
    return response


def _authorize(header: str | None, required_key: str | None) -> None:
    if not header or not header.startswith("Bearer ") or not header[7:].strip():
        raise wire.missing_api_key()
    key = header[7:].strip()
    if required_key is not None and key != required_key:
        raise wire.wrong_api_key(key)


def _json(data: object, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type=JSON, headers=headers)


async def _json_body(request: web.Request) -> tuple[bytes, object]:
    raw = await request.read()
    try:
        return raw, orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise wire.unparseable_body() from None


# Chat and completions


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _model_request(request, ENDPOINTS[CHAT])


async def completions(request: web.Request) -> web.StreamResponse:
    return await _model_request(request, ENDPOINTS[COMPLETIONS])


async def _model_request(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    sim = request.app[SIMULATOR]
    stats = sim.stats
    arrival = stats.since_start()
    status = 500
    try:
        response = await _answer(request, sim, endpoint)
        status = response.status
        return response
    except wire.ApiFailure as failure:
        status = failure.status
        raise
    finally:
        stats.chat_log.append((arrival, status))


async def _answer(request: web.Request, sim: Simulator, endpoint: Endpoint) -> web.StreamResponse:
    stats, config = sim.stats, sim.config
    raw, body = await _json_body(request)
    try:
        model_request = endpoint.parse(body)
    except wire.ApiFailure as failure:
        failure.headers.update(sim.limiter.headers())
        raise
    model = model_request.model
    if config.quota_exhausted:
        sim.stats.rate_limited["quota"] += 1
        raise wire.ApiFailure(429, wire.INSUFFICIENT_QUOTA, "insufficient_quota", None, "insufficient_quota", sim.limiter.headers())
    decision = sim.limiter.admit(model_request.charge, sim.now())
    if decision.rejected_by is not None:
        stats.rate_limited[decision.rejected_by] += 1
        if decision.rejected_by == "too_large":
            message = wire.request_too_large(model, decision.limit, model_request.charge)
            raise wire.ApiFailure(429, message, "tokens", None, "rate_limit_exceeded", decision.headers)
        requested = 1 if decision.rejected_by == "requests" else model_request.charge
        message = wire.rate_limited(model, decision.rejected_by, decision.limit, decision.used, requested, decision.retry_after_s)
        headers = {**decision.headers, **retry_headers(decision.retry_after_s)}
        raise wire.ApiFailure(429, message, decision.rejected_by, None, "rate_limit_exceeded", headers)
    headers = decision.headers

    digest = hashlib.blake2b(raw, digest_size=12).digest()
    occurrence = sim.seen_bodies.get(digest, 0)
    if len(sim.seen_bodies) >= MAX_REMEMBERED_BODIES:
        sim.seen_bodies.clear()
    sim.seen_bodies[digest] = occurrence + 1
    attempt = max(_retry_count(request), occurrence)
    key = f"{config.seed}:{digest.hex()}:{attempt}"
    rng = random.Random(key + ":http")

    if attempt < config.fail_first:
        stats.count(stats.faults, "fail_first")
        http_fault = str(config.fail_first_status)
    else:
        http_fault = faults.draw_http_fault(config.faults, rng)
        if http_fault:
            stats.count(stats.faults, http_fault)
    if config.latency_ms or config.latency_jitter_ms:
        delay = faults.latency_s(config.latency_ms, config.latency_jitter_ms, config.latency_distribution, rng)
        if delay <= 0:
            await asyncio.sleep(0)
        else:  # the latency, cut short when the simulator stops (slow handlers are released on shutdown)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(sim.stopping.wait(), delay)
    if http_fault == "500":
        raise _with_headers(wire.server_error(), headers)
    if http_fault == "503":
        raise _with_headers(wire.overloaded(), headers)
    if http_fault == "502":
        return web.Response(status=502, body=faults.BAD_GATEWAY_HTML, content_type="text/html", headers=headers)
    if http_fault == "timeout":
        try:
            await asyncio.wait_for(sim.stopping.wait(), config.hang_s)
        except asyncio.TimeoutError:
            pass

    answer, fired = endpoint.respond(model_request, sim.player, config, key, chat.new_id(endpoint.id_prefix, sim.salt),
                                     sim.fingerprint)
    for fault in fired:
        stats.count(stats.faults, fault)
    usage = answer["usage"]
    stats.prompt_tokens += usage["prompt_tokens"]
    stats.completion_tokens += usage["completion_tokens"]
    if http_fault in ("reset", "timeout") or request.transport is None or request.transport.is_closing():
        stats.undelivered_prompt_tokens += usage["prompt_tokens"]
        stats.undelivered_completion_tokens += usage["completion_tokens"]
    payload = orjson.dumps(answer)
    if http_fault == "reset":
        return await _reset_midway(request, payload, headers)
    return web.Response(body=payload, content_type=JSON, headers=headers)


def _retry_count(request: web.Request) -> int:
    try:
        return max(0, int(request.headers.get("x-stainless-retry-count", 0)))
    except ValueError:
        return 0


def _with_headers(failure: wire.ApiFailure, headers: dict) -> wire.ApiFailure:
    failure.headers.update(headers)
    return failure


async def _reset_midway(request: web.Request, payload: bytes, headers: dict) -> web.StreamResponse:
    """Send the headers and half the body, then drop the connection."""
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = JSON
    response.content_length = len(payload)
    response.headers["x-request-id"] = chat.new_id("req_", request.app[SIMULATOR].salt)
    await response.prepare(request)
    await response.write(payload[: len(payload) // 2])
    transport = request.transport
    if transport is not None:
        transport.abort()
    return response


# Models


def _model_object(model_id: str) -> dict:
    owner = "vllm" if model_id in OPEN_WEIGHTS_MODELS else "system"
    return {"id": model_id, "object": "model", "created": 1_721_172_741, "owned_by": owner}


async def list_models(request: web.Request) -> web.Response:
    return _json({"object": "list", "data": [_model_object(m) for m in MODELS]})


async def get_model(request: web.Request) -> web.Response:
    model = request.match_info["model"]
    if model not in MODELS:
        raise wire.model_not_found(model)
    return _json(_model_object(model))


# Files


async def upload_file(request: web.Request) -> web.Response:
    service = request.app[SIMULATOR].batches
    if not request.content_type.startswith("multipart/"):
        raise wire.bad_request("Files must be uploaded as multipart/form-data.", "file", "invalid_value")
    form = await request.post()
    purpose = form.get("purpose")
    upload = form.get("file")
    if purpose is None:
        raise wire.missing_parameter("purpose")
    if upload is None or not hasattr(upload, "file"):
        raise wire.missing_parameter("file")
    if purpose not in batches.FILE_PURPOSES:
        raise wire.bad_request(
            f"Invalid value: '{purpose}'. Supported values are: {', '.join(repr(p) for p in batches.FILE_PURPOSES)}.",
            "purpose",
            "invalid_value",
        )
    data = upload.file.read()
    if purpose == "batch" and not upload.filename.endswith(".jsonl"):
        raise wire.bad_request("Invalid file format for Batch API. Must be .jsonl", "file", "invalid_value")
    return _json(service.add_file(upload.filename, purpose, data).object())


async def list_files(request: web.Request) -> web.Response:
    files = [f.object() for f in reversed(request.app[SIMULATOR].batches.files.values())]
    return _json({"object": "list", "data": files, "first_id": files[0]["id"] if files else None,
                  "last_id": files[-1]["id"] if files else None, "has_more": False})


async def get_file(request: web.Request) -> web.Response:
    return _json(request.app[SIMULATOR].batches.file(request.match_info["file_id"]).object())


async def file_content(request: web.Request) -> web.Response:
    stored = request.app[SIMULATOR].batches.file(request.match_info["file_id"])
    return web.Response(body=stored.data, content_type="application/octet-stream")


# Batches


async def create_batch(request: web.Request) -> web.Response:
    _, body = await _json_body(request)
    sim = request.app[SIMULATOR]
    if sim.config.quota_exhausted:
        sim.stats.rate_limited["quota"] += 1
        raise wire.ApiFailure(429, wire.INSUFFICIENT_QUOTA, "insufficient_quota", None, "insufficient_quota")
    return _json(request.app[SIMULATOR].batches.create(body))


async def get_batch(request: web.Request) -> web.Response:
    service = request.app[SIMULATOR].batches
    return _json(service.view(service.get(request.match_info["batch_id"])))


async def cancel_batch(request: web.Request) -> web.Response:
    return _json(request.app[SIMULATOR].batches.cancel(request.match_info["batch_id"]))


async def list_batches(request: web.Request) -> web.Response:
    raw_limit = request.query.get("limit", "20")
    try:
        limit = int(raw_limit)
    except ValueError:
        raise wire.bad_request(f"Invalid 'limit': expected an integer, got {raw_limit!r}.", "limit", "invalid_type") from None
    if not 1 <= limit <= 100:
        raise wire.bad_request(f"Invalid 'limit': expected a value from 1 to 100, got {limit}.", "limit", "invalid_value")
    return _json(request.app[SIMULATOR].batches.list(limit, request.query.get("after")))


# Observability


async def get_stats(request: web.Request) -> web.Response:
    return _json(request.app[SIMULATOR].stats.snapshot())

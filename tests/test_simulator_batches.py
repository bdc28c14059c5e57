"""Files and batches through the openai SDK, on a fast simulated clock: every lifecycle path."""

import asyncio
import json
import time

import httpx
import openai
import orjson
import pytest
from openai.types import Batch, FileObject
from openai.types.chat import ChatCompletion

from asyncgen.simulator import SimulatorConfig, running_simulator

TERMINAL = ("completed", "failed", "expired", "cancelled")


def client(sim) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0, http_client=httpx.AsyncClient(trust_env=False))


def request_line(custom_id: str, pairs: int = 2, model: str = "gpt-4o-mini") -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"Write exactly {pairs} pairs as JSON. ({custom_id})"}],
        "response_format": {"type": "json_object"},
        "max_completion_tokens": 1000,
    }
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def jsonl(records) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


async def upload(api, data: bytes) -> str:
    return (await api.files.create(file=("input.jsonl", data), purpose="batch")).id


async def raw_batch(api, batch_id: str) -> Batch:
    """The batch as the server sent it, validated against the SDK's type (not merely constructed)."""
    raw = await api.batches.with_raw_response.retrieve(batch_id)
    return Batch.model_validate(raw.http_response.json())


async def wait_until(api, batch_id: str, statuses=TERMINAL, limit_s: float = 10.0) -> tuple[Batch, list[str]]:
    seen: list[str] = []
    deadline = time.monotonic() + limit_s
    while True:
        batch = await raw_batch(api, batch_id)
        if not seen or seen[-1] != batch.status:
            seen.append(batch.status)
        if batch.status in statuses:
            return batch, seen
        assert time.monotonic() < deadline, f"batch stuck in {batch.status}"
        await asyncio.sleep(0.005)


async def lines_of(api, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in (await api.files.content(file_id)).text.splitlines()]


async def test_files_round_trip():
    data = jsonl([request_line("a"), request_line("b")])
    async with running_simulator(SimulatorConfig()) as sim, client(sim) as api:
        created = await api.files.with_raw_response.create(file=("input.jsonl", data), purpose="batch")
        stored = FileObject.model_validate(created.http_response.json())
        assert (stored.bytes, stored.filename, stored.purpose, stored.status) == (len(data), "input.jsonl", "batch", "processed")
        again = await api.files.retrieve(stored.id)
        assert again.id == stored.id and again.bytes == len(data)
        assert (await api.files.content(stored.id)).content == data
        big = b"x" * (3 * 1024 * 1024)  # over aiohttp's default 1 MiB body limit
        assert (await api.files.create(file=("big.jsonl", big), purpose="batch")).bytes == len(big)
        with pytest.raises(openai.NotFoundError) as caught:
            await api.files.content("file-nope")
        assert caught.value.body["message"] == "No such File object: file-nope"
        with pytest.raises(openai.BadRequestError) as caught:
            await api.files.create(file=("input.jsonl", data), purpose="nonsense")
        assert caught.value.param == "purpose"


async def test_batch_completes_with_output_usage_and_counts():
    records = [request_line(f"request-{i}", pairs=i % 3 + 1) for i in range(6)]
    records.append(request_line("unknown-model", model="gpt-4o-mini"))
    records[-1]["body"]["model"] = "gpt-4o-mini"
    records[-1]["body"]["n"] = 0  # fails on its own: lands in the error file, not the batch
    # Each stage lasts long enough (0.14-0.2 s) for the polling to see it, even on a busy machine.
    config = SimulatorConfig(batch_speed=2000, batch_validate_s=400, batch_seconds_per_request=40, batch_finalize_s=400,
                             imperfect_rate=0, prose_rate=0)
    async with running_simulator(config) as sim, client(sim) as api:
        created = await api.batches.with_raw_response.create(
            input_file_id=await upload(api, jsonl(records)), endpoint="/v1/chat/completions",
            completion_window="24h", metadata={"run": "test"},
        )
        batch = Batch.model_validate(created.http_response.json())
        assert batch.status == "validating" and batch.request_counts.total == 0
        assert batch.expires_at == batch.created_at + 86_400 and batch.metadata == {"run": "test"}
        batch, seen = await wait_until(api, batch.id)
        assert seen == ["validating", "in_progress", "finalizing", "completed"]
        assert batch.request_counts.model_dump() == {"total": 7, "completed": 6, "failed": 1}
        for stamp in (batch.in_progress_at, batch.finalizing_at, batch.completed_at):
            assert stamp is not None and stamp >= batch.created_at
        assert batch.failed_at is None and batch.cancelled_at is None and batch.errors is None
        output = await lines_of(api, batch.output_file_id)
        assert sorted(line["custom_id"] for line in output) == [f"request-{i}" for i in range(6)]
        for line in output:
            assert line["error"] is None and line["response"]["status_code"] == 200
            assert line["id"].startswith("batch_req_") and line["response"]["request_id"].startswith("req_")
            completion = ChatCompletion.model_validate(line["response"]["body"])
            number = int(line["custom_id"].split("-")[1])
            assert len(json.loads(completion.choices[0].message.content)["pairs"]) == number % 3 + 1
        bodies = [line["response"]["body"]["usage"] for line in output]
        assert batch.usage.input_tokens == sum(u["prompt_tokens"] for u in bodies)
        assert batch.usage.output_tokens == sum(u["completion_tokens"] for u in bodies)
        assert batch.usage.total_tokens == batch.usage.input_tokens + batch.usage.output_tokens
        errors = await lines_of(api, batch.error_file_id)
        assert [(e["custom_id"], e["response"]["status_code"]) for e in errors] == [("unknown-model", 400)]
        assert errors[0]["response"]["body"]["error"]["param"] == "n"
        output_file = await api.files.retrieve(batch.output_file_id)
        assert output_file.purpose == "batch_output"


async def test_batch_with_bad_lines_fails_validation():
    good = orjson.dumps(request_line("a"))
    data = b"\n".join([good, b"{this is not json", good, orjson.dumps({**request_line("b"), "url": "/v1/embeddings"})]) + b"\n"
    async with running_simulator(SimulatorConfig(batch_speed=1000, batch_validate_s=300)) as sim, client(sim) as api:
        batch = await api.batches.create(input_file_id=await upload(api, data), endpoint="/v1/chat/completions", completion_window="24h")
        batch, seen = await wait_until(api, batch.id)
        assert seen == ["validating", "failed"]
        assert batch.failed_at is not None and batch.output_file_id is None and batch.error_file_id is None
        assert batch.errors.object == "list"
        assert [(e.code, e.line) for e in batch.errors.data] == [
            ("invalid_json_line", 2), ("duplicate_custom_id", 3), ("invalid_url", 4)]
        assert all(e.message for e in batch.errors.data)


async def test_batch_expires_keeping_the_finished_part():
    records = [request_line(f"r{i}") for i in range(30)]
    # 30 requests of 1 simulated hour each do not fit the 24 h window; 24 h pass in about one second.
    config = SimulatorConfig(batch_speed=86_400, batch_validate_s=30, batch_seconds_per_request=3600)
    async with running_simulator(config) as sim, client(sim) as api:
        batch = await api.batches.create(input_file_id=await upload(api, jsonl(records)), endpoint="/v1/chat/completions", completion_window="24h")
        batch, seen = await wait_until(api, batch.id)
        assert seen[-1] == "expired" and "completed" not in seen and "in_progress" in seen
        assert batch.expired_at == batch.expires_at
        assert batch.request_counts.model_dump() == {"total": 30, "completed": 23, "failed": 7}
        output = await lines_of(api, batch.output_file_id)
        errors = await lines_of(api, batch.error_file_id)
        assert [line["custom_id"] for line in output] == [f"r{i}" for i in range(23)]
        assert [line["custom_id"] for line in errors] == [f"r{i}" for i in range(23, 30)]
        assert all(line["response"] is None and line["error"]["code"] == "batch_expired" for line in errors)


async def test_batch_cancel_paths():
    records = [request_line(f"c{i}") for i in range(200)]
    config = SimulatorConfig(batch_speed=100, batch_validate_s=1, batch_seconds_per_request=1, batch_cancel_s=40)
    async with running_simulator(config) as sim, client(sim) as api:
        input_id = await upload(api, jsonl(records))
        batch = await api.batches.create(input_file_id=input_id, endpoint="/v1/chat/completions", completion_window="24h")
        await asyncio.sleep(0.2)  # about 19 requests done
        raw = await api.batches.with_raw_response.cancel(batch.id)
        cancelling = Batch.model_validate(raw.http_response.json())
        assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
        assert cancelling.output_file_id is None
        batch, seen = await wait_until(api, batch.id)
        assert seen == ["cancelling", "cancelled"]
        done = batch.request_counts.completed
        assert 5 <= done <= 150 and batch.request_counts.failed == 200 - done
        output = await lines_of(api, batch.output_file_id)
        errors = await lines_of(api, batch.error_file_id)
        assert len(output) == done and len(errors) == 200 - done
        assert {line["custom_id"] for line in output} | {line["custom_id"] for line in errors} == {f"c{i}" for i in range(200)}
        assert all(line["error"]["code"] == "batch_cancelled" for line in errors)
        assert (await api.batches.cancel(batch.id)).status == "cancelled"  # cancelling again changes nothing
        finished = await api.batches.create(input_file_id=await upload(api, jsonl(records[:2])),
                                            endpoint="/v1/chat/completions", completion_window="24h")
        await wait_until(api, finished.id)
        with pytest.raises(openai.BadRequestError) as caught:
            await api.batches.cancel(finished.id)
        assert "Cannot cancel a batch with status 'completed'" in caught.value.body["message"]

        # Cancelled while still validating: nothing runs.
        slow = SimulatorConfig(batch_speed=1, batch_validate_s=3600)
        async with running_simulator(slow) as slow_sim, client(slow_sim) as slow_api:
            early = await slow_api.batches.create(input_file_id=await upload(slow_api, jsonl(records[:3])),
                                                  endpoint="/v1/chat/completions", completion_window="24h")
            assert (await slow_api.batches.cancel(early.id)).status == "cancelling"
            assert (await slow_api.batches.retrieve(early.id)).in_progress_at is None


async def test_batch_list_pages_newest_first_and_bad_creates():
    async with running_simulator(SimulatorConfig()) as sim, client(sim) as api:
        input_id = await upload(api, jsonl([request_line("x")]))
        created = [
            (await api.batches.create(input_file_id=input_id, endpoint="/v1/chat/completions", completion_window="24h")).id
            for _ in range(5)
        ]
        first_page = await api.batches.list(limit=2)
        assert [b.id for b in first_page.data] == created[::-1][:2] and first_page.has_more
        assert [b.id async for b in api.batches.list(limit=2)] == created[::-1]
        with pytest.raises(openai.BadRequestError) as caught:
            await api.batches.create(input_file_id=input_id, endpoint="/v1/chat/completions", completion_window="48h")
        assert caught.value.param == "completion_window"
        with pytest.raises(openai.BadRequestError) as caught:
            await api.batches.create(input_file_id=input_id, endpoint="/v1/images", completion_window="24h")
        assert caught.value.param == "endpoint"
        with pytest.raises(openai.NotFoundError):
            await api.batches.create(input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h")
        with pytest.raises(openai.NotFoundError):
            await api.batches.retrieve("batch_missing")
        stats = sim.stats_snapshot()
        assert stats["requests"]["POST /v1/batches"] == 8 and stats["requests"]["GET /v1/batches"] == 4

"""The Files and Batch API calls ``asyncgen batch`` makes, through the openai SDK, with its errors
turned into one line each: a refused key or an exhausted quota is an ``ApiError`` (a 4xx, which
changed nothing there, a ``Refused``; exit 1), an unreachable API a ``RunError``. Neither touches
the batch directory's state: what a failed call means for it is ``lifecycle.submit``'s to say."""

from __future__ import annotations

import contextlib
import unicodedata
from pathlib import Path

import openai

from asyncgen.errors import ApiError, RunError, redact

LIST_PAGE = 100
# A batch created by a killed submit is found by its metadata among the batches created since its
# intent was written, less this much for clocks that disagree.
CLOCK_SLACK_S = 600


METADATA_VALUE_MAX = 512  # characters of a batch's metadata value (the Batch API's limit; 16 keys at most)


def trusted_metadata(metadata) -> dict:
    """The values of a batch's metadata that may be taken as names (of a file, a task, a dataset) or
    ids, and shown: strings of at most ``METADATA_VALUE_MAX`` characters with no control or format
    character (a terminal escape from a server), no path separator and no "..". The rest is
    dropped: what comes back from a server is trusted no more than any outside file."""
    if not isinstance(metadata, dict):
        return {}
    return {key: value for key, value in metadata.items() if isinstance(key, str) and isinstance(value, str)
            and 0 < len(value) <= METADATA_VALUE_MAX and ".." not in value and "/" not in value and "\\" not in value
            and not any(unicodedata.category(c) in ("Cc", "Cf") for c in key + value)}


class Refused(ApiError):
    """The API refused a call (4xx): the call changed nothing there."""


class BatchApi:
    def __init__(self, client: openai.AsyncOpenAI, api_key: str | None, where: str, endpoint: dict, *,
                 trust_env: bool = True) -> None:
        self.client, self.api_key, self.where = client, api_key, where
        self.endpoint = endpoint  # {"mode", "base_url", "seed"}: recorded by the directory's first batch
        self.trust_env = trust_env  # False on loopback: no proxy (a pilot's real-time requests take the same way)

    @contextlib.contextmanager
    def _call(self, what: str):
        try:
            yield
        except openai.APIStatusError as exc:
            code = getattr(exc, "code", None)
            body = exc.body if isinstance(exc.body, dict) else {}
            message = body.get("message") or exc.message
            if exc.status_code in (401, 403):
                hint = "check OPENAI_API_KEY (or --base-url)"
            elif code == "insufficient_quota":
                hint = "add credit or raise the project's quota"
            else:
                hint = "see the message"
            kind = Refused if 400 <= exc.status_code < 500 else ApiError
            raise kind(redact(f"{what} at {self.where} refused ({exc.status_code}{' ' + code if code else ''}): "
                              f"{message}; {hint}, then run the same command again", self.api_key)) from exc
        except openai.APIConnectionError as exc:
            raise RunError(redact(f"{what}: cannot reach {self.where} ({exc.message}); run the same command again "
                                  "when it is reachable", self.api_key)) from exc

    async def upload(self, path: Path) -> str:
        with self._call(f"uploading {path.name}"):
            stored = await self.client.files.create(file=(path.name, path.read_bytes()), purpose="batch")
        return stored.id

    async def create(self, file_id: str, metadata: dict, endpoint: str = "/v1/chat/completions") -> dict:
        """A batch of the requests in ``file_id``; ``endpoint``: the one URL all its request lines name
        (``/v1/chat/completions`` or ``/v1/completions``: a batch holds one endpoint's requests)."""
        with self._call("creating a batch"):
            batch = await self.client.batches.create(input_file_id=file_id, endpoint=endpoint,
                                                     completion_window="24h", metadata=metadata)
        return batch.model_dump()

    async def completions_served(self, body: dict) -> tuple[dict | None, str | None]:
        """(the answer, None) to one real-time ``/v1/completions`` request ``body``; (None, the
        server's words) when it refuses the endpoint for the model with a 404 (as OpenAI does its chat
        models). A model the server does not know, or any other refusal, is an ``ApiError``."""
        try:
            return (await self.client.completions.create(**body)).model_dump(), None
        except openai.NotFoundError as exc:
            message = (exc.body.get("message") if isinstance(exc.body, dict) else None) or exc.message
            if "does not exist" not in message:
                return None, redact(message, self.api_key)
            raise Refused(redact(f"asking /v1/completions at {self.where} refused (404): {message}; check --model "
                                 "and --base-url", self.api_key)) from exc
        except openai.APIError:
            with self._call("asking /v1/completions once (is it served for the model?)"):
                raise

    async def retrieve(self, batch_id: str) -> dict:
        with self._call(f"looking up batch {batch_id}"):
            return (await self.client.batches.retrieve(batch_id)).model_dump()

    async def cancel(self, batch_id: str) -> dict:
        with self._call(f"cancelling batch {batch_id}"):
            return (await self.client.batches.cancel(batch_id)).model_dump()

    async def find(self, token: str, since: float) -> dict | None:
        """The batch whose metadata carries ``token``, among those created since ``since`` (newest first)."""
        return next((b for b in await self.listed(since) if b["metadata"].get("asyncgen_token") == token), None)

    async def listed(self, since: float) -> list[dict]:
        """The batches created since ``since``, newest first."""
        found = []
        with self._call("listing batches"):
            async for batch in self.client.batches.list(limit=LIST_PAGE):
                if batch.created_at < since - CLOCK_SLACK_S:
                    break
                found.append({**batch.model_dump(), "metadata": trusted_metadata(batch.metadata)})
        return found

    async def content(self, file_id: str) -> bytes:
        with self._call(f"downloading file {file_id}"):
            return (await self.client.files.content(file_id)).content

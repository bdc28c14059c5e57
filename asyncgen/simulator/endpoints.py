"""The model endpoints by path: how each reads a request and answers it. The HTTP handler (app.py)
and the batch runner (batches.py) both dispatch through ``ENDPOINTS``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from asyncgen.simulator import chat, completions


@dataclass(frozen=True)
class Endpoint:
    parse: Callable  # body -> a request with ``model`` and ``charge``; raises wire.ApiFailure
    respond: Callable  # (request, player, config, key, id, fingerprint) -> (answer, content faults fired)
    id_prefix: str


CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
ENDPOINTS: dict[str, Endpoint] = {
    CHAT: Endpoint(chat.parse_chat_request, chat.respond, "chatcmpl-"),
    COMPLETIONS: Endpoint(completions.parse_completion_request, completions.respond, completions.ID_PREFIX),
}

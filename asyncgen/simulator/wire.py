"""The API's error bodies and texts, as the protocol doc (shared/docs/openai-protocol.md) gives them.

Every error body has all four fields: ``{"error": {"message", "type", "param", "code"}}``. Texts
marked [U] in the doc are this simulator's own choice.
"""

from __future__ import annotations

import orjson

from asyncgen.simulator.ratelimit import format_duration

ORGANIZATION = "org-simulator"
RATE_LIMIT_DOCS = "Visit https://platform.openai.com/account/rate-limits to learn more."


class ApiFailure(Exception):
    """An error response: status, the four error fields, extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.param, self.code)

    def as_dict(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiFailure:
    return ApiFailure(400, message, "invalid_request_error", param, code)


def missing_parameter(name: str) -> ApiFailure:
    return bad_request(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")


def unparseable_body() -> ApiFailure:
    return bad_request(
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
        "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
    )


def invalid_url(method: str, path: str) -> ApiFailure:
    return ApiFailure(404, f"Invalid URL ({method} {path})", "invalid_request_error")


def missing_api_key() -> ApiFailure:
    return ApiFailure(
        401,
        "You didn't provide an API key. You need to provide your API key in an Authorization header using "
        "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        "invalid_request_error",
        None,
        "invalid_api_key",
    )


def wrong_api_key(key: str) -> ApiFailure:
    shown = key[:3] + "*" * 4 + key[-4:] if len(key) > 8 else "*" * len(key)
    return ApiFailure(
        401,
        f"Incorrect API key provided: {shown}. You can find your API key at https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        None,
        "invalid_api_key",
    )


def model_not_found(model: str) -> ApiFailure:
    return ApiFailure(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        None,
        "model_not_found",
    )


def chat_model_on_completions() -> ApiFailure:
    """OpenAI's answer to a chat model (gpt-4o, ...) on /v1/completions [O]."""
    return ApiFailure(
        404,
        "This is a chat model and not supported in the v1/completions endpoint. Did you mean to use v1/chat/completions?",
        "invalid_request_error",
        "model",
        None,
    )


def not_a_chat_model() -> ApiFailure:
    """OpenAI's answer to an instruct or base model (gpt-3.5-turbo-instruct, ...) on chat [O]."""
    return ApiFailure(
        404,
        "This is not a chat model and thus not supported in the v1/chat/completions endpoint. Did you mean to use v1/completions?",
        "invalid_request_error",
        "model",
        None,
    )


def no_such_object(kind: str, object_id: str, param: str = "id") -> ApiFailure:
    return ApiFailure(404, f"No such {kind} object: {object_id}", "invalid_request_error", param, None)


def rate_limited(model: str, kind: str, limit: int, used: int, requested: int, wait_s: float) -> str:
    """The text of a retryable 429: ``kind`` is "requests" (RPM) or "tokens" (TPM)."""
    unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
    return (
        f"Rate limit reached for {model} in organization {ORGANIZATION} on {unit}: Limit {limit}, Used {used}, "
        f"Requested {requested}. Please try again in {format_duration(wait_s)}. {RATE_LIMIT_DOCS}"
    )


def request_too_large(model: str, limit: int, requested: int) -> str:
    return (
        f"Request too large for {model} in organization {ORGANIZATION} on tokens per min (TPM): Limit {limit}, "
        f"Requested {requested}. The input or output tokens must be reduced in order to run successfully. "
        f"{RATE_LIMIT_DOCS}"
    )


INSUFFICIENT_QUOTA = (
    "You exceeded your current quota, please check your plan and billing details. For more information on "
    "this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors."
)


def server_error() -> ApiFailure:
    return ApiFailure(
        500,
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
    )


def overloaded() -> ApiFailure:
    return ApiFailure(503, "The engine is currently overloaded, please try again later", "server_error")

"""Legacy completions, ``POST /v1/completions``: validation, the TPM charge and the answer object.

Who is served: OpenAI's instruct and base models and open-weights names (settings.py); a chat
model gets OpenAI's 404 "This is a chat model and not supported in the v1/completions endpoint".
``logprobs`` is 0-5 on OpenAI's models and 0-20 on open-weights names (vLLM's default).

Fields: ``model``, ``prompt`` (a string, or an array of strings: one choice per prompt and ``n``),
``max_tokens`` (default 16, as on OpenAI), ``temperature`` (0-2), ``n`` (1-128), ``logprobs``;
``echo: true`` is refused (not simulated). The text is raw: no chat template. The answer is the
model under study's (scoring.py): a single-token question gets its answer token; any other prompt
a sentence, after a blank line (``"\\n\\n"``), as an instruct model continues a raw prompt.

Usage: ``prompt_tokens`` = sum over prompts of ``ceil(chars / 4)``; ``completion_tokens`` = the
tokens generated. TPM charge: ``prompt_tokens + choices * max_tokens``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from asyncgen.simulator import chat, scoring, wire
from asyncgen.simulator.composer import Player
from asyncgen.simulator.settings import MODELS, SimulatorConfig, completions_max_logprobs, serves_completions

DEFAULT_MAX_TOKENS = 16
NEW_PARAGRAPH = scoring.Step("\n\n", -0.03, (("\n\n", -0.03), ("\n", -4.0), (" ", -5.1)))
ID_PREFIX = "cmpl-"


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    resolved_model: str
    prompts: tuple[str, ...]
    n: int
    max_output: int
    logprobs: int | None
    prompt_tokens: int

    @property
    def charge(self) -> int:
        return self.prompt_tokens + len(self.prompts) * self.n * self.max_output


def parse_completion_request(body: object) -> CompletionRequest:
    """The fields a scoring client uses, checked as the API checks them; ApiFailure (400/404) otherwise."""
    model = chat.served_model(body, serves_completions, wire.chat_model_on_completions)
    resolved, context_window, _ = MODELS[model]
    prompts = _prompts(body.get("prompt"))
    n = chat.integer_field(body, "n", 1, 1, 128)
    chat.number_field(body, "temperature", 0.0, 2.0)
    max_output = chat.integer_field(body, "max_tokens", DEFAULT_MAX_TOKENS, 0, None)
    logprobs = chat.integer_field(body, "logprobs", None, 0, completions_max_logprobs(model))
    if body.get("echo"):
        raise wire.bad_request("'echo' is not supported by this simulator.", "echo", "unsupported_value")  # [U]
    prompt_tokens = sum(chat.estimate_tokens(prompt) for prompt in prompts)
    longest = max(chat.estimate_tokens(prompt) for prompt in prompts)
    if longest + max_output > context_window:
        raise wire.bad_request(
            f"This model's maximum context length is {context_window} tokens, however you requested "
            f"{longest + max_output} tokens ({longest} in your prompt; {max_output} for the completion). Please "
            "reduce your prompt; or completion length.",
            None,
            "context_length_exceeded",
        )
    return CompletionRequest(model, resolved, prompts, n, max_output, logprobs, prompt_tokens)


def _prompts(prompt: object) -> tuple[str, ...]:
    if prompt is None:
        raise wire.missing_parameter("prompt")
    if isinstance(prompt, str):
        return (prompt,)
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return tuple(prompt)
    raise wire.bad_request(
        f"Invalid type for 'prompt': expected a string or a non-empty array of strings, but got {chat.json_kind(prompt)} instead.",
        "prompt",
        "invalid_type",
    )


def _logprobs(prompt: str, steps: list[scoring.Step], top: int) -> dict:
    offsets, at = [], len(prompt)  # offsets count from the prompt's start, as OpenAI's do
    for step in steps:
        offsets.append(at)
        at += len(step.token)
    return {
        "tokens": [step.token for step in steps],
        "token_logprobs": [step.logprob for step in steps],
        "top_logprobs": [dict(step.top[:top]) for step in steps],
        "text_offset": offsets,
    }


def respond(request: CompletionRequest, player: Player, config: SimulatorConfig, key: str, completion_id: str,
            fingerprint: str) -> tuple[dict, list[str]]:
    """The whole text_completion for a request and the content faults that fired."""
    choices, fired, generated = [], [], 0
    for prompt_index, prompt in enumerate(request.prompts):
        whole = chat.question_steps(prompt, player, config)
        if len(whole) > 1:  # a sentence: an instruct model starts it on a new paragraph
            whole = [NEW_PARAGRAPH] + whole
        for j in range(request.n):
            index = prompt_index * request.n + j
            steps, finish_reason, fault = chat.answer_question(whole, request.max_output, config,
                                                               random.Random(f"{key}:choice{index}"))
            if fault:
                fired.append(fault)
            generated += len(steps)
            choices.append({
                "text": "".join(step.token for step in steps),
                "index": index,
                "logprobs": _logprobs(prompt, steps, request.logprobs) if request.logprobs is not None else None,
                "finish_reason": finish_reason,
            })
    answer = {
        "id": completion_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": request.resolved_model,
        "choices": choices,
        "usage": {"prompt_tokens": request.prompt_tokens, "completion_tokens": generated,
                  "total_tokens": request.prompt_tokens + generated},
        "system_fingerprint": fingerprint,
    }
    return answer, fired

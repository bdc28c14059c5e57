"""A deterministic "model under study" for the scoring tests, as ``FakeServer`` behaviours.

It prefers the harmful answer after a text holding a harmful word of the refusal lexicon and the
safe one otherwise, and refuses such a text in free answers; ``/v1/completions`` and chat with
``logprobs`` get OpenAI's shapes (§7 of the protocol doc).
"""

from __future__ import annotations

HARMFUL = ("bomb", "gun", "weapon", "virus", "poison", "rifle", "pistol", "scam", "drug", "knife", "trap",
           "threat", "grenade", "explosive", "bioweapon", "ransomware")
FILLER = [f"tok{i}" for i in range(30)]


def is_harmful(text: str) -> bool:
    words = {w.strip(".,?!").lower() for w in text.split()}
    return any(word in words for word in HARMFUL)


def top_k(text: str, k: int, spell=lambda answer: answer) -> dict[str, float]:
    harmful = is_harmful(text)
    top = {spell("No" if harmful else "Yes"): -0.2, spell("Yes" if harmful else "No"): -1.9}
    for i, token in enumerate(FILLER[: max(0, k - 2)]):
        top[token] = -3.0 - i * 0.1
    return top


def completions_answer(body: dict, top: dict[str, float]) -> dict:
    first = max(top, key=top.get)
    return {"object": "text_completion", "model": body["model"], "choices": [{"index": 0, "text": first,
            "finish_reason": "length", "logprobs": {"tokens": [first], "token_logprobs": [top[first]],
                                                     "top_logprobs": [top], "text_offset": [0]}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 1, "total_tokens": 31}}


def chat_answer(body: dict, content: str, top: dict[str, float] | None = None) -> dict:
    choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
    if top is not None:
        items = [{"token": t, "logprob": lp, "bytes": None} for t, lp in sorted(top.items(), key=lambda i: -i[1])]
        choice["logprobs"] = {"content": [{**items[0], "top_logprobs": items}]}
    return {"object": "chat.completion", "model": body["model"], "choices": [choice],
            "usage": {"prompt_tokens": 30, "completion_tokens": 8, "total_tokens": 38}}


async def model_under_study(body: dict, seen: int):
    if "prompt" in body:
        return 200, completions_answer(body, top_k(body["prompt"], int(body.get("logprobs") or 0)))
    text = body["messages"][-1]["content"]
    if body.get("logprobs"):
        top = top_k(text, int(body.get("top_logprobs") or 1), lambda answer: " " + answer)
        return 200, chat_answer(body, max(top, key=top.get), top)
    words = "I'm sorry, but I can't help with that." if is_harmful(text) else "Sure! Here is how to do it."
    return 200, chat_answer(body, words)


async def chat_only_model(body: dict, seen: int):
    """As OpenAI serves gpt-4o: /v1/completions refused with OpenAI's own 404."""
    if "prompt" in body:
        return 404, {"error": {"message": "This is a chat model and not supported in the v1/completions endpoint. "
                               "Did you mean to use v1/chat/completions?", "type": "invalid_request_error",
                               "param": "model", "code": None}}
    return await model_under_study(body, seen)

"""The OpenAI chat-completions wire format as the simulated server (simulated_server.py) reads
and writes it: request parsing with OpenAI's error shapes, message text, token log-probabilities.
Only what the server needs; the real clients' side is the `openai` package."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

# Word-ish pieces whose concatenation is the text again: every character starts some match.
_TOKEN = re.compile(r"\s?\w+|\s?[^\w\s]+|\s+")
_RESPONSE_FORMATS = ("text", "json_object", "json_schema")
# Log-probabilities of exactly 0 or 1 are not finite; real servers never report them either.
_P_FLOOR = 1e-12


class RequestError(Exception):
    """A request the server refuses with HTTP 400, OpenAI-style."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def message_text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    raise RequestError("message content must be a string or a list of content parts", "messages")


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[tuple[str, str]]  # (role, text)
    seed: int | None
    max_tokens: int | None
    logprobs: bool
    top_logprobs: int

    @property
    def last_user_text(self) -> str:
        users = [text for role, text in self.messages if role == "user"]
        return users[-1] if users else self.messages[-1][1]


def _optional(body: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    # bool is an int in Python; JSON true is not a number.
    if value is not None and (not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)):
        raise RequestError(f"'{name}' has the wrong type: {value!r}", name)
    return value


def parse_chat_request(raw: bytes) -> ChatRequest:
    """The fields the simulation uses, checked like a real server checks them."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise RequestError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    if body.get("stream"):
        raise RequestError("streaming is not supported by the simulated server", "stream")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise RequestError("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of messages", "messages")
    parsed: list[tuple[str, str]] = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError("each message must be an object with a 'role'", "messages")
        parsed.append((message["role"], message_text(message.get("content"))))
    n = _optional(body, "n", int)
    if n is not None and n != 1:
        raise RequestError(f"n={n} is not supported by the simulated server: only n=1", "n")
    temperature = _optional(body, "temperature", (int, float))
    if temperature is not None and not 0 <= temperature <= 2:
        raise RequestError(f"temperature must be in [0, 2], got {temperature}", "temperature")
    # max_completion_tokens is the newer name of max_tokens.
    max_tokens = _optional(body, "max_completion_tokens", int)
    if max_tokens is None:
        max_tokens = _optional(body, "max_tokens", int)
    if max_tokens is not None and max_tokens < 1:
        raise RequestError(f"max_tokens must be at least 1, got {max_tokens}", "max_tokens")
    logprobs = bool(_optional(body, "logprobs", bool))
    top_logprobs = _optional(body, "top_logprobs", int)
    if top_logprobs is not None:
        if not 0 <= top_logprobs <= 20:
            raise RequestError(f"top_logprobs must be in [0, 20], got {top_logprobs}", "top_logprobs")
        if not logprobs:
            raise RequestError("top_logprobs needs logprobs to be true", "top_logprobs")
    response_format = _optional(body, "response_format", dict)
    if response_format is not None and response_format.get("type") not in _RESPONSE_FORMATS:
        raise RequestError(
            f"response_format type must be one of {', '.join(_RESPONSE_FORMATS)}", "response_format"
        )
    return ChatRequest(
        model=model,
        messages=parsed,
        seed=_optional(body, "seed", int),
        max_tokens=max_tokens,
        logprobs=logprobs,
        top_logprobs=top_logprobs or 0,
    )


def _token(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": None}


def token_logprobs(
    text: str, top: int, choice: tuple[int, dict[str, float]] | None = None
) -> list[dict[str, Any]]:
    """`choices[0].logprobs.content` covering `text`: certain tokens (logprob 0), except the
    token at character offset choice[0], whose alternatives and probabilities are choice[1]."""
    entries: list[dict[str, Any]] = []
    offset = 0
    for piece in _TOKEN.findall(text):
        if choice is not None and offset == choice[0]:
            ranked = sorted(choice[1].items(), key=lambda kv: -kv[1])
            alternatives = [_token(t, math.log(max(p, _P_FLOOR))) for t, p in ranked]
            # Every alternative is listed, whatever top_logprobs: they are what a soft label needs.
            entries.append(
                {**_token(piece, math.log(max(choice[1][piece], _P_FLOOR))), "top_logprobs": alternatives}
            )
        else:
            entries.append({**_token(piece, 0.0), "top_logprobs": [_token(piece, 0.0)][:top]})
        offset += len(piece)
    return entries

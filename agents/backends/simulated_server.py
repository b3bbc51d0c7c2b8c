"""A simulated OpenAI-compatible chat-completions server, for tests against a real HTTP process.

The `openai` backend talks to real servers (vLLM, TGI, SGLang, OpenAI itself). To test it
through a real socket, with the official client's own retries and timeouts, this module
serves the project's SIMULATED models (agents/backends/simulated.py) behind the same API, on
loopback, started as a separate process by the tests (`karma simulated-server`). Nothing it
says comes from a language model, and everything says so: `system_fingerprint:
"karma-simulated"` in every completion, the header `X-Karma-Simulated: true` on every
response, and generated texts start with "[simulated <model>]".

- A request whose user message carries the fenced answers of the judge prompt
  (agents/judge_prompt.py) is a JUDGE request: the two answers' models are read from their
  "[simulated <model>]" prefix and a SimulatedJudge decides, seeded by the question and the
  pair of answers (order-free, like the pipeline's pair id), so both orders of one pair share
  their seed material. With `logprobs`, the winner's token carries log P(A) and log P(B).
- Any other request is GENERATION by SimulatedGenerator, seeded by the request's `seed`.
- Faults are set per server process at start (a test starts a server per scenario): slow
  replies, HTTP 500 and 429 for the first requests, 500 for requests containing a text,
  malformed verdicts, and an order-dependent judge. `GET /stats` counts what happened, so a
  test can prove that a client really retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from karma.agents.backends.simulated import SimulatedGenerator, SimulatedJudge
from karma.agents.backends.simulated_api import (
    ChatRequest,
    RequestError,
    error_body,
    parse_chat_request,
    token_logprobs,
)
from karma.agents.kinship import Profiles, load_profiles

FINGERPRINT = "karma-simulated"
SIMULATED_HEADER = "X-Karma-Simulated"
BANNER = "simulated OpenAI-compatible server on http://{host}:{port}/v1"
# The order-dependent judge (--first-always-wins) is this sure of the answer shown first.
FIRST_ALWAYS_WINS_P = 0.9

# The fences of judge_prompt.USER: `<<<ANSWER tag A>>>\n...\n<<<END tag A>>>`. The system
# message quotes the markers too, but on one line, which this pattern (newlines) skips.
_FENCE = re.compile(
    r"<<<ANSWER (?P<tag>\S+) (?P<side>[AB])>>>\n(?P<body>.*?)\n<<<END (?P=tag) (?P=side)>>>", re.DOTALL
)
_QUESTION = re.compile(r"\[Question\]\n(?P<question>.*?)\n\n<<<ANSWER ", re.DOTALL)
_SIMULATED_PREFIX = re.compile(r"^\s*\[simulated (?P<model>[^\]\n]+)\]")


@dataclass(frozen=True)
class ServerOptions:
    """What the server simulates and which faults it injects; fixed for the process's life."""

    latency_s: float = 0.0
    fail_first: int = 0
    rate_limit_first: int = 0  # counted after the --fail-first requests when both are set
    fail_when: tuple[str, ...] = ()
    fail_model_after: dict[str, int] = field(default_factory=dict)  # model -> requests served, then 500s
    malformed_first: int = 0  # counted over judge replies only
    malformed_always: bool = False
    first_always_wins: bool = False
    qualities: dict[str, float] = field(default_factory=dict)  # overrides of the profiles
    profiles: Path | None = None  # None: the bundled 16-model table
    seed: int = 0
    # The same defaults as the pipeline's simulated judge (streams/config.py JudgeSettings;
    # `temperature` here is its quality_scale).
    position_bias: float = 0.3
    length_bias: float = 0.5
    temperature: float = 0.1

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")
        if self.latency_s < 0:
            raise ValueError(f"--latency-s must be >= 0, got {self.latency_s}")
        for name in ("fail_first", "rate_limit_first", "malformed_first"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")


def parse_qualities(values: list[str]) -> dict[str, float]:
    """`MODEL=Q` strings -> {model: Q}; a ValueError names the first bad value."""
    qualities: dict[str, float] = {}
    for value in values:
        model, sep, number = value.rpartition("=")
        try:
            quality = float(number) if sep and model.strip() else math.nan
        except ValueError:
            quality = math.nan
        if not 0.0 <= quality <= 1.0:  # also rejects nan
            raise ValueError(f"--quality {value!r}: expected MODEL=Q with Q a number in [0, 1]")
        qualities[model.strip()] = quality
    return qualities


def parse_fail_after(values: list[str]) -> dict[str, int]:
    """`MODEL=N` strings -> {model: N}; a ValueError names the first bad value."""
    limits: dict[str, int] = {}
    for value in values:
        model, sep, number = value.rpartition("=")
        if not (sep and model.strip() and number.strip().isdigit()):
            raise ValueError(f"--fail-model-after {value!r}: expected MODEL=N with N a whole number >= 0")
        limits[model.strip()] = int(number)
    return limits


def prompt_key(text: str) -> str:
    """The prompt id of a generation request: a stable hash of its last user message."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pair_key(question: str, answer_a: str, answer_b: str) -> str:
    """Seed material of a judge request: the question and both answers as an unordered set,
    so the two orders of one pair share it (like the pipeline's order-free pair id)."""
    material = "\x1f".join((question, *sorted((answer_a, answer_b))))
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def answer_model(answer: str) -> str:
    """The model named by a simulated answer's prefix; "unknown" for any other text."""
    found = _SIMULATED_PREFIX.match(answer)
    return found.group("model").strip() if found else "unknown"


@dataclass(frozen=True)
class JudgeTask:
    question: str
    answer_a: str
    answer_b: str


def find_judge_task(text: str) -> JudgeTask | None:
    """The question and both fenced answers when `text` is the judge prompt's user message."""
    answers: dict[str, tuple[str, str]] = {}  # side -> (tag, body)
    for fence in _FENCE.finditer(text):
        answers.setdefault(fence.group("side"), (fence.group("tag"), fence.group("body")))
    if set(answers) != {"A", "B"} or answers["A"][0] != answers["B"][0]:
        return None
    question = _QUESTION.search(text)
    return JudgeTask(
        question=question.group("question") if question else text[: text.find("<<<ANSWER ")],
        answer_a=answers["A"][1],
        answer_b=answers["B"][1],
    )


def p_first_wins(judge: SimulatedJudge, first: str, second: str, first_len: int, second_len: int) -> float:
    """P(the answer shown first wins): SimulatedJudge.judge's own formula, which it does not expose
    (its `confidence` is max(p, 1 - p)); the tests check that the two agree."""
    logit = (judge.quality(first) - judge.quality(second)) / judge.temperature + judge.position_bias
    if first_len and second_len:
        logit += judge.length_bias * math.log(first_len / second_len)
    return 1.0 / (1.0 + math.exp(-logit))


@dataclass
class Stats:
    """Counts since the server started; `GET /stats` returns them."""

    requests: int = 0  # POST /v1/chat/completions, whatever the outcome
    outcomes: dict[str, int] = field(
        default_factory=lambda: {"ok": 0, "400": 0, "429": 0, "500": 0, "malformed": 0}
    )
    kinds: dict[str, int] = field(default_factory=lambda: {"judge": 0, "generation": 0})
    by_model: dict[str, int] = field(default_factory=dict)  # chat requests per model name

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "outcomes": dict(self.outcomes),
            "kinds": dict(self.kinds),
            "by_model": dict(self.by_model),
        }


class SimulatedServer:
    """The aiohttp application and its per-process state (fault counters, stats)."""

    def __init__(self, options: ServerOptions, profiles: Profiles | None = None) -> None:
        self.options = options
        self.profiles = profiles if profiles is not None else load_profiles(options.profiles)
        self.stats = Stats()
        self.judge_replies = 0
        self.app = web.Application()
        self.app.router.add_get("/health", self.health)
        self.app.router.add_get("/stats", self.get_stats)
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.on_response_prepare.append(self._mark_simulated)

    def quality(self, model: str) -> float:
        """Latent quality: the override, else the profile's superiority (pool mean if unprofiled)."""
        if model in self.options.qualities:
            return self.options.qualities[model]
        return self.profiles.superiority(model)

    @staticmethod
    async def _mark_simulated(_request: web.Request, response: web.StreamResponse) -> None:
        # Every response, errors and 404s included, says that it is simulated.
        response.headers[SIMULATED_HEADER] = "true"

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "simulated": True})

    async def get_stats(self, _request: web.Request) -> web.Response:
        return web.json_response(self.stats.as_json())

    async def models(self, _request: web.Request) -> web.Response:
        names = list(dict.fromkeys([*self.profiles.vectors, *self.options.qualities]))
        data = [{"id": name, "object": "model", "created": 0, "owned_by": FINGERPRINT} for name in names]
        return web.json_response({"object": "list", "data": data})

    def _error(self, status: int, message: str, kind: str, **extra: Any) -> web.Response:
        self.stats.outcomes[str(status)] += 1
        headers = {"Retry-After": "0"} if status == 429 else None
        return web.json_response(error_body(message, kind, **extra), status=status, headers=headers)

    async def chat(self, request: web.Request) -> web.Response:
        self.stats.requests += 1
        index = self.stats.requests  # taken on arrival, so concurrent requests count in order
        options = self.options
        if options.latency_s:
            await asyncio.sleep(options.latency_s)
        if index <= options.fail_first:
            return self._error(500, f"simulated server error {index} of {options.fail_first}", "server_error")
        if index <= options.fail_first + options.rate_limit_first:
            return self._error(
                429, "simulated rate limit: retry after 0 s", "rate_limit_error", code="rate_limit_exceeded"
            )
        try:
            chat = parse_chat_request(await request.read())
        except RequestError as exc:
            return self._error(400, exc.message, "invalid_request_error", param=exc.param)
        self.stats.by_model[chat.model] = served = self.stats.by_model.get(chat.model, 0) + 1
        limit = options.fail_model_after.get(chat.model)
        if limit is not None and served > limit:
            return self._error(
                500, f"simulated server error: {chat.model} failed after {limit} request(s)", "server_error"
            )
        every_text = "\n".join(text for _role, text in chat.messages)
        for poison in options.fail_when:
            if poison in every_text:
                return self._error(
                    500, f"simulated server error: the request contains {poison!r}", "server_error"
                )
        task = find_judge_task(chat.last_user_text)
        if task is not None:
            self.stats.kinds["judge"] += 1
            return self._judge(chat, task)
        self.stats.kinds["generation"] += 1
        return self._generate(chat)

    def _generate(self, chat: ChatRequest) -> web.Response:
        prompt = chat.last_user_text
        seed = chat.seed if chat.seed is not None else self.options.seed
        generator = SimulatedGenerator(chat.model, self.quality(chat.model), seed=seed)
        text = generator.generate(prompt_key(prompt), prompt)
        finish = "stop"
        prefix, _, body = text.partition("] ")
        words = body.split()
        if chat.max_tokens is not None and len(words) > chat.max_tokens:
            # Cut like a real server at max_tokens, but keep the "[simulated <model>]" mark.
            text, finish = f"{prefix}] {' '.join(words[: chat.max_tokens])}", "length"
        logprobs = token_logprobs(text, chat.top_logprobs) if chat.logprobs else None
        self.stats.outcomes["ok"] += 1
        return self._completion(chat, text, finish, logprobs)

    def _judge(self, chat: ChatRequest, task: JudgeTask) -> web.Response:
        options = self.options
        first, second = answer_model(task.answer_a), answer_model(task.answer_b)
        if options.first_always_wins:
            p_first = FIRST_ALWAYS_WINS_P
            winner = "A"
            rationale = "simulated verdict: the answer shown first always wins (--first-always-wins)"
        else:
            # Both models in the table, so an unknown one gets the profiles' pool mean.
            judge = SimulatedJudge(
                qualities={first: self.quality(first), second: self.quality(second)},
                position_bias=options.position_bias,
                temperature=options.temperature,
                seed=options.seed,
                length_bias=options.length_bias,
            )
            lengths = len(task.answer_a.split()), len(task.answer_b.split())
            verdict = judge.judge(
                pair_key(task.question, task.answer_a, task.answer_b), first, second, *lengths
            )
            p_first = p_first_wins(judge, first, second, *lengths)
            winner = verdict.winner.value
            rationale = f"simulated verdict: A ({first}) vs B ({second}), P(A wins) = {p_first:.3f}"
        confidence = max(p_first, 1.0 - p_first)
        # The winner's value comes first, so its token sits at a known offset (for logprobs).
        content = json.dumps({"winner": winner, "confidence": confidence, "rationale": rationale})
        winner_at = len('{"winner": "')
        self.judge_replies += 1
        if options.malformed_always or self.judge_replies <= options.malformed_first:
            # Prose and a cut-off object: what a small model does when it ignores the format.
            content = f'I think {winner} is better! {{"winner": "{winner}", "confid'
            logprobs = token_logprobs(content, chat.top_logprobs) if chat.logprobs else None
            self.stats.outcomes["malformed"] += 1
            return self._completion(chat, content, "stop", logprobs)
        logprobs = None
        if chat.logprobs:
            logprobs = token_logprobs(
                content, chat.top_logprobs, (winner_at, {"A": p_first, "B": 1 - p_first})
            )
        self.stats.outcomes["ok"] += 1
        return self._completion(chat, content, "stop", logprobs)

    def _completion(
        self, chat: ChatRequest, content: str, finish: str, logprobs: list[dict[str, Any]] | None
    ) -> web.Response:
        prompt_tokens = sum(len(text.split()) for _role, text in chat.messages)
        completion_tokens = len(content.split())
        return web.json_response(
            {
                "id": f"chatcmpl-simulated-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": chat.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "finish_reason": finish,
                        "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None},
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
                "system_fingerprint": FINGERPRINT,
            }
        )


def serve(host: str, port: int, options: ServerOptions) -> None:
    """Serves until SIGTERM or SIGINT; prints the BANNER line once listening.
    Raises ProfileError (bad --profiles) before listening, OSError when the port is taken."""
    asyncio.run(_serve(host, port, options))


async def _serve(host: str, port: int, options: ServerOptions) -> None:
    server = SimulatedServer(options)
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        bound_port = runner.addresses[0][1] if runner.addresses else port
        print(BANNER.format(host=host, port=bound_port), flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()

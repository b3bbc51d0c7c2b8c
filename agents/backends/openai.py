"""The `openai` backend: any OpenAI-compatible chat-completions server (`vllm serve`, TGI, ...).

The official `openai` client does the transport: connection pooling, timeouts, and retries
with exponential backoff (honouring Retry-After) of timeouts, 429 and 5xx. This module adds
what a pipeline needs on top: a bound on requests in flight per model (a server has a queue,
not infinite capacity), one `BackendError` with a readable reason per request that failed for
good, and for the judge a strict JSON verdict, retried when malformed, with a soft label from
log-probabilities when the server returns them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import openai
from openai import AsyncOpenAI

from karma.agents.backends.base import (
    BackendError,
    Generation,
    GenerationRequest,
    JudgeReply,
    JudgeRequest,
    SwitchUnsupported,
)
from karma.agents.judge_prompt import (
    TOP_LOGPROBS,
    VERDICT_SCHEMA,
    VerdictError,
    judge_messages,
    parse_verdict,
    soft_label,
)

if TYPE_CHECKING:  # annotations only: config reads the backends' names, not the reverse
    from karma.streams.config import BackendSpec, JudgeSettings, KarmaSettings, ModelSpec

SIMULATED_FINGERPRINT = "karma-simulated"  # what agents/backends/simulated_server.py answers with


def client_for(spec: BackendSpec) -> AsyncOpenAI:
    return AsyncOpenAI(
        base_url=spec.base_url,
        api_key=spec.api_key,
        max_retries=spec.max_retries,
        timeout=spec.timeout_s,
    )


def describe(exc: openai.APIError, spec: BackendSpec) -> str:
    """One line for the dead-letter topic: what failed, where, after how many tries."""
    tries = f"{spec.max_retries + 1} attempt(s)"
    if isinstance(exc, openai.APITimeoutError):
        return f"no answer from {spec.base_url} within {spec.timeout_s:g} s ({tries})"
    if isinstance(exc, openai.APIConnectionError):
        return f"cannot reach {spec.base_url}: {exc} ({tries})"
    if isinstance(exc, openai.APIStatusError):
        return f"{spec.base_url} answered HTTP {exc.status_code}: {_message(exc)} ({tries})"
    return f"{spec.base_url}: {exc}"


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:300]
    return str(exc.message)[:300]


def _logprob_tokens(choice: Any) -> list[tuple[str, list[tuple[str, float]]]]:
    content = getattr(getattr(choice, "logprobs", None), "content", None) or []
    return [(t.token, [(a.token, a.logprob) for a in (t.top_logprobs or [])]) for t in content]


async def server_loads(name: str) -> None:
    """The warm-up of an OpenAI-compatible model: nothing to load here, the server loads it. A
    server that is down, or still loading (503), at the worker's start is no start error: its
    requests are retried and then dead-lettered per prompt, as at any other time, and a worker
    that refused to start would only stop the prompts the server will answer once it is up."""
    return None


class OpenAIGenerator:
    backend = "openai"
    version = 1  # what the server serves is the server's: see `switch`

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.model = spec.name
        self._client = client_for(spec)
        self._in_flight = asyncio.Semaphore(spec.max_concurrency)

    async def load(self) -> None:
        await server_loads(self.model)

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation | BackendError]:
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, request: GenerationRequest) -> Generation | BackendError:
        async with self._in_flight:
            started = time.perf_counter()
            try:
                completion = await self._client.chat.completions.create(
                    model=self.spec.served_model,
                    messages=[{"role": "user", "content": request.prompt_text}],
                    temperature=self.spec.temperature,
                    max_tokens=self.spec.max_tokens,
                    seed=request.seed,
                )
            except openai.APIError as exc:
                return BackendError(f"{self.model}: {describe(exc, self.spec)}")
        latency_ms = (time.perf_counter() - started) * 1000
        if not completion.choices:
            return BackendError(f"{self.model}: {self.spec.base_url} returned no choices")
        text = completion.choices[0].message.content or ""
        tokens = completion.usage.completion_tokens if completion.usage else len(text.split())
        simulated = completion.system_fingerprint == SIMULATED_FINGERPRINT
        return Generation(text, tokens, latency_ms, simulated)

    async def switch(self, name: str, path: str, version: int) -> None:
        raise SwitchUnsupported(
            f"model {name} is served by {self.spec.base_url}, which this worker cannot load "
            f"checkpoints into: serve {path} there (vLLM's server loads a LoRA adapter at run time "
            "with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and POST /v1/load_lora_adapter; a full "
            "checkpoint needs the server restarted on it) and point served_model at it; until "
            f"then its answers stay version {self.version}"
        )

    async def close(self) -> None:
        await self._client.close()


class OpenAIJudge:
    backend = "openai"

    def __init__(self, spec: JudgeSettings) -> None:
        self.spec = spec
        self.name = spec.name
        self._client = client_for(spec)
        self._in_flight = asyncio.Semaphore(spec.max_concurrency)

    async def load(self) -> None:
        await server_loads(self.name)

    def request_options(self, request: JudgeRequest, attempt: int) -> dict[str, Any]:
        """The chat-completions arguments of one judge pass (pure, so it is tested directly)."""
        r = request
        options: dict[str, Any] = {
            "model": self.spec.served_model,
            "messages": judge_messages(r.question, r.first_text, r.second_text, r.tag),
            "temperature": self.spec.temperature,
            "max_tokens": self.spec.max_tokens,
            "seed": r.seed + attempt,  # a retry is not the same sample
        }
        if self.spec.structured_output:
            options["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "verdict", "schema": VERDICT_SCHEMA},
            }
        if self.spec.logprobs:
            options |= {"logprobs": True, "top_logprobs": TOP_LOGPROBS}
        return options

    async def judge(self, requests: Sequence[JudgeRequest]) -> list[JudgeReply | BackendError]:
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, request: JudgeRequest) -> JudgeReply | BackendError:
        problem: VerdictError | None = None
        for attempt in range(self.spec.verdict_attempts):
            async with self._in_flight:
                try:
                    completion = await self._client.chat.completions.create(
                        **self.request_options(request, attempt)
                    )
                except openai.APIError as exc:
                    return BackendError(f"judge {self.name}: {describe(exc, self.spec)}")
            if not completion.choices:
                problem = VerdictError("the reply has no choices")
                continue
            choice = completion.choices[0]
            raw = choice.message.content or ""
            try:
                verdict = parse_verdict(raw)
            except VerdictError as exc:
                problem = exc
                continue
            simulated = completion.system_fingerprint == SIMULATED_FINGERPRINT
            return JudgeReply(verdict, raw, soft_label(_logprob_tokens(choice)), simulated)
        return BackendError(
            f"judge {self.name}: no valid verdict in {self.spec.verdict_attempts} attempt(s); "
            f"last: {problem}",
            kind="verdict",
        )

    async def close(self) -> None:
        await self._client.close()


def generator(spec: ModelSpec, settings: KarmaSettings) -> OpenAIGenerator:
    """The registry's entry point (agents/backends/__init__.py)."""
    return OpenAIGenerator(spec)


def judge(settings: KarmaSettings) -> OpenAIJudge:
    """The registry's entry point (agents/backends/__init__.py)."""
    return OpenAIJudge(settings.judge)

"""The openai backend's pure parts: request options, error reasons."""

from __future__ import annotations

import asyncio

from karma.agents.backends import BackendError, GenerationRequest, JudgeRequest
from karma.agents.backends.openai import OpenAIGenerator, OpenAIJudge
from karma.streams.config import JudgeSettings, ModelSpec

JUDGE = JudgeSettings(backend="openai", base_url="http://127.0.0.1:1/v1", name="judge-x", model="qwen")


def _request() -> JudgeRequest:
    return JudgeRequest("pair-1", "Why?", "first answer", "second answer", "m1", "m2", seed=7)


def test_judge_requests_ask_for_the_schema_and_logprobs_and_reseed_retries() -> None:
    judge = OpenAIJudge(JUDGE)
    first, retry = judge.request_options(_request(), 0), judge.request_options(_request(), 1)
    assert first["model"] == "qwen" and first["temperature"] == 0.0
    assert first["response_format"]["json_schema"]["schema"]["required"] == ["winner", "confidence"]
    assert first["logprobs"] is True and first["top_logprobs"] == 5
    assert (first["seed"], retry["seed"]) == (7, 8)
    assert _request().tag in first["messages"][1]["content"]
    plain = OpenAIJudge(JUDGE.model_copy(update={"structured_output": False, "logprobs": False}))
    assert not {"response_format", "logprobs"} & set(plain.request_options(_request(), 0))


def test_an_unreachable_server_is_a_backend_error_that_says_where() -> None:
    # A closed loopback port: a real connection refusal, through the real client.
    spec = ModelSpec(name="m", backend="openai", base_url="http://127.0.0.1:9/v1", max_retries=0, timeout_s=3)
    generator = OpenAIGenerator(spec)
    [result] = asyncio.run(generator.generate([GenerationRequest("p-1", "Why?")]))
    assert isinstance(result, BackendError) and result.kind == "backend"
    assert result.reason.startswith("m: cannot reach http://127.0.0.1:9/v1")
    assert result.reason.endswith("(1 attempt(s))")

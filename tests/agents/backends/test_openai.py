"""The openai backend's pure parts: request options, soft labels, error reasons."""

from __future__ import annotations

import asyncio
import math

import pytest

from karma.agents.backends import BackendError, GenerationRequest, JudgeRequest
from karma.agents.backends.openai import OpenAIGenerator, OpenAIJudge, soft_label
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


def test_soft_label_reads_the_winner_tokens_alternatives() -> None:
    tokens = [
        ('{"', []),
        ("winner", []),
        ('": "', []),
        ("A", [("A", math.log(0.6)), ("B", math.log(0.2)), ("tie", math.log(0.2))]),
        ('", "rationale": "B is short"}', []),
    ]
    assert soft_label(tokens) == pytest.approx(0.75)  # 0.6 / (0.6 + 0.2)
    # An "A" before the winner key is not the verdict; no alternatives means no soft label.
    assert soft_label([("A", [("A", 0.0), ("B", -1.0)]), ('"winner": ', []), ("B", [])]) is None
    assert soft_label([]) is None


def test_an_unreachable_server_is_a_backend_error_that_says_where() -> None:
    # A closed loopback port: a real connection refusal, through the real client.
    spec = ModelSpec(name="m", backend="openai", base_url="http://127.0.0.1:9/v1", max_retries=0, timeout_s=3)
    generator = OpenAIGenerator(spec)
    [result] = asyncio.run(generator.generate([GenerationRequest("p-1", "Why?")]))
    assert isinstance(result, BackendError) and result.kind == "backend"
    assert result.reason.startswith("m: cannot reach http://127.0.0.1:9/v1")
    assert result.reason.endswith("(1 attempt(s))")

"""The vllm backend without vLLM: its translation to and from vLLM's objects, the judge's retries
and the batch's concurrency through a fake engine, the shared engine through fake vllm modules,
and the clear error when vLLM is not installed. Nothing here runs a real engine (see
deploy/gpu/vllm_smoke.py for that)."""

from __future__ import annotations

import asyncio
import importlib.machinery
import math
import sys
import types
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from karma.agents.backends import (
    BackendError,
    Generation,
    GenerationRequest,
    JudgeReply,
    JudgeRequest,
    ModelLoadError,
)
from karma.agents.backends import vllm as vllm_backend
from karma.agents.backends.base import SharedModels
from karma.agents.backends.vllm import (
    JSON_SCHEMA,
    VLLMGenerator,
    VLLMJudge,
    describe_engine_error,
    generation_from_output,
    judge_reply_from_output,
    logprob_tokens,
    make_sampling_params,
    sampling_kwargs,
)
from karma.agents.judge_prompt import VERDICT_SCHEMA, VerdictError
from karma.streams.config import JudgeSettings, ModelSpec

HINT = "pip install 'karma-stream[vllm]'"
VALID = '{"winner": "A", "confidence": 0.8, "rationale": "clearer"}'


# Shaped like vllm.logprobs.Logprob, vllm.outputs.CompletionOutput and vllm.outputs.RequestOutput.
@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = "stop"
    logprobs: list[dict[int, Logprob]] | None = None
    index: int = 0


@dataclass
class RequestOutput:
    request_id: str = "r-1"
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = True


def reply(text: str, finish_reason: str = "stop", logprobs: list[dict[int, Logprob]] | None = None) -> Any:
    ids = list(range(len(text.split())))
    return RequestOutput(outputs=[CompletionOutput(text, ids, finish_reason, logprobs)])


class FakeTokenizer:
    def __init__(self, chat_template: str | None = "{{ messages }}") -> None:
        self.chat_template = chat_template
        self.encoded: list[tuple[str, bool]] = []

    def apply_chat_template(self, messages: Any, tokenize: bool, add_generation_prompt: bool) -> str:
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.encoded.append((text, add_special_tokens))
        return [len(text), 7]


class FakeEngine:
    """Answers each generate() call with the next scripted output (or raises it)."""

    def __init__(self, script: list[Any], tokenizer: Any = None, async_tokenizer: bool = False) -> None:
        self.script = list(script)
        self.calls: list[tuple[Any, Any, str]] = []
        self.tokenizer = tokenizer or FakeTokenizer()
        self.async_tokenizer = async_tokenizer

    def get_tokenizer(self) -> Any:
        if not self.async_tokenizer:
            return self.tokenizer

        async def later() -> Any:  # vLLM <= 0.10: a coroutine
            return self.tokenizer

        return later()

    async def generate(self, prompt: Any, params: Any, request_id: str) -> AsyncIterator[Any]:
        self.calls.append((prompt, params, request_id))
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        yield item


def judge_request(pair_id: str = "pair-1", seed: int = 10) -> JudgeRequest:
    return JudgeRequest(pair_id, "Why is the sky blue?", "Rayleigh scattering.", "Because.", "m1", "m2", seed)


def judge_spec(**overrides: Any) -> JudgeSettings:
    return JudgeSettings(
        **{"backend": "vllm", "name": "j", "model": "Qwen/Qwen2.5-0.5B-Instruct", **overrides}
    )


def identity(kwargs: dict[str, Any]) -> dict[str, Any]:
    return kwargs


# --- translation ---------------------------------------------------------------------------------


def test_sampling_kwargs_of_a_generator() -> None:
    spec = ModelSpec(name="m", backend="vllm", temperature=0.6, max_tokens=99)
    assert sampling_kwargs(spec, 42, judge=False) == {
        "n": 1,
        "seed": 42,
        "temperature": 0.6,
        "max_tokens": 99,
    }


def test_sampling_kwargs_of_the_judge_carry_schema_and_logprobs() -> None:
    kwargs = sampling_kwargs(judge_spec(), 3, judge=True)
    assert kwargs[JSON_SCHEMA] == VERDICT_SCHEMA
    assert kwargs["logprobs"] == 5
    assert kwargs["temperature"] == 0.0 and kwargs["max_tokens"] == 256 and kwargs["seed"] == 3
    plain = sampling_kwargs(judge_spec(structured_output=False, logprobs=False), 3, judge=True)
    assert JSON_SCHEMA not in plain and "logprobs" not in plain


def fake_sampling_module(structured: bool, guided: bool, kinds: bool = True) -> types.SimpleNamespace:
    module = types.SimpleNamespace(SamplingParams=lambda **kw: kw)
    if structured:
        module.StructuredOutputsParams = lambda json: ("structured", json)
    if guided:
        module.GuidedDecodingParams = lambda json: ("guided", json)
    if kinds:
        module.RequestOutputKind = types.SimpleNamespace(FINAL_ONLY="final-only")
    return module


def test_make_sampling_params_uses_structured_outputs_on_current_vllm() -> None:
    kwargs = sampling_kwargs(judge_spec(), 1, judge=True)
    params = make_sampling_params(kwargs, fake_sampling_module(structured=True, guided=True))
    assert params["structured_outputs"] == ("structured", VERDICT_SCHEMA)
    assert "guided_decoding" not in params and JSON_SCHEMA not in params
    assert params["output_kind"] == "final-only" and params["logprobs"] == 5 and params["n"] == 1
    assert JSON_SCHEMA in kwargs  # the caller's dict is left alone


def test_make_sampling_params_falls_back_to_guided_decoding() -> None:
    kwargs = sampling_kwargs(judge_spec(), 1, judge=True)
    params = make_sampling_params(kwargs, fake_sampling_module(structured=False, guided=True, kinds=False))
    assert params["guided_decoding"] == ("guided", VERDICT_SCHEMA)
    assert "structured_outputs" not in params and "output_kind" not in params


def test_make_sampling_params_without_any_structured_output_class() -> None:
    module = fake_sampling_module(structured=False, guided=False)
    with pytest.raises(BackendError, match="structured_output: false"):
        make_sampling_params(sampling_kwargs(judge_spec(), 1, judge=True), module)
    generator_kwargs = sampling_kwargs(ModelSpec(name="m", backend="vllm"), 1, judge=False)
    assert "structured_outputs" not in make_sampling_params(generator_kwargs, module)


def test_generation_from_output() -> None:
    output = RequestOutput(outputs=[CompletionOutput("Hello there", [5, 6, 7], "length")])
    assert generation_from_output(output, 12.5) == Generation("Hello there", 3, 12.5, simulated=False)


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        (RequestOutput(outputs=[]), "no completion"),
        (RequestOutput(outputs=[CompletionOutput("half", [1], "abort")]), "aborted"),
        (None, "no output"),
    ],
)
def test_generation_from_a_failed_output_is_an_error(output: Any, reason: str) -> None:
    result = generation_from_output(output, 1.0)
    assert isinstance(result, BackendError) and reason in result.reason and result.kind == "backend"


def winner_logprobs() -> tuple[list[int], list[dict[int, Logprob]]]:
    """Tokens of '{"winner": "A"...' with top alternatives: A at -0.2, B at -1.8."""
    pieces = ['{"', "winner", '":', ' "', "A"]
    ids = [100, 101, 102, 103, 104]
    positions = [{i: Logprob(-0.01, 1, piece)} for i, piece in zip(ids, pieces, strict=True)]
    positions[-1] = {
        205: Logprob(-1.8, 2, "B"),
        104: Logprob(-0.2, 1, "A"),
        206: Logprob(-4.0, 3, "tie"),
    }
    return ids, positions


def test_logprob_tokens_reads_the_sampled_token_and_ranks_alternatives() -> None:
    ids, positions = winner_logprobs()
    tokens = logprob_tokens(CompletionOutput(VALID, ids, "stop", positions))
    assert [t for t, _ in tokens] == ['{"', "winner", '":', ' "', "A"]
    assert tokens[-1][1] == [("A", -0.2), ("B", -1.8), ("tie", -4.0)]
    # the sampled token need not be the most probable one
    sampled_b = logprob_tokens(CompletionOutput("", [205], "stop", [positions[-1]]))
    assert sampled_b[0][0] == "B"
    assert logprob_tokens(CompletionOutput("", [1], "stop", [{1: Logprob(-0.5)}])) == [("", [("", -0.5)])]


def test_judge_reply_from_output_with_a_soft_label() -> None:
    ids, positions = winner_logprobs()
    result = judge_reply_from_output(RequestOutput(outputs=[CompletionOutput(VALID, ids, "stop", positions)]))
    assert isinstance(result, JudgeReply)
    assert result.verdict.winner == "A" and result.raw == VALID and not result.simulated
    expected = math.exp(-0.2) / (math.exp(-0.2) + math.exp(-1.8))
    assert result.p_first == pytest.approx(expected)
    no_logprobs = judge_reply_from_output(reply(VALID))
    assert isinstance(no_logprobs, JudgeReply) and no_logprobs.p_first is None


@pytest.mark.parametrize(
    "output", [reply("I think A is better."), reply(VALID, finish_reason="abort"), RequestOutput(outputs=[])]
)
def test_judge_reply_from_an_unusable_output_is_a_verdict_error(output: Any) -> None:
    assert isinstance(judge_reply_from_output(output), VerdictError)


def test_describe_engine_error_names_the_cause() -> None:
    class EngineGenerateError(Exception):
        pass

    try:
        try:
            raise RuntimeError("CUDA out of memory")
        except RuntimeError as inner:
            raise EngineGenerateError() from inner
    except EngineGenerateError as exc:
        assert (
            describe_engine_error(exc) == "EngineGenerateError (caused by RuntimeError: CUDA out of memory)"
        )


# --- the judge's retries through a fake engine ------------------------------------------------------


def test_judge_retries_a_malformed_verdict_with_the_next_seed() -> None:
    engine = FakeEngine([reply("not json"), reply(VALID)])
    judge = VLLMJudge(judge_spec(verdict_attempts=3), engine=engine, params_factory=identity)
    [result] = asyncio.run(judge.judge([judge_request(seed=10)]))
    assert isinstance(result, JudgeReply) and result.verdict.winner == "A"
    assert [params["seed"] for _, params, _ in engine.calls] == [10, 11]
    assert all(params[JSON_SCHEMA] == VERDICT_SCHEMA for _, params, _ in engine.calls)
    request_ids = [rid for _, _, rid in engine.calls]
    assert len(set(request_ids)) == 2 and all("pair-1" in rid for rid in request_ids)


def test_judge_gives_up_after_verdict_attempts() -> None:
    engine = FakeEngine([reply("nope"), reply('{"winner": "C"}'), reply("still nope"), reply(VALID)])
    judge = VLLMJudge(judge_spec(verdict_attempts=3), engine=engine, params_factory=identity)
    [result] = asyncio.run(judge.judge([judge_request()]))
    assert isinstance(result, BackendError) and result.kind == "verdict"
    assert "3 attempt(s)" in result.reason and "still nope" in result.reason
    assert len(engine.calls) == 3


def test_an_engine_exception_is_a_backend_error_without_retry() -> None:
    class EngineGenerateError(Exception):
        pass

    failure = EngineGenerateError()
    failure.__cause__ = RuntimeError("CUDA out of memory")
    engine = FakeEngine([failure, reply(VALID)])
    judge = VLLMJudge(judge_spec(), engine=engine, params_factory=identity)
    [result] = asyncio.run(judge.judge([judge_request()]))
    assert isinstance(result, BackendError) and result.kind == "backend"
    assert "CUDA out of memory" in result.reason and "judge j" in result.reason
    assert len(engine.calls) == 1


def test_judge_prompt_uses_the_chat_template_as_token_ids() -> None:
    engine = FakeEngine([reply(VALID)], async_tokenizer=True)
    judge = VLLMJudge(judge_spec(), engine=engine, params_factory=identity)
    asyncio.run(judge.judge([judge_request()]))
    prompt, _, _ = engine.calls[0]
    assert set(prompt) == {"prompt_token_ids"}
    text, add_special_tokens = engine.tokenizer.encoded[0]
    assert text.startswith("<system>You are an impartial judge") and text.endswith("<assistant>")
    assert add_special_tokens is False  # the template wrote BOS already


# --- the generator ---------------------------------------------------------------------------------


def test_generator_submits_the_whole_batch_at_once() -> None:
    class BarrierEngine(FakeEngine):
        """Answers only once every request of the batch is in, as vLLM's batching needs."""

        def __init__(self, size: int) -> None:
            super().__init__([], tokenizer=FakeTokenizer(chat_template=None))
            self.size = size
            self.all_in = asyncio.Event()

        async def generate(self, prompt: Any, params: Any, request_id: str) -> AsyncIterator[Any]:
            self.calls.append((prompt, params, request_id))
            if len(self.calls) == self.size:
                self.all_in.set()
            await self.all_in.wait()
            words = prompt["prompt"].split()
            yield RequestOutput(request_id, [CompletionOutput(f"re: {words[0]}", [1, 2], "stop")])

    async def run() -> list[Any]:
        engine = BarrierEngine(3)
        spec = ModelSpec(name="m", backend="vllm", temperature=0.5, max_tokens=64)
        generator = VLLMGenerator(spec, engine=engine, params_factory=identity)
        requests = [GenerationRequest(f"p-{i}", f"q{i} text", seed=i) for i in range(3)]
        results = await asyncio.wait_for(generator.generate(requests), timeout=5)
        assert [c[1]["seed"] for c in engine.calls] == [0, 1, 2]
        assert engine.calls[0][0] == {"prompt": "q0 text\n\n"}  # no chat template: plain text
        return results

    results = asyncio.run(run())
    assert [r.text for r in results] == ["re: q0", "re: q1", "re: q2"]
    assert all(isinstance(r, Generation) and r.num_tokens == 2 and not r.simulated for r in results)


def test_one_failed_request_does_not_sink_its_batch() -> None:
    engine = FakeEngine([reply("fine answer"), reply("cut", finish_reason="abort"), ValueError("bad prompt")])
    generator = VLLMGenerator(ModelSpec(name="m", backend="vllm"), engine=engine, params_factory=identity)
    requests = [GenerationRequest(f"p-{i}", "Hello?") for i in range(3)]
    ok, aborted, failed = asyncio.run(generator.generate(requests))
    assert isinstance(ok, Generation) and ok.text == "fine answer"
    assert (
        isinstance(aborted, BackendError) and aborted.reason.startswith("m: ") and "aborted" in aborted.reason
    )
    assert isinstance(failed, BackendError) and "ValueError: bad prompt" in failed.reason


def test_an_engine_that_cannot_start_fails_each_request(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(model: str, engine_args: dict[str, Any]) -> Any:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(vllm_backend, "require_vllm", lambda: None)
    monkeypatch.setattr(vllm_backend, "acquire_engine", broken)
    generator = VLLMGenerator(ModelSpec(name="m", backend="vllm", model="org/ckpt"))
    results = asyncio.run(
        generator.generate([GenerationRequest("p-1", "Hi"), GenerationRequest("p-2", "Yo")])
    )
    assert len(results) == 2
    for result in results:
        assert isinstance(result, BackendError) and result.kind == "backend"
        assert (
            "cannot start the vLLM engine for org/ckpt" in result.reason
            and "CUDA out of memory" in result.reason
        )


# --- the context rule and loading -------------------------------------------------------------------


class WordTokenizer(FakeTokenizer):
    """A token per word, so a prompt's length is chosen by its words."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(range(len(text.split())))


class SizedEngine(FakeEngine):
    """A FakeEngine that says its context, as AsyncLLM's model_config does."""

    def __init__(self, script: list[Any], max_model_len: int) -> None:
        super().__init__(script, tokenizer=WordTokenizer(chat_template=None))
        self.model_config = types.SimpleNamespace(max_model_len=max_model_len)


def test_a_prompt_over_max_model_len_less_max_tokens_is_refused_and_the_rest_run() -> None:
    engine = SizedEngine([reply("fine"), reply("also fine")], max_model_len=10)
    spec = ModelSpec(name="m", backend="vllm", model="org/ckpt", max_tokens=4)
    generator = VLLMGenerator(spec, engine=engine, params_factory=identity)
    requests = [
        GenerationRequest("short", "what now"),
        GenerationRequest("long", " ".join(["word"] * 7)),
        GenerationRequest("fits", " ".join(["word"] * 6)),
    ]
    short, long, fits = asyncio.run(generator.generate(requests))
    assert isinstance(short, Generation) and isinstance(fits, Generation)
    assert isinstance(long, BackendError) and long.kind == "too_long"
    assert long.reason == (
        "org/ckpt: prompt long is 7 tokens, over the 6 the model takes (context 10 tokens less max_tokens 4)"
    )
    assert len(engine.calls) == 2  # the long prompt never reached the engine


def test_a_judge_pass_over_max_model_len_is_refused_without_a_call() -> None:
    engine = SizedEngine([], max_model_len=8)
    judge = VLLMJudge(judge_spec(max_tokens=4), engine=engine, params_factory=identity)
    [refused] = asyncio.run(judge.judge([judge_request("pair-long")]))
    assert isinstance(refused, BackendError) and refused.kind == "too_long"
    assert "pair pair-long is" in refused.reason and engine.calls == []


def test_load_starts_the_engine_or_says_in_one_line_why_not(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(model: str, engine_args: dict[str, Any]) -> Any:
        raise RuntimeError("CUDA out of memory.\nTried to allocate 20.00 GiB")

    monkeypatch.setattr(vllm_backend, "require_vllm", lambda: None)
    monkeypatch.setattr(vllm_backend, "acquire_engine", broken)
    generator = VLLMGenerator(ModelSpec(name="m", backend="vllm", model="org/ckpt"))
    with pytest.raises(ModelLoadError) as failed:
        asyncio.run(generator.load())
    assert str(failed.value) == (
        "cannot load model m from org/ckpt: RuntimeError: CUDA out of memory. Tried to allocate 20.00 GiB"
    )
    engine = FakeEngine([reply("ok")])
    monkeypatch.setattr(vllm_backend, "acquire_engine", lambda model, args: engine)
    judge = VLLMJudge(judge_spec(), params_factory=identity)
    asyncio.run(judge.load())
    assert judge._model is engine  # loaded once, before any pair


# --- the shared engine, with fake vllm modules ------------------------------------------------------


def test_generator_and_judge_of_one_checkpoint_share_one_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Any] = []

    class Engine(FakeEngine):
        shut = 0

        def shutdown(self) -> None:
            Engine.shut += 1

    class AsyncEngineArgs:
        def __init__(self, model: str, **kwargs: Any) -> None:
            self.model, self.kwargs = model, kwargs

    class AsyncLLM:
        @classmethod
        def from_engine_args(cls, args: AsyncEngineArgs) -> Engine:
            built.append(args)
            return Engine([reply("an answer"), reply(VALID)])

    def module(name: str, **attrs: Any) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
        mod.__dict__.update(attrs)
        return mod

    monkeypatch.setitem(sys.modules, "vllm", module("vllm"))
    monkeypatch.setitem(sys.modules, "vllm.v1.engine.async_llm", module("async_llm", AsyncLLM=AsyncLLM))
    monkeypatch.setitem(
        sys.modules, "vllm.engine.arg_utils", module("arg_utils", AsyncEngineArgs=AsyncEngineArgs)
    )

    args = {"gpu_memory_utilization": 0.5, "max_model_len": 4096}
    generator = VLLMGenerator(
        ModelSpec(name="m", backend="vllm", model="org/ckpt", engine_args=args), params_factory=identity
    )
    judge = VLLMJudge(judge_spec(model="org/ckpt", engine_args=dict(args)), params_factory=identity)

    async def run() -> tuple[Any, Any]:
        [generated] = await generator.generate([GenerationRequest("p-1", "Hi")])
        [verdict] = await judge.judge([judge_request()])
        await generator.close()
        assert Engine.shut == 0  # the judge still uses it
        await judge.close()
        return generated, verdict

    generated, verdict = asyncio.run(run())
    assert isinstance(generated, Generation) and isinstance(verdict, JudgeReply)
    assert len(built) == 1 and built[0].model == "org/ckpt" and built[0].kwargs == args
    assert Engine.shut == 1 and not vllm_backend._ENGINES


# --- a new checkpoint, reloaded in place ----------------------------------------------------------


class ReloadingEngine(FakeEngine):
    """Answers "<weights>: <prompt>" after `delay_s`; records vLLM's reload RPCs in `log` (with
    each request's start and end), and fails the reload of a path in `broken`."""

    def __init__(self, weights: str, delay_s: float = 0.0, broken: frozenset[str] = frozenset()) -> None:
        super().__init__([], tokenizer=FakeTokenizer(chat_template=None))
        self.weights, self.delay_s, self.broken = weights, delay_s, broken
        self.log: list[Any] = []
        self._pointed_at = weights

    async def generate(self, prompt: Any, params: Any, request_id: str) -> AsyncIterator[Any]:
        self.log.append(("start", self.weights))
        await asyncio.sleep(self.delay_s)
        self.log.append(("end", self.weights))
        yield reply(f"{self.weights}: {prompt['prompt'].split()[0]}")

    async def collective_rpc(
        self, method: str, timeout: float | None = None, args: tuple[Any, ...] = ()
    ) -> list[Any]:
        self.log.append((method, *args))
        if method == "update_config":
            self._pointed_at = args[0]["model_config"]["model"]
        elif method == "reload_weights":
            if self._pointed_at in self.broken:
                self.weights = "half-loaded"
                raise RuntimeError(f"no safetensors in {self._pointed_at}")
            self.weights = self._pointed_at
        return [None]

    async def reset_prefix_cache(self) -> bool:
        self.log.append(("reset_prefix_cache",))
        return True


class Engines:
    """The process's shared engines (base.SharedModels) over ReloadingEngines, in place of vLLM."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, **engine_options: Any) -> None:
        self.built: list[ReloadingEngine] = []
        self.shut: list[ReloadingEngine] = []
        self.options = engine_options
        shared = SharedModels(self._build, self.shut.append)
        self.shared = shared
        monkeypatch.setattr(vllm_backend, "acquire_engine", shared.acquire)
        monkeypatch.setattr(vllm_backend, "release_engine", shared.release)
        monkeypatch.setattr(vllm_backend, "claim_engine", shared.claim)
        monkeypatch.setattr(vllm_backend, "require_vllm", lambda: None)  # the fakes stand in for it

    def _build(self, model: str, engine_args: dict[str, Any]) -> ReloadingEngine:
        engine = ReloadingEngine(model, **self.options)
        self.built.append(engine)
        return engine


def _generator() -> VLLMGenerator:
    return VLLMGenerator(ModelSpec(name="m", backend="vllm", model="org/ckpt"), params_factory=identity)


RELOAD_V2 = [
    ("update_config", {"model_config": {"model": "/ckpts/m/v2"}}),
    ("reload_weights",),
    ("reset_prefix_cache",),
]


def test_a_new_checkpoint_is_reloaded_into_the_running_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    engines = Engines(monkeypatch)
    generator = _generator()

    async def run() -> tuple[list[Any], list[Any]]:
        before = await generator.generate([GenerationRequest("p-1", "one")])
        await generator.switch("m", "/ckpts/m/v2", 2)
        after = await generator.generate([GenerationRequest("p-2", "two")])
        return before, after

    before, after = asyncio.run(run())
    assert [(r.text, r.model_version) for r in before] == [("org/ckpt: one", 1)]
    assert [(r.text, r.model_version) for r in after] == [("/ckpts/m/v2: two", 2)]
    [engine] = engines.built  # one engine: the weights changed inside it
    assert [e for e in engine.log if e[0] not in ("start", "end")] == RELOAD_V2
    assert not engines.shut and generator.served_model == "/ckpts/m/v2"
    # The registry files the engine under its new checkpoint: the old one would be a fresh engine.
    assert engines.shared.acquire("/ckpts/m/v2", {}) is engine
    assert engines.shared.acquire("org/ckpt", {}) is not engine


def test_the_batch_in_flight_finishes_on_the_old_weights_before_the_reload(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engines = Engines(monkeypatch, delay_s=0.2)
    generator = _generator()

    async def run() -> tuple[list[Any], list[Any]]:
        await generator.load()
        in_flight = asyncio.create_task(generator.generate([GenerationRequest("p-1", "one")]))
        await asyncio.sleep(0.05)  # the batch has started on version 1
        await generator.switch("m", "/ckpts/m/v2", 2)
        next_batch = await generator.generate([GenerationRequest("p-2", "two")])
        return await in_flight, next_batch

    first, second = asyncio.run(run())
    assert [(r.text, r.model_version) for r in first] == [("org/ckpt: one", 1)]
    assert [(r.text, r.model_version) for r in second] == [("/ckpts/m/v2: two", 2)]
    [engine] = engines.built
    assert engine.log == [
        ("start", "org/ckpt"),
        ("end", "org/ckpt"),
        *RELOAD_V2,
        *[("start", "/ckpts/m/v2"), ("end", "/ckpts/m/v2")],
    ]


def test_a_reload_that_fails_puts_the_old_weights_back(monkeypatch: pytest.MonkeyPatch) -> None:
    engines = Engines(monkeypatch, broken=frozenset({"/ckpts/m/v2"}))
    generator = _generator()

    async def run() -> list[Any]:
        await generator.load()
        with pytest.raises(ModelLoadError, match=r"cannot load model m from /ckpts/m/v2: .*no safetensors"):
            await generator.switch("m", "/ckpts/m/v2", 2)
        return await generator.generate([GenerationRequest("p-1", "one")])

    results = asyncio.run(run())
    assert [(r.text, r.model_version) for r in results] == [("org/ckpt: one", 1)]
    [engine] = engines.built
    assert [e[:2] for e in engine.log if e[0] == "update_config"] == [
        ("update_config", {"model_config": {"model": "/ckpts/m/v2"}}),
        ("update_config", {"model_config": {"model": "org/ckpt"}}),
    ]
    assert engines.shared.acquire("org/ckpt", {}) is engine  # filed under its weights again


def test_when_the_old_weights_do_not_reload_either_the_next_batch_starts_a_fresh_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engines = Engines(monkeypatch, broken=frozenset({"/ckpts/m/v2", "org/ckpt"}))
    generator = _generator()

    async def run() -> list[Any]:
        await generator.load()
        with pytest.raises(ModelLoadError):
            await generator.switch("m", "/ckpts/m/v2", 2)
        return await generator.generate([GenerationRequest("p-1", "one")])

    results = asyncio.run(run())
    assert [(r.text, r.model_version) for r in results] == [("org/ckpt: one", 1)]
    broken, fresh = engines.built
    assert engines.shut == [broken] and fresh.weights == "org/ckpt"


def test_an_engine_shared_with_the_judge_is_not_reloaded_under_it(monkeypatch: pytest.MonkeyPatch) -> None:
    engines = Engines(monkeypatch)
    generator = _generator()
    judge = VLLMJudge(judge_spec(model="org/ckpt"), params_factory=identity)

    async def run() -> list[Any]:
        await generator.load()
        await judge.load()
        await generator.switch("m", "/ckpts/m/v2", 2)
        return await generator.generate([GenerationRequest("p-1", "one")])

    results = asyncio.run(run())
    assert [(r.text, r.model_version) for r in results] == [("/ckpts/m/v2: one", 2)]
    shared, own = engines.built  # the new version got an engine of its own beside the judge's
    assert shared.weights == "org/ckpt" and not [e for e in shared.log if e[0] != "start"]
    assert own.weights == "/ckpts/m/v2" and not engines.shut  # the judge still holds the first


# --- without vLLM ---------------------------------------------------------------------------------


def test_without_vllm_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm now fails, installed or not
    with pytest.raises(BackendError, match=r"pip install 'karma-stream\[vllm\]'"):
        VLLMGenerator(ModelSpec(name="m", backend="vllm"))
    with pytest.raises(BackendError, match=r"pip install 'karma-stream\[vllm\]'"):
        VLLMJudge(judge_spec())
    # the lazy imports say the same
    with pytest.raises(BackendError, match=r"pip install 'karma-stream\[vllm\]'"):
        vllm_backend.acquire_engine("org/ckpt", {})
    with pytest.raises(BackendError, match=r"pip install 'karma-stream\[vllm\]'"):
        make_sampling_params({"n": 1})
    assert not vllm_backend._ENGINES

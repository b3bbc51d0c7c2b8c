"""The `vllm` backend: vLLM's V1 `AsyncLLM` engine inside the worker process.

One engine per process per model (and engine arguments), built on first use and shared by
every generator and judge that names the same checkpoint; it is released when the last of them
closes. All requests of a batch are submitted at once (`asyncio.gather` over
`engine.generate(...)`), so vLLM's continuous batching schedules them together. Prompts are
formatted with the engine's own chat template (agents/backends/chat_format.py).

The judge asks for the verdict constrained to `VERDICT_SCHEMA` (`structured_outputs=
StructuredOutputsParams(json=...)` on current vLLM, `guided_decoding=GuidedDecodingParams(json=...)`
on older releases), with the top-5 log-probabilities of every token when `logprobs` is on,
from which `soft_label` reads P(answer A wins). A malformed verdict is retried with seed+attempt,
then it is a `BackendError(kind="verdict")`; an engine exception is a `BackendError(kind="backend")`.

The engine is started by `load` at the worker's start (streams/worker.py), before it consumes;
one that cannot start is a ModelLoadError that stops the worker. A new checkpoint of the model
(`karma train`, karma.checkpoints) goes into the running engine through vLLM's own weight-reload
path (`reload_in_place`): no second engine, no second copy of the weights in GPU memory. The
batches in flight finish on the old weights first, and no batch starts while they change (sdk.py
`switch`). An engine shared with another client of this process (a judge on the same
checkpoint) is not reloaded under it: the new version gets an engine of its own beside it. The
context rule is the
transformers backend's (base.py `too_long`): a prompt or judge pass whose tokens and `max_tokens`
do not fit the engine's `max_model_len` is a `BackendError(kind="too_long")`, dead-lettered by
the stage, and never reaches the engine.

vLLM (and torch) are imported only where an engine or SamplingParams is built: this module
imports without them, and the translation below (`sampling_kwargs`, `make_sampling_params` with
a stand-in module, `generation_from_output`, `judge_reply_from_output`) and the judge's retry
loop (with an injected fake engine) and the in-place reload (`reload_in_place` against a fake engine
that records its RPCs) are unit-tested without vLLM. What was NOT run in this
project: anything against a real vLLM engine (no GPU and no vLLM install here), in particular
building AsyncLLM in a worker thread (so weight loading does not stall Kafka heartbeats);
deploy/gpu/vllm_smoke.py is the script that does, on a GPU machine, and it reloads a second
checkpoint in place.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from karma.agents.backends.base import (
    BackendError,
    Generation,
    GenerationRequest,
    JudgeReply,
    JudgeRequest,
    SharedModels,
    too_long,
)
from karma.agents.backends.chat_format import Message, render_chat
from karma.agents.backends.sdk import Sdk, SharedModelClient, named
from karma.agents.judge_prompt import (
    TOP_LOGPROBS,
    VERDICT_SCHEMA,
    LogprobTokens,
    VerdictError,
    judge_messages,
    parse_verdict,
    soft_label,
)

if TYPE_CHECKING:  # annotations only: config reads the backends' names, not the reverse
    from karma.streams.config import BackendSpec, JudgeSettings, KarmaSettings, ModelSpec

SDK = Sdk("vllm", ("vllm",), extra="vllm", needs="vLLM (and a GPU)")
JSON_SCHEMA = "json_schema"  # the neutral key of `sampling_kwargs`; see make_sampling_params

ParamsFactory = Callable[[dict[str, Any]], Any]


# --- the translation: pure, no vLLM -------------------------------------------------------------


def sampling_kwargs(spec: BackendSpec, seed: int, judge: bool) -> dict[str, Any]:
    """The SamplingParams keyword arguments of one request.

    The verdict's schema sits under the neutral key `json_schema`: which vLLM class carries it
    depends on the installed release, so `make_sampling_params` maps it."""
    kwargs: dict[str, Any] = {
        "n": 1,
        "seed": seed,
        "temperature": spec.temperature,
        "max_tokens": spec.max_tokens,
    }
    if judge:
        if getattr(spec, "structured_output", False):
            kwargs[JSON_SCHEMA] = VERDICT_SCHEMA
        if getattr(spec, "logprobs", False):
            kwargs["logprobs"] = TOP_LOGPROBS
    return kwargs


def make_sampling_params(kwargs: dict[str, Any], module: Any = None) -> Any:
    """`vllm.SamplingParams` from `sampling_kwargs`, for whichever vLLM is installed.

    `module` is `vllm.sampling_params` (imported here when not given; tests pass a stand-in)."""
    if module is None:
        module = SDK.load("vllm.sampling_params")
    options = dict(kwargs)
    schema = options.pop(JSON_SCHEMA, None)
    if schema is not None:
        if hasattr(module, "StructuredOutputsParams"):  # vLLM >= 0.11; the only way from 0.12 on
            options["structured_outputs"] = module.StructuredOutputsParams(json=schema)
        elif hasattr(module, "GuidedDecodingParams"):  # older releases
            options["guided_decoding"] = module.GuidedDecodingParams(json=schema)
        else:
            raise BackendError(
                "this vLLM has neither StructuredOutputsParams nor GuidedDecodingParams; "
                "set judge.structured_output: false or upgrade vLLM"
            )
    kind = getattr(module, "RequestOutputKind", None)
    if kind is not None and hasattr(kind, "FINAL_ONLY"):
        options["output_kind"] = kind.FINAL_ONLY  # the whole reply once, not every step of it
    return module.SamplingParams(**options)


def describe_engine_error(exc: BaseException) -> str:
    """One readable line: vLLM wraps the real failure (EngineGenerateError() has no message)."""
    text = named(exc)
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc:
        text += f" (caused by {named(cause)})"
    return text[:500]


def _finished_completion(output: Any) -> tuple[Any, None] | tuple[None, str]:
    """The first completion of a RequestOutput, or why there is none to use."""
    if output is None:
        return None, "the engine returned no output"
    completions = getattr(output, "outputs", None) or []
    if not completions:
        return None, f"request {getattr(output, 'request_id', '?')}: the engine returned no completion"
    completion = completions[0]
    if getattr(completion, "finish_reason", None) == "abort":
        return None, f"request {getattr(output, 'request_id', '?')} was aborted by the engine"
    return completion, None


def generation_from_output(output: Any, latency_ms: float) -> Generation | BackendError:
    """A Generation from a vLLM RequestOutput (`.outputs[0].text/.token_ids/.finish_reason`).

    A reply cut at max_tokens (finish_reason "length") is still a response; an aborted or empty
    one is an error."""
    completion, problem = _finished_completion(output)
    if problem is not None:
        return BackendError(problem)
    text = completion.text or ""
    token_ids = getattr(completion, "token_ids", None)
    num_tokens = len(token_ids) if token_ids is not None else len(text.split())
    return Generation(text, num_tokens, latency_ms, simulated=False)


def logprob_tokens(completion: Any) -> LogprobTokens:
    """vLLM's per-token logprobs in `soft_label`'s form: (token, [(alternative, logprob), ...]).

    vLLM gives one dict per generated token, token id -> Logprob(logprob, rank, decoded_token),
    holding the sampled token and the top-k; alternatives are listed most probable first."""
    positions = getattr(completion, "logprobs", None) or []
    token_ids = list(getattr(completion, "token_ids", None) or [])
    tokens: LogprobTokens = []
    for i, position in enumerate(positions):
        if not position:
            tokens.append(("", []))
            continue
        ranked = sorted(position.items(), key=lambda item: -item[1].logprob)
        chosen = position.get(token_ids[i]) if i < len(token_ids) else None
        if chosen is None:  # no token ids: the most probable entry is the best guess of the text
            chosen = ranked[0][1]
        alternatives = [(lp.decoded_token or "", lp.logprob) for _, lp in ranked]
        tokens.append((chosen.decoded_token or "", alternatives))
    return tokens


def judge_reply_from_output(output: Any) -> JudgeReply | VerdictError:
    """The verdict in a vLLM RequestOutput, with a soft label when logprobs came back;
    a VerdictError (to retry) when there is no usable reply or it does not parse."""
    completion, problem = _finished_completion(output)
    if problem is not None:
        return VerdictError(problem)
    raw = completion.text or ""
    try:
        verdict = parse_verdict(raw)
    except VerdictError as exc:
        return exc
    return JudgeReply(verdict, raw, soft_label(logprob_tokens(completion)), simulated=False)


# --- vLLM itself: imported lazily ---------------------------------------------------------------


# A module attribute, looked up when a client is built (so a test can stand in for it).
require_vllm = SDK.require


def _build_engine(model: str, engine_args: dict[str, Any]) -> Any:
    """Blocking (loading weights takes minutes): callers run it in a thread so the event loop
    keeps heartbeating to Kafka meanwhile. AsyncLLM starts its output handler on the first
    request when it is built outside the loop, which vLLM supports."""
    async_llm = SDK.load("vllm.v1.engine.async_llm")
    arg_utils = SDK.load("vllm.engine.arg_utils")
    return async_llm.AsyncLLM.from_engine_args(arg_utils.AsyncEngineArgs(model=model, **engine_args))


# The process's engines, one per checkpoint and arguments; the last user shuts one down (its
# GPU memory and processes).
_ENGINES = SharedModels(_build_engine, lambda engine: engine.shutdown())
acquire_engine = _ENGINES.acquire
release_engine = _ENGINES.release
claim_engine = _ENGINES.claim


async def reload_in_place(engine: Any, path: str) -> None:
    """Loads the checkpoint at `path` into a running AsyncLLM, vLLM's own way: every worker's
    `update_config` points the model config at `path` and `reload_weights` reads the weights
    from it into the model's parameters in place; then the prefix cache is dropped, since its
    KV blocks were computed by the old weights. The tokenizer and the architecture stay: `path`
    must be a version of the same model (what `karma train` writes)."""
    await engine.collective_rpc("update_config", args=({"model_config": {"model": path}},))
    await engine.collective_rpc("reload_weights")
    await engine.reset_prefix_cache()


async def _tokenizer(engine: Any) -> Any:
    # get_tokenizer() is a coroutine in older releases and a plain method in current ones.
    tokenizer = engine.get_tokenizer()
    return await tokenizer if inspect.isawaitable(tokenizer) else tokenizer


def _prompt(tokenizer: Any, messages: Sequence[Message]) -> dict[str, Any]:
    rendered = render_chat(tokenizer, messages)
    if rendered.templated:
        # Token ids, so vLLM does not add a second BOS in front of the template's own.
        return {"prompt_token_ids": list(tokenizer.encode(rendered.text, add_special_tokens=False))}
    return {"prompt": rendered.text}


def prompt_tokens(tokenizer: Any, prompt: dict[str, Any]) -> int:
    """A prompt's tokens as the engine will count them: its ids, or its text encoded with the
    special tokens vLLM adds to a plain prompt."""
    ids = prompt.get("prompt_token_ids")
    return len(ids) if ids is not None else len(tokenizer.encode(prompt["prompt"]))


async def _final_output(engine: Any, prompt: dict[str, Any], params: Any, request_id: str) -> Any:
    final = None
    async for output in engine.generate(prompt, params, request_id):
        final = output  # FINAL_ONLY yields once; older releases stream cumulative outputs
    return final


def _request_id(key: str) -> str:
    return f"karma-{key}-{uuid.uuid4().hex[:12]}"  # unique even when a request is retried


class _VLLMClient(SharedModelClient):
    """The engine handling shared by the generator and the judge: the engine comes from
    `acquire_engine`, and what requests use is the engine with its tokenizer."""

    backend = "vllm"

    def __init__(
        self, spec: BackendSpec, served_model: str, engine: Any, params_factory: ParamsFactory | None
    ) -> None:
        if engine is None:
            require_vllm()
        super().__init__(spec, served_model, engine)
        self._params: ParamsFactory = params_factory or make_sampling_params

    def _acquire(self, served_model: str, engine_args: dict[str, Any]) -> Any:
        return acquire_engine(served_model, engine_args)

    async def _release(self, engine: Any) -> None:
        await asyncio.to_thread(release_engine, engine)  # shutting an engine down blocks

    def _cannot_load(self, exc: Exception) -> str:
        return f"cannot start the vLLM engine for {self.served_model}: {describe_engine_error(exc)}"

    def _claim(self, engine: Any, path: str, engine_args: dict[str, Any]) -> bool:
        return claim_engine(engine, path, engine_args)

    async def _reload(self, engine: Any, path: str) -> None:
        try:
            await reload_in_place(engine, path)
        except Exception as exc:
            raise BackendError(describe_engine_error(exc)) from exc

    async def _prepared(self, engine: Any) -> tuple[Any, Any]:
        return engine, await _tokenizer(engine)

    def _refused(self, engine: Any, tokenizer: Any, prompt: dict[str, Any], what: str) -> BackendError | None:
        """A prompt whose tokens and `max_tokens` of reply do not fit the engine's `max_model_len`
        (base.py `too_long`): dead-lettered (`too_long`) instead of run."""
        context = getattr(getattr(engine, "model_config", None), "max_model_len", None)
        if not isinstance(context, int):  # an engine that does not say: vLLM's own check stands
            return None
        why = too_long(what, prompt_tokens(tokenizer, prompt), context, self.spec.max_tokens)
        return None if why is None else BackendError(f"{self.served_model}: {why}", kind="too_long")


class VLLMGenerator(_VLLMClient):
    """A pool model served by an in-process vLLM engine."""

    def __init__(
        self, spec: ModelSpec, engine: Any = None, params_factory: ParamsFactory | None = None
    ) -> None:
        super().__init__(spec, spec.served_model, engine, params_factory)
        self.model = spec.name

    async def load(self) -> None:
        await self._load(self.model)

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation | BackendError]:
        async with self._using(self.model) as (started, version):
            if isinstance(started, BackendError):
                return [started] * len(requests)
            engine, tokenizer = started
            results = await asyncio.gather(*(self._one(engine, tokenizer, r) for r in requests))
        return [r if isinstance(r, BackendError) else replace(r, model_version=version) for r in results]

    async def _one(
        self, engine: Any, tokenizer: Any, request: GenerationRequest
    ) -> Generation | BackendError:
        started = time.perf_counter()
        try:
            prompt = _prompt(tokenizer, [{"role": "user", "content": request.prompt_text}])
            refused = self._refused(engine, tokenizer, prompt, f"prompt {request.prompt_id}")
            if refused is not None:
                return refused
            params = self._params(sampling_kwargs(self.spec, request.seed, judge=False))
            output = await _final_output(engine, prompt, params, _request_id(request.prompt_id))
        except Exception as exc:
            return BackendError(f"{self.model}: vLLM failed: {describe_engine_error(exc)}")
        result = generation_from_output(output, (time.perf_counter() - started) * 1000)
        if isinstance(result, BackendError):
            return BackendError(f"{self.model}: {result.reason}", result.kind)
        return result


class VLLMJudge(_VLLMClient):
    """The pairwise judge on an in-process vLLM engine, structured to VERDICT_SCHEMA."""

    def __init__(
        self, spec: JudgeSettings, engine: Any = None, params_factory: ParamsFactory | None = None
    ) -> None:
        super().__init__(spec, spec.served_model, engine, params_factory)
        self.judge_spec = spec
        self.name = spec.name

    async def load(self) -> None:
        await self._load(self.name)

    async def judge(self, requests: Sequence[JudgeRequest]) -> list[JudgeReply | BackendError]:
        started = await self._ready(f"judge {self.name}")
        if isinstance(started, BackendError):
            return [started] * len(requests)
        engine, tokenizer = started
        return list(await asyncio.gather(*(self._one(engine, tokenizer, r) for r in requests)))

    async def _one(self, engine: Any, tokenizer: Any, request: JudgeRequest) -> JudgeReply | BackendError:
        r = request
        attempts = self.judge_spec.verdict_attempts
        try:
            prompt = _prompt(tokenizer, judge_messages(r.question, r.first_text, r.second_text, r.tag))
            refused = self._refused(engine, tokenizer, prompt, f"pair {r.pair_id}")
        except Exception as exc:
            return BackendError(f"judge {self.name}: cannot format the prompt: {describe_engine_error(exc)}")
        if refused is not None:
            return refused
        problem: VerdictError | None = None
        for attempt in range(attempts):
            try:
                # seed+attempt: a retry is not the same sample
                params = self._params(sampling_kwargs(self.judge_spec, r.seed + attempt, judge=True))
                output = await _final_output(engine, prompt, params, _request_id(r.pair_id))
            except BackendError as exc:
                return BackendError(f"judge {self.name}: {exc.reason}", exc.kind)
            except Exception as exc:
                return BackendError(f"judge {self.name}: vLLM failed: {describe_engine_error(exc)}")
            reply = judge_reply_from_output(output)
            if isinstance(reply, JudgeReply):
                return reply
            problem = reply
        return BackendError(
            f"judge {self.name}: no valid verdict in {attempts} attempt(s); last: {problem}", kind="verdict"
        )


def generator(spec: ModelSpec, settings: KarmaSettings) -> VLLMGenerator:
    """The registry's entry point (agents/backends/__init__.py)."""
    return VLLMGenerator(spec)


def judge(settings: KarmaSettings) -> VLLMJudge:
    """The registry's entry point (agents/backends/__init__.py)."""
    return VLLMJudge(settings.judge)

"""The `transformers` backend: a local checkpoint run with Hugging Face transformers (GPU or CPU).

`AutoTokenizer` / `AutoModelForCausalLM.from_pretrained(spec.served_model, **spec.engine_args)`,
on CUDA when available, else on the CPU (or wherever `engine_args["device_map"]` puts it); one
model per process per checkpoint and arguments, shared by the generator and judge that name it.
A batch is tokenized once, its prompts over the context are set aside (the context rule, below),
and the rest generated in one `model.generate` call (left padding): one `Runner.generate` call in a
worker thread (`asyncio.to_thread`), so the event loop keeps heartbeating to Kafka while the model
runs, and the next batch starts the moment the model is free, without waiting for the event loop.
Prompts use the tokenizer's chat template when it has one, else plain text
(agents/backends/chat_format.py). Sampling is seeded once per batch (`torch.manual_seed` with the first
request's seed), or greedy when temperature is 0; every request of a batch reports the batch's
wall time as its latency.

The judge is the same model asked for the JSON verdict, without constrained decoding: each
reply is parsed with `parse_verdict`, the requests whose reply did not parse are asked again
(seed+attempt) up to `verdict_attempts` times, then they are `BackendError(kind="verdict")`.
When `logprobs` is on, a logits processor keeps the top-5 log-probabilities of each step (a few
numbers per step, not the whole vocabulary), from which `soft_label` reads P(answer A wins);
they are those of the scores the sampler sees (for the greedy judge: the model's own).

The model is loaded by `load` at the worker's start (streams/worker.py), before it consumes; a
checkpoint that cannot load (no checkpoint there, a corrupt config, out of memory) is a
ModelLoadError that stops the worker. The context rule: a prompt (or judge pass) whose tokens
and `max_tokens` of reply do not fit the model's context (the smaller of the config's
`max_position_embeddings` and the tokenizer's `model_max_length`) is not run: it is a
`BackendError(kind="too_long")` naming it, the checkpoint, its token count and the limit, which
the stage dead-letters, and the rest of the batch is generated. Not cut: a cut prompt is another
question, and its answer would be judged as the answer to this one.

A new checkpoint of the model (`karma train`, karma.checkpoints) is loaded into the running model
in place (`HFRunner.reload`: its safetensors files, one at a time, through `load_state_dict`),
in the child process when the model runs in one, once the batches in flight are done (sdk.py
`switch`); a model shared with the judge gets the new version beside it instead.

torch and transformers are imported only where the model is loaded and run. The pure helpers
(`tokenizer_kwargs`, `stop_token_ids`, `trim_generated`, `logprob_tokens`, `context_tokens`,
`too_long`) and the batching and retry logic (with an injected fake runner) are unit-tested
without them; tests/agents/backends/test_transformers_real.py runs a tiny random Llama built in
the test (CPU) through the backend: loading, a bad checkpoint, the context rule.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

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
    LogprobTokens,
    VerdictError,
    judge_messages,
    parse_verdict,
    soft_label,
)

if TYPE_CHECKING:  # annotations only: config reads the backends' names, not the reverse
    from karma.streams.config import BackendSpec, JudgeSettings, KarmaSettings, ModelSpec

SDK = Sdk("transformers", ("torch", "transformers"), extra="transformers")
# from_pretrained arguments that concern the tokenizer too; the rest (torch_dtype, device_map,
# attn_implementation, quantization_config, ...) are the model's alone.
TOKENIZER_KEYS = ("revision", "trust_remote_code", "cache_dir", "local_files_only", "token", "subfolder")


# --- pure helpers: no torch ---------------------------------------------------------------------


@dataclass(frozen=True)
class LocalOutput:
    """One generated reply of a batch."""

    text: str
    num_tokens: int
    logprobs: LogprobTokens | None = None  # soft_label's form, when asked for


def tokenizer_kwargs(engine_args: dict[str, Any]) -> dict[str, Any]:
    """The subset of `engine_args` that AutoTokenizer.from_pretrained should also get."""
    return {k: v for k, v in engine_args.items() if k in TOKENIZER_KEYS}


def stop_token_ids(*candidates: int | Sequence[int] | None) -> set[int]:
    """Token ids that end a reply: eos/pad ids, each given as an int, a list of them, or None."""
    ids: set[int] = set()
    for candidate in candidates:
        if candidate is None:
            continue
        if isinstance(candidate, int):
            ids.add(candidate)
        else:
            ids.update(int(c) for c in candidate)
    return ids


def trim_generated(token_ids: Sequence[int], stop_ids: set[int]) -> list[int]:
    """The reply's own tokens: up to (without) the first end-of-sequence or padding token."""
    for i, token in enumerate(token_ids):
        if token in stop_ids:
            return list(token_ids[:i])
    return list(token_ids)


def logprob_tokens(
    token_ids: Sequence[int],
    steps: Sequence[tuple[Sequence[float], Sequence[int]]],
    decode: Any,
) -> LogprobTokens:
    """soft_label's (token, [(alternative, logprob), ...]) from the generated ids and, per step,
    the top-k (logprobs, ids) recorded while generating; `decode(id) -> str` names a token."""
    tokens: LogprobTokens = []
    for token, (logprobs, ids) in zip(token_ids, steps, strict=False):
        alternatives = [(decode(i), float(lp)) for lp, i in zip(logprobs, ids, strict=True)]
        tokens.append((decode(token), alternatives))
    return tokens


# A tokenizer with no limit of its own says so with a huge model_max_length (transformers' 1e30).
UNLIMITED_TOKENS = 10**9


def context_tokens(max_position_embeddings: int | None, model_max_length: int | None) -> int | None:
    """The model's context in tokens: the smaller of the config's and the tokenizer's limits that
    are set, or None when neither is."""
    limits = [n for n in (max_position_embeddings, model_max_length) if n and 0 < n < UNLIMITED_TOKENS]
    return min(limits) if limits else None


@dataclass(frozen=True)
class TooLong:
    """A prompt `Runner.generate` did not run: its tokens leave no room for the reply."""

    tokens: int


class Runner(Protocol):
    """What the backend needs of a loaded model (the real one below; a fake in the tests)."""

    # The context in tokens (prompt and reply together); None when the model sets none.
    context_tokens: int | None

    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        seed: int,
        temperature: float,
        max_tokens: int,
        top_logprobs: int,
        max_prompt_tokens: int | None = None,
    ) -> list[LocalOutput | TooLong]:
        """A reply to each conversation, in order; one whose prompt is over `max_prompt_tokens`
        is not run (TooLong, with its token count)."""
        ...


# --- torch and transformers: imported lazily ----------------------------------------------------


# A module attribute, looked up when a client is built (so a test can stand in for it).
require_transformers = SDK.require


class HFRunner:
    """A tokenizer and causal LM loaded with transformers; `generate` blocks (call it in a thread)."""

    def __init__(self, model_id: str, engine_args: dict[str, Any]) -> None:
        self.torch = SDK.load("torch")
        transformers = SDK.load("transformers")
        self.transformers = transformers
        # The config first: cheap, and the clearest word on a folder that is no checkpoint (the
        # tokenizer's would be about converting a slow tokenizer).
        transformers.AutoConfig.from_pretrained(model_id, **tokenizer_kwargs(engine_args))
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model_id, **tokenizer_kwargs(engine_args))
        self.model = transformers.AutoModelForCausalLM.from_pretrained(model_id, **engine_args)
        if "device_map" not in engine_args:  # accelerate has placed it otherwise
            self.model.to("cuda" if self.torch.cuda.is_available() else "cpu")
        self.model.eval()
        tok = self.tokenizer
        tok.padding_side = "left"  # decoder-only: the replies must start right after every prompt
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise BackendError(f"{model_id}: the tokenizer has neither a pad nor an eos token")
            tok.pad_token = tok.eos_token
        self.stop_ids = stop_token_ids(
            tok.eos_token_id, tok.pad_token_id, getattr(self.model.generation_config, "eos_token_id", None)
        )
        self.context_tokens = context_tokens(
            getattr(self.model.config, "max_position_embeddings", None),
            getattr(tok, "model_max_length", None),
        )
        # One batch at a time per model: memory, and the global seed. The tokenizer, whose padding
        # state is not safe to share between threads, has its own: the next batch is tokenized
        # while this one generates, and starts the moment the model is free.
        self._lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()

    def reload(self, model_id: str) -> None:
        """Loads the weights of checkpoint `model_id` (a folder of `*.safetensors`, what
        `save_pretrained` and `karma train` write) into this model in place, file by file, so no
        second copy of the model is made. The architecture and the tokenizer stay: the checkpoint
        must be a version of the same model. A weight the checkpoint lacks (other than one tied to
        a weight it has) or does not fit is a BackendError; the model may then hold a mix, and
        the caller loads the old checkpoint back."""
        files = sorted(Path(model_id).glob("*.safetensors"))
        if not files:
            raise BackendError(f"{model_id}: no *.safetensors weights to load in place")
        load_file = SDK.load("safetensors.torch").load_file
        device = str(next(self.model.parameters()).device)
        expected = dict(self.model.named_parameters(remove_duplicate=False))
        loaded: set[str] = set()
        with self._lock:  # no batch generates while the weights change
            for file in files:
                part = load_file(str(file), device=device)
                unexpected = set(part) - set(self.model.state_dict())
                if unexpected:
                    raise BackendError(f"{file}: weights this model does not have: {sorted(unexpected)[:5]}")
                self.model.load_state_dict(part, strict=False)
                loaded.update(part)
            storage = {expected[name].data_ptr() for name in loaded if name in expected}
            missing = [n for n, p in expected.items() if n not in loaded and p.data_ptr() not in storage]
            if missing:
                raise BackendError(f"{model_id}: no weights for {missing[:5]}")

    def _decode(self, token_id: int) -> str:
        return str(self.tokenizer.decode([token_id]))

    def _recorder(self, k: int) -> Any:
        torch = self.torch

        class TopLogprobs(self.transformers.LogitsProcessor):  # type: ignore[misc,name-defined]
            """Keeps the top-k log-probabilities of each step and leaves the scores as they are."""

            def __init__(self) -> None:
                self.steps: list[tuple[list[list[float]], list[list[int]]]] = []

            def __call__(self, input_ids: Any, scores: Any) -> Any:
                top = torch.log_softmax(scores.float(), dim=-1).topk(k, dim=-1)
                self.steps.append((top.values.tolist(), top.indices.tolist()))
                return scores

        return TopLogprobs()

    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        seed: int,
        temperature: float,
        max_tokens: int,
        top_logprobs: int,
        max_prompt_tokens: int | None = None,
    ) -> list[LocalOutput | TooLong]:
        torch, tok = self.torch, self.tokenizer
        rendered = [render_chat(tok, c) for c in conversations]
        with self._tokenizer_lock:
            # A chat template writes BOS itself; only plain text needs the tokenizer's special tokens.
            batch = tok(
                [r.text for r in rendered],
                return_tensors="pt",
                padding=True,
                add_special_tokens=not rendered[0].templated,
            )
        counts = [int(n) for n in batch["attention_mask"].sum(dim=1).tolist()]
        rows = [i for i, n in enumerate(counts) if max_prompt_tokens is None or n <= max_prompt_tokens]
        results: list[LocalOutput | TooLong] = [TooLong(n) for n in counts]
        if not rows:
            return results
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        if len(rows) < len(counts):
            index = torch.tensor(rows, dtype=torch.long)
            input_ids, attention_mask = input_ids[index], attention_mask[index]
            # Left padding that none of the rows run needs (a longer prompt was set aside) is dropped.
            start = int(attention_mask.any(dim=0).nonzero()[0])
            input_ids, attention_mask = input_ids[:, start:], attention_mask[:, start:]
        with self._lock, torch.inference_mode():
            options: dict[str, Any] = {"max_new_tokens": max_tokens, "pad_token_id": tok.pad_token_id}
            if temperature > 0:
                options |= {"do_sample": True, "temperature": temperature}
            else:
                options["do_sample"] = False
            recorder = self._recorder(top_logprobs) if top_logprobs else None
            if recorder is not None:
                options["logits_processor"] = self.transformers.LogitsProcessorList([recorder])
            torch.manual_seed(seed)
            # Only these two: a tokenizer may also return token_type_ids, which causal LMs reject.
            sequences = self.model.generate(
                input_ids=input_ids.to(self.model.device),
                attention_mask=attention_mask.to(self.model.device),
                **options,
            )
        generated = sequences[:, input_ids.shape[1] :].tolist()
        for row, ids in enumerate(generated):
            kept = trim_generated(ids, self.stop_ids)
            tokens = None
            if recorder is not None:
                steps = [(values[row], indices[row]) for values, indices in recorder.steps]
                tokens = logprob_tokens(kept, steps, self._decode)
            text = tok.decode(kept, skip_special_tokens=True)
            results[rows[row]] = LocalOutput(str(text), len(kept), tokens)
        return results


class ProcessRunner:
    """An HFRunner in a child process of its own (`engine_process: true`, the default).

    A small model's generation is mostly Python (a loop of small tensor calls per token), and in
    the worker's process it takes turns with the event loop for one interpreter lock: measured
    here, a batch generated a quarter slower beside the stream's work than alone. In a child it
    has its own interpreter, as vLLM runs its engine core apart from its server. A call sends the
    prompts and gets the replies back through a pipe; the weights live in the child alone. A child
    that dies (killed, out of memory) fails the batch in hand with a reason saying so, and is
    started again, reloading the model, for the next one.

    The models of one worker share its cores: each generates with `cpu_share()` torch threads
    (unless OMP_NUM_THREADS says), as the interpreter lock made them take turns in a thread.
    Seven lab models with every core each spun on one another's cores: `make demo-lab` took 66 s
    instead of 40."""

    def __init__(self, model_id: str, engine_args: dict[str, Any]) -> None:
        self._model_id, self._engine_args = model_id, engine_args
        self._lock = threading.Lock()  # one start at a time
        self._pool: ProcessPoolExecutor | None = None
        self.context_tokens: int | None = None
        self._start()

    def _start(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(max_workers=1, mp_context=_engine_context())
        try:
            self.context_tokens = pool.submit(_load_in_child, self._model_id, self._engine_args).result()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        self._pool = pool
        return pool

    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        seed: int,
        temperature: float,
        max_tokens: int,
        top_logprobs: int,
        max_prompt_tokens: int | None = None,
    ) -> list[LocalOutput | TooLong]:
        with self._lock:
            pool = self._pool or self._start()
        args = (conversations, seed, temperature, max_tokens, top_logprobs, max_prompt_tokens)
        try:
            return pool.submit(_generate_in_child, cpu_share(len(_PROCESS_RUNNERS)), *args).result()
        except BrokenProcessPool:
            with self._lock:
                if self._pool is pool:
                    self._pool = None  # started again by the next call
            pool.shutdown(wait=False, cancel_futures=True)
            raise RuntimeError(
                f"the process running {self._model_id} ended unexpectedly (killed, or out of memory); "
                "it is started again for the next batch"
            ) from None

    def reload(self, model_id: str) -> None:
        """`HFRunner.reload` in the child; a child started again later loads `model_id`."""
        with self._lock:
            pool = self._pool or self._start()
        pool.submit(_reload_in_child, model_id).result()
        self._model_id = model_id

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def cpu_share(models: int, environ: Mapping[str, str] | None = None, cores: int | None = None) -> int | None:
    """Torch threads for each of `models` model processes of one worker: the cores divided among
    them (at least one), or None when OMP_NUM_THREADS is set (the operator's word stands)."""
    environ = os.environ if environ is None else environ
    if environ.get("OMP_NUM_THREADS", "").strip():
        return None
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    return max(1, cores // max(1, models))


def _engine_context() -> multiprocessing.context.BaseContext:
    """Where the models' processes come from: forks of a server process that imported torch and
    transformers once, so the first model's process pays for those imports (seconds) and the
    others start at once. Safe for CUDA: the server never initialises it, each child does."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "transformers", __name__])
    return context


# The child's runner (ProcessRunner): one per child process.
_CHILD_RUNNER: HFRunner | None = None


def _load_in_child(model_id: str, engine_args: dict[str, Any]) -> int | None:
    global _CHILD_RUNNER
    try:
        _CHILD_RUNNER = HFRunner(model_id, engine_args)
    except Exception as exc:
        raise _sendable(exc) from None
    return _CHILD_RUNNER.context_tokens


def _generate_in_child(threads: int | None, *args: Any) -> list[LocalOutput | TooLong]:
    assert _CHILD_RUNNER is not None, "the model is loaded when the child starts"
    try:
        torch = _CHILD_RUNNER.torch
        if threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return _CHILD_RUNNER.generate(*args)
    except Exception as exc:
        raise _sendable(exc) from None


def _reload_in_child(model_id: str) -> None:
    assert _CHILD_RUNNER is not None, "the model is loaded when the child starts"
    try:
        _CHILD_RUNNER.reload(model_id)
    except Exception as exc:
        raise _sendable(exc) from None


def _sendable(exc: Exception) -> Exception:
    """The exception itself when it can travel back to the parent (pickled), else its words."""
    try:
        pickle.dumps(exc)
    except Exception:
        return RuntimeError(named(exc))
    return exc


# The process's loaded checkpoints, in a thread of the worker or in a child process; the last
# user drops one (a thread's: the garbage collector frees it; a child: it is stopped). The
# processes loaded now share the worker's cores (`cpu_share(len(_PROCESS_RUNNERS))`).
# Loading blocks: callers run acquire in a thread.
_RUNNERS = SharedModels(HFRunner, lambda _runner: None)
_PROCESS_RUNNERS = SharedModels(ProcessRunner, lambda runner: runner.close())
acquire_runner = _RUNNERS.acquire
release_runner = _RUNNERS.release
acquire_process_runner = _PROCESS_RUNNERS.acquire
release_process_runner = _PROCESS_RUNNERS.release
claim_runner = _RUNNERS.claim
claim_process_runner = _PROCESS_RUNNERS.claim


class _TransformersClient(SharedModelClient):
    """The model handling shared by the generator and the judge: a Runner from `acquire_runner`."""

    backend = "transformers"

    def __init__(self, spec: BackendSpec, served_model: str, runner: Runner | None) -> None:
        if runner is None:
            require_transformers()
        super().__init__(spec, served_model, runner)

    def _acquire(self, served_model: str, engine_args: dict[str, Any]) -> Runner:
        if self.spec.engine_process:
            return acquire_process_runner(served_model, engine_args)
        return acquire_runner(served_model, engine_args)

    async def _release(self, runner: Runner) -> None:
        if isinstance(runner, ProcessRunner):
            await asyncio.to_thread(release_process_runner, runner)  # the last user stops the child
        else:
            release_runner(runner)  # cheap: the garbage collector frees the model, not this call

    def _cannot_load(self, exc: Exception) -> str:
        return f"cannot load {self.served_model}: {named(exc)}"

    def _claim(self, runner: Runner, path: str, engine_args: dict[str, Any]) -> bool:
        if isinstance(runner, ProcessRunner):
            return claim_process_runner(runner, path, engine_args)
        if isinstance(runner, HFRunner):
            return claim_runner(runner, path, engine_args)
        return False  # an injected runner (tests): loaded beside

    async def _reload(self, runner: Runner, path: str) -> None:
        await asyncio.to_thread(runner.reload, path)  # type: ignore[attr-defined]  # claimed: ours

    async def _run(
        self, runner: Runner, conversations: list[list[Message]], seed: int, top_logprobs: int
    ) -> list[LocalOutput | TooLong]:
        """One `generate` call in a worker thread: the prompts that leave no room in the context
        for `max_tokens` of reply come back TooLong, not run."""
        limit = None if runner.context_tokens is None else runner.context_tokens - self.spec.max_tokens
        return await asyncio.to_thread(
            runner.generate,
            conversations,
            seed,
            self.spec.temperature,
            self.spec.max_tokens,
            top_logprobs,
            limit,
        )

    def _too_long(self, runner: Runner, name: str, result: TooLong) -> BackendError:
        """The dead letter's reason for a prompt (or judge pass) set aside by the context rule."""
        why = too_long(name, result.tokens, runner.context_tokens or 0, self.spec.max_tokens)
        return BackendError(f"{self.served_model}: {why}", kind="too_long")


class TransformersGenerator(_TransformersClient):
    """A pool model run locally with transformers, one `generate` call per batch."""

    def __init__(self, spec: ModelSpec, runner: Runner | None = None) -> None:
        super().__init__(spec, spec.served_model, runner)
        self.model = spec.name

    async def load(self) -> None:
        await self._load(self.model)

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation | BackendError]:
        if not requests:
            return []
        async with self._using(self.model) as (runner, version):
            if isinstance(runner, BackendError):
                return [runner] * len(requests)
            conversations: list[list[Message]] = [
                [{"role": "user", "content": r.prompt_text}] for r in requests
            ]
            started = time.perf_counter()
            try:
                outputs = await self._run(runner, conversations, requests[0].seed, top_logprobs=0)
            except Exception as exc:
                return [BackendError(f"{self.model}: generation failed: {named(exc)}")] * len(requests)
            latency_ms = (time.perf_counter() - started) * 1000  # the batch's: every request waited for it
            return [
                self._too_long(runner, f"prompt {r.prompt_id}", o)
                if isinstance(o, TooLong)
                else Generation(o.text, o.num_tokens, latency_ms, False, version)
                for r, o in zip(requests, outputs, strict=True)
            ]


class TransformersJudge(_TransformersClient):
    """The pairwise judge run locally with transformers; malformed verdicts are asked again."""

    def __init__(self, spec: JudgeSettings, runner: Runner | None = None) -> None:
        super().__init__(spec, spec.served_model, runner)
        self.judge_spec = spec
        self.name = spec.name

    async def load(self) -> None:
        await self._load(self.name)

    async def judge(self, requests: Sequence[JudgeRequest]) -> list[JudgeReply | BackendError]:
        if not requests:
            return []
        who = f"judge {self.name}"
        runner = await self._ready(who)
        if isinstance(runner, BackendError):
            return [runner] * len(requests)
        messages = [judge_messages(r.question, r.first_text, r.second_text, r.tag) for r in requests]
        results: list[JudgeReply | BackendError | None] = [None] * len(requests)
        problems: dict[int, VerdictError] = {}
        pending = list(range(len(requests)))
        top_logprobs = TOP_LOGPROBS if self.judge_spec.logprobs else 0
        for attempt in range(self.judge_spec.verdict_attempts):
            if not pending:
                break
            seed = requests[pending[0]].seed + attempt  # a retry is not the same sample
            try:
                outputs = await self._run(runner, [messages[i] for i in pending], seed, top_logprobs)
            except Exception as exc:
                error = BackendError(f"{who}: generation failed: {named(exc)}")
                for i in pending:
                    results[i] = error
                return _complete(results)
            still: list[int] = []
            for i, output in zip(pending, outputs, strict=True):
                if isinstance(output, TooLong):  # refused, not asked again
                    results[i] = self._too_long(runner, f"pair {requests[i].pair_id}", output)
                    continue
                try:
                    verdict = parse_verdict(output.text)
                except VerdictError as exc:
                    problems[i] = exc
                    still.append(i)
                    continue
                p_first = soft_label(output.logprobs) if output.logprobs else None
                results[i] = JudgeReply(verdict, output.text, p_first, simulated=False)
            pending = still
        for i in pending:
            results[i] = BackendError(
                f"{who}: no valid verdict in {self.judge_spec.verdict_attempts} attempt(s); "
                f"last: {problems.get(i)}",
                kind="verdict",
            )
        return _complete(results)


def _complete(results: list[JudgeReply | BackendError | None]) -> list[JudgeReply | BackendError]:
    done = [r for r in results if r is not None]
    assert len(done) == len(results), "every judge request gets a reply or an error"
    return done


def generator(spec: ModelSpec, settings: KarmaSettings) -> TransformersGenerator:
    """The registry's entry point (agents/backends/__init__.py)."""
    return TransformersGenerator(spec)


def judge(settings: KarmaSettings) -> TransformersJudge:
    """The registry's entry point (agents/backends/__init__.py)."""
    return TransformersJudge(settings.judge)

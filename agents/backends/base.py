"""One interface for generation and judging, whatever runs the model.

A `Generator` turns a batch of prompts into responses and a `Judge` a batch of judge requests
into raw verdicts; both return, per request, either the result or a `BackendError` that says
why it failed for good (after the backend's own retries), so one bad request never sinks its
batch and the agent can send it to the dead-letter topic while the stream goes on.

Backends (chosen per model in the pool config, and for the judge):
- `simulated`: the seeded stand-ins of agents/backends/simulated.py;
- `openai`: any OpenAI-compatible server (agents/backends/openai.py);
- `vllm`: vLLM's AsyncLLM in the worker (agents/backends/vllm.py; needs a GPU and `pip install vllm`);
- `transformers`: a local checkpoint (agents/backends/transformers.py; needs torch);
- `zebra` (judge only): no model, the response of the more superior model wins (agents/backends/zebra.py);
- `verifier` (judge only): each answer checked against the prompt's reference (agents/backends/verifier.py).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from karma.agents.judge_prompt import RawVerdict


@dataclass(frozen=True)
class GenerationRequest:
    prompt_id: str
    prompt_text: str
    seed: int = 0


@dataclass(frozen=True)
class Generation:
    text: str
    num_tokens: int
    latency_ms: float
    simulated: bool
    model_version: int = 1  # the checkpoint version that wrote it (Generator.version when it ran)


@dataclass(frozen=True)
class JudgeRequest:
    """One pass of the judge: `first_text` is shown as answer A."""

    pair_id: str
    question: str
    first_text: str
    second_text: str
    first_model: str  # only the simulated judge looks at these
    second_model: str
    seed: int = 0
    # Only zebra reads these (the models' superiority as the rating stage saw it); they stay out
    # of `tag`, so an LLM judge's prompt is the same with or without them.
    first_superiority: float | None = None
    second_superiority: float | None = None
    # Only the verifier reads these (the prompt's reference and scorer are in its metadata); out
    # of `tag` too. compare=False: a frozen request with a dict in it still compares and hashes.
    prompt_id: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def tag(self) -> str:
        """The fence tag of this pass: not guessable by the answers (it hashes both of them)."""
        material = "\x1f".join((self.pair_id, self.first_text, self.second_text, str(self.seed)))
        return hashlib.sha256(material.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class JudgeReply:
    verdict: RawVerdict
    raw: str  # the judge's reply as it came, for the record
    p_first: float | None  # P(answer A wins) from log-probabilities, when the backend serves them
    simulated: bool
    # The verifier's scores of the answers shown first and second against the reference; None
    # from any other judge.
    scores: tuple[float, float] | None = None


class BackendError(Exception):
    """A request that failed for good; `kind` becomes the dead letter's error_type."""

    def __init__(self, reason: str, kind: str = "backend") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


class SwitchUnsupported(Exception):
    """A backend that cannot serve a new checkpoint in a running worker: its text says why and
    what to do instead; the generation stage logs it once and serves on with the version it has."""


class ModelLoadError(Exception):
    """A model whose weights cannot be loaded at the worker's start: the worker stops before it
    consumes anything (streams/worker.py), since every prompt would only become a failure record.
    Its text is one line naming the model, where it was loaded from and why it failed."""

    def __init__(self, model: str, path: str, cause: BaseException | str) -> None:
        self.model, self.path = model, path
        self.cause = one_line(cause if isinstance(cause, str) else named(cause))
        super().__init__(f"cannot load model {model} from {path}: {self.cause}")


def one_line(text: str, limit: int = 400) -> str:
    """`text` on one line (transformers' messages span several) and at most `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def named(exc: BaseException) -> str:
    """An exception in one phrase: its type, and its message when it has one."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def too_long(what: str, tokens: int, context: int, max_tokens: int) -> str | None:
    """The context rule of the in-process backends (transformers, vllm): why `what` (a prompt, a
    judge pass) is not run, or None when it fits. Its tokens and the reply's `max_tokens` must fit
    the context together: past it a model with learned positions fails (index out of range), one
    with rotary positions runs out of memory or answers noise, and vLLM refuses the prompt or
    cuts the answer short. Refused (`BackendError(kind="too_long")`, dead-lettered by the stage),
    never cut: a cut prompt is another question, and its answer would be judged as this one's."""
    room = context - max_tokens
    if tokens <= room:
        return None
    return (
        f"{what} is {tokens} tokens, over the {room} the model takes "
        f"(context {context} tokens less max_tokens {max_tokens})"
    )


class Generator(Protocol):
    backend: str
    model: str
    version: int  # the checkpoint version it serves: 1 is the configured one (karma.checkpoints)

    async def load(self) -> None:
        """Loads the model's weights (or checks a remote one) before the worker consumes; raises
        ModelLoadError when it cannot. Trivial where the model is loaded elsewhere."""
        ...

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation | BackendError]: ...

    async def switch(self, name: str, path: str, version: int) -> None:
        """Serves the checkpoint at `path` as `version` from the next batch on; the batches in
        flight finish on the old one. Raises SwitchUnsupported where the backend cannot, and
        ModelLoadError when the checkpoint does not load (the old one serves on)."""
        ...

    async def close(self) -> None: ...


class Judge(Protocol):
    backend: str
    name: str

    async def load(self) -> None:
        """As Generator.load."""
        ...

    async def judge(self, requests: Sequence[JudgeRequest]) -> list[JudgeReply | BackendError]: ...

    async def close(self) -> None: ...


class SharedModels:
    """Loaded models (a vLLM engine, a transformers checkpoint) shared by every backend of the
    process that names the same checkpoint and arguments, e.g. a generator and a judge on one
    model; the last to release one closes it. Thread-safe: loading runs in worker threads."""

    def __init__(self, build: Callable[[str, dict[str, Any]], Any], close: Callable[[Any], None]) -> None:
        self._build, self._close = build, close
        self._loaded: dict[tuple[str, str], list[Any]] = {}  # key -> [instance, users]
        # One load at a time: two models loading at once would fight for memory.
        self._lock = threading.Lock()

    def acquire(self, model: str, engine_args: dict[str, Any]) -> Any:
        key = (model, json.dumps(engine_args, sort_keys=True, default=str))
        with self._lock:
            entry = self._loaded.get(key)
            if entry is None:
                entry = self._loaded[key] = [self._build(model, engine_args), 0]
            entry[1] += 1
            return entry[0]

    def release(self, instance: Any) -> None:
        with self._lock:
            for key, entry in list(self._loaded.items()):
                if entry[0] is instance:
                    entry[1] -= 1
                    if entry[1] <= 0:
                        del self._loaded[key]
                        self._close(instance)
                    return

    def claim(self, instance: Any, model: str, engine_args: dict[str, Any]) -> bool:
        """Files an instance held by one user only under `model`, so that user may load another
        checkpoint into it in place (vLLM's weight reload) while a later `acquire` of the old
        checkpoint builds a fresh one. False, and nothing changes, when others share it."""
        with self._lock:
            for key, entry in list(self._loaded.items()):
                if entry[0] is instance:
                    if entry[1] != 1:
                        return False
                    del self._loaded[key]
                    self._loaded[(model, json.dumps(engine_args, sort_keys=True, default=str))] = entry
                    return True
            return False

    def __len__(self) -> int:
        return len(self._loaded)

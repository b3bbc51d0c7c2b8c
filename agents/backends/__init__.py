"""Model backends: what runs a model, for generation and for judging.

One module per backend, registered in `BACKENDS` below by name; configuration validation
(`streams/config.py`) and the command line read the names from here. A backend module offers
`generator(spec, settings)` if it can generate and `judge(settings)` if it can judge; it imports
its SDK (vLLM, torch) only when one is built, and says which pip extra installs it.

- `simulated`: seeded stand-ins that say so in every record (simulated.py);
- `openai`: any OpenAI-compatible server (openai.py);
- `vllm`: vLLM's AsyncLLM in the worker (vllm.py; a GPU and `pip install 'karma-stream[vllm]'`);
- `transformers`: a local checkpoint (transformers.py; `pip install 'karma-stream[transformers]'`);
- `zebra` (judge only): no model, the response of the more superior model wins (zebra.py);
- `verifier` (judge only): no model, each answer checked against the prompt's reference (verifier.py).

The interface they share (requests, replies, `BackendError`) is in base.py.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from karma.agents.backends.base import (
    BackendError,
    Generation,
    GenerationRequest,
    Generator,
    Judge,
    JudgeReply,
    JudgeRequest,
    ModelLoadError,
    SharedModels,
)

if TYPE_CHECKING:
    from karma.streams.config import KarmaSettings, ModelSpec

__all__ = [
    "BACKENDS",
    "GENERATION_BACKENDS",
    "JUDGE_BACKENDS",
    "BackendError",
    "BackendInfo",
    "Generation",
    "GenerationRequest",
    "Generator",
    "Judge",
    "JudgeReply",
    "JudgeRequest",
    "ModelLoadError",
    "SharedModels",
    "make_generator",
    "make_judge",
]


@dataclass(frozen=True)
class BackendInfo:
    module: str  # under karma.agents.backends
    generates: bool
    judges: bool
    summary: str


BACKENDS: dict[str, BackendInfo] = {
    "simulated": BackendInfo("simulated", True, True, "seeded stand-ins, CPU only, marked simulated"),
    "openai": BackendInfo("openai", True, True, "any OpenAI-compatible server (base_url)"),
    "vllm": BackendInfo("vllm", True, True, "vLLM in the worker process (GPU)"),
    "transformers": BackendInfo("transformers", True, True, "a local transformers checkpoint"),
    "zebra": BackendInfo("zebra", False, True, "no model: the more superior model's response wins"),
    "verifier": BackendInfo("verifier", False, True, "no model: the answer right by the prompt's reference"),
}
GENERATION_BACKENDS = tuple(name for name, info in BACKENDS.items() if info.generates)
JUDGE_BACKENDS = tuple(name for name, info in BACKENDS.items() if info.judges)


def _module(name: str, role: str) -> object:
    info = BACKENDS.get(name)
    if info is None or not getattr(info, "generates" if role == "generation" else "judges"):
        raise BackendError(f"backend {name!r} is not available for {role}")
    # Imported when chosen: a worker loads only the backends its configuration names.
    return importlib.import_module(f"{__name__}.{info.module}")


def make_generator(spec: ModelSpec, settings: KarmaSettings) -> Generator:
    """The backend of one pool model, as its spec says."""
    return _module(spec.backend, "generation").generator(spec, settings)  # type: ignore[attr-defined,no-any-return]


def make_judge(settings: KarmaSettings) -> Judge:
    """The configured judge."""
    return _module(settings.judge.backend, "judging").judge(settings)  # type: ignore[attr-defined,no-any-return]

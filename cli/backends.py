"""`karma generate` and `karma judge`: one request to a model backend, outside the pipeline, to
check that a model or server answers as the pipeline will ask it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from enum import StrEnum
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape

from karma.agents.backends import (
    BACKENDS,
    GENERATION_BACKENDS,
    JUDGE_BACKENDS,
    BackendError,
    GenerationRequest,
    make_generator,
    make_judge,
)
from karma.agents.judging import requests_for, resolve_pair
from karma.cli.common import ConfigOption, console, out, settings_or_exit
from karma.schemas.models import Candidate, KinPair, pair_id_for, problems_of, prompt_id_for
from karma.streams.config import ModelSpec

SIMULATED = "simulated"


def _choices(name: str, backends: tuple[str, ...]) -> type[StrEnum]:
    """An enum of backend names for typer, so --help lists exactly what the registry offers."""
    return StrEnum(name, {backend: backend for backend in backends})


def _listed(names: tuple[str, ...]) -> str:
    return f"{', '.join(names[:-1])} or {names[-1]}." if len(names) > 1 else f"{names[0]}."


GenerationBackendChoice = _choices("GenerationBackendChoice", GENERATION_BACKENDS)
# Only judges that run a model: `karma judge` asks --model, and a judge that generates nothing
# (zebra) reads neither a model nor the answers, so there is nothing for this command to try.
_MODEL_JUDGES = tuple(name for name in JUDGE_BACKENDS if BACKENDS[name].generates)
# The verifier judges without a model: it checks each answer against --reference.
_CLI_JUDGES = (*_MODEL_JUDGES, "verifier")
JudgeBackendChoice = _choices("JudgeBackendChoice", _CLI_JUDGES)
_DEFAULT_GENERATION = GenerationBackendChoice(SIMULATED)
_DEFAULT_JUDGE = JudgeBackendChoice(SIMULATED)

BaseUrlOption = Annotated[
    str | None, typer.Option("--base-url", help="openai: the server, e.g. http://127.0.0.1:8000/v1.")
]
ModelOption = Annotated[str, typer.Option("--model", help="The model: served name or checkpoint.")]


def _backend_spec(kind: type[Any], **fields: Any) -> Any:
    try:
        return kind(**fields)
    except ValidationError as exc:
        console.print(f"[red]error:[/] {escape(problems_of(exc))}")
        raise typer.Exit(2) from None


def generate(
    prompt: Annotated[str, typer.Argument(help="The prompt text.")],
    model: ModelOption,
    backend: Annotated[
        GenerationBackendChoice, typer.Option("--backend", help=_listed(GENERATION_BACKENDS))
    ] = _DEFAULT_GENERATION,
    base_url: BaseUrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="The response as one JSON object.")] = False,
    config: ConfigOption = None,
) -> None:
    """Generate one response with a backend, outside the pipeline: to check a model or server."""
    settings = settings_or_exit(config)
    if not prompt.strip():
        console.print("[red]error:[/] the prompt is empty")
        raise typer.Exit(2)
    spec = _backend_spec(ModelSpec, name=model, model=model, backend=backend.value, base_url=base_url)

    async def _generate() -> Any:
        generator = make_generator(spec, settings)
        try:
            [result] = await generator.generate(
                [GenerationRequest(prompt_id_for(prompt), prompt, settings.seed)]
            )
            return result
        finally:
            await generator.close()

    try:
        result = asyncio.run(_generate())
    except BackendError as exc:
        result = exc
    if isinstance(result, BackendError):
        console.print(f"[red]error:[/] {escape(result.reason)}")
        raise typer.Exit(1)
    if as_json:
        print(json.dumps({"model": model, "backend": backend.value, **dataclasses.asdict(result)}))
    else:
        out.print(result.text, markup=False, highlight=False)


def judge(
    model: ModelOption,
    prompt: Annotated[str, typer.Option("--prompt", help="The question both answers reply to.")],
    a: Annotated[str, typer.Option("--a", help="Answer A.")],
    b: Annotated[str, typer.Option("--b", help="Answer B.")],
    backend: Annotated[
        JudgeBackendChoice, typer.Option("--backend", help=_listed(_CLI_JUDGES))
    ] = _DEFAULT_JUDGE,
    base_url: BaseUrlOption = None,
    reference: Annotated[
        str | None, typer.Option("--reference", help="verifier: the right answer (the prompt's reference).")
    ] = None,
    scorer: Annotated[
        str | None, typer.Option("--scorer", help="verifier: exact, numeric, contains or module:function.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    config: ConfigOption = None,
) -> None:
    """Judge answer A against answer B in both orders, and print the resolved verdict with both
    orders' raw verdicts (an order-dependent verdict is a tie)."""
    settings = settings_or_exit(config)
    if not prompt.strip():
        console.print("[red]error:[/] --prompt is empty")
        raise typer.Exit(2)
    judge_spec = _backend_spec(
        type(settings.judge),
        **{**settings.judge.model_dump(), "backend": backend.value, "base_url": base_url, "model": model},
    )
    if backend != SIMULATED:
        judge_spec = judge_spec.model_copy(update={"name": model})
    settings = settings.model_copy(update={"judge": judge_spec})
    prompt_id = prompt_id_for(prompt, "cli")
    candidates = [
        Candidate(
            response_id=f"r-{side}", model=f"answer-{side}", text=text, superiority=0.5, simulated=False
        )
        for side, text in (("a", a), ("b", b))
    ]
    pair = KinPair(
        pair_id=pair_id_for(prompt_id, "r-a", "r-b"),
        prompt_id=prompt_id,
        prompt_text=prompt,
        response_a=candidates[0],
        response_b=candidates[1],
        policy="cli",
        similarity=1.0,
        gap=0.0,
        # What the verifier checks against, as a prompt's metadata carries it.
        prompt_metadata={
            key: value for key, value in (("reference", reference), ("scorer", scorer)) if value is not None
        },
    )

    async def _judge() -> list[Any]:
        judge_backend = make_judge(settings)
        try:
            return await judge_backend.judge(requests_for(pair, settings.seed))
        finally:
            await judge_backend.close()

    try:
        first, second = asyncio.run(_judge())
    except BackendError as exc:
        first = second = exc
    for reply in (first, second):
        if isinstance(reply, BackendError):
            console.print(f"[red]error:[/] {escape(reply.reason)}")
            raise typer.Exit(1)
    preference = resolve_pair(pair, first, second, settings.judge.name)
    passes = {
        "verdict_ab": {**first.verdict.model_dump(), "raw": first.raw, "p_first": first.p_first},
        "verdict_ba": {**second.verdict.model_dump(), "raw": second.raw, "p_first": second.p_first},
    }
    if as_json:
        resolved = {
            "winner": preference.winner.value,
            "consistent": preference.consistent,
            "confidence": preference.confidence,
            "judge": preference.judge,
            "simulated": preference.simulated,
        }
        print(json.dumps({**resolved, **passes}))
        return
    verdict = "tie" if preference.winner.value == "TIE" else f"answer {preference.winner.value} wins"
    out.print(f"{verdict} (consistent: {str(preference.consistent).lower()}, judge {preference.judge})")
    out.print(
        f"A shown first: {first.verdict.winner} ({first.verdict.confidence:.2f}) {first.verdict.rationale}"
    )
    out.print(
        f"B shown first: {second.verdict.winner} ({second.verdict.confidence:.2f}) {second.verdict.rationale}"
    )

"""Generation stage: each prompt on karma.prompts becomes one response per model."""

from __future__ import annotations

import asyncio
import time

from karma.agents.kinship import load_profiles
from karma.agents.simulated import SimulatedGenerator
from karma.schemas.models import Prompt, Response, response_id_for
from karma.streams.app import Stage
from karma.streams.codecs import DecodeError, decode, encode
from karma.streams.config import ModelSpec
from karma.streams.metrics import MESSAGES_IN, STAGE_LATENCY

STAGE = "generation"


def build_generators(stage: Stage, models: list[ModelSpec]) -> list[SimulatedGenerator]:
    profiles = load_profiles(stage.settings.kin.profiles)
    return [
        SimulatedGenerator(
            model=spec.name,
            latent_quality=spec.latent_quality
            if spec.latent_quality is not None
            else profiles.superiority(spec.name),
            seed=stage.settings.seed,
            latency_s=spec.simulated_latency_s,
        )
        for spec in models
    ]


def respond(generator: SimulatedGenerator, prompt: Prompt) -> Response:
    started = time.perf_counter()
    text = generator.generate(prompt.prompt_id, prompt.text)
    return Response(
        response_id=response_id_for(prompt.prompt_id, generator.model),
        prompt_id=prompt.prompt_id,
        prompt_text=prompt.text,
        model=generator.model,
        text=text,
        backend="simulated",
        simulated=True,
        num_tokens=len(text.split()),
        latency_ms=(time.perf_counter() - started) * 1000,
    )


def register(stage: Stage, models: list[ModelSpec]) -> None:
    generators = build_generators(stage, models)

    @stage.app.agent(stage.topics["prompts"], name="generate")
    async def generate(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            MESSAGES_IN.labels(STAGE).inc()
            with STAGE_LATENCY.labels(STAGE).time():
                try:
                    prompt = decode(event.value, Prompt)
                except DecodeError as exc:
                    await stage.dead_letter(event, stage=STAGE, reason=exc.reason, error_type=exc.kind)
                    continue
                for generator in generators:
                    if generator.latency_s:
                        await asyncio.sleep(generator.latency_s)
                    response = respond(generator, prompt)
                    await stage.publish(STAGE, "responses", prompt.prompt_id, encode(response))

"""Seeded, CPU-only stand-ins for real models and judges, for tests, demos and benchmarks.

Everything they produce says so: responses carry backend="simulated" and simulated=True,
their text starts with "[simulated <model>]", and preferences judged here are simulated=True.

Assumptions (kept simple and stated, not tuned to favour any pairing policy):
- each model has a latent quality in [0, 1]; better models write somewhat longer answers;
- the judge prefers the response shown first with probability
  sigmoid(gap / temperature + position_bias + length_bias * log(len_first / len_second)):
  accuracy falls as the quality gap shrinks, the first position gets a bonus (so verdicts on
  close pairs sometimes flip with the order), and the longer answer gets a bonus too.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from karma.agents.backends.base import (
    BackendError,
    Generation,
    GenerationRequest,
    JudgeReply,
    JudgeRequest,
)
from karma.agents.judge_prompt import RawVerdict
from karma.agents.kinship import load_profiles
from karma.agents.seeding import seeded_rng
from karma.schemas.models import Winner

if TYPE_CHECKING:  # annotations only: config reads the backends' names, not the reverse
    from karma.streams.config import KarmaSettings, ModelSpec

_WORDS = tuple(
    "the answer depends on context and careful reasoning shows that each step follows from "
    "the previous one so we first restate the question then weigh the evidence and conclude "
    "with a clear summary including caveats examples and a short justification".split()
)


@dataclass(frozen=True)
class SimulatedGenerator:
    model: str
    latent_quality: float
    seed: int = 0
    latency_s: float = 0.0  # waited by the agent per response, to mimic a real model's pace
    crash_on: str | None = None  # fault injection: a prompt containing this raises, like a bug

    def generate(self, prompt_id: str, prompt_text: str) -> str:
        if self.crash_on and self.crash_on in prompt_text:
            raise RuntimeError(f"simulated crash of {self.model} on prompt {prompt_id}")
        rng = seeded_rng(self.seed, self.model, prompt_id)
        length = max(5, int(rng.gauss(20 + 40 * self.latent_quality, 6)))
        body = " ".join(rng.choice(_WORDS) for _ in range(length))
        return f"[simulated {self.model}] {body}."


@dataclass(frozen=True)
class Verdict:
    winner: Winner  # in the order shown: A = the response shown first
    confidence: float


@dataclass(frozen=True)
class SimulatedJudge:
    qualities: dict[str, float]
    position_bias: float = 0.3
    temperature: float = 0.1
    seed: int = 0
    name: str = "simulated-judge"
    length_bias: float = 0.0

    def quality(self, model: str) -> float:
        if model in self.qualities:
            return self.qualities[model]
        return sum(self.qualities.values()) / max(1, len(self.qualities))

    def judge(
        self,
        pair_id: str,
        first_model: str,
        second_model: str,
        first_length: int | None = None,
        second_length: int | None = None,
    ) -> Verdict:
        """One pass with `first_model`'s response shown first; seeded per pair and order.
        Lengths (words) are optional: without both, no length bias applies."""
        gap = self.quality(first_model) - self.quality(second_model)
        logit = gap / self.temperature + self.position_bias
        if first_length and second_length:
            logit += self.length_bias * math.log(first_length / second_length)
        p_first = 1.0 / (1.0 + math.exp(-logit))
        draw = seeded_rng(self.seed, pair_id, first_model, second_model).random()
        winner = Winner.A if draw < p_first else Winner.B
        return Verdict(winner=winner, confidence=max(p_first, 1.0 - p_first))


@dataclass
class SimulatedGeneratorBackend:
    simulator: SimulatedGenerator
    backend: str = "simulated"
    # A checkpoint "switched to" changes only this: the stand-in answers as before, and its
    # records carry the version (and say they are simulated), so the switch can be tested on the CPU.
    version: int = 1

    @property
    def model(self) -> str:
        return self.simulator.model

    async def load(self) -> None:
        return None  # nothing to load: a seeded stand-in

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation | BackendError]:
        results: list[Generation | BackendError] = []
        for request in requests:
            started = time.perf_counter()
            if self.simulator.latency_s:
                await asyncio.sleep(self.simulator.latency_s)  # like a GPU would take
            text = self.simulator.generate(request.prompt_id, request.prompt_text)
            latency_ms = (time.perf_counter() - started) * 1000
            results.append(Generation(text, len(text.split()), latency_ms, True, self.version))
        return results

    async def switch(self, name: str, path: str, version: int) -> None:
        self.version = version

    async def close(self) -> None:
        return None


@dataclass
class SimulatedJudgeBackend:
    simulator: SimulatedJudge
    backend: str = "simulated"

    @property
    def name(self) -> str:
        return self.simulator.name

    async def load(self) -> None:
        return None  # nothing to load: a seeded stand-in

    async def judge(self, requests: Sequence[JudgeRequest]) -> list[JudgeReply | BackendError]:
        replies: list[JudgeReply | BackendError] = []
        for r in requests:
            shown = self.simulator.judge(
                r.pair_id,
                r.first_model,
                r.second_model,
                len(r.first_text.split()),
                len(r.second_text.split()),
            )
            verdict = RawVerdict(
                winner=shown.winner.value, confidence=shown.confidence, rationale="simulated verdict"
            )
            replies.append(JudgeReply(verdict, verdict.model_dump_json(), None, simulated=True))
        return replies

    async def close(self) -> None:
        return None


def build_judge(settings: KarmaSettings) -> SimulatedJudge:
    profiles = load_profiles(settings.kin.profiles)
    qualities = {
        spec.name: spec.latent_quality if spec.latent_quality is not None else profiles.superiority(spec.name)
        for spec in settings.pool
    }
    return SimulatedJudge(
        qualities=qualities,
        position_bias=settings.judge.position_bias,
        temperature=settings.judge.quality_scale,
        length_bias=settings.judge.length_bias,
        seed=settings.seed,
        name=settings.judge.name,
    )


def generator(spec: ModelSpec, settings: KarmaSettings) -> SimulatedGeneratorBackend:
    """The registry's entry point: a seeded stand-in for one pool model."""
    quality = spec.latent_quality
    if quality is None:
        quality = load_profiles(settings.kin.profiles).superiority(spec.name)
    return SimulatedGeneratorBackend(
        SimulatedGenerator(
            spec.name,
            quality,
            seed=settings.seed,
            latency_s=spec.simulated_latency_s,
            crash_on=spec.simulated_crash_on,
        )
    )


def judge(settings: KarmaSettings) -> SimulatedJudgeBackend:
    """The registry's entry point: the seeded judge of the configured pool."""
    return SimulatedJudgeBackend(build_judge(settings))

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

import hashlib
import math
import random
from dataclasses import dataclass

from karma.schemas.models import Winner

_WORDS = tuple(
    "the answer depends on context and careful reasoning shows that each step follows from "
    "the previous one so we first restate the question then weigh the evidence and conclude "
    "with a clear summary including caveats examples and a short justification".split()
)


def seeded_rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


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

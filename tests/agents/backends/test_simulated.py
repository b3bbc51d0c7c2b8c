"""Simulated models are seeded, deterministic, and say they are simulated."""

from __future__ import annotations

import asyncio

from karma.agents.backends import GenerationRequest
from karma.agents.backends.simulated import SimulatedGenerator, SimulatedGeneratorBackend, SimulatedJudge
from karma.agents.generation import to_response
from karma.schemas.models import Prompt, Winner


def test_generation_is_deterministic_and_marked() -> None:
    gen = SimulatedGeneratorBackend(SimulatedGenerator("m1", latent_quality=0.5, seed=3))
    prompt = Prompt(prompt_id="p-1", text="Why?")
    request = GenerationRequest(prompt.prompt_id, prompt.text)
    generated = asyncio.run(gen.generate([request, request]))
    first, second = (to_response(prompt, gen, g) for g in generated)  # type: ignore[arg-type]
    assert first.text == second.text and first.response_id == second.response_id
    assert first.simulated and first.backend == "simulated"
    assert first.text.startswith("[simulated m1]")
    assert SimulatedGenerator("m1", 0.5, seed=4).generate("p-1", "Why?") != first.text


def test_better_models_win_more_often() -> None:
    judge = SimulatedJudge({"strong": 0.9, "weak": 0.1}, position_bias=0.0, temperature=0.1)
    wins = sum(judge.judge(f"pair-{i}", "strong", "weak").winner is Winner.A for i in range(200))
    assert wins > 190


def test_position_bias_favours_the_first_shown() -> None:
    judge = SimulatedJudge({"a": 0.5, "b": 0.5}, position_bias=2.0, temperature=0.1)
    first_wins = sum(judge.judge(f"pair-{i}", "a", "b").winner is Winner.A for i in range(200))
    assert first_wins > 150

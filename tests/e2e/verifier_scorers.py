"""A user's own scorer (`module:function`) for tests/e2e/test_verifier.py, imported by the worker
process the test starts. Simulated answers cannot be right about anything, so the reference names
a model and an answer is right when that model wrote it (its text starts "[simulated <model>]",
agents/backends/simulated.py): which answer of a pair is right is then known beforehand."""

from __future__ import annotations

NAME = "tests.e2e.verifier_scorers:written_by"


def written_by(answer: str, reference: str) -> float:
    return float(answer.startswith(f"[simulated {reference}]"))

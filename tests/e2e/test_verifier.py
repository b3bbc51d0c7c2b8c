"""`judge.backend: verifier` end to end (real broker, `karma run`, simulated models): prompts
that carry a reference in their metadata are labelled by checking the answers against it; a
prompt without one gets a dead letter per pair naming it, never a guess; `karma audit` finds
nothing unaccounted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from karma.schemas.models import DeadLetter, Preference, Prompt, Winner
from tests.e2e.conftest import Pipeline, audit
from tests.e2e.verifier_scorers import NAME, written_by

LLAMA, WIZARD, VICUNA = "llama-2-13b-chat", "wizardlm-13b", "vicuna-33b"
# The default kin rule pairs these two among the default pool (README, "The kin rule").
KIN_PAIRS = {frozenset((LLAMA, WIZARD)), frozenset((WIZARD, VICUNA))}


def _prompt(name: str, metadata: dict[str, str]) -> Prompt:
    return Prompt(prompt_id=f"verify-{name}", text=f"Question {name}: who wrote this?", metadata=metadata)


PROMPTS = [
    # The judge's default scorer (judge.scorer, a module:function) marks wizardlm's answers right:
    # it wins both of its pairs.
    _prompt("wizard", {"reference": WIZARD}),
    # llama is right: it wins against wizardlm; wizardlm vs vicuna has no right answer, a tie.
    _prompt("llama", {"reference": LLAMA, "skill": "provenance"}),
    # A built-in scorer named in the metadata: every simulated answer contains its marker, so
    # both answers of every pair are right: ties.
    _prompt("both", {"reference": "[simulated", "scorer": "contains"}),
    # No reference: a letter for each of its pairs.
    _prompt("none", {"skill": "provenance"}),
]


def test_the_verifier_labels_by_the_reference_and_letters_a_prompt_without_one(
    pipeline_factory: Callable[..., Pipeline],
) -> None:
    pipeline = pipeline_factory(judge={"backend": "verifier", "scorer": NAME})
    expected = pipeline.expected_preference_ids(PROMPTS)
    by_prompt = {p.prompt_id: p for p in PROMPTS}
    pipeline.start_worker()
    pipeline.submit(PROMPTS)

    lettered = len(KIN_PAIRS)  # the prompt without a reference: one letter per pair
    preferences = pipeline.wait_for("preferences", lambda got: len(got) >= len(expected) - lettered)
    letters = pipeline.wait_for("dlq", lambda got: len(got) >= lettered)

    seen: dict[str, Preference] = {}
    for received in preferences:
        preference = received.record
        assert isinstance(preference, Preference)
        seen[preference.preference_id] = preference
    assert set(seen) <= expected and len(seen) == len(expected) - lettered
    for preference in seen.values():
        prompt = by_prompt[preference.prompt_id]
        assert "reference" in prompt.metadata and preference.judge == "verifier"
        assert frozenset((preference.response_a.model, preference.response_b.model)) in KIN_PAIRS
        scorer = prompt.metadata.get("scorer")
        reference = prompt.metadata["reference"]
        right = [
            written_by(c.text, reference)
            if scorer is None
            else float(reference.casefold() in c.text.casefold())
            for c in (preference.response_a, preference.response_b)
        ]
        assert [preference.score_a, preference.score_b] == right, preference
        assert preference.winner is _winner(*right) and preference.consistent
        assert preference.simulated  # simulated answers, whatever labelled them
    # What that means per prompt, spelled out: wizardlm wins both its pairs; llama beats wizardlm
    # and wizardlm vs vicuna is a tie; with every answer right, only ties.
    outcomes = {
        (p.prompt_id, frozenset((p.response_a.model, p.response_b.model))): p.chosen.model
        if p.chosen
        else None
        for p in seen.values()
    }
    assert outcomes == {
        ("verify-wizard", frozenset((LLAMA, WIZARD))): WIZARD,
        ("verify-wizard", frozenset((WIZARD, VICUNA))): WIZARD,
        ("verify-llama", frozenset((LLAMA, WIZARD))): LLAMA,
        ("verify-llama", frozenset((WIZARD, VICUNA))): None,
        ("verify-both", frozenset((LLAMA, WIZARD))): None,
        ("verify-both", frozenset((WIZARD, VICUNA))): None,
    }

    records = [r.record for r in letters]
    assert all(isinstance(letter, DeadLetter) for letter in records)
    noref = [letter for letter in records if isinstance(letter, DeadLetter)]
    assert len(noref) == lettered, noref
    for letter in noref:
        assert letter.error_type == "no_reference" and letter.prompt_id == "verify-none"
        assert "prompt verify-none has no reference" in letter.reason and letter.stage == "judging"
        assert frozenset(letter.models) in KIN_PAIRS and letter.source_topic == pipeline.settings.topic(
            "pairs"
        )

    ledger: dict[str, Any] = audit(pipeline)
    assert ledger["unaccounted_total"] == 0 and ledger["submitted"] == len(PROMPTS)
    states = {p["prompt_id"]: p["state"] for p in ledger["prompts"]}
    assert states.get("verify-none") == "dead-lettered"


def _winner(score_a: float, score_b: float) -> Winner:
    if score_a == score_b:
        return Winner.TIE
    return Winner.A if score_a > score_b else Winner.B


def test_a_default_scorer_that_does_not_import_stops_the_worker_at_start(
    pipeline_factory: Callable[..., Pipeline],
) -> None:
    pipeline = pipeline_factory(judge={"backend": "verifier", "scorer": "tests.nowhere:score"})
    worker = pipeline.start_worker("worker", "judge")
    assert worker.wait(timeout=60) == 3  # as a model that cannot load: before anything is consumed
    errors = [line for line in pipeline.log_lines() if "error:" in line]
    assert errors and "judge.scorer 'tests.nowhere:score'" in errors[-1] and "cannot import" in errors[-1]
    pipeline.workers.remove(worker)

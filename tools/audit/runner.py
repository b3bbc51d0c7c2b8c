"""`karma audit` on a cluster: the five topics read to their end offsets (no consumer group,
nothing committed) and handed to `build_ledger`, with the rating stage's own pairing as the
expectation where it can be known (`expected_pairs_for`)."""

from __future__ import annotations

import time
from collections.abc import Mapping

from karma.agents.gathering import Gathered
from karma.agents.kinship import load_profiles
from karma.agents.pairing import make_pairs
from karma.schemas.models import Response
from karma.streams.client import Received, read_topic
from karma.streams.config import KarmaSettings
from karma.tools.audit.accounts import ExpectedPairs, build_ledger
from karma.tools.audit.ledger import Ledger


def expected_pairs_for(settings: KarmaSettings) -> ExpectedPairs:
    """The rating stage's own pairing (make_pairs, the configured profiles, rule and policy) as
    the audit needs it. Only right with prior competency: online, pairing follows the verdicts."""
    profiles = load_profiles(settings.kin.profiles)
    rule = settings.kin.rule()

    def expected(
        prompt_id: str, prompt_text: str, answers: Mapping[str, Response]
    ) -> dict[str, tuple[str, str]]:
        gathered = Gathered(
            prompt_id,
            prompt_text,
            {
                m: {"response_id": r.response_id, "text": r.text, "simulated": r.simulated}
                for m, r in answers.items()
            },
        )
        chosen = make_pairs(gathered, profiles, rule, settings.policy, settings.kin.hybrid_weight)
        return {pair.pair_id: (pair.response_a.model, pair.response_b.model) for pair in chosen}

    return expected


# The topics a prompt's account is read from, in pipeline order (not karma.checkpoints).
AUDITED = ("prompts", "responses", "pairs", "preferences", "dlq")


async def audit(
    settings: KarmaSettings, now_ms: int | None = None, *, backstop_s: float | None = None
) -> Ledger:
    """Reads the five topics to their end offsets and builds the ledger. `backstop_s` defaults to
    the rating stage's backstop (`gather_timeout_s`)."""
    expected = None if settings.competency.online else expected_pairs_for(settings)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    # In pipeline order, one after another: each topic's end offsets are taken no earlier than
    # those of the topics before it, so whatever a message read caused is read too (or younger).
    read: dict[str, list[Received]] = {}
    for stage in AUDITED:
        read[stage] = [msg async for msg in read_topic(settings, stage, until_end=True)]
    backstop = settings.gather_timeout_s if backstop_s is None else backstop_s
    return build_ledger(
        read["prompts"],
        read["responses"],
        read["pairs"],
        read["preferences"],
        read["dlq"],
        pool=settings.model_names,
        now_ms=now,
        backstop_ms=int(backstop * 1000),
        expected_pairs=expected,
    )

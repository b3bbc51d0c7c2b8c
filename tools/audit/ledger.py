"""What `karma audit` reports: each prompt's class (`State`), the prompts that are not (plainly)
complete with what they lack (`PromptAccount`), the undecodable prompt messages
(`UndecodablePrompt`), and the totals (`Ledger`), as data and as JSON. No Kafka."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal


class State(StrEnum):
    COMPLETE = "complete"
    COMPLETE_LATE = "complete-late"
    PARTIAL = "partial"
    DEAD_LETTERED = "dead-lettered"
    PENDING = "pending"
    UNACCOUNTED = "unaccounted"


# The order the not-complete prompts are listed in: what needs a look first.
LISTING_ORDER = (State.UNACCOUNTED, State.PENDING, State.DEAD_LETTERED, State.PARTIAL, State.COMPLETE_LATE)
# The states an undecodable prompt message can be in.
UNDECODABLE_STATES = (State.DEAD_LETTERED, State.PENDING, State.UNACCOUNTED)


@dataclass(frozen=True)
class PromptAccount:
    """One prompt that is not (plainly) complete: its class, why, and what it lacks."""

    prompt_id: str
    state: State
    preferences: int
    pairs: int
    reasons: tuple[str, ...]  # the failure records' errors and the letters' reasons
    missing: tuple[str, ...]  # what a complete prompt has and this one does not (yet)
    submitted_ms: int  # the broker timestamp of its (first) prompt message
    last_ms: int  # its newest prompt, response or pair message: the backstop counts from here

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_id": self.prompt_id,
            "state": self.state.value,
            "preferences": self.preferences,
            "pairs": self.pairs,
            "reasons": list(self.reasons),
            "missing": list(self.missing),
            "submitted_ms": self.submitted_ms,
            "last_ms": self.last_ms,
        }


@dataclass(frozen=True)
class UndecodablePrompt:
    """A message on the prompts topic that is no valid prompt: dead-lettered, or not (yet)."""

    partition: int
    offset: int
    prompt_id: str | None  # what its key names, if anything
    error: str
    state: State  # dead-lettered, pending or unaccounted

    def to_dict(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "offset": self.offset,
            "prompt_id": self.prompt_id,
            "error": self.error,
            "state": self.state.value,
        }


@dataclass(frozen=True)
class Ledger:
    submitted: int
    counts: Mapping[State, int]
    prompts: tuple[PromptAccount, ...]  # every prompt not in `complete`, in LISTING_ORDER
    undecodable: tuple[UndecodablePrompt, ...]
    seen_twice: Mapping[str, int]  # topic -> ids seen on it more than once (replays)
    orphans: Mapping[str, int]  # topic -> ids whose prompt was never submitted
    pairs_checked: Literal["expected", "emitted"]
    now_ms: int
    backstop_ms: int

    @property
    def unaccounted(self) -> int:
        """Prompts and undecodable prompt messages that should have settled and did not: 0 when
        the pipeline keeps its conservation law."""
        return self.counts[State.UNACCOUNTED] + sum(u.state is State.UNACCOUNTED for u in self.undecodable)

    def to_dict(self, show: int | None = None) -> dict[str, Any]:
        """The ledger as JSON-ready data; `show` caps the listed prompts (None: all)."""
        listed = self.prompts if show is None else self.prompts[:show]
        undecodable = Counter(u.state.value for u in self.undecodable)
        return {
            "submitted": self.submitted,
            "counts": {state.value: self.counts[state] for state in State},
            "unaccounted_total": self.unaccounted,
            "undecodable_prompts": {
                "total": len(self.undecodable),
                **{state.value: undecodable[state.value] for state in UNDECODABLE_STATES},
                "messages": [u.to_dict() for u in self.undecodable],
            },
            "seen_twice": dict(self.seen_twice),
            "orphans": dict(self.orphans),
            "pairs_checked": self.pairs_checked,
            "backstop_s": self.backstop_ms / 1000,
            "now_ms": self.now_ms,
            "not_complete": len(self.prompts),
            "prompts": [p.to_dict() for p in listed],
        }

    def to_json(self, show: int | None = None) -> str:
        return json.dumps(self.to_dict(show), indent=2)

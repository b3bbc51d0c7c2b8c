"""`karma audit`: the ledger of every prompt, from the topics alone.

The pipeline's conservation law: every submitted prompt ends as all the preferences its pairs
yield, or as dead letter(s) naming it with the reason. The audit reads the five topics to their
end offsets (no consumer group, nothing committed) and puts every distinct decoded prompt in
exactly one class:

- complete: every model of the pool answered, every pair has its preference, no backstop;
- complete-late: the same, after an `incomplete` letter (the stragglers came and were paired);
- partial: settled with at least one preference, but something is short (a model failed or
  was named missing, an answer or a pair was dead-lettered);
- dead-lettered: settled with no preference; the letters naming it say why;
- pending / unaccounted: not settled, and its newest prompt, response or pair message is
  younger / older than the backstop. (Counted from the newest, not from the prompt: an answer
  that comes after the rating stage's backstop reopens the prompt, and the stages get a
  backstop's time to pair and judge it before the audit calls it lost.)

"Settled" means nothing is owed any more: every model answered, failed (a failure record) or
was named missing by an `incomplete` letter; every pair has a preference or a judging letter;
fewer than two usable answers carry the rating stage's `unpaired` or `incomplete` letter; and,
where pairing is a pure function of the answers (`competency.online: false`), every pair the
policy picks among the usable answers is on the pairs topic. With online competency the
pairs depend on the verdicts seen so far, so only the pairs that were emitted are checked:
a pair lost before it reached the pairs topic is then invisible to the audit.

Letters are matched to what they concern by the message they point at (source topic,
partition, offset): a judging letter settles its pair, a letter on a response (`late`,
`exception`, the rating stage's `too_large`) makes that answer unusable, a generation letter
on a prompt message ends a prompt that no response ever came for (the rating stage never heard
of it, so no backstop letter will come). A pair the rating stage could not write (`too_large`,
`refused`) has a letter that points at no message and names the pair in `record_id`: the pair
is short, not owed. The rating stage's `unpaired` and `incomplete` letters point at no message:
they are matched by the prompt id they name; `unpaired` ends the prompt, `incomplete` accounts
for the models its reason names (as whole words), and so does a `late` letter that points at
no response.

`build_ledger` is pure (tested without Kafka); `audit` reads the topics and calls it.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from karma.agents.gathering import Gathered
from karma.agents.kinship import load_profiles
from karma.agents.pairing import make_pairs
from karma.schemas.models import DeadLetter, KinPair, Preference, Prompt, Response, prompt_id_of_key
from karma.streams.client import Received, read_topic
from karma.streams.config import KarmaSettings
from karma.streams.topics import STAGES

# The pairs the rating stage must emit for a prompt's usable answers (prompt id, prompt text,
# model -> answer): pair id -> its two models.
ExpectedPairs = Callable[[str, str, Mapping[str, Response]], Mapping[str, tuple[str, str]]]
# Where a message is: topic, partition, offset (what a dead letter points at).
Coordinates = tuple[str, int, int]


class State(StrEnum):
    COMPLETE = "complete"
    COMPLETE_LATE = "complete-late"
    PARTIAL = "partial"
    DEAD_LETTERED = "dead-lettered"
    PENDING = "pending"
    UNACCOUNTED = "unaccounted"


# The order the not-complete prompts are listed in: what needs a look first.
LISTING_ORDER = (State.UNACCOUNTED, State.PENDING, State.DEAD_LETTERED, State.PARTIAL, State.COMPLETE_LATE)


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
                **{state.value: undecodable[state.value] for state in _UNDECODABLE_STATES},
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


_UNDECODABLE_STATES = (State.DEAD_LETTERED, State.PENDING, State.UNACCOUNTED)


@dataclass
class _Story:
    """Everything the topics say about one submitted prompt."""

    prompt: Prompt
    submitted_ms: int
    last_ms: int
    answers: dict[str, Response] = field(default_factory=dict)  # model -> its first answer
    failures: dict[str, Response] = field(default_factory=dict)  # model -> its failure record
    pairs: dict[str, tuple[str, str]] = field(default_factory=dict)  # emitted: pair id -> models
    preferences: set[str] = field(default_factory=set)
    judged: set[str] = field(default_factory=set)  # pair ids with a preference
    lettered_answers: set[str] = field(default_factory=set)  # response ids a letter points at
    lettered_pairs: set[str] = field(default_factory=set)  # pair ids a letter points at
    lettered_bad_pairs: int = 0  # letters on its pair messages that did not decode
    lettered_prompt: bool = False  # a letter points at its prompt message
    letters: list[DeadLetter] = field(default_factory=list)
    unplaced: list[DeadLetter] = field(default_factory=list)  # letters that point at no message read
    # Outputs never written (too large, or refused by the broker) whose letter points at no
    # message: the rating stage's pairs. Record id -> its letter.
    unwritten: dict[str, DeadLetter] = field(default_factory=dict)

    def letters_of(self, error_type: str) -> list[DeadLetter]:
        return [letter for letter in self.letters if letter.error_type == error_type]


@dataclass
class _Index:
    """What a dead letter can point at: the messages of the prompts, responses and pairs topics."""

    prompts: dict[Coordinates, str] = field(default_factory=dict)  # -> prompt id
    bad_prompts: dict[Coordinates, Received] = field(default_factory=dict)
    responses: dict[Coordinates, Response] = field(default_factory=dict)
    pairs: dict[Coordinates, tuple[str | None, str | None]] = field(default_factory=dict)  # prompt, pair


def build_ledger(
    prompts: Sequence[Received],
    responses: Sequence[Received],
    pairs: Sequence[Received],
    preferences: Sequence[Received],
    letters: Sequence[Received],
    *,
    pool: Sequence[str],
    now_ms: int,
    backstop_ms: int,
    expected_pairs: ExpectedPairs | None = None,
) -> Ledger:
    """Classifies every distinct decoded prompt of `prompts` by what the other topics hold.

    `pool`: the models every prompt should be answered by. A prompt not settled is pending while
    its newest prompt, response or pair message is younger than `backstop_ms` at `now_ms`, and
    unaccounted after. `expected_pairs` (None: check only the emitted pairs) names the pairs the
    rating stage must emit for a prompt's answers."""
    stories: dict[str, _Story] = {}
    index = _Index()
    seen: dict[str, Counter[str]] = {
        stage: Counter() for stage in ("prompts", "responses", "pairs", "preferences")
    }
    orphans: dict[str, set[str]] = {stage: set() for stage in ("responses", "pairs", "preferences")}

    for msg in prompts:
        if not isinstance(msg.record, Prompt):
            index.bad_prompts[_at(msg)] = msg
            continue
        prompt = msg.record
        seen["prompts"][prompt.prompt_id] += 1
        index.prompts[_at(msg)] = prompt.prompt_id
        stamp = _stamp(msg, prompt.created_at_ms)
        story = stories.setdefault(prompt.prompt_id, _Story(prompt, stamp, stamp))
        story.submitted_ms = min(story.submitted_ms, stamp)
        story.last_ms = max(story.last_ms, stamp)

    for msg in responses:
        if not isinstance(msg.record, Response):
            continue  # the rating stage dead-letters it; it names no model
        response = msg.record
        seen["responses"][response.response_id] += 1
        index.responses[_at(msg)] = response
        story = stories.get(response.prompt_id)
        if story is None:
            orphans["responses"].add(response.response_id)
            continue
        story.last_ms = max(story.last_ms, _stamp(msg, response.created_at_ms))
        (story.failures if response.failed else story.answers).setdefault(response.model, response)

    for msg in pairs:
        if not isinstance(msg.record, KinPair):
            index.pairs[_at(msg)] = (prompt_id_of_key(msg.key), None)
            continue
        pair = msg.record
        seen["pairs"][pair.pair_id] += 1
        index.pairs[_at(msg)] = (pair.prompt_id, pair.pair_id)
        story = stories.get(pair.prompt_id)
        if story is None:
            orphans["pairs"].add(pair.pair_id)
            continue
        story.last_ms = max(story.last_ms, _stamp(msg, pair.created_at_ms))
        story.pairs.setdefault(pair.pair_id, (pair.response_a.model, pair.response_b.model))

    for msg in preferences:
        if not isinstance(msg.record, Preference):
            continue
        preference = msg.record
        seen["preferences"][preference.preference_id] += 1
        story = stories.get(preference.prompt_id)
        if story is None:
            orphans["preferences"].add(preference.preference_id)
            continue
        story.preferences.add(preference.preference_id)
        story.judged.add(preference.pair_id)
        # A preference proves its pair was emitted, even if the pairs topic no longer has it.
        models = (preference.response_a.model, preference.response_b.model)
        story.pairs.setdefault(preference.pair_id, models)

    lettered_bad_prompts: set[Coordinates] = set()
    for msg in letters:
        if isinstance(msg.record, DeadLetter):
            _file_letter(msg.record, msg.key, stories, index, lettered_bad_prompts)

    accounts = [_account(story, pool, expected_pairs, now_ms, backstop_ms) for story in stories.values()]
    counts = Counter(account.state for account in accounts)
    order = {state: i for i, state in enumerate(LISTING_ORDER)}
    listed = sorted(
        (a for a in accounts if a.state is not State.COMPLETE),
        key=lambda a: (order[a.state], a.submitted_ms, a.prompt_id),
    )
    return Ledger(
        submitted=len(stories),
        counts={state: counts[state] for state in State},
        prompts=tuple(listed),
        undecodable=tuple(
            _undecodable(msg, at in lettered_bad_prompts, now_ms, backstop_ms)
            for at, msg in sorted(index.bad_prompts.items())
        ),
        seen_twice={stage: sum(n > 1 for n in ids.values()) for stage, ids in seen.items()},
        orphans={stage: len(ids) for stage, ids in orphans.items()},
        pairs_checked="emitted" if expected_pairs is None else "expected",
        now_ms=now_ms,
        backstop_ms=backstop_ms,
    )


def _at(msg: Received) -> Coordinates:
    return (msg.topic, msg.partition, msg.offset)


def _stamp(msg: Received, fallback_ms: int) -> int:
    """The broker's timestamp of a message (the record's own creation time if there is none)."""
    return msg.timestamp_ms if msg.timestamp_ms is not None else fallback_ms


def _file_letter(
    letter: DeadLetter,
    key: bytes | None,
    stories: Mapping[str, _Story],
    index: _Index,
    lettered_bad_prompts: set[Coordinates],
) -> None:
    """Files a letter with the prompt it names and with the message it points at."""
    at = (letter.source_topic, letter.source_partition, letter.source_offset)
    prompt_id = letter.prompt_id or prompt_id_of_key(key)  # version-1 letters name it by key only
    placed = True
    if at in index.bad_prompts:
        lettered_bad_prompts.add(at)
    elif at in index.prompts:
        prompt_id = index.prompts[at]
        if prompt_id in stories:
            stories[prompt_id].lettered_prompt = True
    elif at in index.responses:
        response = index.responses[at]
        prompt_id = response.prompt_id
        if prompt_id in stories:
            stories[prompt_id].lettered_answers.add(response.response_id)
    elif at in index.pairs:
        pair_prompt, pair_id = index.pairs[at]
        prompt_id = pair_prompt or prompt_id
        if prompt_id in stories:
            if pair_id is None:
                stories[prompt_id].lettered_bad_pairs += 1
            else:
                stories[prompt_id].lettered_pairs.add(pair_id)
    else:
        placed = False
    if prompt_id in stories:
        stories[prompt_id].letters.append(letter)
        if not placed:
            stories[prompt_id].unplaced.append(letter)
            if letter.record_id is not None:
                stories[prompt_id].unwritten[letter.record_id] = letter


def _account(
    story: _Story,
    pool: Sequence[str],
    expected_pairs: ExpectedPairs | None,
    now_ms: int,
    backstop_ms: int,
) -> PromptAccount:
    owed: list[str] = []  # what the pipeline still owes: settled when empty
    short: list[str] = []  # what will not come, with the letter or failure that says so
    # A `late` letter that points at no response read names its model in the reason.
    late = _named_models(pool, [letter for letter in story.unplaced if letter.error_type == "late"])
    usable = {
        m: r
        for m, r in story.answers.items()
        if r.response_id not in story.lettered_answers and m not in late
    }
    named_missing = _named_models(pool, story.letters_of("incomplete"))
    ended_by = _ended_by(story)
    for model in pool:
        if model in usable:
            continue
        why = _why_no_answer(model, story, named_missing, ended_by)
        (owed if why is None else short).append(f"answer from {model}: {why or 'no word yet'}")

    for pair_id, (a, b) in story.pairs.items():
        if pair_id in story.judged:
            continue
        if pair_id in story.lettered_pairs:
            short.append(f"preference for pair {pair_id} ({a} vs {b}): dead-lettered by the judge")
        else:
            owed.append(f"preference for pair {pair_id} ({a} vs {b}): no preference and no judging letter")

    unwritten = {rid: letter for rid, letter in story.unwritten.items() if rid not in story.pairs}
    short += [
        f"pair {rid}: not written to the pairs topic ({letter.error_type}: {letter.reason})"
        for rid, letter in unwritten.items()
    ]
    # Until every model is accounted for the rating stage is still gathering: nothing more is owed.
    if not owed:
        owed += _owed_pairs(story, pool, usable, ended_by is not None, expected_pairs, short, set(unwritten))
    if story.letters_of("unpaired") and not short:
        short.append("pairs: the rating stage dead-lettered the prompt unpaired")

    if owed:
        state = State.PENDING if story.last_ms + backstop_ms > now_ms else State.UNACCOUNTED
    elif not short:
        state = State.COMPLETE_LATE if story.letters_of("incomplete") else State.COMPLETE
    else:
        state = State.PARTIAL if story.preferences else State.DEAD_LETTERED
    return PromptAccount(
        prompt_id=story.prompt.prompt_id,
        state=state,
        preferences=len(story.preferences),
        pairs=len(story.pairs),
        reasons=_reasons(story),
        missing=tuple(owed + short),
        submitted_ms=story.submitted_ms,
        last_ms=story.last_ms,
    )


def _ended_by(story: _Story) -> str | None:
    """What ended the prompt for every model that has not answered, if anything did."""
    if story.letters_of("unpaired"):
        return "the rating stage ended the prompt (unpaired)"
    if story.lettered_prompt and not story.answers and not story.failures:
        # No response ever came and generation dead-lettered the prompt message: no rating
        # letter will come either (the rating stage never heard of the prompt).
        return "the prompt was dead-lettered in generation"
    return None


def _why_no_answer(model: str, story: _Story, named_missing: set[str], ended_by: str | None) -> str | None:
    """What accounts for a model without a usable answer; None when nothing does (yet)."""
    if model in story.answers:
        return "its answer was dead-lettered (not paired)"
    if model in story.failures:
        return f"failed ({story.failures[model].error})"
    if model in named_missing:
        return "named missing by the backstop (incomplete)"
    return ended_by


def _owed_pairs(
    story: _Story,
    pool: Sequence[str],
    usable: Mapping[str, Response],
    ended: bool,
    expected_pairs: ExpectedPairs | None,
    short: list[str],
    unwritten: set[str],
) -> list[str]:
    """What the rating stage owes once every model is accounted for: the letter that ends a prompt
    with fewer than two answers, or (when they can be known) the pairs its policy picks; pairs
    that will not come because their messages were dead-lettered go to `short`, and those it
    could not write (`unwritten`, already in `short`) are not owed."""
    if len(usable) < 2:
        rating_letter = story.letters_of("unpaired") or story.letters_of("incomplete")
        return (
            [] if rating_letter or ended else ["the rating stage's letter: fewer than two answers, no letter"]
        )
    if expected_pairs is None:
        return []
    answers = {m: usable[m] for m in pool if m in usable}
    expected = expected_pairs(story.prompt.prompt_id, story.prompt.text, answers)
    lost = [
        f"pair {pair_id} ({a} vs {b})"
        for pair_id, (a, b) in expected.items()
        if pair_id not in story.pairs and pair_id not in unwritten
    ]
    if not lost:
        return []
    if len(lost) <= story.lettered_bad_pairs:
        # As many undecodable pair messages of this prompt were dead-lettered: those were they.
        short += [f"{pair}: dead-lettered undecodable" for pair in lost]
        return []
    return [f"{pair}: expected, not on the pairs topic" for pair in lost]


def _named_models(pool: Iterable[str], letters: Sequence[DeadLetter]) -> set[str]:
    """The pool's models that the letters' reasons name, as whole words. (An `incomplete` reason
    may name answered or failed models too; those are accounted for anyway.)"""
    return {
        model
        for model in pool
        for letter in letters
        if re.search(rf"(?<![\w.:/-]){re.escape(model)}(?![\w:/-]|\.\w)", letter.reason)
    }


def _reasons(story: _Story) -> tuple[str, ...]:
    """The failure records' errors, then the letters' reasons, each once."""
    reasons = [f"{model} failed: {r.error}" for model, r in sorted(story.failures.items())]
    reasons += [f"{letter.error_type} ({letter.stage}): {letter.reason}" for letter in story.letters]
    return tuple(dict.fromkeys(reasons))


def _undecodable(msg: Received, lettered: bool, now_ms: int, backstop_ms: int) -> UndecodablePrompt:
    if lettered:
        state = State.DEAD_LETTERED
    elif (msg.timestamp_ms or 0) + backstop_ms > now_ms:
        state = State.PENDING
    else:
        state = State.UNACCOUNTED
    error = msg.error or f"not a Prompt: {type(msg.record).__name__}"
    return UndecodablePrompt(msg.partition, msg.offset, prompt_id_of_key(msg.key), error, state)


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
    for stage in STAGES:
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

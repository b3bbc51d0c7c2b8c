"""The audit's rules (see the package docstring): what one prompt's story settles, owes and
lacks (`account`), and the ledger of every prompt (`build_ledger`). Pure: tested without Kafka."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from karma.schemas.models import DeadLetter, Response, prompt_id_of_key
from karma.tools.audit.ledger import LISTING_ORDER, Ledger, PromptAccount, State, UndecodablePrompt
from karma.tools.audit.stories import Story, read_stories

if TYPE_CHECKING:  # only its shape: the audit's rules read no Kafka
    from karma.streams.client import Received

# The pairs the rating stage must emit for a prompt's usable answers (prompt id, prompt text,
# model -> answer): pair id -> its two models.
ExpectedPairs = Callable[[str, str, Mapping[str, Response]], Mapping[str, tuple[str, str]]]


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
    read = read_stories(prompts, responses, pairs, preferences, letters)
    accounts = [
        account(story, pool, expected_pairs, now_ms, backstop_ms) for story in read.by_prompt.values()
    ]
    counts = Counter(a.state for a in accounts)
    order = {state: i for i, state in enumerate(LISTING_ORDER)}
    listed = sorted(
        (a for a in accounts if a.state is not State.COMPLETE),
        key=lambda a: (order[a.state], a.submitted_ms, a.prompt_id),
    )
    return Ledger(
        submitted=len(read.by_prompt),
        counts={state: counts[state] for state in State},
        prompts=tuple(listed),
        undecodable=tuple(
            _undecodable(msg, at in read.lettered_bad_prompts, now_ms, backstop_ms)
            for at, msg in sorted(read.index.bad_prompts.items())
        ),
        seen_twice={topic: sum(n > 1 for n in ids.values()) for topic, ids in read.seen.items()},
        orphans={topic: len(ids) for topic, ids in read.orphans.items()},
        pairs_checked="emitted" if expected_pairs is None else "expected",
        now_ms=now_ms,
        backstop_ms=backstop_ms,
    )


def account(
    story: Story,
    pool: Sequence[str],
    expected_pairs: ExpectedPairs | None,
    now_ms: int,
    backstop_ms: int,
) -> PromptAccount:
    """One prompt's class, with what it lacks: owed (settled when nothing is) or short."""
    owed: list[str] = []  # what the pipeline still owes: settled when empty
    short: list[str] = []  # what will not come, with the letter or failure that says so
    usable = {m: r for m, r in story.answers.items() if r.response_id not in story.lettered_answers}
    named_missing = named_models(pool, story.letters_of("incomplete"))
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


def named_models(pool: Sequence[str], letters: Sequence[DeadLetter]) -> set[str]:
    """The pool's models that `incomplete` letters name: their `models` field. A letter with none
    was written before the field (dead-letter schema version 4; every later one names at least
    one silent model): its reason is read instead, whole model names only, as before."""
    named = {model for letter in letters for model in letter.models if model in pool}
    old = [letter.reason for letter in letters if not letter.models]
    return named | {
        model
        for model in pool
        for reason in old
        if re.search(rf"(?<![\w.:/-]){re.escape(model)}(?![\w:/-]|\.\w)", reason)
    }


def _ended_by(story: Story) -> str | None:
    """What ended the prompt for every model that has not answered, if anything did."""
    if story.letters_of("unpaired"):
        return "the rating stage ended the prompt (unpaired)"
    if story.lettered_prompt and not story.answers and not story.failures:
        # No response ever came and generation dead-lettered the prompt message: no rating
        # letter will come either (the rating stage never heard of the prompt).
        return "the prompt was dead-lettered in generation"
    return None


def _why_no_answer(model: str, story: Story, named_missing: set[str], ended_by: str | None) -> str | None:
    """What accounts for a model without a usable answer; None when nothing does (yet)."""
    if model in story.answers:
        return "its answer was dead-lettered (not paired)"
    if model in story.failures:
        return f"failed ({story.failures[model].error})"
    if model in named_missing:
        return "named missing by the backstop (incomplete)"
    return ended_by


def _owed_pairs(
    story: Story,
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


def _reasons(story: Story) -> tuple[str, ...]:
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

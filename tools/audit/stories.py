"""What the topics say about each submitted prompt: `read_stories` goes through the messages of
the five topics once and files each record, and each dead letter, with the prompt it concerns
(`Story`). A letter is filed by the message it points at (`Index`), or, pointing at none, by
the prompt it names. No Kafka: the messages are handed in."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from karma.schemas.models import DeadLetter, KinPair, Preference, Prompt, Response, prompt_id_of_key

if TYPE_CHECKING:  # only its shape: the audit's rules read no Kafka
    from karma.streams.client import Received

# Where a message is: topic, partition, offset (what a dead letter points at).
Coordinates = tuple[str, int, int]


@dataclass
class Story:
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
    # Outputs never written (too large, or refused by the broker) whose letter points at no
    # message: the rating stage's pairs. Record id -> its letter.
    unwritten: dict[str, DeadLetter] = field(default_factory=dict)

    def letters_of(self, error_type: str) -> list[DeadLetter]:
        return [letter for letter in self.letters if letter.error_type == error_type]


@dataclass
class Index:
    """What a dead letter can point at: the messages of the prompts, responses and pairs topics."""

    prompts: dict[Coordinates, str] = field(default_factory=dict)  # -> prompt id
    bad_prompts: dict[Coordinates, Received] = field(default_factory=dict)
    responses: dict[Coordinates, Response] = field(default_factory=dict)
    pairs: dict[Coordinates, tuple[str | None, str | None]] = field(default_factory=dict)  # prompt, pair


@dataclass
class Stories:
    """What `read_stories` found: the stories, and what the ledger counts beside them."""

    by_prompt: dict[str, Story] = field(default_factory=dict)
    index: Index = field(default_factory=Index)
    lettered_bad_prompts: set[Coordinates] = field(default_factory=set)
    seen: dict[str, Counter[str]] = field(  # topic -> id -> how often (replays)
        default_factory=lambda: {
            topic: Counter() for topic in ("prompts", "responses", "pairs", "preferences")
        }
    )
    orphans: dict[str, set[str]] = field(  # topic -> ids whose prompt was never submitted
        default_factory=lambda: {topic: set() for topic in ("responses", "pairs", "preferences")}
    )


def read_stories(
    prompts: Sequence[Received],
    responses: Sequence[Received],
    pairs: Sequence[Received],
    preferences: Sequence[Received],
    letters: Sequence[Received],
) -> Stories:
    """Every distinct decoded prompt's story, in pipeline order: the letters last, so that each
    finds the message it points at."""
    read = Stories()
    stories, index, seen, orphans = read.by_prompt, read.index, read.seen, read.orphans

    for msg in prompts:
        if not isinstance(msg.record, Prompt):
            index.bad_prompts[_at(msg)] = msg
            continue
        prompt = msg.record
        seen["prompts"][prompt.prompt_id] += 1
        index.prompts[_at(msg)] = prompt.prompt_id
        stamp = _stamp(msg, prompt.created_at_ms)
        story = stories.setdefault(prompt.prompt_id, Story(prompt, stamp, stamp))
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

    for msg in letters:
        if isinstance(msg.record, DeadLetter):
            _file_letter(msg.record, msg.key, stories, index, read.lettered_bad_prompts)
    return read


def _at(msg: Received) -> Coordinates:
    return (msg.topic, msg.partition, msg.offset)


def _stamp(msg: Received, fallback_ms: int) -> int:
    """The broker's timestamp of a message (the record's own creation time if there is none)."""
    return msg.timestamp_ms if msg.timestamp_ms is not None else fallback_ms


def _file_letter(
    letter: DeadLetter,
    key: bytes | None,
    stories: Mapping[str, Story],
    index: Index,
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
        if not placed and letter.record_id is not None:
            stories[prompt_id].unwritten[letter.record_id] = letter

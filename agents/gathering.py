"""The rating stage's state machine: gather a prompt's answers, complete it by accounting,
expire it by the backstop, pair late answers, forget it after retention. Pure: no Kafka.

A prompt is **complete** when every model of the pool is accounted for: it answered, or it
published a failure record (a Response with `error`). Then the pairing policy picks pairs
among the answers; with fewer than two answers the prompt is dead-lettered `unpaired`.
The wall clock is only a **backstop** for a model that says nothing at all: after
`backstop_ms` the prompt is paired among the answers it has and an `incomplete` letter names
the silent models. An answer that arrives after its prompt finished (a paused worker, a
broker restart) is **never dropped**: the pairs the policy picks over the grown set that were
not emitted yet are emitted (pair ids are deterministic, so replays stay harmless). A
finished prompt is remembered for `retention_ms` (and at most `retention_max` prompts per
partition), so replays are recognised and late answers paired; then it is forgotten.

State lives in two mappings of typed records (agents/rating_state.py, which also says how they
are encoded in the worker's faust tables; dicts of records in tests):
- `meta[prompt_id]`: a small `PromptEntry` per prompt: partition, first seen, each model's
  status, when it finished, the pair ids emitted and the verdicts counted. Rewritten at most
  once per batch (`flush`), and never with answer texts in it.
- `answers[AnswerKey(prompt_id, model)]`: one `Answer`, written once; `AnswerKey(prompt_id)`
  holds the `PromptText`, written once per prompt. Only the answers of a prompt still open (or
  closed by the backstop, which late answers may join) at the end of a batch are written: a
  prompt whose every model is accounted for within one batch, the common case, needs none,
  since nothing can join it later but replays.

Time-ordered work is kept in per-partition queues (arrival order is deadline order, as every
prompt has the same backstop), so a tick costs what expires, not the size of the table. The
queues are in memory and rebuilt from `meta` after a rebalance's table recovery (`rebuild`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from karma.agents.rating_state import OK, Answer, AnswerKey, PromptEntry, PromptText
from karma.schemas.models import KinPair, Response

__all__ = ["OK", "Gathered", "Gatherer", "Letter", "Outcome"]  # OK: re-exported, where it always was


@dataclass(frozen=True)
class Gathered:
    """The answers of one prompt, as the pairing policy sees them."""

    prompt_id: str
    prompt_text: str
    responses: dict[str, dict[str, Any]]  # model -> {response_id, text, simulated}
    prompt_metadata: dict[str, str] = field(default_factory=dict)  # the prompt's, for its pairs


@dataclass(frozen=True)
class Letter:
    """A dead letter about a prompt that no single message caused."""

    prompt_id: str
    partition: int
    error_type: str  # unpaired or incomplete
    reason: str
    # The models it accounts for, so that readers need not parse `reason`: the silent ones
    # (incomplete), those without an answer (unpaired).
    models: tuple[str, ...] = ()


@dataclass
class Outcome:
    """What handling one message or tick produced: pairs to publish, letters to send."""

    pairs: list[KinPair] = field(default_factory=list)
    letters: list[Letter] = field(default_factory=list)
    duplicate: bool = False
    late: bool = False  # an answer paired after its prompt had finished

    def extend(self, other: Outcome) -> None:
        self.pairs += other.pairs
        self.letters += other.letters


class Gatherer:
    """Gathers answers per prompt and decides when to pair; `pairer` applies the policy."""

    def __init__(
        self,
        pool: Iterable[str],
        meta: MutableMapping[str, PromptEntry],
        answers: MutableMapping[AnswerKey, Answer | PromptText],
        pairer: Callable[[Gathered], list[KinPair]],
        *,
        backstop_ms: float,
        retention_ms: float,
        retention_max: int,
    ) -> None:
        self.pool = list(pool)
        self.meta = meta
        self.answers = answers
        self.pairer = pairer
        self.backstop_ms = backstop_ms
        self.retention_ms = retention_ms
        self.retention_max = retention_max
        self._dirty: dict[str, PromptEntry] = {}  # meta entries changed in this batch
        # The answers (and prompt texts) of this batch.
        self._new_answers: dict[AnswerKey, Answer | PromptText] = {}
        self._deadlines: dict[int, deque[tuple[float, str]]] = {}  # open prompts, by first seen
        self._forget: dict[int, deque[tuple[float, str]]] = {}  # finished prompts, by finish time
        self._open: set[str] = set()  # prompts still gathering

    # -- reading and writing state ------------------------------------------------------------

    def entry(self, prompt_id: str) -> PromptEntry | None:
        if prompt_id in self._dirty:
            return self._dirty[prompt_id]
        stored = self.meta.get(prompt_id)
        # A working copy: a stored entry is never changed in place (the table must see a write).
        return None if stored is None else stored.copy()

    def _put(self, prompt_id: str, entry: PromptEntry) -> None:
        self._dirty[prompt_id] = entry

    def flush(self, before_write: Callable[[int], None] = lambda partition: None) -> None:
        """Writes each meta entry changed since the last flush, once; `before_write(partition)`
        runs before each write (a faust table writes to the changelog partition of the event
        being processed, so the worker makes that event current)."""
        for key, answer in self._new_answers.items():
            entry = self._dirty[key.prompt_id]
            if not entry.finished or entry.silent:
                before_write(entry.partition)
                self.answers[key] = answer
        for prompt_id, entry in self._dirty.items():
            before_write(entry.partition)
            self.meta[prompt_id] = entry
        self._dirty.clear()
        self._new_answers.clear()

    def discard(self) -> None:
        """Forgets unflushed changes (a batch that failed is retried from the stored state)."""
        self._dirty.clear()
        self._new_answers.clear()

    def _answer(self, key: AnswerKey) -> Answer | PromptText:
        return self._new_answers[key] if key in self._new_answers else self.answers[key]

    @property
    def open_prompts(self) -> int:
        return len(self._open)

    # -- events -------------------------------------------------------------------------------

    def on_response(self, response: Response, partition: int, now_ms: float) -> Outcome:
        entry = self.entry(response.prompt_id)
        if entry is None:
            entry = PromptEntry(partition, now_ms)
            self._new_answers[AnswerKey(response.prompt_id)] = PromptText(
                response.prompt_text, dict(response.prompt_metadata)
            )
            self._deadlines.setdefault(partition, deque()).append(
                (now_ms + self.backstop_ms, response.prompt_id)
            )
            self._open.add(response.prompt_id)
        if response.model in entry.statuses:
            return Outcome(duplicate=True)  # a replay after a restart: already counted
        if response.failed:
            entry.statuses[response.model] = response.error or "failed"
        else:
            entry.statuses[response.model] = OK
            self._new_answers[AnswerKey(response.prompt_id, response.model)] = Answer(
                response.response_id, response.text, response.simulated, response.model_version
            )
        if entry.finished:
            outcome = self._pair(response.prompt_id, entry)
            outcome.late = True
        elif set(self.pool) <= set(entry.statuses):
            outcome = self._finish(response.prompt_id, entry, now_ms, silent=[])
        else:
            outcome = Outcome()
        self._put(response.prompt_id, entry)
        return outcome

    def on_tick(self, partition: int, now_ms: float) -> Outcome:
        """Backstops the prompts of `partition` whose time is up and forgets those retained long
        enough (or beyond the count bound)."""
        outcome = Outcome()
        deadlines = self._deadlines.get(partition, deque())
        while deadlines and deadlines[0][0] <= now_ms:
            _, prompt_id = deadlines.popleft()
            entry = self.entry(prompt_id)
            if entry is None or entry.finished:
                continue  # completed by accounting meanwhile, or no longer ours
            silent = [m for m in self.pool if m not in entry.statuses]
            outcome.extend(self._finish(prompt_id, entry, now_ms, silent=silent))
            self._put(prompt_id, entry)
        forget = self._forget.get(partition, deque())
        while forget and (forget[0][0] <= now_ms or len(forget) > self.retention_max):
            _, prompt_id = forget.popleft()
            self._drop(prompt_id)
        return outcome

    def counted_verdict(self, prompt_id: str, preference_id: str) -> bool:
        """Records that a verdict was counted as evidence; False when it already was (a replay)."""
        entry = self.entry(prompt_id)
        if entry is None:
            return True  # the prompt is forgotten: nothing left to de-duplicate against
        if preference_id in entry.judged:
            return False
        entry.judged.append(preference_id)
        self._put(prompt_id, entry)
        return True

    def rebuild(self, items: Iterable[tuple[str, PromptEntry | None]]) -> None:
        """Re-creates the time queues from the stored entries (after a rebalance's recovery).
        Changes not flushed yet stay, and count over the stored ones: recovery can complete
        while a batch is half handled, and that batch still flushes them."""
        self._deadlines.clear()
        self._forget.clear()
        self._open.clear()
        opened, finished = [], []
        for prompt_id, entry in {**dict(items), **self._dirty}.items():
            if entry is None:
                continue
            if entry.done_ms is None:
                opened.append((entry.first_seen_ms + self.backstop_ms, entry.partition, prompt_id))
            else:
                finished.append((entry.done_ms + self.retention_ms, entry.partition, prompt_id))
        for at, partition, prompt_id in sorted(opened):
            self._deadlines.setdefault(partition, deque()).append((at, prompt_id))
            self._open.add(prompt_id)
        for at, partition, prompt_id in sorted(finished):
            self._forget.setdefault(partition, deque()).append((at, prompt_id))

    # -- internals ----------------------------------------------------------------------------

    def _finish(self, prompt_id: str, entry: PromptEntry, now_ms: float, silent: list[str]) -> Outcome:
        entry.done_ms = now_ms
        entry.silent = silent  # late answers may still come: keep the texts to pair them
        self._open.discard(prompt_id)
        self._forget.setdefault(entry.partition, deque()).append((now_ms + self.retention_ms, prompt_id))
        outcome = self._pair(prompt_id, entry)
        answered = entry.answered
        failed = {m: status for m, status in entry.statuses.items() if status != OK}
        accounts = _accounts(answered, failed, silent)
        if silent:
            outcome.letters.append(
                Letter(
                    prompt_id,
                    entry.partition,
                    "incomplete",
                    f"prompt {prompt_id}: no word from {', '.join(silent)} within "
                    f"{self.backstop_ms / 1000:g} s; paired what came ({accounts}); "
                    "a late answer will still be paired",
                    models=tuple(silent),
                )
            )
        elif len(answered) < 2:
            outcome.letters.append(
                Letter(
                    prompt_id,
                    entry.partition,
                    "unpaired",
                    f"prompt {prompt_id}: only {len(answered)} of {len(self.pool)} models answered "
                    f"({accounts}); nothing to pair",
                    models=tuple(failed),
                )
            )
        return outcome

    def _pair(self, prompt_id: str, entry: PromptEntry) -> Outcome:
        """The pairs the policy picks over the answers so far that were not emitted yet."""
        answered = entry.answered
        if len(answered) < 2:
            return Outcome()
        responses = {}
        for model in answered:
            stored = self._answer(AnswerKey(prompt_id, model))
            assert isinstance(stored, Answer)  # a key with a model holds an answer
            responses[model] = {
                "response_id": stored.response_id,
                "text": stored.text,
                "simulated": stored.simulated,
                "model_version": stored.model_version,
            }
        prompt = self._answer(AnswerKey(prompt_id))
        assert isinstance(prompt, PromptText)  # a key without a model holds the prompt's text
        chosen = self.pairer(Gathered(prompt_id, prompt.text, responses, prompt.metadata))
        new = [pair for pair in chosen if pair.pair_id not in entry.pairs]
        entry.pairs += [pair.pair_id for pair in new]
        return Outcome(pairs=new)

    def _drop(self, prompt_id: str) -> None:
        entry = self.entry(prompt_id)
        self._dirty.pop(prompt_id, None)
        for key in [k for k in self._new_answers if k.prompt_id == prompt_id]:
            del self._new_answers[key]
        if entry is None:
            return
        for model in entry.answered:
            self.answers.pop(AnswerKey(prompt_id, model), None)
        self.answers.pop(AnswerKey(prompt_id), None)
        self.meta.pop(prompt_id, None)


def _accounts(answered: list[str], failed: dict[str, str], silent: list[str]) -> str:
    parts = [f"answered: {', '.join(answered) or 'none'}"]
    if failed:
        parts.append("failed: " + "; ".join(f"{m} ({reason})" for m, reason in failed.items()))
    if silent:
        parts.append(f"silent: {', '.join(silent)}")
    return "; ".join(parts)

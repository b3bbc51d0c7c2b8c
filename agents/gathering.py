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

State lives in two mappings (faust tables in the worker, dicts in tests):
- `meta[prompt_id]`: a small entry per prompt: partition, first seen, each model's status,
  when it finished, the pair ids emitted and the verdicts counted. Rewritten at most once per
  batch (`flush`), and never with answer texts in it.
- `answers[f"{prompt_id}|{model}"]`: one answer, written once; `answers[f"{prompt_id}|"]` holds
  the prompt text, written once per prompt. Only the answers of a prompt still open (or closed
  by the backstop, which late answers may join) at the end of a batch are written: a prompt
  whose every model is accounted for within one batch, the common case, needs none, since
  nothing can join it later but replays.

Time-ordered work is kept in per-partition queues (arrival order is deadline order, as every
prompt has the same backstop), so a tick costs what expires, not the size of the table. The
queues are in memory and rebuilt from `meta` after a rebalance's table recovery (`rebuild`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from karma.schemas.models import KinPair, Response

OK = "ok"  # a model's status when it answered; otherwise its status is the failure's reason


@dataclass(frozen=True)
class Gathered:
    """The answers of one prompt, as the pairing policy sees them."""

    prompt_id: str
    prompt_text: str
    responses: dict[str, dict[str, Any]]  # model -> {response_id, text, simulated}


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
        meta: MutableMapping[str, Any],
        answers: MutableMapping[str, Any],
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
        self._dirty: dict[str, dict[str, Any]] = {}  # meta entries changed in this batch
        self._new_answers: dict[str, dict[str, Any]] = {}  # answers (and prompt texts) of this batch
        self._deadlines: dict[int, deque[tuple[float, str]]] = {}  # open prompts, by first seen
        self._forget: dict[int, deque[tuple[float, str]]] = {}  # finished prompts, by finish time
        self._open: set[str] = set()  # prompts still gathering

    # -- reading and writing state ------------------------------------------------------------

    def entry(self, prompt_id: str) -> dict[str, Any] | None:
        if prompt_id in self._dirty:
            return self._dirty[prompt_id]
        stored = self.meta.get(prompt_id)
        return None if stored is None else _copy(stored)

    def _put(self, prompt_id: str, entry: dict[str, Any]) -> None:
        self._dirty[prompt_id] = entry

    def flush(self, before_write: Callable[[int], None] = lambda partition: None) -> None:
        """Writes each meta entry changed since the last flush, once; `before_write(partition)`
        runs before each write (a faust table writes to the changelog partition of the event
        being processed, so the worker makes that event current)."""
        for key, answer in self._new_answers.items():
            entry = self._dirty[key.partition("|")[0]]
            if entry["done"] is None or entry["silent"]:
                before_write(entry["p"])
                self.answers[key] = answer
        for prompt_id, entry in self._dirty.items():
            before_write(entry["p"])
            self.meta[prompt_id] = entry
        self._dirty.clear()
        self._new_answers.clear()

    def discard(self) -> None:
        """Forgets unflushed changes (a batch that failed is retried from the stored state)."""
        self._dirty.clear()
        self._new_answers.clear()

    def _answer(self, key: str) -> Any:
        return self._new_answers[key] if key in self._new_answers else self.answers[key]

    @property
    def open_prompts(self) -> int:
        return len(self._open)

    # -- events -------------------------------------------------------------------------------

    def on_response(self, response: Response, partition: int, now_ms: float) -> Outcome:
        entry = self.entry(response.prompt_id)
        if entry is None:
            entry = {
                "p": partition,
                "t0": now_ms,
                "m": {},
                "done": None,
                "silent": [],
                "pairs": [],
                "judged": [],
            }
            self._new_answers[f"{response.prompt_id}|"] = {"text": response.prompt_text}
            self._deadlines.setdefault(partition, deque()).append(
                (now_ms + self.backstop_ms, response.prompt_id)
            )
            self._open.add(response.prompt_id)
        if response.model in entry["m"]:
            return Outcome(duplicate=True)  # a replay after a restart: already counted
        if response.failed:
            entry["m"][response.model] = response.error or "failed"
        else:
            entry["m"][response.model] = OK
            self._new_answers[f"{response.prompt_id}|{response.model}"] = {
                "id": response.response_id,
                "text": response.text,
                "sim": response.simulated,
            }
        if entry["done"] is not None:
            outcome = self._pair(response.prompt_id, entry)
            outcome.late = True
        elif set(self.pool) <= set(entry["m"]):
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
            if entry is None or entry["done"] is not None:
                continue  # completed by accounting meanwhile, or no longer ours
            silent = [m for m in self.pool if m not in entry["m"]]
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
        if preference_id in entry["judged"]:
            return False
        entry["judged"].append(preference_id)
        self._put(prompt_id, entry)
        return True

    def rebuild(self, items: Iterable[tuple[str, Any]]) -> None:
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
            if entry["done"] is None:
                opened.append((entry["t0"] + self.backstop_ms, entry["p"], prompt_id))
            else:
                finished.append((entry["done"] + self.retention_ms, entry["p"], prompt_id))
        for at, partition, prompt_id in sorted(opened):
            self._deadlines.setdefault(partition, deque()).append((at, prompt_id))
            self._open.add(prompt_id)
        for at, partition, prompt_id in sorted(finished):
            self._forget.setdefault(partition, deque()).append((at, prompt_id))

    # -- internals ----------------------------------------------------------------------------

    def _finish(self, prompt_id: str, entry: dict[str, Any], now_ms: float, silent: list[str]) -> Outcome:
        entry["done"] = now_ms
        entry["silent"] = silent  # late answers may still come: keep the texts to pair them
        self._open.discard(prompt_id)
        self._forget.setdefault(entry["p"], deque()).append((now_ms + self.retention_ms, prompt_id))
        outcome = self._pair(prompt_id, entry)
        answered = [m for m, status in entry["m"].items() if status == OK]
        failed = {m: status for m, status in entry["m"].items() if status != OK}
        accounts = _accounts(answered, failed, silent)
        if silent:
            outcome.letters.append(
                Letter(
                    prompt_id,
                    entry["p"],
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
                    entry["p"],
                    "unpaired",
                    f"prompt {prompt_id}: only {len(answered)} of {len(self.pool)} models answered "
                    f"({accounts}); nothing to pair",
                    models=tuple(failed),
                )
            )
        return outcome

    def _pair(self, prompt_id: str, entry: dict[str, Any]) -> Outcome:
        """The pairs the policy picks over the answers so far that were not emitted yet."""
        answered = [m for m, status in entry["m"].items() if status == OK]
        if len(answered) < 2:
            return Outcome()
        responses = {}
        for model in answered:
            stored = self._answer(f"{prompt_id}|{model}")
            responses[model] = {
                "response_id": stored["id"],
                "text": stored["text"],
                "simulated": stored["sim"],
            }
        prompt_text = self._answer(f"{prompt_id}|")["text"]
        chosen = self.pairer(Gathered(prompt_id, prompt_text, responses))
        new = [pair for pair in chosen if pair.pair_id not in entry["pairs"]]
        entry["pairs"] += [pair.pair_id for pair in new]
        return Outcome(pairs=new)

    def _drop(self, prompt_id: str) -> None:
        entry = self.entry(prompt_id)
        self._dirty.pop(prompt_id, None)
        for key in [k for k in self._new_answers if k.partition("|")[0] == prompt_id]:
            del self._new_answers[key]
        if entry is None:
            return
        for model, status in entry["m"].items():
            if status == OK:
                self.answers.pop(f"{prompt_id}|{model}", None)
        self.answers.pop(f"{prompt_id}|", None)
        self.meta.pop(prompt_id, None)


def _accounts(answered: list[str], failed: dict[str, str], silent: list[str]) -> str:
    parts = [f"answered: {', '.join(answered) or 'none'}"]
    if failed:
        parts.append("failed: " + "; ".join(f"{m} ({reason})" for m, reason in failed.items()))
    if silent:
        parts.append(f"silent: {', '.join(silent)}")
    return "; ".join(parts)


def _copy(entry: dict[str, Any]) -> dict[str, Any]:
    """A working copy: a stored entry is never changed in place (the table must see a write)."""
    return {**entry, "m": dict(entry["m"]), "pairs": list(entry["pairs"]), "judged": list(entry["judged"])}

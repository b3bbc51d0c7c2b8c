"""The rating stage's stored state as typed records, and their encoding in the tables. Pure: no Kafka.

The stage keeps three changelogged tables (agents/rating.py). The code works with the records
below; what the tables hold, and so what their changelogs carry, is the encoding written here.
`Encoded` (at the end) shows a table as records, encoding on the way in and decoding on the way
out. Each table's key is a string and each value a JSON object (a float for the tallies); faust's
json codec writes both to the changelog (a key `"p-1"` as those 5 bytes, quotes included).

`rating-prompts`: key the prompt id; value a `PromptEntry`, encoded as

    {"p": partition, "t0": first seen (ms), "m": {model: "ok" or the failure's reason},
     "done": finished at (ms) or null, "silent": [model], "pairs": [pair id], "judged": [preference id]}

`rating-answers`: key an `AnswerKey`: `"<prompt_id>|<model>"` for one answer, value an `Answer`
encoded as {"id": response id, "text": text, "sim": simulated, "mv": model version}, "mv" written
only past version 1 (a field added within version 1); `"<prompt_id>|"` (no model) for
the prompt's text, value a `PromptText` encoded as {"text": text, "meta": {key: value}}, where
"meta" (the prompt's metadata, for the judge) is written only when not empty and read as {} when
absent: a field added within version 1, so entries written before it load.

`rating-competency` (hopping): key a `CompetencyKey`, `"<model_a>|<model_b>@<partition>:<measure>"`
(faust adds the window: the changelog key is `["<key>", [start_s, end_s]]`); value a float.

Versions. This is encoding version 1: the very form the stage wrote before these records existed,
so a worker restarted after an upgrade restores the tables its predecessor wrote, and workers of
both versions can share a group during a rolling upgrade (each reads what the other writes). The
one-letter names stay for that reason, and because an entry is rewritten each batch it changes.
How the encoding may evolve:
- keys never change: a key's bytes are its identity in a compacted changelog, so a key written
  another way would be a second entry, and a delete under the new form would leave the old one;
- a value may gain a field whose absence means its default (an entry written before it loads),
  within version 1; decoding ignores fields it does not know (written by a newer worker), and a
  rewrite by this code drops them, so such a field must be one an older worker may lose;
- any other change writes `"v": 2` (or later) in the value and keeps decoding version 1 (an
  entry without "v"); a value of a version this code does not know fails with `StateDecodeError`,
  rather than being misread.

Unambiguous joins: model names cannot contain `|`, `@` (streams/config.py ModelSpec.name), so an
answer key splits at its last `|` (a prompt id may contain anything) and a competency key at its
last `:` (a model name may contain one), then its last `@` and its `|`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, get_args

ENCODING_VERSION = 1  # the version this code writes (implicit: version 1 writes no "v")
OK = "ok"  # a model's status when it answered; otherwise its status is the failure's reason

Measure = Literal["n", "score"]  # a competency key's count: verdicts between the pair, or a's score


class StateDecodeError(ValueError):
    """A stored key or value this code cannot read: another encoding version, or not an encoding."""


# -- records ----------------------------------------------------------------------------------


@dataclass(slots=True)
class PromptEntry:
    """One prompt's state: where it lives, which models are accounted for, and what was emitted.
    Mutable, as the gathering machine builds it up; a stored entry is never changed in place
    (`copy`), since the table must see a write."""

    partition: int
    first_seen_ms: float
    # model -> OK, or the reason it failed; in the order the models were accounted for.
    statuses: dict[str, str] = field(default_factory=dict)
    done_ms: float | None = None  # None while the prompt is open
    silent: list[str] = field(default_factory=list)  # models the backstop gave up on
    pairs: list[str] = field(default_factory=list)  # pair ids emitted
    judged: list[str] = field(default_factory=list)  # preference ids counted as evidence

    @property
    def finished(self) -> bool:
        return self.done_ms is not None

    @property
    def answered(self) -> list[str]:
        return [model for model, status in self.statuses.items() if status == OK]

    def copy(self) -> PromptEntry:
        return PromptEntry(
            self.partition,
            self.first_seen_ms,
            dict(self.statuses),
            self.done_ms,
            list(self.silent),
            list(self.pairs),
            list(self.judged),
        )


@dataclass(frozen=True, slots=True)
class AnswerKey:
    """Where one answer of a prompt is kept; `model` None: the prompt's text."""

    prompt_id: str
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """One model's answer, kept while its prompt may still be paired."""

    response_id: str
    text: str
    simulated: bool
    model_version: int = 1  # the checkpoint version that wrote it (Response.model_version)


@dataclass(frozen=True, slots=True)
class PromptText:
    """A prompt's text and metadata, kept with its answers: its pairs carry both."""

    text: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CompetencyKey:
    """One verdict tally of a model pair (model_a < model_b) on one partition: how often they met
    (`n`) or model_a's score (`score`). Per partition, so each count is written where its verdicts are."""

    model_a: str
    model_b: str
    partition: int
    measure: Measure


# -- encoding -----------------------------------------------------------------------------------


def encode_entry(entry: PromptEntry) -> dict[str, Any]:
    return {
        "p": entry.partition,
        "t0": entry.first_seen_ms,
        "m": dict(entry.statuses),
        "done": entry.done_ms,
        "silent": list(entry.silent),
        "pairs": list(entry.pairs),
        "judged": list(entry.judged),
    }


def decode_entry(stored: Any) -> PromptEntry:
    value = _versioned(stored, "prompt entry")
    done = _get(value, "done", "prompt entry")
    return PromptEntry(
        partition=_int(_get(value, "p", "prompt entry"), "prompt entry: p"),
        first_seen_ms=_number(_get(value, "t0", "prompt entry"), "prompt entry: t0"),
        statuses=_str_map(_get(value, "m", "prompt entry"), "prompt entry: m"),
        done_ms=None if done is None else _number(done, "prompt entry: done"),
        silent=_strs(_get(value, "silent", "prompt entry"), "prompt entry: silent"),
        pairs=_strs(_get(value, "pairs", "prompt entry"), "prompt entry: pairs"),
        judged=_strs(_get(value, "judged", "prompt entry"), "prompt entry: judged"),
    )


def encode_answer_key(key: AnswerKey) -> str:
    return f"{key.prompt_id}|{key.model or ''}"


def decode_answer_key(stored: Any) -> AnswerKey:
    prompt_id, bar, model = _str(stored, "answer key").rpartition("|")
    if not bar:
        raise StateDecodeError(f"answer key {stored!r}: no '|' between prompt id and model")
    return AnswerKey(prompt_id, model or None)


def encode_answer(value: Answer | PromptText) -> dict[str, Any]:
    if isinstance(value, PromptText):
        # Without "meta" when empty: the bytes of a prompt without metadata stay what they were.
        return {"text": value.text, "meta": dict(value.metadata)} if value.metadata else {"text": value.text}
    stored = {"id": value.response_id, "text": value.text, "sim": value.simulated}
    # "mv" (not "v", the encoding's version) only past model version 1: a field added within
    # encoding version 1, so the bytes of an answer of the configured checkpoint stay what they were.
    return stored if value.model_version == 1 else stored | {"mv": value.model_version}


def decode_answer(key: AnswerKey, stored: Any) -> Answer | PromptText:
    """An answer or, under a key without a model, the prompt's text."""
    what = "prompt text" if key.model is None else "answer"
    value = _versioned(stored, what)
    text = _str(_get(value, "text", what), f"{what}: text")
    if key.model is None:
        meta = value.get("meta", {})  # absent: written before the field, or no metadata
        return PromptText(text, _str_map(meta, "prompt text: meta"))
    simulated = _get(value, "sim", what)
    if not isinstance(simulated, bool):
        raise StateDecodeError(f"answer: sim is {simulated!r}, not a boolean")
    version = value.get("mv", 1)  # absent: model version 1, or written before versions existed
    return Answer(_str(_get(value, "id", what), "answer: id"), text, simulated, _int(version, "answer: mv"))


def encode_competency_key(key: CompetencyKey) -> str:
    return f"{key.model_a}|{key.model_b}@{key.partition}:{key.measure}"


def decode_competency_key(stored: Any) -> CompetencyKey:
    text = _str(stored, "competency key")
    stem, _, measure = text.rpartition(":")
    pair, at, partition = stem.rpartition("@")
    model_a, bar, model_b = pair.partition("|")
    if not (at and bar and model_a and model_b and partition.isdigit()) or measure not in get_args(Measure):
        raise StateDecodeError(f"competency key {text!r} is not '<model_a>|<model_b>@<partition>:<n|score>'")
    return CompetencyKey(model_a, model_b, int(partition), measure)  # type: ignore[arg-type]  # checked above


# -- checks -------------------------------------------------------------------------------------


def _versioned(stored: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(stored, Mapping):
        raise StateDecodeError(f"{what}: {type(stored).__name__} {stored!r:.200}, not a JSON object")
    version = stored.get("v", 1)
    if version != ENCODING_VERSION:
        raise StateDecodeError(
            f"{what} of encoding version {version!r}: this code reads version {ENCODING_VERSION} "
            "(written by a newer karma? see agents/rating_state.py)"
        )
    return stored


def _get(value: Mapping[str, Any], name: str, what: str) -> Any:
    try:
        return value[name]
    except KeyError:
        raise StateDecodeError(f"{what}: no {name!r} in {dict(value)!r:.200}") from None


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise StateDecodeError(f"{what} is {value!r:.200}, not a string")
    return value


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StateDecodeError(f"{what} is {value!r}, not an integer")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StateDecodeError(f"{what} is {value!r}, not a number")
    return float(value)


def _strs(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise StateDecodeError(f"{what} is {value!r:.200}, not a list of strings")
    return list(value)


def _str_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise StateDecodeError(f"{what} is {value!r:.200}, not an object of strings")
    return dict(value)


# -- the tables seen as records -----------------------------------------------------------

K = TypeVar("K")
V = TypeVar("V")
_MISSING: Any = object()


class Encoded(MutableMapping[K, V], Generic[K, V]):
    """A table seen as records: keys and values are encoded on the way in and decoded on the way
    out (agents/rating_state.py), so the table (and its changelog) holds only the encoding.
    Each read decodes afresh: a record handed out is never the stored value itself."""

    def __init__(
        self,
        store: MutableMapping[Any, Any],
        encode_key: Callable[[K], Any],
        decode_key: Callable[[Any], K],
        encode_value: Callable[[V], Any],
        decode_value: Callable[[K, Any], V],
    ) -> None:
        self.store = store
        self._encode_key, self._decode_key = encode_key, decode_key
        self._encode_value, self._decode_value = encode_value, decode_value

    def __getitem__(self, key: K) -> V:
        return self._decode_value(key, self.store[self._encode_key(key)])

    def get(self, key: K, default: Any = None) -> Any:  # one lookup, not `in` and then `[]`
        stored = self.store.get(self._encode_key(key), _MISSING)
        return default if stored is _MISSING or stored is None else self._decode_value(key, stored)

    def __setitem__(self, key: K, value: V) -> None:
        self.store[self._encode_key(key)] = self._encode_value(value)

    def __delitem__(self, key: K) -> None:
        del self.store[self._encode_key(key)]

    def pop(self, key: K, default: Any = _MISSING) -> Any:
        stored = self.store.pop(self._encode_key(key), _MISSING)
        if stored is _MISSING:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return self._decode_value(key, stored)

    def __iter__(self) -> Iterator[K]:
        return (self._decode_key(key) for key in self.store)

    def __len__(self) -> int:
        return len(self.store)

    def items(self) -> Iterator[tuple[K, V]]:  # type: ignore[override]  # one pass, no lookups
        for stored_key, stored in self.store.items():
            key = self._decode_key(stored_key)
            yield key, self._decode_value(key, stored)


def prompt_entries(store: MutableMapping[str, Any]) -> Encoded[str, PromptEntry]:
    """`rating-prompts` as records: prompt id -> PromptEntry."""
    return Encoded(store, _same, _prompt_id, encode_entry, lambda _key, stored: decode_entry(stored))


def answers_kept(store: MutableMapping[str, Any]) -> Encoded[AnswerKey, Answer | PromptText]:
    """`rating-answers` as records: AnswerKey -> Answer (or PromptText, under a key with no model)."""
    return Encoded(store, encode_answer_key, decode_answer_key, encode_answer, decode_answer)


def _same(key: str) -> str:
    return key


def _prompt_id(stored: Any) -> str:
    if not isinstance(stored, str):
        raise TypeError(f"rating-prompts key {stored!r}: not a prompt id")
    return stored

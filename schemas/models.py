"""Pydantic models that mirror the `.avsc` files field for field.

The `.avsc` files are the source of truth for the wire format; these models add the
semantic checks Avro cannot express (non-empty text, ids of a known shape) and are
validated once, where a record enters a stage. `tests/schemas/test_models.py` checks
that every model has exactly the fields of its schema.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

_ID_PATTERN = re.compile(r"[\w.:\-/]+")
Id = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[\w.:\-/]+$")]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("text is empty or whitespace only")
    return value


NonBlank = Annotated[str, AfterValidator(_not_blank)]


def problem_message(error: Mapping[str, Any]) -> str:
    """One pydantic error's message, without the "Value error, " that validators' errors get."""
    return str(error["msg"]).removeprefix("Value error, ")


def problems_of(exc: ValidationError, whole: str = "") -> str:
    """A validation error in one line, `field.path: message; ...`; `whole` names the path of a
    problem of the whole object (which has none)."""
    problems = []
    for error in exc.errors():
        path = ".".join(map(str, error["loc"])) or whole
        problems.append(f"{path}: {problem_message(error)}" if path else problem_message(error))
    return "; ".join(problems)


def now_ms() -> int:
    return int(time.time() * 1000)


def stable_id(*parts: str, length: int = 24) -> str:
    """A deterministic id from its parts, so a replay after a crash yields the same id."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return digest[:length]


def prompt_id_for(text: str, source: str = "") -> str:
    return "p-" + stable_id(source, text, length=20)


def response_id_for(prompt_id: str, model: str, sample: int = 0, version: int = 1) -> str:
    """Version 1 (the configured checkpoint) keeps the ids of records written before versions
    existed; a later checkpoint's answer to the same prompt is another response."""
    if version == 1:
        return "r-" + stable_id(prompt_id, model, str(sample))
    return "r-" + stable_id(prompt_id, model, str(sample), f"v{version}")


def checkpoint_id_for(model: str, version: int) -> str:
    return "ckpt-" + stable_id(model, str(version), length=20)


def prompt_id_of_key(key: bytes | None) -> str | None:
    """The prompt id a message key carries (every karma topic is keyed by prompt_id), or None
    for a key that is missing or not a valid id: a dead letter can name its prompt even when
    the value does not decode."""
    if not key:
        return None
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return None
    return text if _ID_PATTERN.fullmatch(text) and len(text) <= 256 else None


def pair_id_for(prompt_id: str, response_id_a: str, response_id_b: str) -> str:
    """Order-free: the same two responses make the same pair whichever comes first."""
    first, second = sorted((response_id_a, response_id_b))
    return "pair-" + stable_id(prompt_id, first, second)


class Record(BaseModel):
    """Base of every record on a karma topic: strict about unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)
    schema_name: ClassVar[str]
    # Whether its topic also takes JSON (streams/codecs.py tells JSON from Avro by the first byte).
    accepts_json: ClassVar[bool] = False

    @classmethod
    def from_json(cls, data: Any, source: str = "unknown") -> Record:
        raise TypeError(f"{cls.__name__} records are Avro only")


class Prompt(Record):
    """A prompt: from the SDK and the CLI as framed Avro, and from any producer as JSON."""

    schema_name: ClassVar[str] = "prompt"
    accepts_json: ClassVar[bool] = True

    prompt_id: Id
    text: NonBlank
    source: str = "unknown"
    created_at_ms: int = Field(default_factory=now_ms, ge=0)
    metadata: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any, source: str = "unknown") -> Prompt:
        """A prompt from parsed JSON: an object with the fields of prompt.avsc (only `text`
        required; `prompt` is taken for `text`) or a bare string. `prompt_id`, when absent, is
        derived from the text and source as the SDK derives it. ValueError says what is wrong."""
        if isinstance(data, str):
            data = {"text": data}
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object with a 'text' field, got {type(data).__name__}")
        text = data.get("text", data.get("prompt"))
        if not isinstance(text, str):
            raise ValueError("missing 'text' (a string)")
        unknown = set(data) - {"text", "prompt", "prompt_id", "metadata", "source", "created_at_ms"}
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}")
        src = data.get("source", source)
        fields = {"created_at_ms": data["created_at_ms"]} if "created_at_ms" in data else {}
        try:
            return cls(
                prompt_id=data.get("prompt_id") or prompt_id_for(text, src if isinstance(src, str) else ""),
                text=text,
                source=src,
                metadata=data.get("metadata") or {},
                **fields,
            )
        except ValidationError as exc:
            raise ValueError(problems_of(exc, whole="prompt")) from None


class Response(Record):
    schema_name: ClassVar[str] = "response"

    response_id: Id
    prompt_id: Id
    prompt_text: NonBlank
    model: Id
    text: str
    backend: str
    simulated: bool
    num_tokens: int = Field(ge=0)
    latency_ms: float = Field(ge=0)
    created_at_ms: int = Field(default_factory=now_ms, ge=0)
    error: str | None = None  # set: the model failed for good on this prompt (a failure record)
    # The prompt's metadata (version 3), carried on to the pairs so that the judge can read it.
    prompt_metadata: dict[str, str] = Field(default_factory=dict)
    # The checkpoint version that wrote it (version 4): 1 is the configured one (karma.checkpoints).
    model_version: int = Field(default=1, ge=1)

    @property
    def failed(self) -> bool:
        return self.error is not None


class Candidate(Record):
    schema_name: ClassVar[str] = "candidate"

    response_id: Id
    model: Id
    text: str
    superiority: float
    simulated: bool
    model_version: int = Field(default=1, ge=1)  # Response.model_version


class KinPair(Record):
    schema_name: ClassVar[str] = "kin_pair"

    pair_id: Id
    prompt_id: Id
    prompt_text: NonBlank
    response_a: Candidate
    response_b: Candidate
    policy: str
    similarity: float = Field(ge=-1.0, le=1.0)
    gap: float = Field(ge=0.0)
    created_at_ms: int = Field(default_factory=now_ms, ge=0)
    # The prompt's metadata (version 2): what the verifier judge reads its reference and scorer from.
    prompt_metadata: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _two_distinct_responses(self) -> KinPair:
        if self.response_a.response_id == self.response_b.response_id:
            raise ValueError("a pair needs two distinct responses")
        return self


class Winner(StrEnum):
    A = "A"
    B = "B"
    TIE = "TIE"


class Preference(Record):
    schema_name: ClassVar[str] = "preference"

    preference_id: Id
    pair_id: Id
    prompt_id: Id
    prompt_text: NonBlank
    response_a: Candidate
    response_b: Candidate
    winner: Winner
    consistent: bool
    verdict_ab: Winner
    verdict_ba: Winner
    confidence: float = Field(ge=0.0, le=1.0)
    judge: str
    simulated: bool
    policy: str
    gap: float = Field(ge=0.0)
    created_at_ms: int = Field(default_factory=now_ms, ge=0)
    soft_label: float | None = Field(default=None, ge=0.0, le=1.0)
    # The verifier's scores of the two answers against the prompt's reference (version 3);
    # None from any other judge.
    score_a: float | None = Field(default=None, ge=0.0, le=1.0)
    score_b: float | None = Field(default=None, ge=0.0, le=1.0)

    @classmethod
    def of_pair(cls, pair: KinPair, **verdict: Any) -> Preference:
        """The preference on `pair`: the pair's ids, prompt, candidates, policy and gap, with the
        verdict's own fields (winner, consistent, verdict_ab, verdict_ba, confidence, judge, ...)."""
        return cls(
            preference_id=pair.pair_id,
            pair_id=pair.pair_id,
            prompt_id=pair.prompt_id,
            prompt_text=pair.prompt_text,
            response_a=pair.response_a,
            response_b=pair.response_b,
            policy=pair.policy,
            gap=pair.gap,
            **verdict,
        )

    @property
    def chosen(self) -> Candidate | None:
        return {Winner.A: self.response_a, Winner.B: self.response_b}.get(self.winner)

    @property
    def rejected(self) -> Candidate | None:
        return {Winner.A: self.response_b, Winner.B: self.response_a}.get(self.winner)

    def to_trl(self) -> dict[str, object] | None:
        """TRL's DPO row (prompt/chosen/rejected); None for a tie, which carries no preference."""
        if self.chosen is None or self.rejected is None:
            return None
        return {
            "prompt": self.prompt_text,
            "chosen": self.chosen.text,
            "rejected": self.rejected.text,
            "preference_id": self.preference_id,
            "simulated": self.simulated,
        }


class DeadLetter(Record):
    schema_name: ClassVar[str] = "dead_letter"

    reason: str
    error_type: str
    stage: str
    prompt_id: Id | None = None
    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes | None = None
    value: bytes | None = None  # cut to a bounded size: value_size and value_sha256 describe the whole
    value_size: int | None = Field(default=None, ge=0)
    value_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    record_id: Id | None = None  # the output the letter stands for, when that output was not written
    # The models it concerns (version 4): what `karma audit` reads, never the reason's prose.
    models: list[Id] = Field(default_factory=list)
    created_at_ms: int = Field(default_factory=now_ms, ge=0)


class InputOffset(Record):
    schema_name: ClassVar[str] = "input_offset"

    partition: int = Field(ge=0)
    offset: int = Field(ge=0)


class Checkpoint(Record):
    """A model version `karma train` wrote: the generation workers of `model` switch to it."""

    schema_name: ClassVar[str] = "checkpoint"

    checkpoint_id: Id
    model: Id
    version: int = Field(ge=2)
    path: NonBlank
    parent_version: int = Field(ge=1)
    parent_path: NonBlank
    preference_ids: list[Id]
    train_loss: float
    reward_margin: float
    reward_accuracy: float = Field(ge=0.0, le=1.0)
    method: str  # "full" or "lora"
    consumer_group: str
    # Where the trainer's group reads on after this round: the next offset of each partition of
    # karma.preferences. A trainer that resumes starts here, whatever its committed offsets say.
    input_offsets: list[InputOffset]
    simulated_preferences: int = Field(ge=0)  # of preference_ids, those a simulated judge labelled
    train_seconds: float = Field(ge=0.0)
    created_at_ms: int = Field(default_factory=now_ms, ge=0)

    @model_validator(mode="after")
    def _child_of_its_parent(self) -> Checkpoint:
        if self.parent_version != self.version - 1:
            raise ValueError(f"version {self.version} must have parent version {self.version - 1}")
        return self


RECORD_TYPES: dict[str, type[Record]] = {
    cls.schema_name: cls for cls in (Prompt, Response, KinPair, Preference, DeadLetter, Checkpoint)
}

"""All configuration in one place, declared with defaults.

Sources, highest priority first: keyword overrides (the CLI's flags), `KARMA_*` environment
variables (nested with `__`, e.g. `KARMA_KIN__TAU=0.9`), a YAML file (`--config FILE` or
`KARMA_CONFIG`), then the defaults below. The model pool, thresholds and policies are
configuration, not code.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from karma.agents.backends import GENERATION_BACKENDS, JUDGE_BACKENDS
from karma.agents.kinship import KinRule
from karma.agents.policies import POLICIES, Policy
from karma.agents.scoring import BUILT_IN as BUILT_IN_SCORERS
from karma.schemas.models import problem_message

# The names come from the one registry of backends; the judge may also be `zebra`.
Backend = Literal[GENERATION_BACKENDS]  # type: ignore[valid-type]
JudgeBackend = Literal[JUDGE_BACKENDS]  # type: ignore[valid-type]


class StrictModel(BaseModel):
    """A configuration section: an unknown key is an error (a typo must not silently become a
    default), reported with the closest valid name by `load_settings`."""

    model_config = ConfigDict(extra="forbid")


class BackendSpec(StrictModel):
    """Where a model runs, for generation or judging; the backend's own settings have defaults.

    - simulated: seeded CPU stand-ins (agents/backends/simulated.py); every record says simulated.
    - openai: any OpenAI-compatible chat-completions server (`vllm serve`, TGI, SGLang, ...).
    - vllm: vLLM's V1 `AsyncLLM` inside the worker (continuous batching on the worker's GPU).
    - transformers: a local checkpoint with Hugging Face transformers (CPU or GPU).
    """

    backend: Backend = "simulated"
    model: str | None = Field(
        default=None,
        description="The server's model name, or the checkpoint path/id for vllm and transformers; "
        "defaults to `name`.",
    )
    base_url: str | None = Field(
        default=None, description="openai: the server's base URL, e.g. http://127.0.0.1:8000/v1."
    )
    api_key_env: str | None = Field(
        default=None,
        description="openai: the environment variable holding the API key; it must be set. Not named: "
        "OPENAI_API_KEY if set, else the key 'EMPTY', which `vllm serve` accepts.",
    )
    max_concurrency: int = Field(default=16, ge=1, description="openai: requests in flight at once.")
    max_retries: int = Field(
        default=4, ge=0, description="openai: retries of timeouts, 429 and 5xx, with exponential backoff."
    )
    timeout_s: float = Field(default=120.0, gt=0, description="openai: seconds per request.")
    temperature: float = Field(default=0.7, ge=0.0, description="Sampling temperature.")
    max_tokens: int = Field(default=512, ge=1, description="Longest response, in tokens.")
    engine_process: bool = Field(
        default=True,
        description="transformers: run the model in a child process of the worker, with an interpreter "
        "of its own, so that the worker's stream work does not slow its generation (false: in a thread "
        "of the worker; a judge and a generator on one checkpoint share it either way).",
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="vllm: AsyncEngineArgs overrides (tensor_parallel_size, gpu_memory_utilization, "
        "max_model_len, ...); transformers: from_pretrained keyword arguments.",
    )

    @model_validator(mode="after")
    def _openai_needs_a_url_and_its_key(self) -> BackendSpec:
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend 'openai' needs base_url (e.g. http://127.0.0.1:8000/v1)")
        if self.backend == "openai" and self.api_key_env and not os.environ.get(self.api_key_env):
            raise ValueError(
                f"api_key_env names {self.api_key_env}, which is not set in the environment "
                "(set it, or leave api_key_env out to send OPENAI_API_KEY or the key 'EMPTY')"
            )
        return self

    @property
    def api_key(self) -> str:
        """The key sent to an OpenAI-compatible server."""
        if self.api_key_env:
            return os.environ[self.api_key_env]
        return os.environ.get("OPENAI_API_KEY") or "EMPTY"


class ModelSpec(BackendSpec):
    """One generator in the pool."""

    name: str = Field(pattern=r"^[\w.:\-/]+$")
    latent_quality: float | None = Field(
        default=None,
        description="Simulated backend only: the model's true quality in [0, 1]; "
        "defaults to its prior superiority from the profiles.",
    )
    simulated_latency_s: float = Field(
        default=0.0,
        ge=0.0,
        description="Simulated backend only: seconds to wait per response, like a GPU would.",
    )
    simulated_crash_on: str | None = Field(
        default=None,
        description="Simulated backend only, fault injection: raise an unexpected exception (a bug, not a "
        "backend failure) on any prompt containing this text.",
    )

    @property
    def served_model(self) -> str:
        return self.model or self.name


class KinSettings(StrictModel):
    """Kin when similarity >= tau, |superiority gap| <= delta and lengths are comparable."""

    tau: float = Field(default=0.95, ge=-1.0, le=1.0, description="Minimum profile similarity.")
    delta: float = Field(default=0.15, ge=0.0, le=1.0, description="Maximum superiority gap.")
    min_length_ratio: float = Field(
        default=0.25,
        ge=0.0,
        le=1.0,
        description="Complexity gate: the shorter response must be at least this share of the longer.",
    )
    hybrid_weight: float = Field(
        default=0.5, ge=0.0, le=1.0, description="`hybrid` policy: weight of similarity against the gap."
    )

    def rule(self) -> KinRule:
        return KinRule(tau=self.tau, delta=self.delta, min_length_ratio=self.min_length_ratio)

    profiles: Path | None = Field(
        default=None, description="Benchmark CSV; None means the bundled 16-model table."
    )


class CompetencySettings(StrictModel):
    """Online competency: a windowed Bradley-Terry fit of the judge's verdicts, blended with
    the prior profiles by how many comparisons the window holds (see agents/competency.py)."""

    online: bool = Field(
        default=True,
        description="Learn superiority from verdicts; False keeps the prior profiles fixed "
        "(the paper's static setting, and what lets a test predict every pair).",
    )
    evidence: float = Field(
        default=20.0,
        gt=0,
        description="Comparisons in the window at which online and prior superiority weigh the same.",
    )
    scale: float = Field(
        default=0.1,
        gt=0,
        description="Bradley-Terry scale: a superiority gap of `scale` multiplies the odds of winning by e.",
    )


class JudgeSettings(BackendSpec):
    """The pairwise judge: simulated, an LLM on any backend (asked in both orders), zebra or verifier."""

    backend: JudgeBackend = Field(
        default="simulated",
        description="simulated, openai, vllm, transformers, zebra (no model: the response of the "
        "model with the higher superiority wins; equal superiority is a tie), or verifier (no model: "
        "each answer checked against the prompt's metadata 'reference'; the right one wins).",
    )
    name: str = Field(default="simulated-judge", description="The judge's name in every preference.")
    temperature: float = Field(default=0.0, ge=0.0, description="LLM judges: sampling temperature.")
    max_tokens: int = Field(default=256, ge=1, description="LLM judges: longest verdict, in tokens.")
    verdict_attempts: int = Field(
        default=3, ge=1, description="LLM judges: tries for a valid JSON verdict before it is an error."
    )
    structured_output: bool = Field(
        default=True, description="openai/vllm: constrain the verdict to its JSON schema."
    )
    logprobs: bool = Field(
        default=True, description="openai/vllm: ask for log-probabilities, for a soft label when served."
    )
    position_bias: float = Field(
        default=0.3, description="Simulated: log-odds bonus for whichever response is shown first."
    )
    length_bias: float = Field(
        default=0.5,
        description="Simulated: log-odds bonus per unit of log(length ratio) for the longer response.",
    )
    quality_scale: float = Field(
        default=0.1, gt=0, description="Simulated: quality gap that moves the log-odds by 1."
    )
    scorer: str = Field(
        default="exact",
        description="Verifier: the scorer of a prompt whose metadata names none (agents/scoring.py): "
        "exact, numeric, contains, or module:function for your own (imported when the judge is built).",
    )

    @field_validator("scorer")
    @classmethod
    def _known_scorer(cls, name: str) -> str:
        # A built-in name is checked here; module:function only for its shape, since importing a
        # user's module is the judge's business when it is built (agents/backends/verifier.py).
        module, colon, function = name.partition(":")
        if name not in BUILT_IN_SCORERS and not (colon and module and function):
            known = ", ".join(BUILT_IN_SCORERS)
            raise ValueError(f"unknown scorer {name!r}: one of {known}, or module:function for your own")
        return name

    @property
    def served_model(self) -> str:
        return self.model or self.name


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
# The password variable `karma broker start --secure` prints. It starts with KARMA_ like the
# settings, so it is listed among OTHER_VARIABLES rather than refused as an unknown setting.
KAFKA_PASSWORD_VARIABLE = "KARMA_KAFKA_PASSWORD"


def password_variable(role: str) -> str:
    """The variable `karma broker start --secure` tells a role to keep its password in."""
    return f"{KAFKA_PASSWORD_VARIABLE}_{role.upper()}"


class KafkaSecurity(StrictModel):
    """How every Kafka client of the project (the SDK, the CLI, the faust workers, the lag and
    topic admin clients) authenticates to the cluster and encrypts its connections; made into
    client arguments in one place, streams/kafka_clients.py. The password itself is never a
    setting: only the name of the environment variable that holds it, so no config file, log
    line or child process's settings carry it."""

    security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT",
        description="How to talk to the brokers: PLAINTEXT, SSL (TLS), SASL_PLAINTEXT (a password, "
        "unencrypted) or SASL_SSL (a password over TLS). Must match the listener of bootstrap_servers.",
    )
    sasl_mechanism: SaslMechanism = Field(
        default="PLAIN",
        description="SASL_*: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, as the cluster's listener enables "
        "(`karma broker start --secure` enables SCRAM-SHA-512).",
    )
    sasl_username: str | None = Field(default=None, min_length=1, description="SASL_*: the user name.")
    sasl_password_env: str | None = Field(
        default=None,
        min_length=1,
        description="SASL_*: the NAME of the environment variable holding the password (e.g. "
        f"{KAFKA_PASSWORD_VARIABLE}); it must be set wherever a client starts, worker processes included.",
    )
    ssl_cafile: Path | None = Field(
        default=None,
        description="SSL/SASL_SSL: PEM file of the CA(s) that signed the brokers' certificates; "
        "not given: the system's trusted CAs.",
    )
    ssl_certfile: Path | None = Field(
        default=None,
        description="SSL/SASL_SSL, for brokers that ask for a client certificate (mutual TLS): the "
        "client's PEM certificate chain.",
    )
    ssl_keyfile: Path | None = Field(
        default=None,
        description="With ssl_certfile: the client's PEM private key (unencrypted), if not in ssl_certfile.",
    )

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _an_existing_file(cls, path: Path | None) -> Path | None:
        # Checked here, not at the first connection: a worker must not start for minutes of
        # retries on a file name with a typo.
        if path is not None and not path.is_file():
            raise ValueError(f"{path} is not a readable file")
        return path

    @model_validator(mode="after")
    def _complete_for_its_protocol(self) -> KafkaSecurity:
        # A setting the protocol does not use is an error, not ignored: TLS files with
        # PLAINTEXT usually mean a forgotten security_protocol, and the traffic would go in clear.
        if not self.uses_tls:
            given = [name for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile") if getattr(self, name)]
            if given:
                raise ValueError(
                    f"{', '.join(given)} given, but security_protocol {self.security_protocol} does not use "
                    "TLS (set security_protocol to SSL or SASL_SSL)"
                )
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("ssl_keyfile needs ssl_certfile (the certificate the key belongs to)")
        if not self.uses_sasl:
            given = [name for name in ("sasl_username", "sasl_password_env") if getattr(self, name)]
            if given:
                raise ValueError(
                    f"{', '.join(given)} given, but security_protocol {self.security_protocol} does not use "
                    "SASL (set security_protocol to SASL_SSL or SASL_PLAINTEXT)"
                )
            return self
        if not self.sasl_username or not self.sasl_password_env:
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_username and sasl_password_env "
                f"(the name of the environment variable holding the password, e.g. {KAFKA_PASSWORD_VARIABLE})"
            )
        if not os.environ.get(self.sasl_password_env):
            raise ValueError(
                f"sasl_password_env names {self.sasl_password_env}, which is not set in the environment "
                "(export it with the password of the SASL user)"
            )
        return self

    @property
    def sasl_password(self) -> str | None:
        """The SASL password, read from the environment when a client is made."""
        if not self.uses_sasl or not self.sasl_password_env:
            return None
        password = os.environ.get(self.sasl_password_env)
        if not password:
            raise ConfigError(f"sasl_password_env names {self.sasl_password_env}, which is not set any more")
        return password


# The principals of a deployment with one per role (streams/acls.py says what each may touch).
PrincipalRole = Literal["producer", "generation", "rating", "judging", "trainer", "operator", "admin"]


class KafkaPrincipal(StrictModel):
    """One role's credentials, in place of kafka_security's own (its protocol, mechanism and CA
    stay). Checked when a client of that role is made, not when settings load: a judging worker
    needs the judging password in its environment, not every role's."""

    sasl_username: str | None = Field(default=None, min_length=1, description="SASL_*: the role's user.")
    sasl_password_env: str | None = Field(
        default=None,
        min_length=1,
        description="SASL_*: the NAME of the environment variable holding the role's password.",
    )
    ssl_certfile: Path | None = Field(
        default=None, description="Mutual TLS: the role's PEM certificate (its name is the principal)."
    )
    ssl_keyfile: Path | None = Field(default=None, description="Mutual TLS: the role's PEM private key.")


DEFAULT_POOL = [
    ModelSpec(name=name)
    for name in ("llama-2-13b-chat", "wizardlm-13b", "vicuna-33b", "llama-2-70b-chat", "gpt-3.5-turbo")
]


class KarmaSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KARMA_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security: KafkaSecurity = Field(
        default_factory=KafkaSecurity,
        description="TLS and SASL towards the cluster of bootstrap_servers (default: PLAINTEXT).",
    )
    kafka_principals: dict[PrincipalRole, KafkaPrincipal] = Field(
        default_factory=dict,
        description="One principal per role (producer, generation, rating, judging, trainer, operator, "
        "admin): a command or worker of that role connects with these credentials; a role not named "
        "here connects with kafka_security's.",
    )
    topic_prefix: str = Field(default="karma.", pattern=r"^[\w.\-]*$")
    app_id: str = Field(default="karma", description="Consumer-group and changelog-topic stem.")
    partitions: int = Field(default=4, ge=1, description="Partitions of every karma topic.")
    replication_factor: int = Field(default=1, ge=1)
    store: str = Field(default="memory://", description="faust table store: memory:// or rocksdb://")
    data_dir: Path = Field(default=Path(".cache/karma/worker"), description="faust's data folder.")
    seed: int = 0

    pool: list[ModelSpec] = Field(default_factory=lambda: list(DEFAULT_POOL))
    kin: KinSettings = Field(default_factory=KinSettings)
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    competency: CompetencySettings = Field(default_factory=CompetencySettings)
    policy: Policy = Field(default="kin", description=f"Pairing policy, one of {list(POLICIES)}.")

    batch_size: int = Field(
        default=32, ge=1, description="Generation and judging take up to this many messages at a time."
    )
    generation_batches_in_flight: int = Field(
        default=2,
        ge=1,
        description="Batches a generation worker handles at once: the next batch is decoded and waits "
        "at the model while the last one's answers are published, so the model does not wait for the "
        "broker; acks keep the batches' order (1: one batch at a time).",
    )
    rating_batch_size: int = Field(
        default=256,
        ge=1,
        description="The rating stage takes up to this many messages at a time: no model waits on it, "
        "and a prompt whose answers all fall in one batch costs one state write.",
    )
    batch_wait_s: float = Field(
        default=0.1, gt=0, description="...or what arrived within this long, so a GPU engine stays full."
    )
    gather_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="Backstop: how long the rating stage waits for a model that says nothing at all "
        "(a prompt completes as soon as every model answered or failed); long enough to ride out a "
        "broker restart. Answers that come later are still paired.",
    )
    tick_interval_s: float = Field(
        default=2.0, gt=0, description="How often gathers are checked for timeouts."
    )
    done_retention_s: float = Field(
        default=3600.0,
        gt=0,
        description="How long a finished prompt is remembered, to recognise replays and pair late answers.",
    )
    done_retention_max: int = Field(
        default=100_000,
        ge=1,
        description="At most this many finished prompts are remembered per partition (oldest first out).",
    )
    handler_retries: int = Field(
        default=3,
        ge=1,
        description="Tries of a batch whose handler raises unexpectedly, with backoff, before each of its "
        "messages is handled alone and dead-lettered if it still fails.",
    )
    delivery_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="How long the producer retries a write the broker refuses with a retriable error "
        "(not enough replicas, no leader, a broker down) before giving up; a worker whose write still "
        "fails then stops without committing, so its input is redelivered (see streams/delivery.py).",
    )
    max_message_bytes: int = Field(
        default=1_048_588,
        ge=1024,
        description="The largest record a karma topic takes, used only where the worker cannot read the "
        "topic's own max.message.bytes (Kafka's default; the producer's cap of 1,000,000 bytes applies too).",
    )
    min_answer_room_bytes: int = Field(
        default=16_384,
        ge=0,
        description="A prompt is too large to travel (dead-lettered at intake) when its pair and "
        "preference, which carry its text beside two answers, would leave less than this for each answer.",
    )
    dead_letter_max_value_bytes: int = Field(
        default=65_536,
        ge=0,
        description="A dead letter keeps at most this many bytes of the message it came from, with the "
        "whole value's length and SHA-256, so that a letter always fits its topic.",
    )
    allow_untested_versions: bool = Field(
        default=False,
        description="Start a worker although the installed faust-streaming or aiokafka is not the release "
        "its overrides were written against (streams/versions.py); a warning names it.",
    )
    # Whole seconds: faust's hopping windows step through integer starts.
    window_size_s: int = Field(
        default=600, ge=1, description="Hopping window of per-model state and online competency."
    )
    window_step_s: int = Field(default=60, ge=1, description="How far the window hops.")

    metrics_port: int = Field(default=9108, ge=0, le=65535, description="0 disables /metrics.")
    metrics_host: str = "127.0.0.1"
    lag_interval_s: float = Field(
        default=10.0, ge=0, description="How often karma_consumer_lag_messages is read; 0 disables it."
    )
    shutdown_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="On SIGTERM a worker finishes its in-flight batches, commits, closes its model "
        "backends and exits 0; if that takes longer than this, it exits at once (code 1), leaving "
        "what it had not committed to be redelivered. A second SIGTERM exits at once.",
    )

    # Fast group joins and restarts: see docs/design.md, "Runtime facts".
    session_timeout_s: float = 6.0
    heartbeat_interval_s: float = 1.5
    rebalance_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="How long the group waits, in a rebalance, for a member to finish the batch in hand "
        "and rejoin: above the longest batch a stage takes (a slow model's batch), or a busy member is "
        "dropped from its group at every rebalance and its batch is done twice.",
    )

    @field_validator("pool")
    @classmethod
    def _unique_model_names(cls, pool: list[ModelSpec]) -> list[ModelSpec]:
        names = [m.name for m in pool]
        if len(names) < 2:
            raise ValueError(
                "every pairing policy pairs responses of different models, so the pool needs at least "
                f"two models; it has {len(names)} ({', '.join(names) or 'none'})"
            )
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique in the pool; repeated: {duplicates}")
        return pool

    @model_validator(mode="after")
    def _consistent(self) -> KarmaSettings:
        if self.window_step_s > self.window_size_s:
            raise ValueError("window_step_s must not exceed window_size_s")
        if self.heartbeat_interval_s >= self.session_timeout_s:
            raise ValueError(
                f"heartbeat_interval_s ({self.heartbeat_interval_s:g}) must be below session_timeout_s "
                f"({self.session_timeout_s:g}): the broker would drop the worker between two heartbeats"
            )
        return self

    def as_role(self, role: PrincipalRole) -> KarmaSettings:
        """These settings with the credentials of `role` in kafka_security (itself if the role has
        none of its own); ConfigError says what is missing, e.g. the password's variable."""
        principal = self.kafka_principals.get(role)
        if principal is None:
            return self
        given = principal.model_dump(exclude_none=True)
        try:
            security = KafkaSecurity.model_validate({**self.kafka_security.model_dump(), **given})
        except ValidationError as exc:
            problems = "; ".join(error["msg"].removeprefix("Value error, ") for error in exc.errors())
            raise ConfigError(f"kafka_principals.{role}: {problems}") from None
        return self.model_copy(update={"kafka_security": security})

    def topic(self, stage: str) -> str:
        """Full topic name of a stage: prompts, responses, pairs, preferences, dlq."""
        return f"{self.topic_prefix}{stage}"

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.pool]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _StrictEnvSource(env_settings), _YamlFileSource(settings_cls))


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message says what and where."""


ENV_PREFIX = "KARMA_"
# KARMA_* variables that are not settings: the config file, the local broker's home and pom,
# the test suite's external broker, and the Kafka passwords `karma broker start --secure` prints
# (the admin's, and KARMA_KAFKA_PASSWORD_<ROLE>).
OTHER_VARIABLES = frozenset(
    {"KARMA_CONFIG", "KARMA_HOME", "KARMA_KAFKA_POM", "KARMA_TEST_BOOTSTRAP", KAFKA_PASSWORD_VARIABLE}
)


class _StrictEnvSource(PydanticBaseSettingsSource):
    """The KARMA_* variables, refusing one that names no setting: pydantic-settings would
    silently ignore a misspelt top-level variable (nested ones fail as unknown keys)."""

    def __init__(self, env: PydanticBaseSettingsSource) -> None:
        super().__init__(env.settings_cls)
        self._env = env

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        fields = set(self.settings_cls.model_fields)
        for variable in sorted(os.environ):
            name = variable.upper()
            if not name.startswith(ENV_PREFIX) or name in OTHER_VARIABLES:
                continue
            if name.startswith(password_variable("")):  # a role's password (kafka_principals)
                continue
            field = name.removeprefix(ENV_PREFIX).split("__")[0].lower()
            if field not in fields:
                raise ConfigError(
                    f"environment variable {variable}: no setting named {field!r}"
                    + _did_you_mean(field, fields, lambda n: ENV_PREFIX + n.upper())
                )
        return self._env()


def _did_you_mean(key: str, valid: Iterable[str], spell: Callable[[str], str] = repr) -> str:
    close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
    return f"; did you mean {spell(close[0])}?" if close else f"; valid: {', '.join(sorted(valid))}"


class _YamlFileSource(PydanticBaseSettingsSource):
    """Reads the YAML file named by KARMA_CONFIG (set by `--config`)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("KARMA_CONFIG")
        return read_yaml_config(Path(path)) if path else {}


def read_yaml_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def load_settings(config_file: Path | None = None, **overrides: Any) -> KarmaSettings:
    """Settings from defaults, an optional YAML file, KARMA_* variables and explicit overrides.

    Raises ConfigError whose lines each say what is wrong and where: the file and key path, or
    the environment variable, with the closest valid name for an unknown key."""
    if config_file is not None:
        os.environ["KARMA_CONFIG"] = str(config_file)
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return KarmaSettings(**given)
    except ValidationError as exc:
        raise ConfigError("\n".join(describe_errors(exc, given))) from None


def describe_errors(exc: ValidationError, overrides: Mapping[str, Any] | None = None) -> list[str]:
    """One line per problem of a KarmaSettings validation: where the value came from (the
    environment variable, the file and key path, or the override) and what is wrong."""
    config_file = os.environ.get("KARMA_CONFIG")
    from_file = read_yaml_config(Path(config_file)) if config_file else {}
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        path = _key_path(loc) or "config"
        message = problem_message(error)
        if error["type"] == "extra_forbidden":
            section = _section_fields(loc[:-1])
            key = str(loc[-1])
            message = f"unknown key {key!r}" + _did_you_mean(key, section)
        lines.append(f"{_origin(loc, overrides or {}, config_file, from_file)}{path}: {message}")
    return lines


def _origin(loc: tuple[Any, ...], overrides: Mapping[str, Any], config_file: str | None, data: Any) -> str:
    """Where the value at `loc` came from, in the sources' order of precedence."""
    if loc and loc[0] in overrides:
        return ""
    names = [str(part).upper() for part in loc if not isinstance(part, int)]
    for depth in range(len(names), 0, -1):
        variable = ENV_PREFIX + "__".join(names[:depth])
        if variable in os.environ:
            return f"environment variable {variable}: "
    for part in loc:
        found = part in data if isinstance(data, Mapping) else isinstance(data, list) and part < len(data)
        if not found:
            return ""
        data = data[part]
    return f"config file {config_file}: " if config_file else ""


def _key_path(loc: tuple[Any, ...]) -> str:
    """pool.0.backnd -> pool[0].backnd"""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _section_fields(loc: tuple[Any, ...]) -> set[str]:
    """The valid keys of the configuration section at `loc` (the top level for ())."""
    model: Any = KarmaSettings
    for part in loc:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[part].annotation
        candidates = (annotation, *get_args(annotation))  # ModelSpec, list[ModelSpec], X | None
        model = next((t for t in candidates if isinstance(t, type) and issubclass(t, BaseModel)), None)
        if model is None:
            return set()
    return set(model.model_fields)

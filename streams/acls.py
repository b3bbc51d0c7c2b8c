"""Who may touch what: the principals of a deployment, one per role, and the least set of Kafka
ACLs each one needs, as plain data (no Kafka here; streams/acl_admin.py writes them to a broker,
`karma acl` prints and applies them).

The roles and what they do:

    producer    writes prompts (`karma submit`, the SDK's PromptProducer)
    generation  reads prompts and checkpoints, writes responses and dead letters
    rating      reads responses, preferences and its ticks; writes pairs, ticks, dead letters
                and its tables' changelogs (which it creates)
    judging     reads pairs, writes preferences and dead letters
    trainer     reads preferences, reads and writes checkpoints (`karma train`, `karma export`)
    operator    reads every karma topic (`karma audit`, `karma tail`), describes the groups
    admin       everything: the broker's only super user (topics, ACLs, the brokers' own traffic)

Kafka's own implications hold: READ or WRITE on a topic or group implies DESCRIBE, and WRITE on
any topic implies the idempotent producer's IDEMPOTENT_WRITE, so neither is listed. Groups
follow streams/app.py's `app_id_for`: `<app_id>-generate-<model>`, `<app_id>-rate`,
`<app_id>-judge`; the trainer's `<app_id>-train-<model>` and the exporter's `<app_id>-export`.
`karma run` (every stage in one process, group `<app_id>`) needs one principal with all three
stages' rights: it connects with `kafka_security` as given, not as a role.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

from karma.streams.config import KarmaSettings, PrincipalRole

__all__ = [
    "PRINCIPAL_OF_WORKER_ROLE",
    "ROLES",
    "Acl",
    "acls_for",
    "allows",
    "principal_name",
]

ROLES: tuple[str, ...] = get_args(PrincipalRole)
# `karma worker ROLE` connects as the principal of its stage.
PRINCIPAL_OF_WORKER_ROLE: dict[str, PrincipalRole] = {
    "generate": "generation",
    "rate": "rating",
    "judge": "judging",
}

Resource = Literal["topic", "group"]
Pattern = Literal["literal", "prefixed"]
Operation = Literal["read", "write", "create", "describe"]

# What an allowed operation also allows (Kafka's AclAuthorizer and StandardAuthorizer alike).
_IMPLIED_BY: dict[str, set[str]] = {"describe": {"read", "write", "delete", "alter"}}


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW rule: `principal` (a Kafka user name, principal `User:<name>`) may `operation`
    the `resource` named `name` (exactly, or every name that starts with it: `pattern`)."""

    principal: str
    resource: Resource
    name: str
    pattern: Pattern
    operation: Operation

    def matches(self, resource: Resource, name: str) -> bool:
        if resource != self.resource:
            return False
        return name == self.name if self.pattern == "literal" else name.startswith(self.name)


def principal_name(settings: KarmaSettings, role: str) -> str:
    """The Kafka user name a role connects as: its `kafka_principals` entry's SASL user name,
    else its certificate's name (mutual TLS), else the role's own name (as `karma broker start
    --secure` creates them)."""
    principal = settings.kafka_principals.get(role)
    if principal is not None and principal.sasl_username:
        return principal.sasl_username
    return role


def acls_for(settings: KarmaSettings) -> list[Acl]:
    """The least ACL set of a deployment (its topic prefix and app id), sorted; the admin has
    none: it is the broker's super user."""
    topic, app = settings.topic, settings.app_id

    def rules(role: str, *grants: tuple[Resource, str, Pattern, Iterable[Operation]]) -> list[Acl]:
        who = principal_name(settings, role)
        return [
            Acl(who, resource, name, pattern, operation)
            for resource, name, pattern, operations in grants
            for operation in operations
        ]

    def reads(*stages: str) -> list[tuple[Resource, str, Pattern, tuple[Operation, ...]]]:
        return [("topic", topic(stage), "literal", ("read",)) for stage in stages]

    def writes(*stages: str) -> list[tuple[Resource, str, Pattern, tuple[Operation, ...]]]:
        return [("topic", topic(stage), "literal", ("write",)) for stage in stages]

    acls = [
        *rules("producer", *writes("prompts")),
        *rules(
            "generation",
            *reads("prompts", "checkpoints"),
            *writes("responses", "dlq"),
            ("group", f"{app}-generate", "prefixed", ("read",)),
        ),
        *rules(
            "rating",
            *reads("responses", "preferences", "rating.ticks"),
            *writes("pairs", "dlq", "rating.ticks"),
            ("group", f"{app}-rate", "literal", ("read",)),
            # The tables' changelogs, `<group>-<table>-changelog`, created by the worker.
            ("topic", f"{app}-rate-", "prefixed", ("create", "read", "write")),
        ),
        *rules(
            "judging",
            *reads("pairs"),
            *writes("preferences", "dlq"),
            ("group", f"{app}-judge", "literal", ("read",)),
        ),
        *rules(
            "trainer",
            *reads("preferences", "checkpoints"),
            *writes("checkpoints"),
            ("group", f"{app}-train-", "prefixed", ("read",)),
            ("group", f"{app}-export", "literal", ("read",)),
        ),
        *rules(
            "operator",
            ("topic", settings.topic_prefix, "prefixed", ("read",)),
            ("group", app, "prefixed", ("describe",)),
        ),
    ]
    return sorted(acls)


def allows(acls: Iterable[Acl], principal: str, resource: Resource, name: str, operation: str) -> bool:
    """Whether `acls` let `principal` do `operation` on a resource, as the broker decides it
    (implied operations included; no DENY rules here)."""
    granting = {operation} | _IMPLIED_BY.get(operation, set())
    return any(
        acl.principal == principal and acl.operation in granting and acl.matches(resource, name)
        for acl in acls
    )

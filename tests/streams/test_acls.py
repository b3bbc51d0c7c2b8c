"""The least ACL set of a deployment (streams/acls.py), checked as the broker would decide it:
each role may do its own work and none of what the issue lists as another role's."""

from __future__ import annotations

import pytest

from karma.streams.acls import ROLES, acls_for, allows, principal_name
from karma.streams.app import USES, app_id_for
from karma.streams.config import ConfigError, KarmaSettings


@pytest.fixture
def settings() -> KarmaSettings:
    return KarmaSettings(topic_prefix="prod.", app_id="karma-prod")


def test_each_stage_may_do_its_own_work(settings: KarmaSettings) -> None:
    acls = acls_for(settings)
    topic = settings.topic
    may = [
        ("producer", "topic", topic("prompts"), "write"),
        ("generation", "topic", topic("prompts"), "read"),
        ("generation", "topic", topic("checkpoints"), "read"),
        ("generation", "topic", topic("responses"), "write"),
        ("generation", "group", app_id_for(settings, ["generate"], ["m1"]), "read"),
        ("rating", "topic", topic("responses"), "read"),
        ("rating", "topic", topic("pairs"), "write"),
        ("rating", "topic", topic("rating.ticks"), "write"),
        ("rating", "topic", f"{app_id_for(settings, ['rate'])}-rating-prompts-changelog", "create"),
        ("rating", "group", app_id_for(settings, ["rate"]), "read"),
        ("judging", "topic", topic("pairs"), "read"),
        ("judging", "topic", topic("preferences"), "write"),
        ("judging", "group", app_id_for(settings, ["judge"]), "read"),
        ("trainer", "topic", topic("preferences"), "read"),
        ("trainer", "topic", topic("checkpoints"), "write"),
        ("trainer", "group", "karma-prod-train-m1", "read"),
        ("trainer", "group", "karma-prod-export", "read"),
        ("operator", "topic", topic("dlq"), "read"),
        ("operator", "group", "karma-prod-judge", "describe"),
    ]
    for who, resource, name, operation in may:
        assert allows(acls, who, resource, name, operation), (who, operation, name)
    # A worker describes every topic it uses (ensure_topics): READ or WRITE implies DESCRIBE.
    for role, principal in (("generate", "generation"), ("rate", "rating"), ("judge", "judging")):
        for short in USES[role]:
            name = settings.topic("rating.ticks" if short == "ticks" else short)
            assert allows(acls, principal, "topic", name, "describe"), (principal, name)


def test_no_role_may_do_what_is_not_its_own(settings: KarmaSettings) -> None:
    acls = acls_for(settings)
    topic = settings.topic
    refused = [
        ("producer", "topic", topic("preferences"), "read"),
        ("producer", "topic", topic("responses"), "write"),
        ("trainer", "topic", topic("prompts"), "write"),
        ("trainer", "topic", topic("preferences"), "write"),
        ("judging", "topic", topic("prompts"), "read"),
        ("judging", "topic", topic("responses"), "write"),
        ("generation", "topic", topic("preferences"), "write"),
        ("rating", "topic", topic("preferences"), "write"),
        ("operator", "topic", topic("prompts"), "write"),
        ("operator", "group", "karma-prod-judge", "read"),  # may look at the groups, not join them
        ("generation", "group", app_id_for(settings, ["judge"]), "read"),
        ("rating", "topic", "other.prompts", "read"),  # another deployment's topics
    ]
    for who, resource, name, operation in refused:
        assert not allows(acls, who, resource, name, operation), (who, operation, name)
    assert not [acl for acl in acls if acl.principal == "admin"]  # the super user needs none


def test_principal_names_follow_the_configured_users() -> None:
    settings = KarmaSettings(kafka_principals={"judging": {"sasl_username": "svc-judge"}})
    assert principal_name(settings, "judging") == "svc-judge"
    assert principal_name(settings, "rating") == "rating"
    assert {acl.principal for acl in acls_for(settings)} == {
        "producer", "generation", "rating", "svc-judge", "trainer", "operator"
    }  # fmt: skip
    assert set(ROLES) == {"producer", "generation", "rating", "judging", "trainer", "operator", "admin"}


def test_as_role_takes_the_roles_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KARMA_KAFKA_PASSWORD", "admin-secret")
    monkeypatch.setenv("KARMA_KAFKA_PASSWORD_JUDGING", "judge-secret")
    monkeypatch.delenv("KARMA_KAFKA_PASSWORD_RATING", raising=False)  # whatever the shell has
    base = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512"}
    settings = KarmaSettings(
        kafka_security={**base, "sasl_username": "admin", "sasl_password_env": "KARMA_KAFKA_PASSWORD"},
        kafka_principals={
            "judging": {"sasl_username": "judging", "sasl_password_env": "KARMA_KAFKA_PASSWORD_JUDGING"},
            "rating": {"sasl_username": "rating", "sasl_password_env": "KARMA_KAFKA_PASSWORD_RATING"},
        },
    )
    judging = settings.as_role("judging").kafka_security
    assert (judging.sasl_username, judging.sasl_password, judging.security_protocol) == (
        "judging",
        "judge-secret",
        "SASL_SSL",
    )
    assert settings.as_role("producer") is settings  # no principal of its own: kafka_security's
    # A role whose password is not in this process's environment is refused when it is used.
    with pytest.raises(ConfigError, match=r"kafka_principals.rating: .*KARMA_KAFKA_PASSWORD_RATING"):
        settings.as_role("rating")

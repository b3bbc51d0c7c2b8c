"""Topics, changelogs included, exist with faust's settings before any worker starts."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from karma.schemas.catalogue import SCHEMA_FILES
from karma.streams.app import changelog_topics, new_stage
from karma.streams.config import KarmaSettings
from karma.streams.topics import (
    RECORD_OF_STAGE,
    TOPICS,
    TopicMismatchError,
    TopicNames,
    all_topic_names,
    ensure_topics,
)
from karma.streams.worker import create_app


def test_changelogs_are_declared_as_faust_declares_them() -> None:
    settings = KarmaSettings(app_id="k", partitions=3, window_size_s=600, window_step_s=60)
    topics = {t.name: t for t in changelog_topics(create_app(settings, roles=["rate"]))}
    assert sorted(topics) == [
        "k-rate-rating-answers-changelog",
        "k-rate-rating-competency-changelog",
        "k-rate-rating-prompts-changelog",
    ]
    assert {t.num_partitions for t in topics.values()} == {3}  # co-partitioned with responses
    for name in ("k-rate-rating-prompts-changelog", "k-rate-rating-answers-changelog"):
        assert topics[name].topic_configs == {"cleanup.policy": "compact"}
    windowed = topics["k-rate-rating-competency-changelog"].topic_configs
    assert windowed["cleanup.policy"] == "compact,delete"  # old windows expire
    assert int(windowed["retention.ms"]) >= 600_000


def test_stages_without_tables_have_no_changelogs() -> None:
    assert changelog_topics(create_app(KarmaSettings(), roles=["judge"])) == []
    assert changelog_topics(create_app(KarmaSettings(), roles=["generate"])) == []


def test_ensure_topics_creates_them_once_and_waits_for_metadata(kafka_bootstrap: str) -> None:
    run = uuid.uuid4().hex[:8]
    settings = KarmaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"tt{run}.", app_id=f"tt{run}")
    changelogs = changelog_topics(create_app(settings, roles=["rate"]))

    async def scenario() -> tuple[list[str], list[str], list[dict], list]:
        first = await ensure_topics(settings, changelogs)
        second = await ensure_topics(settings, changelogs)
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics([t.name for t in changelogs])
            configs = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, t.name) for t in changelogs]
            )
        finally:
            await admin.close()
        return first, second, described, configs

    first, second, described, configs = asyncio.run(scenario())
    assert sorted(first) == sorted([*all_topic_names(settings), *(t.name for t in changelogs)])
    assert second == []  # nothing to create the second time
    assert {len(t["partitions"]) for t in described} == {settings.partitions}
    # resources: (error_code, error_message, type, topic, [(name, value, ...), ...])
    policies = {
        resource[3]: value
        for response in configs
        for resource in response.resources
        for name, value, *_ in resource[4]
        if name == "cleanup.policy"
    }
    assert sorted(policies.values()) == ["compact", "compact", "compact,delete"]


def test_existing_topics_partitioned_otherwise_are_refused(kafka_bootstrap: str) -> None:
    """Co-partitioning of responses, preferences and ticks depends on one partition count."""
    run = uuid.uuid4().hex[:8]
    settings = KarmaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"tm{run}.", partitions=2)
    asyncio.run(ensure_topics(settings))
    mismatched = settings.model_copy(update={"partitions": 3})
    with pytest.raises(TopicMismatchError) as raised:
        asyncio.run(ensure_topics(mismatched))
    message = str(raised.value)
    assert f"tm{run}.responses has 2 partitions, the configuration 3" in message
    assert "set `partitions`" in message
    assert asyncio.run(ensure_topics(settings)) == []  # the matching configuration still starts


def test_topics_are_declared_once_and_everything_follows() -> None:
    """streams/topics.py TOPICS is the one list: names, record types, schema files and the
    workers' topics all follow from it."""
    settings = KarmaSettings(topic_prefix="t.")
    names = TopicNames.from_settings(settings)
    assert [getattr(names, spec.short) for spec in TOPICS] == all_topic_names(settings)
    assert names.ticks == "t.rating.ticks" and names.prompts == "t.prompts"
    assert {record.schema_name for record in RECORD_OF_STAGE.values()} == set(SCHEMA_FILES)
    stage = new_stage(settings, roles=["judge"])
    assert [topic.get_topic_name() for topic in stage.topics.values()] == all_topic_names(settings)

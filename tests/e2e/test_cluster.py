"""A three-node Kafka cluster (localkafka/cluster.py) that loses a broker mid-stream, as a production
cluster does: the pipeline runs against all three nodes with every topic replicated three times
(min.insync.replicas 2), the node that coordinates the workers' group is killed with SIGKILL and
stays down, and the stream goes on: every prompt ends as exactly its preferences, none invented,
and `karma audit` finds nothing unaccounted."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from karma.localkafka.cluster import LocalCluster
from karma.streams.config import KarmaSettings
from karma.streams.kafka_clients import new_admin
from tests.conftest import BROKER_START_TIMEOUT, JARS_HOME
from tests.e2e.conftest import audit, ids, make_prompts

pytestmark = pytest.mark.timeout(600)

POOL = ["llama-2-13b-chat", "wizardlm-13b", "vicuna-33b", "llama-2-70b-chat", "gpt-3.5-turbo"]


async def _replication_and_coordinator(settings: KarmaSettings) -> tuple[set[int], set[str], int]:
    """The replica counts of the prompts topic's partitions, its min.insync.replicas, and the node
    that coordinates the workers' consumer group (faust's group id is the app id)."""
    admin = new_admin(settings)
    await admin.start()
    try:
        topic = settings.topic("prompts")
        [described] = await admin.describe_topics([topic])
        replicas = {len(partition["replicas"]) for partition in described["partitions"]}
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, {"min.insync.replicas": None})
        [response] = await admin.describe_configs([resource])
        min_isr = {str(entry[1]) for result in response.resources for entry in result[4]}
        coordinator = await admin.find_coordinator(settings.app_id)
        return replicas, min_isr, coordinator
    finally:
        await admin.close()


def test_the_stream_goes_on_when_one_broker_of_three_is_killed(pipeline_factory: Any, tmp_path: Path) -> None:
    cluster = LocalCluster.on_free_ports(tmp_path / "cluster", nodes=3, jars_home=JARS_HOME)
    cluster.start(timeout=2 * BROKER_START_TIMEOUT)
    pipeline = None
    try:
        pipeline = pipeline_factory(
            **cluster.client_settings(),  # all three nodes, topics replicated three times
            pool=[{"name": m, "simulated_latency_s": 0.05} for m in POOL],
        )
        prompts = make_prompts(600, tag="cluster")
        expected = pipeline.expected_preference_ids(prompts)
        pipeline.submit(prompts)
        pipeline.start_worker()
        pipeline.wait_for("preferences", lambda r: len(set(ids(r))) >= 40)

        replicas, min_isr, coordinator = asyncio.run(_replication_and_coordinator(pipeline.settings))
        assert replicas == {3} and min_isr == {"2"}
        victim = cluster.brokers[coordinator - 1]  # node ids are 1..3 in order
        os.kill(victim.status().pid or 0, signal.SIGKILL)  # as a crashed host would
        at_kill = set(ids(pipeline.read("preferences")))
        assert at_kill < expected, "the broker must die mid-stream for this test to mean anything"

        received = pipeline.wait_for("preferences", lambda r: set(ids(r)) >= expected, timeout_s=300)
        assert set(ids(received)) == expected  # none lost; none invented
        assert not set(ids(pipeline.read("pairs"), "pair_id")) - expected
        assert [state.running for state in cluster.status()].count(False) == 1  # it stayed down

        ledger = audit(pipeline)
        assert ledger["counts"]["unaccounted"] == 0
        assert ledger["counts"]["complete"] + ledger["counts"]["complete-late"] == len(prompts)
        assert ledger["counts"]["dead-lettered"] == 0 and ledger["counts"]["partial"] == 0
        # aiokafka retries the dead node several times a second; the log says so once per 30 s.
        retries = [line for line in pipeline.log_lines() if "Unable connect to node" in line]
        assert 1 <= len(retries) <= 12, retries
    finally:
        for worker in list(pipeline.workers if pipeline else []):
            pipeline.stop_worker(worker)  # before the cluster, so that they can commit and leave
        cluster.stop()

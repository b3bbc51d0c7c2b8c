"""`karma broker start --nodes 3`: a real three-node KRaft cluster on loopback (localkafka/cluster.py)
that keeps taking acks=all writes with a node down, reports the node that is down, and brings it
back on the next start."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from typer.testing import CliRunner

from karma.cli.broker import broker_app
from karma.localkafka.cluster import LocalCluster
from karma.localkafka.config import DEFAULT_KAFKA_VERSION, BrokerError
from tests.conftest import JARS_HOME

pytestmark = pytest.mark.timeout(400)


def free_port_run(count: int) -> int:
    """The first of `count` consecutive loopback ports that are all free right now (the CLI's
    cluster takes --port and the ports after it)."""
    for _ in range(100):
        base = random.randrange(20_000, 60_000, 2)
        if all(_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found")


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def home_sharing_jars(tmp_path: Path) -> Path:
    """A --home whose jar cache is the test session's (no second Maven resolution)."""
    home = tmp_path / "home"
    home.mkdir()
    jars = f"kafka-{DEFAULT_KAFKA_VERSION}"
    (home / jars).symlink_to(JARS_HOME / jars, target_is_directory=True)
    return home


async def _write_and_read(bootstrap: str, topic: str, values: list[bytes], expect: int) -> list[bytes]:
    """Writes `values` with acks=all, then reads the topic from the start until `expect` values."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    received: list[bytes] = []
    try:
        while len(received) < expect:
            batches = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 60)
            received += [record.value for records in batches.values() for record in records]
    finally:
        await consumer.stop()
    return received


async def _create_topic(bootstrap: str, topic: str) -> dict[str, object]:
    """Creates the topic with the brokers' default replication; returns its description."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, replication_factor=3)])
        # The node asked may not have the new topic's metadata yet (it reaches each node from
        # the controller): an empty description is asked again, for up to 30 s.
        for _ in range(60):
            [described] = await admin.describe_topics([topic])
            if described["partitions"]:
                break
            await asyncio.sleep(0.5)
        return described
    finally:
        await admin.close()


def test_a_cluster_of_two_and_mutual_tls_without_secure_are_refused_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="quorum of 2"):
        LocalCluster(tmp_path, nodes=2)
    runner = CliRunner()
    two = runner.invoke(broker_app, ["start", "--nodes", "2", "--home", str(tmp_path)])
    assert two.exit_code == 2 and "a cluster of 2 nodes is not offered" in two.output
    # Refused before anything starts (a port of its own all the same, should it ever start).
    plain = ["start", "--nodes", "3", "--mutual-tls", "--port", "29192", "--home", str(tmp_path)]
    mutual = runner.invoke(broker_app, plain)
    assert mutual.exit_code == 2 and "give --secure with --mutual-tls" in mutual.output
    too_many = runner.invoke(broker_app, ["start", "--nodes", "10", "--home", str(tmp_path)])
    assert too_many.exit_code == 2 and "--nodes" in too_many.output


def test_nodes_share_one_quorum_and_replicate_to_a_majority(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, port=19092, nodes=3)
    assert cluster.bootstrap == "127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096"
    assert cluster.client_settings() == {"bootstrap_servers": cluster.bootstrap, "replication_factor": 3}
    properties = [broker.server_properties() for broker in cluster.brokers]
    assert [p["node.id"] for p in properties] == ["1", "2", "3"]
    voters = "1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097"
    assert {p["controller.quorum.voters"] for p in properties} == {voters}
    for p in properties:
        assert p["default.replication.factor"] == p["offsets.topic.replication.factor"] == "3"
        assert p["min.insync.replicas"] == p["transaction.state.log.min.isr"] == "2"
    assert len({broker.data_dir for broker in cluster.brokers}) == 3
    assert all(broker.data_dir.is_relative_to(cluster.cluster_dir) for broker in cluster.brokers)
    # A lone broker keeps its own settings: one replica, its own quorum.
    alone = LocalCluster(tmp_path, port=29092, nodes=1).brokers[0].server_properties()
    assert alone["controller.quorum.voters"] == "1@127.0.0.1:29093" and alone["min.insync.replicas"] == "1"


def test_the_cluster_takes_writes_with_a_node_killed_and_the_next_start_brings_it_back(
    tmp_path: Path,
) -> None:
    runner = CliRunner()
    port = free_port_run(6)
    args = ["--nodes", "3", "--port", str(port), "--home", str(home_sharing_jars(tmp_path))]
    cluster = LocalCluster(tmp_path / "home", port=port, nodes=3)
    try:
        started = runner.invoke(broker_app, ["start", *args, "--timeout", "180"])
        assert started.exit_code == 0, started.output
        assert f"bootstrap_servers: {cluster.bootstrap}" in started.output
        assert "export KARMA_REPLICATION_FACTOR=3" in started.output
        status = runner.invoke(broker_app, ["status", *args])
        assert status.exit_code == 0 and "3 of 3 nodes running and answering" in status.output

        described = asyncio.run(_create_topic(cluster.bootstrap, "survivors"))
        assert {len(partition["replicas"]) for partition in described["partitions"]} == {3}
        before = [f"before-{i}".encode() for i in range(30)]
        read = asyncio.run(_write_and_read(cluster.bootstrap, "survivors", before, 30))
        assert sorted(read) == sorted(before)

        first = cluster.brokers[0]  # the first bootstrap server: clients must find the others
        os.kill(first.status().pid or 0, signal.SIGKILL)
        status = runner.invoke(broker_app, ["status", *args])
        assert status.exit_code == 1
        assert "node 1: not running" in status.output and "2 of 3 nodes running" in status.output

        # acks=all needs min.insync.replicas (2) in sync: two nodes of three suffice.
        during = [f"during-{i}".encode() for i in range(30)]
        read = asyncio.run(_write_and_read(cluster.bootstrap, "survivors", during, 60))
        assert sorted(read) == sorted(before + during)

        restarted = runner.invoke(broker_app, ["start", *args, "--timeout", "180"])
        assert restarted.exit_code == 0, restarted.output
        assert "cluster up (1 of 3 nodes started now)" in restarted.output
        status = runner.invoke(broker_app, ["status", *args])
        assert status.exit_code == 0 and "3 of 3 nodes running and answering" in status.output

        refused = runner.invoke(broker_app, ["reset", *args])
        assert refused.exit_code == 2 and "stop the cluster first" in refused.output
    finally:
        stopped = runner.invoke(broker_app, ["stop", *args])
    assert stopped.exit_code == 0 and "3 of 3 nodes were running, now stopped" in stopped.output
    assert not any(state.running for state in cluster.status())
    reset = runner.invoke(broker_app, ["reset", *args])
    assert reset.exit_code == 0 and not cluster.cluster_dir.joinpath("cluster.id").exists()

"""Shared fixtures: a real single-node Kafka broker for the whole test session.

Set ``KARMA_TEST_BOOTSTRAP=host:port`` to run against an existing broker instead; then
``kafka_broker`` (the managed LocalBroker) is skipped and only ``kafka_bootstrap`` is served.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from karma.streams.broker import BrokerConfig, LocalBroker

REPO_ROOT = Path(__file__).resolve().parents[1]
# Jars are resolved once into the repo's cache and shared by every test session (and CI run).
JARS_HOME = REPO_ROOT / ".cache" / "karma"
BROKER_START_TIMEOUT = 90.0


def free_ports(count: int = 2) -> list[int]:
    """Distinct loopback ports that are free right now."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def local_broker_config(home: Path) -> BrokerConfig:
    """A config for a throw-away broker under ``home`` on free ports, sharing the jar cache."""
    port, controller_port = free_ports(2)
    return BrokerConfig(home=home, port=port, controller_port=controller_port, jars_home=JARS_HOME)


@pytest.fixture(scope="session")
def kafka_jars_home() -> Path:
    """Where the tests keep the resolved Kafka jars (``<repo>/.cache/karma``)."""
    return JARS_HOME


@pytest.fixture
def broker_config() -> Callable[[Path], BrokerConfig]:
    """Factory: ``broker_config(home)`` -> a BrokerConfig on two free loopback ports."""
    return local_broker_config


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A real Kafka broker (KRaft, 127.0.0.1) started once per session and stopped after it."""
    if os.environ.get("KARMA_TEST_BOOTSTRAP"):
        pytest.skip("KARMA_TEST_BOOTSTRAP is set: using an external broker, not a LocalBroker")
    broker = LocalBroker(local_broker_config(tmp_path_factory.mktemp("kafka")))
    try:
        broker.start(timeout=BROKER_START_TIMEOUT)
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> str:
    """``host:port`` of the session broker, or of ``$KARMA_TEST_BOOTSTRAP`` when set."""
    external = os.environ.get("KARMA_TEST_BOOTSTRAP")
    if external:
        return external
    broker: LocalBroker = request.getfixturevalue("kafka_broker")
    return broker.bootstrap

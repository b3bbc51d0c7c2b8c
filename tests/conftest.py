"""Shared fixtures: a real single-node Kafka broker for the whole test session.

Set ``KARMA_TEST_BOOTSTRAP=host:port`` to run against an existing broker instead; then
``kafka_broker`` (the managed LocalBroker) is skipped and only ``kafka_bootstrap`` is served.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from karma.lab.build import BuildResult
from karma.localkafka.broker import BrokerConfig, LocalBroker
from karma.localkafka.probes import free_ports
from karma.streams.config import KarmaSettings
from karma.streams.kafka_clients import new_admin

REPO_ROOT = Path(__file__).resolve().parents[1]
# Jars are resolved once into the repo's cache and shared by every test session (and CI run).
JARS_HOME = REPO_ROOT / ".cache" / "karma"
BROKER_START_TIMEOUT = 90.0
# The quick lab pool, built once into the repo's cache; a rebuild with the same inputs is instant.
LAB_QUICK_HOME = REPO_ROOT / ".cache" / "lab-quick"


@pytest.fixture(autouse=True)
def _config_file_stays_in_its_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """`load_settings(file)` exports KARMA_CONFIG for the workers it starts: a test's config file
    (a lab's pool.yaml, say) must not become every later test's settings. monkeypatch puts the
    variable back as it was (unset) after each test."""
    monkeypatch.setenv("KARMA_CONFIG", "")
    monkeypatch.delenv("KARMA_CONFIG")


def local_broker_config(home: Path) -> BrokerConfig:
    """A config for a throw-away broker under ``home`` on free ports, sharing the jar cache."""
    return BrokerConfig.on_free_ports(home, JARS_HOME)


@pytest.fixture(scope="session")
def lab_quick() -> BuildResult:
    """The quick lab (`karma lab build --quick`, seed 0) in ``<repo>/.cache/lab-quick``: six small
    real models, their prompts, profiles.csv and pool.yaml. Built once (a few minutes) and cached."""
    from karma.lab.build import build

    return build(LAB_QUICK_HOME, quick=True, seed=0)


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


# -- topic configuration, as an operator changes it ---------------------------------------------


def set_topic_config(settings: KarmaSettings, short: str, **configs: str) -> None:
    """Sets configs of a karma topic (`max_message_bytes="300"` is max.message.bytes) and waits
    until the broker describes them: a change takes a moment to apply."""

    async def alter() -> None:
        topic = settings.topic(short)
        wanted = {name.replace("_", "."): value for name, value in configs.items()}
        admin = new_admin(settings)
        await admin.start()
        try:
            [response] = await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, wanted)])
            assert not [r for r in response.resources if r[0]], f"alter_configs {topic} {wanted}: {response}"
            for _ in range(100):
                query = ConfigResource(ConfigResourceType.TOPIC, topic, dict.fromkeys(wanted))
                [described] = await admin.describe_configs([query])
                if {entry[0]: entry[1] for entry in described.resources[0][4]} == wanted:
                    return
                await asyncio.sleep(0.1)
            raise AssertionError(f"{topic} does not show {wanted} after 10 s")
        finally:
            await admin.close()

    asyncio.run(alter())


# -- the simulated OpenAI-compatible server (agents/backends/simulated_server.py), as a real process --

SIMULATED_SERVER_START_TIMEOUT = 30.0


def start_simulated_servers(
    log_dir: Path, *flag_sets: tuple[str, ...]
) -> list[tuple[subprocess.Popen[bytes], str]]:
    """Starts one `karma simulated-server FLAGS` process per flag set, all at once (start-up is
    mostly imports, so they overlap), each on a free loopback port; waits until each has printed
    its banner and answers /health. Returns (process, base URL ending /v1) per flag set."""
    launched = []
    for flags in flag_sets:
        port = free_ports(1)[0]
        log = log_dir / f"simulated-server-{port}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "karma.cli", "simulated-server", "--port", str(port), *flags],
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        launched.append((process, f"http://127.0.0.1:{port}", log, flags))
    try:
        deadline = time.monotonic() + SIMULATED_SERVER_START_TIMEOUT
        for process, base, log, flags in launched:
            while not _serving(process, base, log):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"simulated server {flags} not up in {SIMULATED_SERVER_START_TIMEOUT} s: "
                        f"{log.read_text()}"
                    )
                time.sleep(0.05)
    except BaseException:
        stop_processes([process for process, *_ in launched])
        raise
    return [(process, f"{base}/v1") for process, base, *_ in launched]


def _serving(process: subprocess.Popen[bytes], base: str, log: Path) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"simulated server exited with {process.returncode}: {log.read_text()}")
    # The banner proves that the answering server is this process, not another on the port.
    if f"server on {base}/v1" not in log.read_text():
        return False
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def stop_processes(processes: list[subprocess.Popen[bytes]], timeout: float = 10.0) -> None:
    """SIGTERM to all first (they stop in parallel), then a kill for any still running."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def simulated_server(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Factory: ``start(*flags)`` starts a simulated OpenAI-compatible server (a real process,
    `karma simulated-server FLAGS`) and returns its base URL ``http://127.0.0.1:PORT/v1``.
    Every server started is stopped at teardown (SIGTERM, then kill)."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(*flags: str) -> str:
        ((process, url),) = start_simulated_servers(tmp_path, flags)
        processes.append(process)
        return url

    try:
        yield start
    finally:
        stop_processes(processes)

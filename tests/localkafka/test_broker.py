"""The local broker is a real Apache Kafka process: start it, talk to it, stop it."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import stat
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.helpers import create_ssl_context
from typer.testing import CliRunner

from karma.cli.broker import broker_app, client_settings_text
from karma.localkafka.broker import BrokerConfig, BrokerError, LocalBroker
from karma.streams.acls import ROLES

pytestmark = pytest.mark.timeout(180)

START_TIMEOUT = 90.0
MakeConfig = Callable[[Path], BrokerConfig]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fake_mvn(bin_dir: Path, calls: Path) -> Path:
    """A stand-in ``mvn`` that records each call and drops a kafka jar where it is told to."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "mvn"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> "{calls}"\n'
        'for arg in "$@"; do case "$arg" in -DoutputDirectory=*) out="${arg#*=}";; esac; done\n'
        'mkdir -p "$out" && touch "$out/kafka_2.13-0.0.0.jar"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bin_dir


def calls_of(calls: Path) -> list[str]:
    return calls.read_text().splitlines() if calls.exists() else []


# -- the session broker -----------------------------------------------------------------------


def test_broker_answers_metadata(kafka_broker: LocalBroker) -> None:
    async def describe() -> dict:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
        await admin.start()
        try:
            return await admin.describe_cluster()
        finally:
            await admin.close()

    cluster = asyncio.run(describe())
    assert [(b["host"], b["port"]) for b in cluster["brokers"]] == [("127.0.0.1", kafka_broker.port)]
    assert cluster["controller_id"] == 1
    assert kafka_broker.status().answering


def test_produce_consume_round_trip(kafka_bootstrap: str) -> None:
    topic = f"karma-broker-test-{uuid.uuid4().hex[:8]}"
    sent = {f"key-{i}".encode(): f"value-{i}".encode() for i in range(12)}

    async def round_trip() -> tuple[dict[bytes, bytes], set[int]]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for key, value in sent.items():
                await producer.send_and_wait(topic, value, key=key)
            partitions = await producer.partitions_for(topic)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=f"{topic}-group",  # exercises the group coordinator / __consumer_offsets
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        received: dict[bytes, bytes] = {}
        try:
            while len(received) < len(sent):
                msg = await asyncio.wait_for(consumer.getone(), 30)
                received[msg.key] = msg.value
            await consumer.commit()
        finally:
            await consumer.stop()
        return received, partitions

    received, partitions = asyncio.run(round_trip())
    assert received == sent
    if not os.environ.get("KARMA_TEST_BOOTSTRAP"):
        assert partitions == {0, 1, 2, 3}  # num.partitions=4 for auto-created topics


def test_status_reports_running_pid(kafka_broker: LocalBroker) -> None:
    state = kafka_broker.status()
    assert state.running and state.answering
    assert state.pid == int(kafka_broker.pid_file.read_text())
    assert state.port == kafka_broker.port
    assert state.bootstrap == f"127.0.0.1:{kafka_broker.port}"
    os.kill(state.pid, 0)  # the process really exists
    assert b"kafka.Kafka" in Path(f"/proc/{state.pid}/cmdline").read_bytes()


# -- a broker of its own: lifecycle -----------------------------------------------------------


def test_lifecycle_reuses_jar_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker_config: MakeConfig
) -> None:
    broker = LocalBroker(broker_config(tmp_path / "home"))
    broker.ensure_jars()  # no-op when the session broker already resolved them
    marker = broker.kafka_dir / ".resolved"
    resolved_at = marker.stat().st_mtime_ns

    calls = tmp_path / "mvn-calls"
    bin_dir = fake_mvn(tmp_path / "bin", calls)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    try:
        broker.start(timeout=START_TIMEOUT)
        assert calls_of(calls) == [], "a second start must not run Maven"
        assert marker.stat().st_mtime_ns == resolved_at

        first = broker.status()
        assert first.running and first.answering and first.pid is not None
        broker.start(timeout=START_TIMEOUT)  # already running: same process
        assert broker.status().pid == first.pid
        with pytest.raises(BrokerError, match="stop it before reset"):
            broker.reset()

        assert broker.stop() is True
        state = broker.status()
        assert not state.running and not state.answering and state.pid is None
        assert not broker.pid_file.exists()
        assert broker.stop() is False
        assert LocalBroker(broker.config).status().running is False
    finally:
        broker.stop()

    assert (broker.data_dir / "meta.properties").is_file()
    assert broker.reset() is True
    assert not broker.data_dir.exists()
    assert broker.lib_dir.is_dir() and marker.is_file()  # jars survive a reset
    assert calls_of(calls) == []


def test_second_instance_sees_running_broker(kafka_broker: LocalBroker) -> None:
    other = LocalBroker(kafka_broker.config)
    state = other.status()
    assert state.running and state.answering and state.pid == kafka_broker.status().pid
    other.start(timeout=START_TIMEOUT)  # returns at once, starts nothing
    assert kafka_broker.status().pid == state.pid


# -- jar cache and failures (no broker needed) ------------------------------------------------


def test_half_finished_resolution_is_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = tmp_path / "mvn-calls"
    monkeypatch.setenv("PATH", f"{fake_mvn(tmp_path / 'bin', calls)}{os.pathsep}/usr/bin:/bin")
    broker = LocalBroker(BrokerConfig(home=tmp_path / "home", port=free_port()))
    broker.lib_dir.mkdir(parents=True)
    (broker.lib_dir / "kafka_2.13-4.1.1.jar").write_bytes(b"half")  # no marker: interrupted

    progress: list[str] = []
    assert broker.ensure_jars(progress.append) == broker.lib_dir
    assert len(calls_of(calls)) == 1
    assert "-Dkafka.version=4.1.1" in calls_of(calls)[0]
    assert progress and "Maven" in progress[0]
    assert not (broker.lib_dir / "kafka_2.13-4.1.1.jar").exists()  # stale download dropped

    assert broker.ensure_jars() == broker.lib_dir
    assert len(calls_of(calls)) == 1  # cached now


def test_missing_maven_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty-bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    broker = LocalBroker(BrokerConfig(home=tmp_path, port=free_port()))
    with pytest.raises(BrokerError, match=r"Maven \(mvn\) is not on PATH"):
        broker.ensure_jars()


def test_broken_pom_gives_maven_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pom = tmp_path / "pom.xml"
    pom.write_text(
        '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
        "<groupId>karma.test</groupId><artifactId>broken</artifactId><version>1</version>"
        "<packaging>pom</packaging><dependencies><dependency>"
        "<groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>"
        "<version>0.0.0-does-not-exist</version></dependency></dependencies></project>"
    )
    monkeypatch.setenv("KARMA_KAFKA_POM", str(pom))
    broker = LocalBroker(BrokerConfig(home=tmp_path, port=free_port()))
    with pytest.raises(BrokerError) as err:
        broker.ensure_jars()
    message = str(err.value)
    assert message.startswith("Maven could not resolve Kafka 4.1.1 from")
    assert "0.0.0-does-not-exist" in message  # Maven's own explanation is included
    assert not (broker.kafka_dir / ".resolved").exists()


def test_missing_pom_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KARMA_KAFKA_POM", str(tmp_path / "nowhere.xml"))
    broker = LocalBroker(BrokerConfig(home=tmp_path, port=free_port()))
    with pytest.raises(BrokerError, match="Kafka pom not found"):
        broker.ensure_jars()


@pytest.mark.parametrize("busy", ["port", "controller_port"])
def test_occupied_port_is_reported(tmp_path: Path, busy: str, broker_config: MakeConfig) -> None:
    config = broker_config(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", getattr(config, busy)))
        squatter.listen()
        broker = LocalBroker(config)
        with pytest.raises(BrokerError, match=f"127.0.0.1:{getattr(config, busy)} is already in use"):
            broker.start(timeout=5)
    assert not broker.pid_file.exists()


def test_broker_paths_follow_config(tmp_path: Path, kafka_jars_home: Path) -> None:
    broker = LocalBroker(BrokerConfig(home=tmp_path, port=19092, jars_home=kafka_jars_home))
    assert broker.controller_port == 19093
    assert broker.lib_dir == kafka_jars_home.resolve() / "kafka-4.1.1" / "lib"
    assert broker.broker_dir == tmp_path.resolve() / "broker-19092"
    props = broker.server_properties()
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["log.dirs"] == str(broker.data_dir)


# -- CLI --------------------------------------------------------------------------------------


def test_cli_status_and_errors(tmp_path: Path, broker_config: MakeConfig) -> None:
    runner = CliRunner()
    config = broker_config(tmp_path)
    args = ["--port", str(config.port), "--home", str(tmp_path)]

    result = runner.invoke(broker_app, ["status", *args])
    assert result.exit_code == 1 and "not running" in result.output

    result = runner.invoke(broker_app, ["stop", *args])
    assert result.exit_code == 0 and "was not running" in result.output

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", config.port))
        squatter.listen()
        result = runner.invoke(broker_app, ["start", *args])
    assert result.exit_code == 2
    assert "already in use" in result.output and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


# -- the secure broker (start --secure), without starting it: tests/e2e/test_security.py does --


@pytest.mark.skipif(shutil.which("openssl") is None, reason="--secure makes its certificates with openssl")
def test_secure_broker_material_and_listener(tmp_path: Path) -> None:
    broker = LocalBroker(BrokerConfig(home=tmp_path, port=19092, secure=True))
    broker.make_secrets()
    assert broker.secure and not broker.mutual_tls
    assert {len(broker.password(role)) >= 24 for role in ROLES} == {True}
    assert len({broker.password(role) for role in ROLES}) == len(ROLES)  # one password per role
    modes = {
        str(path.relative_to(broker.secure_dir)): stat.S_IMODE(path.stat().st_mode)
        for path in broker.secure_dir.rglob("*")
    }
    # The CA's key is gone once it has signed; the keys and passwords are the owner's alone.
    expected = {
        "ca.pem": 0o644,
        "broker.pem": 0o600,
        "keystore.password": 0o600,
        "users": 0o700,
        "certs": 0o700,
    }
    for role in ROLES:
        expected |= {f"users/{role}.password": 0o600, f"certs/{role}.pem": 0o644, f"certs/{role}.key": 0o600}
    assert modes == expected
    assert stat.S_IMODE(broker.secure_dir.stat().st_mode) == 0o700

    props = broker.server_properties()
    assert props["listeners"] == "SASL_SSL://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "SASL_SSL://127.0.0.1:19092"
    assert props["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:SSL"
    assert props["listener.name.controller.ssl.client.auth"] == "required"
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert props["super.users"] == "User:admin"  # the admin alone; the nodes know each other as it
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    jaas = props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    assert 'username="admin"' in jaas and f'password="{broker.password()}"' in jaas
    broker._write_config()
    assert stat.S_IMODE(broker.properties_file.stat().st_mode) == 0o600  # it holds the passwords

    # The broker's certificate, as a TLS client checks it: signed by ca.pem, for 127.0.0.1.
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    keystore_password = props["ssl.key.password"]
    server_context.load_cert_chain(props["ssl.keystore.location"], password=keystore_password)
    client_context = create_ssl_context(cafile=str(broker.ca_file))

    async def handshake() -> None:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context)
            writer.close()
        finally:
            server.close()

    asyncio.run(handshake())


def test_the_mode_belongs_to_the_formatted_data(tmp_path: Path) -> None:
    secure = LocalBroker(BrokerConfig.on_free_ports(tmp_path, secure=True))
    secure.data_dir.mkdir(parents=True)
    (secure.data_dir / "meta.properties").write_text("formatted without --secure\n")
    with pytest.raises(BrokerError, match=r"formatted without --secure .*karma broker reset --port"):
        secure.start(timeout=5)

    plain = LocalBroker(BrokerConfig(home=tmp_path, port=secure.port, controller_port=secure.controller_port))
    plain.password_file.parent.mkdir(parents=True)
    plain.password_file.write_text("from a secure format\n")
    assert plain.secure  # status and stop read the mode from disk
    with pytest.raises(BrokerError, match="formatted with --secure; start it with --secure"):
        plain.start(timeout=5)
    assert plain.reset() and not plain.secure_dir.exists() and not plain.secure


def test_cli_prints_the_client_settings_of_a_secure_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = LocalBroker(BrokerConfig(home=tmp_path, port=19092))
    for role in ROLES:
        broker.secrets.password(role).parent.mkdir(parents=True, exist_ok=True)
        broker.secrets.password(role).write_text(f"not-to-be-printed-{role}\n")
    text = client_settings_text(broker)
    yaml_part = text.split("or as environment variables:")[0].split("\n", 1)[1]
    assert yaml.safe_load(textwrap.dedent(yaml_part)) == broker.client_settings()
    assert broker.client_settings()["kafka_security"] == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "admin",
        "sasl_password_env": "KARMA_KAFKA_PASSWORD",
        "ssl_cafile": str(broker.ca_file),
    }
    assert broker.client_settings()["kafka_principals"]["judging"] == {
        "sasl_username": "judging",
        "sasl_password_env": "KARMA_KAFKA_PASSWORD_JUDGING",
    }
    lines = text.splitlines()
    assert "  export KARMA_KAFKA_SECURITY__SECURITY_PROTOCOL=SASL_SSL" in lines
    assert "  export KARMA_KAFKA_PRINCIPALS__JUDGING__SASL_USERNAME=judging" in lines
    assert f'  export KARMA_KAFKA_PASSWORD="$(cat {broker.password_file})"' in lines
    assert f'  export KARMA_KAFKA_PASSWORD_JUDGING="$(cat {broker.secrets.password("judging")})"' in lines
    assert "not-to-be-printed" not in text  # the passwords themselves stay in their files

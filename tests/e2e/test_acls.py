"""One principal per role, with the ACLs `karma acl --apply` creates, on a real broker whose
authorizer enforces them (`karma broker start --secure`: StandardAuthorizer, the admin its only
super user): the pipeline runs end to end with each stage as its own principal, every refusal
of the issue's list is the broker's authorization error, a judging worker that loses its write
ACL mid-stream stops without committing and finishes once the ACL is back, mutual TLS refuses a
client without a certificate, and no password shows in any log, metrics page or dead letter."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

from karma.localkafka.broker import BrokerConfig, LocalBroker
from karma.localkafka.cluster import LocalCluster
from karma.localkafka.probes import free_ports
from karma.schemas.models import Prompt
from karma.streams.acl_admin import create_acls, delete_acls, describe_acls
from karma.streams.acls import ROLES, Acl, acls_for
from karma.streams.client import list_topics
from karma.streams.config import KAFKA_PASSWORD_VARIABLE, KarmaSettings, password_variable
from karma.streams.kafka_clients import new_consumer, new_producer
from karma.streams.topics import ensure_topics
from karma.tools.processes import settings_env, spawn_worker
from tests.conftest import BROKER_START_TIMEOUT, JARS_HOME
from tests.e2e.conftest import Pipeline, audit, ids, isolated_settings, make_prompts

pytestmark = [
    pytest.mark.skipif(shutil.which("openssl") is None, reason="--secure makes certificates with openssl"),
    pytest.mark.timeout(420),
]


def _export_passwords(broker: LocalBroker, environment: pytest.MonkeyPatch) -> None:
    """As `karma broker start --secure` says: the admin's password, and each role's. Through a
    MonkeyPatch, so that they are gone again for the tests after these."""
    environment.setenv(KAFKA_PASSWORD_VARIABLE, broker.password())
    for role in ROLES:
        environment.setenv(password_variable(role), broker.password(role))


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    home = tmp_path_factory.mktemp("acl-kafka")
    broker = LocalBroker(BrokerConfig.on_free_ports(home, JARS_HOME, secure=True))
    try:
        broker.start(timeout=BROKER_START_TIMEOUT)
        with pytest.MonkeyPatch.context() as environment:
            _export_passwords(broker, environment)
            yield broker
    finally:
        broker.stop()


def _settings(broker: LocalBroker | LocalCluster, tmp_path: Path) -> KarmaSettings:
    return isolated_settings(tmp_path, "acl", **broker.client_settings(), delivery_timeout_s=5.0)


def _provision(settings: KarmaSettings) -> None:
    """What the admin does once per deployment: the topics, then `karma acl --apply`."""
    asyncio.run(ensure_topics(settings))
    run = subprocess.run(
        [sys.executable, "-m", "karma.cli", "acl", "--apply"],
        env={**os.environ, **settings_env(settings)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0 and f"created {len(acls_for(settings))} ACLs" in run.stderr, (
        run.stdout + run.stderr
    )
    assert set(asyncio.run(describe_acls(settings))) >= set(acls_for(settings))


METRICS_PORTS: list[int] = []


def _metrics_pages() -> str:
    """The /metrics page of every worker of the test still serving it."""
    pages = []
    for port in METRICS_PORTS:
        try:
            pages.append(
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            )
        except OSError:
            continue
    return "\n".join(pages)


def _start_stage(pipeline: Pipeline, role: str, log: str) -> subprocess.Popen[bytes]:
    """`karma worker ROLE`, connecting as the role's principal, with /metrics of its own (its
    port in METRICS_PORTS)."""
    settings = pipeline.settings.model_copy(update={"metrics_port": free_ports(1)[0]})
    METRICS_PORTS.append(settings.metrics_port)
    worker = spawn_worker(settings, pipeline.workdir / log, "worker", role, "--loglevel", "info")
    pipeline.workers.append(worker)
    return worker


async def _read_one(settings: KarmaSettings, topic: str) -> None:
    consumer = new_consumer(settings, topic, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        await consumer.getmany(timeout_ms=5000)
    finally:
        await consumer.stop()


async def _write_one(settings: KarmaSettings, topic: str) -> None:
    producer = new_producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"forged")
    finally:
        await producer.stop()


def _every_text(pipeline: Pipeline, broker: LocalBroker) -> str:
    """Every log of the test (the workers', karma.log, the broker's) and the DLQ's records."""
    texts = [path.read_text(errors="replace") for path in pipeline.workdir.rglob("*.log")]
    texts.append(broker.log_file.read_text(errors="replace"))
    texts += [str(received) for received in pipeline.read("dlq")]
    return "\n".join(texts)


def test_one_principal_per_role_end_to_end(secured: LocalBroker, tmp_path: Path) -> None:
    settings = _settings(secured, tmp_path)
    _provision(settings)
    pipeline = Pipeline(settings=settings, workdir=tmp_path / "run")
    prompts = make_prompts(12, tag="acl")
    expected = pipeline.expected_preference_ids(prompts)

    Pipeline(settings=settings.as_role("producer"), workdir=tmp_path).submit(prompts)  # as the producer
    metrics: list[str] = []
    try:
        for role in ("generate", "rate", "judge"):
            _start_stage(pipeline, role, f"{role}.log")
        received = pipeline.wait_for("preferences", lambda r: set(ids(r)) >= expected, timeout_s=180)
        assert set(ids(received)) == expected
        ledger = audit(pipeline)  # `karma audit`, as the operator
        assert ledger["counts"]["unaccounted"] == 0 and ledger["counts"]["complete"] == len(prompts)
        metrics.append(_metrics_pages())
        assert metrics[0].count("karma_consumer_lag_messages{") >= 3  # every stage's page was read
    finally:
        for worker in list(pipeline.workers):
            pipeline.stop_worker(worker)

    # What each principal may not do, refused by the broker's authorizer.
    refusals = {
        ("producer", "read", "preferences"): _read_one,
        ("producer", "write", "responses"): _write_one,
        ("trainer", "write", "prompts"): _write_one,
        ("trainer", "write", "preferences"): _write_one,
        ("judging", "read", "prompts"): _read_one,
    }
    for (role, operation, stage), attempt in refusals.items():
        with pytest.raises(TopicAuthorizationFailedError) as refused:
            asyncio.run(attempt(settings.as_role(role), settings.topic(stage)))
        print(f"{role} {operation} {stage}: {refused.value!r}")  # quoted in the closing note
    # ... and the same principals may do their own work.
    asyncio.run(_write_one(settings.as_role("producer"), settings.topic("prompts")))
    asyncio.run(_read_one(settings.as_role("trainer"), settings.topic("preferences")))

    # A CLI run with another role's credentials says so in one line and exits non-zero.
    env = {
        **os.environ,
        **settings_env(settings),
        "KARMA_KAFKA_PRINCIPALS__OPERATOR__SASL_USERNAME": "producer",
        "KARMA_KAFKA_PRINCIPALS__OPERATOR__SASL_PASSWORD_ENV": password_variable("producer"),
    }
    run = subprocess.run(
        [sys.executable, "-m", "karma.cli", "tail", "preferences", "--limit", "1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode != 0 and len(errors) == 1, run.stdout + run.stderr
    assert "not authorized" in errors[0] and "User:producer" in errors[0]
    assert settings.topic("preferences") in errors[0] and "Traceback" not in run.stderr
    print(errors[0])

    passwords = [secured.password(role) for role in ROLES]
    texts = _every_text(pipeline, secured) + "".join(metrics) + run.stdout + run.stderr
    assert not [p for p in passwords if p in texts]


def test_a_judge_whose_acl_is_withdrawn_stops_and_loses_nothing(secured: LocalBroker, tmp_path: Path) -> None:
    settings = _settings(secured, tmp_path)
    _provision(settings)
    pipeline = Pipeline(settings=settings, workdir=tmp_path / "run")
    write_preferences = Acl("judging", "topic", settings.topic("preferences"), "literal", "write")
    before, after = make_prompts(6, tag="before"), make_prompts(10, tag="revoked")
    expected_before = pipeline.expected_preference_ids(before)
    expected = expected_before | pipeline.expected_preference_ids(after)
    try:
        for role in ("generate", "rate", "judge"):
            _start_stage(pipeline, role, f"{role}.log")
        judge = pipeline.workers[-1]
        pipeline.submit(before)
        pipeline.wait_for("preferences", lambda r: set(ids(r)) >= expected_before, timeout_s=180)
        # The operator withdraws the judge's write while it runs, and prompts keep coming.
        assert asyncio.run(delete_acls(settings, [write_preferences])) == 1
        pipeline.submit(after)
        deadline = time.monotonic() + 120
        while judge.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert judge.returncode not in (None, 0), "the judge did not stop on a refused write"
        pipeline.workers.remove(judge)
        assert set(ids(pipeline.read("preferences"))) == expected_before
        # The ACL is back; the judge is started again and finds its input uncommitted.
        assert asyncio.run(create_acls(settings, [write_preferences])) == 1
        _start_stage(pipeline, "judge", "judge-again.log")
        received = pipeline.wait_for("preferences", lambda r: set(ids(r)) >= expected, timeout_s=180)
    finally:
        for worker in list(pipeline.workers):
            pipeline.stop_worker(worker)
    assert set(ids(received)) == expected  # every prompt's preferences, none lost
    duplicates = len(ids(received)) - len(set(ids(received)))
    print(f"withdrawn mid-stream: {len(set(ids(received)))} preferences, {duplicates} redelivered twice")
    assert audit(pipeline)["counts"]["unaccounted"] == 0
    assert pipeline.read("dlq") == []  # the refusal was no message's fault: nothing dead-lettered
    log = (pipeline.workdir / "judge.log").read_text()
    assert "TopicAuthorizationFailedError" in log
    passwords = [secured.password(role) for role in ROLES]
    assert not [p for p in passwords if p in _every_text(pipeline, secured)]


def test_mutual_tls_refuses_a_client_without_a_certificate(tmp_path: Path) -> None:
    config = BrokerConfig.on_free_ports(tmp_path / "mtls", JARS_HOME, secure=True, mutual_tls=True)
    broker = LocalBroker(config)
    try:
        broker.start(timeout=BROKER_START_TIMEOUT)
        settings = _settings(broker, tmp_path)
        assert settings.kafka_security.security_protocol == "SSL"
        _provision(settings)
        producer = settings.as_role("producer")  # its certificate, CN=producer
        asyncio.run(_write_one(producer, settings.topic("prompts")))
        with pytest.raises(TopicAuthorizationFailedError):  # the principal is the certificate's name
            asyncio.run(_write_one(producer, settings.topic("responses")))
        no_certificate = producer.model_copy(
            update={
                "kafka_security": producer.kafka_security.model_copy(
                    update={"ssl_certfile": None, "ssl_keyfile": None}
                )
            }
        )
        with pytest.raises(KafkaConnectionError):
            asyncio.run(list_topics(no_certificate))
    finally:
        broker.stop()


def test_prompt_records_are_what_the_producer_wrote(secured: LocalBroker, tmp_path: Path) -> None:
    """The producer principal writes prompts through `karma submit` (its role in the CLI)."""
    settings = _settings(secured, tmp_path)
    _provision(settings)
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text(Prompt(prompt_id="p-1", text="Why?").model_dump_json() + "\n")
    run = subprocess.run(
        [sys.executable, "-m", "karma.cli", "submit", str(prompts_file)],
        env={**os.environ, **settings_env(settings)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    written = Pipeline(settings=settings, workdir=tmp_path).read("prompts")
    assert [received.record.prompt_id for received in written] == ["p-1"]


def test_a_secured_three_node_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`karma broker start --nodes 3 --secure`: every node with the SASL_SSL listener, the
    authorizer and the same users; the nodes reach each other as the admin. The pipeline runs
    with one principal per role and the ACLs hold on every node."""
    cluster = LocalCluster.on_free_ports(tmp_path / "cluster", nodes=3, jars_home=JARS_HOME, secure=True)
    try:
        cluster.start(timeout=2 * BROKER_START_TIMEOUT)
        assert [state.secure for state in cluster.status()] == [True] * 3
        _export_passwords(cluster.brokers[0], monkeypatch)  # one set of users for all nodes
        settings = _settings(cluster, tmp_path)
        assert settings.replication_factor == 3
        _provision(settings)
        pipeline = Pipeline(settings=settings, workdir=tmp_path / "run")
        prompts = make_prompts(8, tag="cluster")
        expected = pipeline.expected_preference_ids(prompts)
        Pipeline(settings=settings.as_role("producer"), workdir=tmp_path).submit(prompts)
        try:
            for role in ("generate", "rate", "judge"):
                _start_stage(pipeline, role, f"{role}.log")
            received = pipeline.wait_for("preferences", lambda r: set(ids(r)) >= expected, timeout_s=240)
        finally:
            for worker in list(pipeline.workers):
                pipeline.stop_worker(worker)
        assert set(ids(received)) == expected
        assert audit(pipeline)["counts"]["unaccounted"] == 0
        with pytest.raises(TopicAuthorizationFailedError):
            asyncio.run(_read_one(settings.as_role("producer"), settings.topic("preferences")))
        passwords = [cluster.brokers[0].password(role) for role in ROLES]
        texts = _every_text(pipeline, cluster.brokers[0]) + "".join(
            broker.log_file.read_text(errors="replace") for broker in cluster.brokers
        )
        assert not [p for p in passwords if p in texts]
    finally:
        cluster.stop()

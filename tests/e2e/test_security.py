"""A cluster secured with TLS and SASL (`karma broker start --secure`: SASL_SSL, SCRAM-SHA-512),
end to end: the pipeline runs through it with the settings the broker prints; a wrong password
or an untrusted CA ends `karma tail`, `karma submit` and `karma worker` alike in one `error:`
line within seconds; and a client without those settings reads nothing."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError
from aiokafka.helpers import create_ssl_context
from typer.testing import CliRunner

from karma.cli.broker import broker_app
from karma.localkafka.broker import BrokerConfig, LocalBroker
from karma.streams.client import list_topics
from karma.streams.config import KAFKA_PASSWORD_VARIABLE, KarmaSettings
from karma.streams.kafka_clients import ClusterAccessError
from karma.streams.topics import ensure_topics
from karma.tools.processes import settings_env
from tests.conftest import BROKER_START_TIMEOUT, JARS_HOME
from tests.e2e.conftest import Pipeline, ids, isolated_settings, make_prompts
from tests.streams.test_kafka_clients import make_ca

pytestmark = [
    pytest.mark.skipif(
        shutil.which("openssl") is None, reason="--secure makes its certificates with openssl"
    ),
    pytest.mark.timeout(300),
]
# A refused credential must end a command within this long (no retry loop, no hang).
FAIL_WITHIN_S = 15.0


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """One SASL_SSL broker for the module, as `karma broker start --secure` runs it."""
    home = tmp_path_factory.mktemp("secure-kafka")
    broker = LocalBroker(BrokerConfig.on_free_ports(home, JARS_HOME, secure=True))
    try:
        broker.start(timeout=BROKER_START_TIMEOUT)
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def settings(secure_broker: LocalBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KarmaSettings:
    """A pipeline of its own on the secure broker, with the client settings the broker prints;
    the password is exported as `start --secure` says, so child processes inherit it."""
    monkeypatch.setenv(KAFKA_PASSWORD_VARIABLE, secure_broker.password())
    # Every command as the admin (kafka_security): the roles' principals are test_acls.py's.
    client = {
        key: value for key, value in secure_broker.client_settings().items() if key != "kafka_principals"
    }
    return isolated_settings(tmp_path, "sec", **client)


def test_the_pipeline_runs_over_sasl_ssl(settings: KarmaSettings, tmp_path: Path) -> None:
    asyncio.run(ensure_topics(settings))  # the admin client, through the factory
    pipeline = Pipeline(settings=settings, workdir=tmp_path / "run")
    prompts = make_prompts(12, tag="secure")
    expected = pipeline.expected_preference_ids(prompts)
    assert expected
    pipeline.submit(prompts)  # the SDK's producer
    try:
        pipeline.start_worker()  # `karma run`: faust's clients get the credentials too
        received = pipeline.wait_for("preferences", lambda r: set(ids(r)) >= expected, timeout_s=120)
        assert set(ids(received)) == expected
        # The worker's lag monitor reads the group's offsets over SASL_SSL as well.
        pipeline.wait_for_metrics(lambda text: "karma_consumer_lag_messages{" in text)
    finally:
        for worker in list(pipeline.workers):
            pipeline.stop_worker(worker)


def _with_untrusted_ca(settings: KarmaSettings, tmp_path: Path) -> dict[str, str]:
    other_ca = make_ca(tmp_path / "other-ca", name="another CA")
    security = settings.kafka_security.model_copy(update={"ssl_cafile": other_ca})
    return settings_env(settings.model_copy(update={"kafka_security": security}))


@pytest.mark.parametrize("fault", ["wrong password", "untrusted CA"])
def test_refused_credentials_end_every_command_in_one_line(
    fault: str, settings: KarmaSettings, tmp_path: Path
) -> None:
    if fault == "wrong password":
        env = {**settings_env(settings), KAFKA_PASSWORD_VARIABLE: "not-the-password"}
        expected = f"SASL SCRAM-SHA-512 authentication as 'admin' failed at {settings.bootstrap_servers}"
    else:
        env = _with_untrusted_ca(settings, tmp_path)
        expected = f"TLS: the certificate of {settings.bootstrap_servers} is not trusted"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"text": "Is this sent?"}\n')
    for args, exit_code in (
        (["tail", "prompts"], 1),
        (["submit", str(prompts)], 1),
        (["worker", "generate"], 2),
    ):
        started = time.monotonic()
        run = subprocess.run(
            [sys.executable, "-m", "karma.cli", *args],
            env={**os.environ, **env},
            cwd=tmp_path,  # karma-out/karma.log, where library log lines go, stays here
            capture_output=True,
            text=True,
            timeout=60,
        )
        took = time.monotonic() - started
        output = run.stdout + run.stderr
        errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
        assert run.returncode == exit_code, f"karma {args[0]}: exit {run.returncode}\n{output}"
        assert took < FAIL_WITHIN_S, f"karma {args[0]} took {took:.1f} s to fail"
        assert len(errors) == 1 and expected in errors[0], f"karma {args[0]}:\n{output}"
        assert "Traceback" not in output


async def _plain_read(bootstrap: str, topic: str, **security: Any) -> str | int:
    """What a client that ignores the cluster's settings reads: 'refused', or a message count."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest", **security
    )
    try:
        await asyncio.wait_for(consumer.start(), 10)
    except (KafkaConnectionError, TimeoutError):
        return "refused"
    try:
        batch = await consumer.getmany(timeout_ms=3000)
        return sum(len(messages) for messages in batch.values())
    finally:
        await consumer.stop()


def test_a_client_without_the_settings_reads_nothing(
    secure_broker: LocalBroker, settings: KarmaSettings, tmp_path: Path
) -> None:
    Pipeline(settings=settings, workdir=tmp_path).submit(make_prompts(3, tag="secret"))
    topic = settings.topic("prompts")
    verified = create_ssl_context(cafile=str(secure_broker.ca_file))
    password = secure_broker.password()
    attempts = {
        "plaintext": {},
        "SASL without TLS": {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": "admin",
            "sasl_plain_password": password,
        },
        "TLS without SASL": {"security_protocol": "SSL", "ssl_context": verified},
    }
    read = {
        name: asyncio.run(_plain_read(settings.bootstrap_servers, topic, **kw))
        for name, kw in attempts.items()
    }
    assert read == dict.fromkeys(attempts, "refused")

    # Through the factory, PLAINTEXT settings against the SASL_SSL port are one line saying so.
    plaintext = settings.model_copy(update={"kafka_security": type(settings.kafka_security)()})
    with pytest.raises(
        ClusterAccessError, match=r"closed the connection \(does that listener speak PLAINTEXT\?"
    ):
        asyncio.run(list_topics(plaintext))
    # ... while the broker's settings read what was sent.
    assert topic in asyncio.run(list_topics(settings))


def test_status_and_start_find_the_secure_broker(secure_broker: LocalBroker) -> None:
    args = ["--port", str(secure_broker.port), "--home", str(secure_broker.config.home)]
    result = CliRunner().invoke(broker_app, ["status", *args])
    assert result.exit_code == 0 and "with SASL_SSL" in result.output and "answering" in result.output
    result = CliRunner().invoke(broker_app, ["start", "--secure", *args])
    assert result.exit_code == 0 and "already up" in result.output
    assert f"export {KAFKA_PASSWORD_VARIABLE}=" in result.output  # the client settings, again
    result = CliRunner().invoke(broker_app, ["start", *args])
    assert result.exit_code == 2 and "already runs with SASL_SSL" in result.output

"""The client factory (streams/kafka_clients.py): the security settings become the same client
arguments for aiokafka and for faust, and a cluster that cannot be used is one line saying why.
No broker here: tests/e2e/test_security.py runs these clients against a SASL_SSL broker."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.types.auth import AuthProtocol, SASLMechanism

from karma.localkafka.probes import free_ports
from karma.streams.app import faust_credentials
from karma.streams.config import KarmaSettings
from karma.streams.kafka_clients import (
    ClusterAccessError,
    check_connection,
    client_options,
    new_admin,
    new_consumer,
    new_producer,
)

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test CA")


def make_ca(directory: Path, name: str = "a test CA") -> Path:
    """A fresh self-signed CA certificate (PEM) in `directory`; its key is thrown away."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / "ca.key", directory / "ca.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-subj", f"/CN={name}", "-days", "2", "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    key.unlink()
    return cert


@pytest.fixture
def password(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TEST_KAFKA_PASSWORD", "s3cret")
    return "s3cret"


def secured(protocol: str, cafile: Path | None = None, **more: object) -> KarmaSettings:
    security: dict[str, object] = {"security_protocol": protocol, **more}
    if protocol.startswith("SASL_"):
        security |= {"sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "karma"}
        security |= {"sasl_password_env": "TEST_KAFKA_PASSWORD"}
    if cafile is not None:
        security["ssl_cafile"] = cafile
    return KarmaSettings(bootstrap_servers="127.0.0.1:1", kafka_security=security)


def test_plaintext_is_the_default() -> None:
    settings = KarmaSettings(bootstrap_servers="127.0.0.1:9092")
    assert client_options(settings) == {
        "bootstrap_servers": "127.0.0.1:9092",
        "security_protocol": "PLAINTEXT",
    }
    assert faust_credentials(settings) is None


@needs_openssl
def test_sasl_ssl_options_carry_the_mechanism_the_password_and_a_verifying_context(
    tmp_path: Path, password: str
) -> None:
    options = client_options(secured("SASL_SSL", make_ca(tmp_path)))
    context = options.pop("ssl_context")
    assert options == {
        "bootstrap_servers": "127.0.0.1:1",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "karma",
        "sasl_plain_password": password,  # read from the variable, never a setting
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [ca["subject"] for ca in context.get_ca_certs()] == [((("commonName", "a test CA"),),)]


def test_sasl_plaintext_has_no_tls(password: str) -> None:
    options = client_options(secured("SASL_PLAINTEXT"))
    assert options["security_protocol"] == "SASL_PLAINTEXT" and "ssl_context" not in options
    credentials = faust_credentials(secured("SASL_PLAINTEXT"))
    assert isinstance(credentials, SASLCredentials)
    assert credentials.protocol is AuthProtocol.SASL_PLAINTEXT and credentials.ssl_context is None


@needs_openssl
@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL", "SASL_PLAINTEXT"])
def test_faust_gets_the_same_client_arguments(protocol: str, tmp_path: Path, password: str) -> None:
    """What faust's aiokafka driver makes of the credentials (for its consumer, producer and
    topic creation alike) is what every other client of the project gets."""
    settings = secured(protocol, make_ca(tmp_path) if protocol.endswith("SSL") else None)
    credentials = faust_credentials(settings)
    expected_type = SSLCredentials if protocol == "SSL" else SASLCredentials
    assert isinstance(credentials, expected_type)
    if isinstance(credentials, SASLCredentials):
        assert credentials.mechanism is SASLMechanism.SCRAM_SHA_512  # SCRAM, not faust's PLAIN default
    faust_side = {k: v for k, v in credentials_to_aiokafka_auth(credentials).items() if v is not None}
    ours = client_options(settings)
    ours.pop("bootstrap_servers")
    assert set(faust_side) == set(ours)
    for key in ours:
        if key == "ssl_context":
            assert isinstance(faust_side[key], ssl.SSLContext)
            assert faust_side[key].get_ca_certs() == ours[key].get_ca_certs()
        else:
            assert faust_side[key] == ours[key]


@needs_openssl
def test_client_certificate_for_mutual_tls(tmp_path: Path) -> None:
    key, cert = tmp_path / "client.key", tmp_path / "client.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-subj", "/CN=client", "-days", "2", "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    settings = secured("SSL", make_ca(tmp_path / "ca"), ssl_certfile=cert, ssl_keyfile=key)
    assert isinstance(client_options(settings)["ssl_context"], ssl.SSLContext)  # the chain loaded


def test_every_factory_client_carries_the_settings(password: str) -> None:
    settings = secured("SASL_PLAINTEXT")

    async def make() -> None:
        consumer, producer, admin = new_consumer(settings), new_producer(settings), new_admin(settings)
        try:
            for client in (consumer._client, producer.client, admin._client):
                assert client._security_protocol == "SASL_PLAINTEXT"
                assert client._sasl_plain_password == password
        finally:
            await consumer.stop()
            await producer.stop()
            await admin.close()

    asyncio.run(make())


def test_nothing_listening_is_named_at_once_by_every_client() -> None:
    (port,) = free_ports(1)
    settings = KarmaSettings(bootstrap_servers=f"127.0.0.1:{port}")

    async def start_each() -> list[str]:
        messages = []
        for client in (new_consumer(settings), new_producer(settings), new_admin(settings)):
            with pytest.raises(ClusterAccessError) as raised:
                await client.start()
            messages.append(str(raised.value))
        return messages

    started = time.monotonic()
    messages = asyncio.run(start_each())
    assert time.monotonic() - started < 10
    assert (
        messages == [f"nothing listens on 127.0.0.1:{port} (is the broker up? try `karma broker status`)"] * 3
    )
    assert isinstance(ClusterAccessError("x"), KafkaConnectionError)  # caught where Kafka errors are


def test_a_listener_that_hangs_up_is_reported_as_a_protocol_mismatch() -> None:
    """A TLS listener closes the connection of a client that does not begin with a handshake;
    a socket that accepts and closes at once stands in for it."""

    async def run() -> str:
        async def hang_up(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(ClusterAccessError) as raised:
                await check_connection(KarmaSettings(bootstrap_servers=f"127.0.0.1:{port}"), timeout_s=5)
            return str(raised.value)
        finally:
            server.close()
            await server.wait_closed()

    message = asyncio.run(run())
    assert "closed the connection (does that listener speak PLAINTEXT?" in message
    assert "\n" not in message

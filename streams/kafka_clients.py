"""Every Kafka client of the project is made here (consumers, producers, admin clients; the faust
worker's credentials are made of the same TLS context, in streams/app.py), so how they connect
(bootstrap servers, and the cluster's security settings: `kafka_security` in streams/config.py)
is set in one place. No faust here: the commands that only read or write topics (`karma tail`,
`submit`) connect through this module without loading faust.

A client made here that cannot reach the cluster says why. aiokafka turns every bootstrap
failure into one `KafkaConnectionError("Unable to bootstrap from [...]")` and only logs the cause
(a refused connection, an untrusted certificate, a wrong password); `start()` of these clients
then opens one more connection by hand to find that cause, and raises `ClusterAccessError` whose
message names it and the setting to check, in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

from karma.streams.config import KafkaSecurity, KarmaSettings

__all__ = [
    "AUTHORIZATION_ERRORS",
    "ClusterAccessError",
    "check_connection",
    "client_options",
    "hidden_topics",
    "new_admin",
    "new_consumer",
    "new_producer",
    "ssl_context",
]

# The broker's authorizer said no: answers about the principal's rights (streams/acls.py), not
# about a record or a connection.
AUTHORIZATION_ERRORS = (
    TopicAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)

# The broker's answers that mean "these credentials are not accepted".
_SASL_REFUSALS = (
    SaslAuthenticationFailed,
    IllegalSaslStateError,
    UnsupportedSaslMechanismError,
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
)
DIAGNOSE_TIMEOUT_S = 5.0


class ClusterAccessError(KafkaConnectionError):
    """The cluster could not be reached, or refused these settings. The message is one line that
    names the cause (refused, TLS, SASL) and the setting to check, without aiokafka's class-name
    prefix, so a command can print it as it is."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "the Kafka cluster could not be reached"


def ssl_context(security: KafkaSecurity) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL (verifying the brokers' certificates and host names
    against ssl_cafile, or the system's CAs); None for the unencrypted protocols."""
    if not security.uses_tls:
        return None
    return create_ssl_context(
        cafile=str(security.ssl_cafile) if security.ssl_cafile else None,
        certfile=str(security.ssl_certfile) if security.ssl_certfile else None,
        keyfile=str(security.ssl_keyfile) if security.ssl_keyfile else None,
    )


def security_options(security: KafkaSecurity) -> dict[str, Any]:
    """aiokafka's security keyword arguments (those of every client and of a bare connection)."""
    options: dict[str, Any] = {"security_protocol": security.security_protocol}
    context = ssl_context(security)
    if context is not None:
        options["ssl_context"] = context
    if security.uses_sasl:
        options["sasl_mechanism"] = security.sasl_mechanism
        options["sasl_plain_username"] = security.sasl_username
        options["sasl_plain_password"] = security.sasl_password
    return options


def client_options(settings: KarmaSettings) -> dict[str, Any]:
    """The keyword arguments every aiokafka client of these settings gets."""
    return {"bootstrap_servers": settings.bootstrap_servers, **security_options(settings.kafka_security)}


class _ExplainsFailures:
    """Mixin for the aiokafka clients: a `start()` that cannot bootstrap raises
    ClusterAccessError with the cause, instead of aiokafka's cause-less KafkaConnectionError."""

    def __init__(self, *args: Any, karma_settings: KarmaSettings, **options: Any) -> None:
        self._karma_settings = karma_settings
        super().__init__(*args, **options)

    async def start(self) -> None:
        try:
            await super().start()  # type: ignore[misc]
        except KafkaConnectionError as exc:
            # Closed here: not every caller stops a client whose start failed, and aiokafka
            # reports one left open when it is collected.
            with contextlib.suppress(Exception):
                await self._release()
            raise ClusterAccessError(await diagnose(self._karma_settings) or str(exc)) from exc

    async def _release(self) -> None:
        await self.stop()  # type: ignore[attr-defined]


class _Consumer(_ExplainsFailures, AIOKafkaConsumer):
    pass


class _Producer(_ExplainsFailures, AIOKafkaProducer):
    pass


class _Admin(_ExplainsFailures, AIOKafkaAdminClient):
    async def _release(self) -> None:
        await self.close()


def new_consumer(settings: KarmaSettings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    return _Consumer(*topics, karma_settings=settings, **client_options(settings), **options)


def new_producer(settings: KarmaSettings, **options: Any) -> AIOKafkaProducer:
    return _Producer(karma_settings=settings, **client_options(settings), **options)


def new_admin(settings: KarmaSettings, **options: Any) -> AIOKafkaAdminClient:
    return _Admin(karma_settings=settings, **client_options(settings), **options)


async def check_connection(settings: KarmaSettings, timeout_s: float = 10.0) -> None:
    """One metadata round trip with these settings, or ClusterAccessError saying why not: run
    before a faust worker starts, so that a bad credential is one line, not an error somewhere
    inside faust's start-up."""
    admin = new_admin(settings, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
    except TimeoutError:
        raise ClusterAccessError(
            f"Kafka at {settings.bootstrap_servers} did not answer within {timeout_s:g} s "
            "(is the broker up? try `karma broker status`)"
        ) from None
    finally:
        await admin.close()


async def diagnose(settings: KarmaSettings, timeout_s: float = DIAGNOSE_TIMEOUT_S) -> str | None:
    """Why the bootstrap servers cannot be used with these settings, in one line; None when
    each of them accepts a connection (then the failure was something else)."""
    security = settings.kafka_security
    for server in settings.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            connecting = create_conn(host, int(port), **security_options(security))
            conn = await asyncio.wait_for(connecting, timeout_s)
        except Exception as exc:  # every way a connection fails is a diagnosis here
            return _cause(server.strip(), security, exc, timeout_s)
        conn.close()
    return None


def _cause(server: str, security: KafkaSecurity, exc: Exception, timeout_s: float) -> str:
    """One line: what failed on `server`, and which setting to look at."""
    protocol = security.security_protocol
    if isinstance(exc, ssl.SSLCertVerificationError):
        trusted = (
            f"kafka_security.ssl_cafile {security.ssl_cafile}" if security.ssl_cafile else "the system CAs"
        )
        return (
            f"TLS: the certificate of {server} is not trusted: {exc.verify_message} "
            f"(it must be signed by a CA in {trusted}, and name the host)"
        )
    if isinstance(exc, ssl.SSLError):
        return (
            f"TLS handshake with {server} failed: {exc.reason or exc} (does that listener speak "
            f"{protocol}? check kafka_security.security_protocol)"
        )
    if isinstance(exc, _SASL_REFUSALS):
        reason = str(exc.args[0]) if exc.args else type(exc).__name__
        return (
            f"SASL {security.sasl_mechanism} authentication as {security.sasl_username!r} failed at "
            f"{server}: {reason} (check kafka_security.sasl_username, sasl_mechanism and the password in "
            f"${security.sasl_password_env})"
        )
    if isinstance(exc, ConnectionRefusedError):
        return f"nothing listens on {server} (is the broker up? try `karma broker status`)"
    if isinstance(exc, TimeoutError):
        return f"{server} did not complete a {protocol} connection within {timeout_s:g} s"
    if isinstance(exc, KafkaConnectionError):
        # A TLS listener hangs up on a client that does not start with a TLS handshake.
        return (
            f"{server} closed the connection (does that listener speak {protocol}? "
            "check kafka_security.security_protocol)"
        )
    if isinstance(exc, KafkaError | OSError):
        return f"cannot connect to {server} with {protocol}: {exc}"
    return f"cannot connect to {server} with {protocol}: {type(exc).__name__}: {exc}"


async def hidden_topics(admin: AIOKafkaAdminClient, names: list[str]) -> list[str]:
    """Which of `names` the broker refuses to describe to the admin client's principal (its
    ACLs hide them: they are missing from a list of topics, like topics that do not exist).
    Asked without auto-creation, which a plain metadata request for a missing topic triggers."""
    response = await admin._send_request(MetadataRequest(names, allow_auto_topic_creation=False))
    return sorted(
        entry["topic"]
        for entry in response.to_object()["topics"]
        if entry["error_code"] == TopicAuthorizationFailedError.errno
    )

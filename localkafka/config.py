"""What a local broker is told and what it reports: ``BrokerConfig`` (its home, ports, jars and,
for a node of a cluster, its place in the quorum), ``BrokerStatus``, ``BrokerError``, and the
random cluster id formatted into new storage.

Separate from the process management (localkafka/broker.py) so that the jar resolution
(jars.py), the configuration files (properties.py) and the cluster (cluster.py) read it without
importing the class that runs the JVM. localkafka/broker.py re-exports the three classes: they
are its public face.
"""

from __future__ import annotations

import base64
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from karma.localkafka.probes import free_ports

__all__ = [
    "DEFAULT_KAFKA_VERSION",
    "BrokerConfig",
    "BrokerError",
    "BrokerStatus",
    "default_home",
    "new_cluster_id",
    "output_tail",
]

DEFAULT_KAFKA_VERSION = "4.1.1"


class BrokerError(RuntimeError):
    """The local broker could not be resolved, started, stopped or reset."""


def output_tail(text: str, lines: int = 30) -> str:
    """The last `lines` lines of a tool's output or a log, as a BrokerError quotes them."""
    return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"


def default_home() -> Path:
    return Path(os.environ.get("KARMA_HOME", ".cache/karma"))


def new_cluster_id() -> str:
    """A random Kafka Uuid in its base64url form (never starting with '-', like Kafka's)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


@dataclass
class BrokerConfig:
    """Where a local broker keeps its state and which loopback ports it listens on."""

    home: Path = field(default_factory=default_home)
    port: int = 9092
    controller_port: int | None = None  # default: port + 1
    heap: str = "512m"
    kafka_version: str = DEFAULT_KAFKA_VERSION
    jars_home: Path | None = None  # where kafka-<version>/lib lives; default: home
    secure: bool = False  # a SASL_SSL listener on `port` (TLS + SCRAM-SHA-512) instead of PLAINTEXT
    # With secure: an SSL listener that requires a client certificate instead of SASL_SSL.
    mutual_tls: bool = False
    secrets_dir: Path | None = None  # the secure files; default: <state dir>/secure (a cluster shares one)
    # A node of a cluster (localkafka/cluster.py sets these; a lone broker keeps the defaults):
    node_id: int = 1
    quorum_voters: str | None = None  # controller.quorum.voters; default: this node alone
    replicas: int = 1  # replication factor of new topics, internal ones included
    state_dir: Path | None = None  # default: <home>/broker-<port>
    cluster_id: str | None = None  # formatted into the storage; default: a new random one

    def __post_init__(self) -> None:
        self.home = Path(self.home)
        if self.jars_home is not None:
            self.jars_home = Path(self.jars_home)
        if self.state_dir is not None:
            self.state_dir = Path(self.state_dir)
        if self.secrets_dir is not None:
            self.secrets_dir = Path(self.secrets_dir)
        if self.mutual_tls and not self.secure:
            raise BrokerError("mutual TLS is a mode of the secure broker: give --secure with --mutual-tls")
        if self.controller_port is None:
            self.controller_port = self.port + 1
        if self.controller_port == self.port:
            raise BrokerError(f"controller port must differ from the client port {self.port}")

    @classmethod
    def on_free_ports(
        cls, home: Path, jars_home: Path | None = None, secure: bool = False, mutual_tls: bool = False
    ) -> BrokerConfig:
        """A throw-away broker's config (tests, benchmarks): under `home`, on two loopback ports
        that are free right now."""
        port, controller_port = free_ports(2)
        return cls(
            home=home,
            port=port,
            controller_port=controller_port,
            jars_home=jars_home,
            secure=secure,
            mutual_tls=mutual_tls,
        )

    @property
    def min_insync_replicas(self) -> int:
        """A majority of the replicas: 2 of 3, so a cluster takes acks=all writes with a node down
        and never acknowledges a write that a single node holds."""
        return self.replicas // 2 + 1


@dataclass(frozen=True)
class BrokerStatus:
    running: bool  # the process recorded in broker.pid is alive
    pid: int | None
    port: int
    bootstrap: str
    answering: bool  # it answered a metadata request just now
    secure: bool = False  # its data was formatted for the SASL_SSL listener (start --secure)
    mutual_tls: bool = False  # ... with an SSL listener that requires client certificates

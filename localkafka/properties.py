"""The configuration files of a local broker's JVM: ``server.properties`` (the listeners, the
KRaft quorum, the replication of a node's topics; for a secure broker the SASL_SSL listener, its
SCRAM mechanism and user) and ``log4j2.properties``.

Separate from the process management (localkafka/broker.py): these are pure functions of a
``BrokerConfig`` and its paths, which the tests read without starting anything.
"""

from __future__ import annotations

from pathlib import Path

from karma.localkafka.config import BrokerConfig
from karma.localkafka.probes import HOST

__all__ = ["LOG4J2", "SCRAM_MECHANISM", "SCRAM_USER", "node_properties", "sasl_ssl_properties"]

# The secure broker's only SASL mechanism and its one user (clients and the broker itself).
SCRAM_MECHANISM = "SCRAM-SHA-512"
SCRAM_USER = "karma"

# Logs go to stdout, which start() sends to broker.log. The level is a system property so the
# one-shot storage format can run quietly (-Dkarma.kafka.log.level=WARN).
LOG4J2 = """\
status = warn
shutdownHook = disable
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = ${sys:karma.kafka.log.level:-INFO}
rootLogger.appenderRef.out.ref = STDOUT
"""


def node_properties(config: BrokerConfig, controller_port: int, data_dir: Path) -> dict[str, str]:
    """server.properties of a broker+controller node over PLAINTEXT, with its data in `data_dir`."""
    port, cport = config.port, controller_port
    node = config.node_id
    replicas, min_isr = str(config.replicas), str(config.min_insync_replicas)
    return {
        "process.roles": "broker,controller",
        "node.id": str(node),
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{cport}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        # A static quorum (no --standalone): every node is a voter, known from the start.
        "controller.quorum.voters": config.quorum_voters or f"{node}@{HOST}:{cport}",
        "log.dirs": str(data_dir),
        "num.partitions": "4",
        "auto.create.topics.enable": "true",
        "default.replication.factor": replicas,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": replicas,
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "transaction.state.log.num.partitions": "8",
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_isr,
        "group.initial.rebalance.delay.ms": "0",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "log.segment.bytes": str(16 * 1024 * 1024),
        "log.retention.hours": "24",
        "log.retention.check.interval.ms": "60000",
    }


def sasl_ssl_properties(
    port: int,
    controller_port: int,
    *,
    password: str,
    keystore: Path,
    keystore_password: str,
    ca_file: Path,
) -> dict[str, str]:
    """The SASL_SSL listener in place of PLAINTEXT. The controller's listener stays PLAINTEXT on
    loopback; the broker reaches itself over SASL_SSL as `karma`, which the CA lets it verify."""
    return {
        "listeners": f"SASL_SSL://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"SASL_SSL://{HOST}:{port}",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "SASL_SSL",
        "sasl.enabled.mechanisms": SCRAM_MECHANISM,
        "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
        f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{SCRAM_USER}" password="{password}";'
        ),
        # Kafka reads PEM key stores; a PEM key file must be encrypted (with a scheme Java 17
        # reads: PKCS#12 PBE with 3DES, not OpenSSL's default PBES2).
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(keystore),
        "ssl.key.password": keystore_password,
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(ca_file),
        "ssl.client.auth": "none",
    }

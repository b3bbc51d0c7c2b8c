"""The configuration files of a local broker's JVM: ``server.properties`` (the listeners, the
KRaft quorum, the replication of a node's topics; for a secure broker its TLS listeners, SCRAM and
the authorizer) and ``log4j2.properties``.

Separate from the process management (localkafka/broker.py): these are pure functions of a
``BrokerConfig`` and its paths, which the tests read without starting anything.
"""

from __future__ import annotations

from pathlib import Path

from karma.localkafka.config import BrokerConfig
from karma.localkafka.probes import HOST
from karma.localkafka.secrets import BROKER_PRINCIPAL, SecretFiles

__all__ = ["LOG4J2", "SCRAM_MECHANISM", "node_properties", "secure_properties"]

# The secure broker's only SASL mechanism; its users are the roles (streams/acls.py).
SCRAM_MECHANISM = "SCRAM-SHA-512"

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


def secure_properties(
    port: int,
    controller_port: int,
    *,
    files: SecretFiles,
    admin_password: str,
    keystore_password: str,
    mutual_tls: bool = False,
) -> dict[str, str]:
    """A secured node: its client listener SASL_SSL (SCRAM), or with `mutual_tls` SSL requiring a
    client certificate (the principal is the certificate's CN); the controller listener SSL with
    mutual TLS, where nodes know each other by the broker certificate (CN=admin). The authorizer
    is on and the admin is its only super user; everyone else gets what the ACLs grant."""
    client = "SSL" if mutual_tls else "SASL_SSL"
    properties = {
        "listeners": f"{client}://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"{client}://{HOST}:{port}",
        "listener.security.protocol.map": f"{client}:{client},CONTROLLER:SSL",
        "inter.broker.listener.name": client,
        # Kafka reads PEM key stores; a PEM key file must be encrypted (with a scheme Java 17
        # reads: PKCS#12 PBE with 3DES, not OpenSSL's default PBES2).
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(files.keystore),
        "ssl.key.password": keystore_password,
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(files.ca),
        "ssl.client.auth": "required" if mutual_tls else "none",
        "listener.name.controller.ssl.client.auth": "required",
        # CN=generation is User:generation, the same principal as the SCRAM user of that name.
        "ssl.principal.mapping.rules": "RULE:^CN=([A-Za-z0-9._-]+)$/$1/,DEFAULT",
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:{BROKER_PRINCIPAL}",
        "allow.everyone.if.no.acl.found": "false",
        # SCRAM is enabled on either listener kind: the users exist for SASL clients.
        "sasl.enabled.mechanisms": SCRAM_MECHANISM,
    }
    if not mutual_tls:
        properties |= {
            "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
            f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{BROKER_PRINCIPAL}" password="{admin_password}";'
            ),
        }
    return properties

"""A real local Kafka cluster: N KRaft nodes on loopback, each a broker and a controller, so that a
laptop or a test can lose a broker the way a production cluster does.

Each node is a ``LocalBroker`` (localkafka/broker.py) with its own ports, state and process; they
share one cluster id and one static controller quorum. Topics are replicated to every node
(``default.replication.factor`` = N, internal topics too) and take ``acks=all`` writes while a
majority of their replicas is in sync (``min.insync.replicas`` = N // 2 + 1: 2 of 3), so one node
of three can die without stopping the stream or losing an acknowledged write::

    cluster = LocalCluster(home, port=9092, nodes=3)  # nodes on 9092, 9094, 9096
    cluster.start()                                   # controllers on 9093, 9095, 9097
    cluster.bootstrap                                 # "127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096"
    cluster.stop()

State lives under ``<home>/cluster-<port>/`` (``cluster.id``, ``node-<id>/`` each with its
server.properties, data/, broker.log and broker.pid). ``start`` also restarts the nodes that are
down while the others run. The CLI is ``karma broker start|stop|status|reset --nodes 3``.
``secure=True`` (``--nodes 3 --secure``) secures every node as a single secure broker is (TLS,
SCRAM or mutual TLS, the authorizer), with one CA, certificate and set of users for all of them
under ``<home>/cluster-<port>/secure/``: the nodes authenticate to each other as the admin.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from karma.localkafka.broker import LocalBroker, secure_client_settings
from karma.localkafka.config import BrokerConfig, BrokerError, BrokerStatus, default_home, new_cluster_id
from karma.localkafka.probes import HOST, free_ports
from karma.localkafka.secrets import SecretFiles

__all__ = ["LocalCluster", "MAX_NODES"]

MAX_NODES = 9


class LocalCluster:
    """Start, stop and inspect an N-node KRaft cluster on 127.0.0.1."""

    def __init__(
        self,
        home: Path | None = None,
        port: int = 9092,
        nodes: int = 3,
        jars_home: Path | None = None,
        heap: str = "512m",
        ports: list[tuple[int, int]] | None = None,
        secure: bool = False,
        mutual_tls: bool = False,
    ) -> None:
        """`port` is node 1's client port; node i listens on port + 2(i-1) and its controller on the
        port after that, unless `ports` gives every node's (client, controller) pair."""
        if nodes == 2 or not 1 <= nodes <= MAX_NODES:
            raise BrokerError(
                f"a cluster of {nodes} nodes is not offered: use 1, or 3 to {MAX_NODES} "
                "(a quorum of 2 stops when either node stops, so it survives no failure)"
            )
        home = Path(home) if home is not None else default_home()
        ports = ports or [(port + 2 * i, port + 2 * i + 1) for i in range(nodes)]
        if len(ports) != nodes:
            raise BrokerError(f"{len(ports)} port pairs given for {nodes} nodes")
        self.nodes = nodes
        self.port = ports[0][0]
        self.cluster_dir = home.resolve() / f"cluster-{self.port}"
        self.cluster_id_file = self.cluster_dir / "cluster.id"
        # A secure cluster's nodes share one CA, certificate, users and passwords.
        self.secrets = SecretFiles(self.cluster_dir / "secure")
        voters = ",".join(f"{i + 1}@{HOST}:{controller}" for i, (_, controller) in enumerate(ports))
        self.brokers = [
            LocalBroker(
                BrokerConfig(
                    home=home,
                    port=client,
                    controller_port=controller,
                    heap=heap,
                    jars_home=jars_home,
                    node_id=i + 1,
                    quorum_voters=voters,
                    replicas=nodes,
                    state_dir=self.cluster_dir / f"node-{i + 1}",
                    secure=secure,
                    mutual_tls=mutual_tls,
                    secrets_dir=self.secrets.folder,
                )
            )
            for i, (client, controller) in enumerate(ports)
        ]

    @classmethod
    def on_free_ports(
        cls, home: Path, nodes: int = 3, jars_home: Path | None = None, secure: bool = False
    ) -> LocalCluster:
        """A throw-away cluster (tests, benchmarks) on loopback ports that are free right now."""
        flat = free_ports(2 * nodes)
        ports = list(zip(flat[::2], flat[1::2], strict=True))
        return cls(home, nodes=nodes, jars_home=jars_home, ports=ports, secure=secure)

    @property
    def bootstrap(self) -> str:
        """Every node's address: a client that finds one node down asks the next."""
        return ",".join(broker.bootstrap for broker in self.brokers)

    @property
    def min_insync_replicas(self) -> int:
        return self.brokers[0].config.min_insync_replicas

    @property
    def secure(self) -> bool:
        return self.brokers[0].secure

    @property
    def mutual_tls(self) -> bool:
        return self.brokers[0].mutual_tls

    def client_settings(self) -> dict[str, Any]:
        """The karma settings a client of this cluster needs: all bootstrap servers, topics
        created with one replica per node, and for a secure cluster the credentials (as a secure
        broker's, localkafka/broker.py)."""
        settings = secure_client_settings(self.bootstrap, self.secrets, self.secure, self.mutual_tls)
        return {**settings, "replication_factor": self.nodes}

    def start(self, timeout: float = 120, progress: Callable[[str], None] | None = None) -> None:
        """Start every node that is not running, then wait until each answers metadata that names
        all N brokers. On failure, the nodes this call started are stopped again."""
        self.brokers[0].ensure_jars(progress)
        for broker in self.brokers:
            broker.config.cluster_id = self._cluster_id()
        first = self.brokers[0]
        if first.config.secure and not first.secure and not any(b.running() for b in self.brokers):
            first.make_secrets()  # once, into the folder every node reads
        launched = [broker for broker in self.brokers if not broker.running()]
        deadline = time.monotonic() + timeout
        try:
            # All at once: a node answers only once a quorum of controllers runs.
            pids = [broker.launch(progress) for broker in self.brokers]
            for broker, pid in zip(self.brokers, pids, strict=True):
                broker.wait_until_answering(pid, deadline, brokers=self.nodes)
        except BrokerError:
            self._stop_all(launched, timeout=10)
            raise

    def stop(self, timeout: float = 30) -> int:
        """Stop every node at once (each SIGTERM, then SIGKILL after `timeout`): one by one, the
        last nodes would wait for a quorum that the first ones took away. Returns how many ran."""
        return self._stop_all(self.brokers, timeout)

    def status(self) -> list[BrokerStatus]:
        """One status per node, node 1 first."""
        with ThreadPoolExecutor(max_workers=self.nodes) as pool:
            return list(pool.map(lambda broker: broker.status(), self.brokers))

    def reset(self) -> bool:
        """Delete every node's data and the cluster id (all nodes must be stopped); jars stay."""
        running = [broker.bootstrap for broker in self.brokers if broker.running()]
        if running:
            raise BrokerError(f"cluster nodes still run on {', '.join(running)}; stop the cluster first")
        existed = [broker.reset() for broker in self.brokers]
        self.cluster_id_file.unlink(missing_ok=True)
        shutil.rmtree(self.secrets.folder, ignore_errors=True)  # they belong to the formatted data
        return any(existed)

    def _cluster_id(self) -> str:
        """The id every node's storage is formatted with, kept beside the nodes so that a node whose
        data was lost rejoins the same cluster."""
        if self.cluster_id_file.is_file():
            return self.cluster_id_file.read_text().strip()
        self.cluster_dir.mkdir(parents=True, exist_ok=True)
        cluster_id = new_cluster_id()
        self.cluster_id_file.write_text(cluster_id + "\n")
        return cluster_id

    def _stop_all(self, brokers: list[LocalBroker], timeout: float) -> int:
        if not brokers:
            return 0
        with ThreadPoolExecutor(max_workers=len(brokers)) as pool:
            return sum(pool.map(lambda broker: broker.stop(timeout), brokers))

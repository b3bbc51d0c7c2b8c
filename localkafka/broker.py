"""A real, single-node Apache Kafka broker (KRaft mode, loopback only) for laptops and tests.

The broker's jars are resolved once with Maven from ``deploy/kafka/pom.xml`` into a cache
(``<home>/kafka-<version>/lib``), then ``kafka.Kafka`` runs detached from this process with its
state under ``<home>/broker-<port>/`` (server.properties, data/, broker.log, broker.pid)::

    broker = LocalBroker(BrokerConfig(port=9092))
    broker.start()                # resolves jars on first use, formats storage once
    broker.bootstrap              # "127.0.0.1:9092"
    broker.stop()

The same lifecycle is the CLI's `karma broker start|stop|status|reset` (cli/broker.py).
A broker is also one node of a local cluster (localkafka/cluster.py): the config's ``node_id``,
``quorum_voters``, ``replicas``, ``state_dir`` and ``cluster_id`` say which, and ``launch`` starts
its process without waiting, since a node answers only once a quorum of its peers runs.
Needs Java 17+ and Maven on PATH; POSIX only (signals, ``fcntl``).

``BrokerConfig(secure=True)`` (``karma broker start --secure``) serves a SASL_SSL listener on the
port instead of PLAINTEXT: a CA and a certificate for 127.0.0.1/localhost are made with openssl
under ``<broker dir>/secure/`` (``ca.pem`` is the clients' ``ssl_cafile``), SCRAM-SHA-512 is
the only mechanism, and the user ``karma`` is created when the storage is formatted, with a
random password in ``secure/password`` (mode 0600). The controller listener stays PLAINTEXT on
loopback; the broker talks to itself over the SASL_SSL listener as ``karma``. The secure files
belong to the formatted data: ``reset`` deletes both, and a plain start of data formatted with
``secure`` (or the other way round) is refused. ``status`` and ``stop`` find the mode on disk.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaClient
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context

from karma.localkafka.secrets import SecretsError, make_broker_secrets, write_private
from karma.streams.config import KAFKA_PASSWORD_VARIABLE

__all__ = [
    "BrokerConfig",
    "BrokerError",
    "BrokerStatus",
    "LocalBroker",
    "kafka_pom",
]

DEFAULT_KAFKA_VERSION = "4.1.1"
HOST = "127.0.0.1"
MAVEN_TIMEOUT_S = 900.0
_MARKER = ".resolved"
# The secure broker's only SASL mechanism and its one user (clients and the broker itself).
SCRAM_MECHANISM = "SCRAM-SHA-512"
SCRAM_USER = "karma"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# Logs go to stdout, which start() sends to broker.log. The level is a system property so the
# one-shot storage format can run quietly (-Dkarma.kafka.log.level=WARN).
_LOG4J2 = """\
status = warn
shutdownHook = disable
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = ${sys:karma.kafka.log.level:-INFO}
rootLogger.appenderRef.out.ref = STDOUT
"""


class BrokerError(RuntimeError):
    """The local broker could not be resolved, started, stopped or reset."""


def default_home() -> Path:
    return Path(os.environ.get("KARMA_HOME", ".cache/karma"))


def kafka_pom() -> Path:
    """The pom that resolves the broker: ``$KARMA_KAFKA_POM`` or ``deploy/kafka/pom.xml``."""
    override = os.environ.get("KARMA_KAFKA_POM")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1] / "deploy" / "kafka" / "pom.xml"


def free_ports(count: int = 2) -> list[int]:
    """Distinct loopback ports that are free right now."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


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
        if self.controller_port is None:
            self.controller_port = self.port + 1
        if self.controller_port == self.port:
            raise BrokerError(f"controller port must differ from the client port {self.port}")

    @classmethod
    def on_free_ports(cls, home: Path, jars_home: Path | None = None, secure: bool = False) -> BrokerConfig:
        """A throw-away broker's config (tests, benchmarks): under `home`, on two loopback ports
        that are free right now."""
        port, controller_port = free_ports(2)
        return cls(home=home, port=port, controller_port=controller_port, jars_home=jars_home, secure=secure)

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


class LocalBroker:
    """Start, stop and inspect one Kafka broker+controller process on 127.0.0.1."""

    def __init__(self, config: BrokerConfig | None = None) -> None:
        self.config = config or BrokerConfig()
        home = self.config.home.resolve()
        jars_home = (self.config.jars_home or self.config.home).resolve()
        self.kafka_dir = jars_home / f"kafka-{self.config.kafka_version}"
        self.lib_dir = self.kafka_dir / "lib"
        self.broker_dir = (
            self.config.state_dir.resolve() if self.config.state_dir else home / f"broker-{self.config.port}"
        )
        self.data_dir = self.broker_dir / "data"
        self.properties_file = self.broker_dir / "server.properties"
        self.log4j_file = self.broker_dir / "log4j2.properties"
        self.log_file = self.broker_dir / "broker.log"
        self.pid_file = self.broker_dir / "broker.pid"
        self.secure_dir = self.broker_dir / "secure"
        self.ca_file = self.secure_dir / "ca.pem"  # the clients' ssl_cafile
        self.password_file = self.secure_dir / "password"  # the SCRAM user's, mode 0600
        self._keystore = self.secure_dir / "broker.pem"  # encrypted key + certificate chain
        self._keystore_password_file = self.secure_dir / "keystore.password"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self.config.port

    @property
    def controller_port(self) -> int:
        return self.config.controller_port or self.config.port + 1

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def secure(self) -> bool:
        """Whether this broker's data was formatted for SASL_SSL: read from disk, so that
        `status` and `stop` need not be told."""
        return self.password_file.is_file()

    def password(self) -> str:
        """The SCRAM password of the user `karma` (secure brokers only)."""
        try:
            return self.password_file.read_text().strip()
        except OSError as exc:
            raise BrokerError(f"no SCRAM password at {self.password_file}: {exc.strerror}") from None

    def client_settings(self) -> dict[str, Any]:
        """The karma settings a client of this broker needs (`bootstrap_servers`, and for a secure
        broker `kafka_security`); the password stays in its file, to be exported as
        KARMA_KAFKA_PASSWORD."""
        settings: dict[str, Any] = {"bootstrap_servers": self.bootstrap}
        if self.secure:
            settings["kafka_security"] = {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": SCRAM_MECHANISM,
                "sasl_username": SCRAM_USER,
                "sasl_password_env": KAFKA_PASSWORD_VARIABLE,
                "ssl_cafile": str(self.ca_file),
            }
        return settings

    # -- jars ---------------------------------------------------------------------------------

    def ensure_jars(self, progress: Callable[[str], None] | None = None) -> Path:
        """Resolve the broker's jars with Maven unless the cache is complete; return lib dir."""
        self.kafka_dir.mkdir(parents=True, exist_ok=True)
        with _locked(self.kafka_dir / ".lock"):
            marker = self.kafka_dir / _MARKER
            pom = kafka_pom()
            # The marker names the pom it was resolved from: a pom that gained a jar resolves again.
            stamp = f"pom sha256 {_sha256(pom)}" if pom.is_file() else ""
            if (
                marker.is_file()
                and stamp in marker.read_text()
                and any(self.lib_dir.glob("kafka_2.13-*.jar"))
            ):
                return self.lib_dir
            mvn = shutil.which("mvn")
            if mvn is None:
                raise BrokerError(
                    "Maven (mvn) is not on PATH; it is needed once to fetch the Kafka jars "
                    f"into {self.lib_dir}"
                )
            if not pom.is_file():
                raise BrokerError(f"Kafka pom not found at {pom} (set KARMA_KAFKA_POM?)")
            if progress:
                progress(f"resolving Kafka {self.config.kafka_version} jars with Maven (first run only)…")
            marker.unlink(missing_ok=True)
            shutil.rmtree(self.lib_dir, ignore_errors=True)
            cmd = [
                mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(pom),
                "dependency:copy-dependencies", "-DincludeScope=runtime",
                f"-DoutputDirectory={self.lib_dir}",
                f"-Dkafka.version={self.config.kafka_version}",
            ]  # fmt: skip
            try:
                done = subprocess.run(
                    cmd, capture_output=True, text=True, timeout=MAVEN_TIMEOUT_S, check=False
                )
            except subprocess.TimeoutExpired as exc:
                raise BrokerError(f"Maven did not finish within {MAVEN_TIMEOUT_S:.0f}s") from exc
            output = _ANSI.sub("", done.stdout + done.stderr)
            if done.returncode != 0:
                raise BrokerError(
                    f"Maven could not resolve Kafka {self.config.kafka_version} from {pom} "
                    f"(exit {done.returncode}):\n{_tail(output)}"
                )
            if not any(self.lib_dir.glob("kafka_2.13-*.jar")):
                raise BrokerError(f"Maven succeeded but left no kafka_2.13 jar in {self.lib_dir}")
            jars = sorted(p.name for p in self.lib_dir.glob("*.jar"))
            marker.write_text("\n".join([stamp, *jars]) + "\n")
            return self.lib_dir

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 60, progress: Callable[[str], None] | None = None) -> None:
        """Start the broker and wait until it answers metadata; no-op if it already runs.

        ``timeout`` covers the broker's start-up, not the one-time Maven resolution;
        ``progress`` is told when that resolution begins.
        """
        pid = self.launch(progress)
        self.wait_until_answering(pid, time.monotonic() + timeout)

    def launch(self, progress: Callable[[str], None] | None = None) -> int:
        """Start the broker process unless it runs, without waiting for it to answer (the nodes of
        a cluster answer only once a quorum of them runs); return its pid."""
        pid = self._running_pid()
        if pid is not None:
            return pid
        for port in (self.port, self.controller_port):
            if _port_in_use(port):
                raise BrokerError(
                    f"{HOST}:{port} is already in use by another process; stop it or choose another --port"
                )
        formatted = (self.data_dir / "meta.properties").is_file()
        self._check_mode(formatted)
        java = _java()
        lib = self.ensure_jars(progress)
        if not formatted:
            # Secrets left without data (a start that failed before formatting) are stale.
            shutil.rmtree(self.secure_dir, ignore_errors=True)
            if self.config.secure:
                self._make_secrets()
        self._write_config()
        if not formatted:
            self._format_storage(java, lib)
        with self.log_file.open("wb") as log:
            self._proc = subprocess.Popen(
                [*self._jvm(java, lib), "kafka.Kafka", str(self.properties_file)],
                cwd=self.broker_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")
        return self._proc.pid

    def stop(self, timeout: float = 30) -> bool:
        """SIGTERM the broker (SIGKILL after ``timeout``); False if it was not running."""
        pid = self._running_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_exit(pid, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_exit(pid, 10)
        self.pid_file.unlink(missing_ok=True)
        self._proc = None
        return True

    def running(self) -> bool:
        """Whether the process recorded in broker.pid is alive (no network probe)."""
        return self._running_pid() is not None

    def status(self) -> BrokerStatus:
        pid = self._running_pid()
        answering = pid is not None and _answers_metadata(self.bootstrap, self._probe_options())
        return BrokerStatus(pid is not None, pid, self.port, self.bootstrap, answering, self.secure)

    def reset(self) -> bool:
        """Delete this broker's data (topics, offsets, cluster id, and a secure broker's CA,
        certificate and password, which belong to it); jars stay. Must be stopped."""
        if self._running_pid() is not None:
            raise BrokerError(f"broker on {self.bootstrap} is running; stop it before reset")
        existed = self.data_dir.exists()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.secure_dir, ignore_errors=True)
        self.log_file.unlink(missing_ok=True)
        return existed

    # -- internals ----------------------------------------------------------------------------

    def server_properties(self) -> dict[str, str]:
        port, cport = self.port, self.controller_port
        node = self.config.node_id
        replicas, min_isr = str(self.config.replicas), str(self.config.min_insync_replicas)
        return {
            "process.roles": "broker,controller",
            "node.id": str(node),
            "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{cport}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            # A static quorum (no --standalone): every node is a voter, known from the start.
            "controller.quorum.voters": self.config.quorum_voters or f"{node}@{HOST}:{cport}",
            "log.dirs": str(self.data_dir),
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
            **(self._secure_properties() if self.config.secure else {}),
        }

    def _secure_properties(self) -> dict[str, str]:
        """The SASL_SSL listener in place of PLAINTEXT. The controller's listener stays PLAINTEXT on
        loopback; the broker reaches itself over SASL_SSL as `karma`, which the CA lets it verify."""
        port, cport = self.port, self.controller_port
        password = self.password()
        keystore_password = self._keystore_password_file.read_text().strip()
        return {
            "listeners": f"SASL_SSL://{HOST}:{port},CONTROLLER://{HOST}:{cport}",
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
            "ssl.keystore.location": str(self._keystore),
            "ssl.key.password": keystore_password,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca_file),
            "ssl.client.auth": "none",
        }

    def _check_mode(self, formatted: bool) -> None:
        """Formatted data keeps the mode it was formatted in: the SCRAM user exists only if it
        was created then, and clients were given that CA and password."""
        if not formatted or self.config.secure == self.secure:
            return
        how = "with --secure" if self.secure else "without --secure (it has no SCRAM user)"
        again = "start it with --secure" if self.secure else "start it without --secure"
        raise BrokerError(
            f"the broker data in {self.data_dir} was formatted {how}; {again}, or delete the data with "
            f"`karma broker reset --port {self.port}` first"
        )

    def _make_secrets(self) -> None:
        try:
            make_broker_secrets(
                self.secure_dir,
                HOST,
                self.port,
                password_file=self.password_file,
                keystore_password_file=self._keystore_password_file,
                keystore=self._keystore,
                ca_file=self.ca_file,
            )
        except SecretsError as exc:
            raise BrokerError(str(exc)) from None

    def _probe_options(self) -> dict[str, Any]:
        """aiokafka's security arguments for this broker's own health probe (none: PLAINTEXT)."""
        if not self.secure:
            return {}
        return {
            "security_protocol": "SASL_SSL",
            "ssl_context": create_ssl_context(cafile=str(self.ca_file)),
            "sasl_mechanism": SCRAM_MECHANISM,
            "sasl_plain_username": SCRAM_USER,
            "sasl_plain_password": self.password(),
        }

    def _write_config(self) -> None:
        self.broker_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"{key}={value}" for key, value in self.server_properties().items()]
        text = (
            "# Written by karma.localkafka.broker on every start; edits are overwritten.\n"
            + "\n".join(lines)
            + "\n"
        )
        if self.config.secure:
            write_private(self.properties_file, text)  # it holds the passwords
        else:
            self.properties_file.write_text(text)
        self.log4j_file.write_text(_LOG4J2)

    def _jvm(self, java: str, lib: Path, log_level: str = "INFO") -> list[str]:
        return [
            java,
            f"-Xmx{self.config.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j_file}",
            f"-Dkarma.kafka.log.level={log_level}",
            "-cp",
            f"{lib}/*",
        ]

    def _format_storage(self, java: str, lib: Path) -> None:
        cmd = [
            *self._jvm(java, lib, log_level="WARN"),
            "kafka.tools.StorageTool", "format",
            "-t", self.config.cluster_id or new_cluster_id(), "-c", str(self.properties_file),
        ]  # fmt: skip
        if self.config.secure:
            # The SCRAM user must exist before the broker starts: it is also how the broker
            # authenticates to itself. StorageTool takes it on the command line only, so the
            # password is visible in `ps` for the second the format runs (a local broker's).
            cmd += ["--add-scram", f"{SCRAM_MECHANISM}=[name={SCRAM_USER},password={self.password()}]"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise BrokerError(
                f"formatting KRaft storage in {self.data_dir} failed (exit {done.returncode}):\n"
                + _tail(done.stdout + done.stderr)
            )

    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _running_pid(self) -> int | None:
        pid = self._read_pid()
        return pid if pid is not None and self._alive(pid) else None

    def _alive(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        proc = Path(f"/proc/{pid}")
        if proc.is_dir():  # Linux: skip zombies and pids reused by something else
            try:
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                return False
            return state != "Z" and b"kafka.Kafka" in cmdline
        return True

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while self._alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def wait_until_answering(self, pid: int, deadline: float, brokers: int = 1) -> None:
        """Wait until the broker answers metadata naming at least `brokers` brokers (a cluster's
        node waits for its peers); stop it and raise BrokerError if it exits or the deadline passes."""
        while True:
            if not self._alive(pid):
                code = self._proc.poll() if self._proc is not None else None
                self.pid_file.unlink(missing_ok=True)
                how = f"exited with code {code}" if code is not None else "exited"
                raise BrokerError(
                    f"Kafka broker on {self.bootstrap} {how} during start-up; "
                    f"last lines of {self.log_file}:\n{self.log_tail()}"
                )
            if _answers_metadata(self.bootstrap, self._probe_options(), brokers=brokers):
                return
            if time.monotonic() > deadline:
                self.stop(timeout=10)
                raise BrokerError(
                    f"Kafka broker on {self.bootstrap} did not answer metadata in time; "
                    f"stopped it. Last lines of {self.log_file}:\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no broker.log)"
        return _tail(text, lines)


# -- helpers ------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"


def new_cluster_id() -> str:
    """A random Kafka Uuid in its base64url form (never starting with '-', like Kafka's)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise BrokerError("java not found (need Java 17+ on PATH or JAVA_HOME)")
    return java


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the JVM does
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def _accepts_tcp(bootstrap: str, timeout: float = 1.0) -> bool:
    host, port = bootstrap.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


async def _probe_metadata(bootstrap: str, timeout: float, options: dict[str, Any], brokers: int) -> bool:
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000), **options)
    try:
        await asyncio.wait_for(client.bootstrap(), timeout)
        return len(client.cluster.brokers()) >= brokers
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        await client.close()


def _run(coro: Coroutine[Any, Any, bool]) -> bool:
    """Run a coroutine to completion, also from code that already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _answers_metadata(
    bootstrap: str, options: dict[str, Any] | None = None, timeout: float = 5.0, brokers: int = 1
) -> bool:
    """Whether the broker answers a metadata request that names at least `brokers` brokers;
    `options` are aiokafka's security arguments for a secure broker (none: PLAINTEXT)."""
    # A plain TCP check first keeps aiokafka from logging connection errors while we wait.
    return _accepts_tcp(bootstrap) and _run(_probe_metadata(bootstrap, timeout, options or {}, brokers))

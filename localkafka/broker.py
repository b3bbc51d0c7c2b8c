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

This module runs the process; its parts live beside it: config.py (``BrokerConfig``,
``BrokerStatus``, ``BrokerError``, re-exported here), jars.py (Maven resolution, java),
properties.py (server.properties, log4j2.properties) and probes.py (ports, metadata probes).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka.helpers import create_ssl_context

from karma.localkafka.config import (
    BrokerConfig,
    BrokerError,
    BrokerStatus,
    new_cluster_id,
    output_tail,
)
from karma.localkafka.jars import find_java, kafka_pom, resolve_jars
from karma.localkafka.probes import HOST, answers_metadata, port_in_use
from karma.localkafka.properties import LOG4J2, SCRAM_MECHANISM, node_properties, secure_properties
from karma.localkafka.secrets import (
    BROKER_PRINCIPAL,
    SecretFiles,
    SecretsError,
    make_broker_secrets,
    write_private,
)
from karma.streams.acls import ROLES
from karma.streams.config import KAFKA_PASSWORD_VARIABLE, password_variable

# BrokerConfig, BrokerError, BrokerStatus (config.py) and kafka_pom (jars.py) stay importable from here.
__all__ = [
    "BrokerConfig",
    "BrokerError",
    "BrokerStatus",
    "LocalBroker",
    "kafka_pom",
]


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
        self.secrets = SecretFiles(self.config.secrets_dir or self.broker_dir / "secure")
        self.secure_dir = self.secrets.folder
        self.ca_file = self.secrets.ca  # the clients' ssl_cafile
        self.password_file = self.secrets.password(BROKER_PRINCIPAL)  # the admin's, mode 0600
        self._mutual_tls_file = self.secure_dir / "mutual-tls"  # present: the SSL listener
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

    @property
    def mutual_tls(self) -> bool:
        """Whether this secure broker's listener is SSL requiring client certificates (on disk)."""
        return self._mutual_tls_file.is_file()

    def password(self, role: str = BROKER_PRINCIPAL) -> str:
        """The SCRAM password of a role's user (secure brokers only); the admin's by default."""
        path = self.secrets.password(role)
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise BrokerError(f"no SCRAM password at {path}: {exc.strerror}") from None

    def client_settings(self) -> dict[str, Any]:
        """The karma settings a client of this broker needs (`bootstrap_servers`, and for a secure
        broker `kafka_security`, as the admin, and `kafka_principals`, one per other role); the
        passwords stay in their files, to be exported as KARMA_KAFKA_PASSWORD (the admin's) and
        KARMA_KAFKA_PASSWORD_<ROLE>."""
        return secure_client_settings(self.bootstrap, self.secrets, self.secure, self.mutual_tls)

    # -- jars ---------------------------------------------------------------------------------

    def ensure_jars(self, progress: Callable[[str], None] | None = None) -> Path:
        """Resolve the broker's jars with Maven unless the cache is complete; return lib dir."""
        return resolve_jars(self.kafka_dir, self.lib_dir, self.config.kafka_version, progress)

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
            if port_in_use(port):
                raise BrokerError(
                    f"{HOST}:{port} is already in use by another process; stop it or choose another --port"
                )
        formatted = (self.data_dir / "meta.properties").is_file()
        self._check_mode(formatted)
        java = find_java()
        lib = self.ensure_jars(progress)
        if not formatted and self.config.secrets_dir is None:
            # Secrets left without data (a start that failed before formatting) are stale. A
            # cluster's shared secrets are the cluster's to make (localkafka/cluster.py).
            shutil.rmtree(self.secure_dir, ignore_errors=True)
            if self.config.secure:
                self.make_secrets()
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
        answering = pid is not None and answers_metadata(self.bootstrap, self._probe_options())
        return BrokerStatus(
            pid is not None, pid, self.port, self.bootstrap, answering, self.secure, self.mutual_tls
        )

    def reset(self) -> bool:
        """Delete this broker's data (topics, offsets, cluster id, and a secure broker's CA,
        certificate and password, which belong to it); jars stay. Must be stopped."""
        if self._running_pid() is not None:
            raise BrokerError(f"broker on {self.bootstrap} is running; stop it before reset")
        existed = self.data_dir.exists()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if self.config.secrets_dir is None:  # a cluster's shared secrets are the cluster's
            shutil.rmtree(self.secure_dir, ignore_errors=True)
        self.log_file.unlink(missing_ok=True)
        return existed

    # -- internals ----------------------------------------------------------------------------

    def server_properties(self) -> dict[str, str]:
        return {
            **node_properties(self.config, self.controller_port, self.data_dir),
            **(self._secure_properties() if self.config.secure else {}),
        }

    def _secure_properties(self) -> dict[str, str]:
        return secure_properties(
            self.port,
            self.controller_port,
            files=self.secrets,
            admin_password=self.password(),
            keystore_password=self.secrets.keystore_password.read_text().strip(),
            mutual_tls=self.mutual_tls,
        )

    def _check_mode(self, formatted: bool) -> None:
        self._check_secure_mode(formatted)
        if formatted and self.config.secure and self.config.mutual_tls != self.mutual_tls:
            how = "with --mutual-tls" if self.mutual_tls else "without --mutual-tls"
            raise BrokerError(
                f"the broker data in {self.data_dir} was formatted {how}; start it so, or delete the data "
                f"with `karma broker reset --port {self.port}` first"
            )

    def _check_secure_mode(self, formatted: bool) -> None:
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

    def make_secrets(self) -> None:
        """The CA, certificates and passwords of a secure broker (every role's), and its mode."""
        try:
            make_broker_secrets(self.secrets, HOST, self.port, ROLES)
        except SecretsError as exc:
            raise BrokerError(str(exc)) from None
        if self.config.mutual_tls:
            self._mutual_tls_file.write_text("the client listener requires a client certificate\n")

    def _probe_options(self) -> dict[str, Any]:
        """aiokafka's security arguments for this broker's own health probe (none: PLAINTEXT)."""
        if not self.secure:
            return {}
        if self.mutual_tls:
            context = create_ssl_context(
                cafile=str(self.ca_file),
                certfile=str(self.secrets.certificate(BROKER_PRINCIPAL)),
                keyfile=str(self.secrets.key(BROKER_PRINCIPAL)),
            )
            return {"security_protocol": "SSL", "ssl_context": context}
        return {
            "security_protocol": "SASL_SSL",
            "ssl_context": create_ssl_context(cafile=str(self.ca_file)),
            "sasl_mechanism": SCRAM_MECHANISM,
            "sasl_plain_username": BROKER_PRINCIPAL,
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
        self.log4j_file.write_text(LOG4J2)

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
            # The SCRAM users must exist before the broker starts: the admin's is also how the
            # broker authenticates to itself. StorageTool takes them on the command line only, so
            # the passwords are visible in `ps` for the second the format runs (a local broker's).
            for role in ROLES:
                cmd += ["--add-scram", f"{SCRAM_MECHANISM}=[name={role},password={self.password(role)}]"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise BrokerError(
                f"formatting KRaft storage in {self.data_dir} failed (exit {done.returncode}):\n"
                + output_tail(done.stdout + done.stderr)
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
            if answers_metadata(self.bootstrap, self._probe_options(), brokers=brokers):
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
        return output_tail(text, lines)


def secure_client_settings(
    bootstrap: str, secrets: SecretFiles, secure: bool, mutual_tls: bool
) -> dict[str, Any]:
    """The client settings of a (secure) local broker or cluster: the admin in kafka_security,
    every other role in kafka_principals; with mutual TLS the certificates name the principals,
    else SCRAM users, whose passwords are read from the variables named here."""
    settings: dict[str, Any] = {"bootstrap_servers": bootstrap}
    if not secure:
        return settings

    def credentials(role: str, password_env: str) -> dict[str, str]:
        if mutual_tls:
            return {"ssl_certfile": str(secrets.certificate(role)), "ssl_keyfile": str(secrets.key(role))}
        return {"sasl_username": role, "sasl_password_env": password_env}

    security: dict[str, str] = {"security_protocol": "SSL" if mutual_tls else "SASL_SSL"}
    if not mutual_tls:
        security["sasl_mechanism"] = SCRAM_MECHANISM
    security |= credentials(BROKER_PRINCIPAL, KAFKA_PASSWORD_VARIABLE)
    security["ssl_cafile"] = str(secrets.ca)
    settings["kafka_security"] = security
    settings["kafka_principals"] = {
        role: credentials(role, password_variable(role)) for role in ROLES if role != BROKER_PRINCIPAL
    }
    return settings

"""The broker's runtime: its jars, resolved once with Maven from ``deploy/kafka/pom.xml`` into a
cache (``<jars home>/kafka-<version>/lib``) that every broker and node of that home shares, and
the java that runs them.

Separate from the process management (localkafka/broker.py): resolution is a one-time download
with its own lock, marker and failure messages, and ``LocalBroker.ensure_jars`` is its only caller.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from karma.localkafka.config import BrokerError, output_tail

__all__ = ["MAVEN_TIMEOUT_S", "find_java", "kafka_pom", "resolve_jars"]

MAVEN_TIMEOUT_S = 900.0
_MARKER = ".resolved"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def kafka_pom() -> Path:
    """The pom that resolves the broker: ``$KARMA_KAFKA_POM`` or ``deploy/kafka/pom.xml``."""
    override = os.environ.get("KARMA_KAFKA_POM")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1] / "deploy" / "kafka" / "pom.xml"


def resolve_jars(
    kafka_dir: Path, lib_dir: Path, kafka_version: str, progress: Callable[[str], None] | None = None
) -> Path:
    """Resolve the broker's jars with Maven into `lib_dir` unless the cache is complete; return
    `lib_dir`. `kafka_dir` holds the lock and the marker of a finished resolution."""
    kafka_dir.mkdir(parents=True, exist_ok=True)
    with _locked(kafka_dir / ".lock"):
        marker = kafka_dir / _MARKER
        pom = kafka_pom()
        # The marker names the pom it was resolved from: a pom that gained a jar resolves again.
        stamp = f"pom sha256 {_sha256(pom)}" if pom.is_file() else ""
        if marker.is_file() and stamp in marker.read_text() and any(lib_dir.glob("kafka_2.13-*.jar")):
            return lib_dir
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError(
                f"Maven (mvn) is not on PATH; it is needed once to fetch the Kafka jars into {lib_dir}"
            )
        if not pom.is_file():
            raise BrokerError(f"Kafka pom not found at {pom} (set KARMA_KAFKA_POM?)")
        if progress:
            progress(f"resolving Kafka {kafka_version} jars with Maven (first run only)…")
        marker.unlink(missing_ok=True)
        shutil.rmtree(lib_dir, ignore_errors=True)
        cmd = [
            mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(pom),
            "dependency:copy-dependencies", "-DincludeScope=runtime",
            f"-DoutputDirectory={lib_dir}",
            f"-Dkafka.version={kafka_version}",
        ]  # fmt: skip
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=MAVEN_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(f"Maven did not finish within {MAVEN_TIMEOUT_S:.0f}s") from exc
        output = _ANSI.sub("", done.stdout + done.stderr)
        if done.returncode != 0:
            raise BrokerError(
                f"Maven could not resolve Kafka {kafka_version} from {pom} "
                f"(exit {done.returncode}):\n{output_tail(output)}"
            )
        if not any(lib_dir.glob("kafka_2.13-*.jar")):
            raise BrokerError(f"Maven succeeded but left no kafka_2.13 jar in {lib_dir}")
        jars = sorted(p.name for p in lib_dir.glob("*.jar"))
        marker.write_text("\n".join([stamp, *jars]) + "\n")
        return lib_dir


def find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise BrokerError("java not found (need Java 17+ on PATH or JAVA_HOME)")
    return java


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

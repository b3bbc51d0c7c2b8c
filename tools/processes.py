"""Child processes and the broker a command runs against: workers started as `karma ...`
subprocesses with given settings (for `karma demo`, `karma eval`, the tests and the benchmarks),
and the local broker started when nothing answers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from karma.localkafka.broker import BrokerConfig, LocalBroker
from karma.streams.config import KarmaSettings


def spawn_worker(settings: KarmaSettings, log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """Starts `karma run` (or `karma worker ...`) as a child process with these settings."""
    env = {**os.environ, **settings_env(settings)}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "karma.cli", *(args or ("run",))],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_worker(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def settings_env(settings: KarmaSettings) -> dict[str, str]:
    """KARMA_* variables that reproduce `settings` in a child process."""
    return {
        "KARMA_" + name.upper(): value if isinstance(value, str) else json.dumps(value)
        for name, value in settings.model_dump(mode="json").items()
    }


@contextlib.contextmanager
def broker_for(
    bootstrap: str | None, port: int, keep: bool = False, say: Callable[[str], object] = print
) -> Iterator[str]:
    """The bootstrap servers to use: `bootstrap` as given, or else the local broker on `port`,
    started if it is not answering (and then stopped afterwards, unless `keep`)."""
    if bootstrap:
        yield bootstrap
        return
    broker = LocalBroker(BrokerConfig(port=port))
    started = False
    if not broker.status().answering:
        say("starting the local Kafka broker (the first run resolves its jars with Maven)…")
        broker.ensure_jars(progress=lambda line: say(f"  {line}"))
        broker.start(timeout=120)
        started = True
    try:
        yield broker.bootstrap
    finally:
        if started and not keep:
            broker.stop()

"""Probes of the loopback network a local broker lives on: ports free right now, a port in use,
whether a broker accepts TCP and answers a metadata request (naming enough brokers, for a
cluster's node).

Separate from the process management (localkafka/broker.py) because tests, benchmarks and the
configuration (``BrokerConfig.on_free_ports``) need free ports without a broker, and because the
metadata probe is the one place aiokafka is used here.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka import AIOKafkaClient
from aiokafka.errors import KafkaError

__all__ = ["HOST", "accepts_tcp", "answers_metadata", "free_ports", "port_in_use"]

HOST = "127.0.0.1"  # every local broker listens on loopback only


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


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the JVM does
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def accepts_tcp(bootstrap: str, timeout: float = 1.0) -> bool:
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


def answers_metadata(
    bootstrap: str, options: dict[str, Any] | None = None, timeout: float = 5.0, brokers: int = 1
) -> bool:
    """Whether the broker answers a metadata request that names at least `brokers` brokers;
    `options` are aiokafka's security arguments for a secure broker (none: PLAINTEXT)."""
    # A plain TCP check first keeps aiokafka from logging connection errors while we wait.
    return accepts_tcp(bootstrap) and _run(_probe_metadata(bootstrap, timeout, options or {}, brokers))

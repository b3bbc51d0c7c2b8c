"""`karma broker`: start, stop, status and reset of the local development broker
(localkafka/broker.py LocalBroker), or with `--nodes 3` of a local cluster (localkafka/cluster.py
LocalCluster)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from karma.localkafka.broker import BrokerConfig, BrokerError, LocalBroker
from karma.localkafka.cluster import MAX_NODES, LocalCluster
from karma.localkafka.secrets import BROKER_PRINCIPAL
from karma.streams.acls import ROLES
from karma.streams.config import ENV_PREFIX, KAFKA_PASSWORD_VARIABLE, password_variable

broker_app = typer.Typer(
    help="Run a real Apache Kafka broker (KRaft) on 127.0.0.1 for development, or a cluster of "
    "several (--nodes 3) to try losing one.",
    no_args_is_help=True,
)
_out = Console(soft_wrap=True)  # long paths and addresses stay greppable
_err = Console(stderr=True, soft_wrap=True)

PortOption = Annotated[int, typer.Option("--port", "-p", help="Client port on 127.0.0.1.")]
HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="State and jar cache dir [default: $KARMA_HOME or .cache/karma]."),
]
NodesOption = Annotated[
    int,
    typer.Option(
        "--nodes",
        "-n",
        min=1,
        max=MAX_NODES,
        help="1: one broker. 3 (or more): a KRaft cluster, node i on --port + 2(i-1), topics replicated "
        "to every node, min.insync.replicas a majority (2 of 3). Give the same --nodes to stop, "
        "status and reset.",
    ),
]


def _broker(port: int, home: Path | None, secure: bool = False, mutual_tls: bool = False) -> LocalBroker:
    options = {"port": port, "secure": secure, "mutual_tls": mutual_tls}
    try:
        return LocalBroker(BrokerConfig(**options) if home is None else BrokerConfig(home, **options))
    except BrokerError as exc:
        raise _fail(exc) from None


def _mode(secure: bool) -> str:
    return "SASL_SSL" if secure else "PLAINTEXT"


def settings_lines(settings: dict[str, Any]) -> list[str]:
    """karma settings as a client sets them: the YAML of a --config file, or the same as KARMA_*
    variables (a nested section's keys joined with `__`, as the settings read them)."""

    def variables(section: dict[str, Any], prefix: str) -> list[str]:
        lines = []
        for key, value in section.items():
            if isinstance(value, dict):
                lines += variables(value, f"{prefix}{key.upper()}__")
            else:
                lines.append(f"  export {prefix}{key.upper()}={shlex.quote(str(value))}")
        return lines

    return [
        "client settings, in a config file (--config FILE or KARMA_CONFIG):",
        *(f"  {line}" for line in yaml.safe_dump(settings, sort_keys=False).splitlines()),
        "or as environment variables:",
        *variables(settings, ENV_PREFIX),
    ]


def client_settings_text(broker: LocalBroker | LocalCluster) -> str:
    """What a client of a secure broker sets (settings_lines), and in both cases the password
    variables, read from their files when exported (so no password itself is printed): the
    admin's, and each role's for its own processes."""
    if broker.mutual_tls:
        return "\n".join(settings_lines(broker.client_settings()))

    def export(variable: str, role: str) -> str:
        return f'  export {variable}="$(cat {shlex.quote(str(broker.secrets.password(role)))})"'

    return "\n".join(
        [
            *settings_lines(broker.client_settings()),
            "and, either way, the password of the admin (kafka_security), for `karma acl --apply`:",
            export(KAFKA_PASSWORD_VARIABLE, BROKER_PRINCIPAL),
            "and each role's, in the environment of that role's processes only:",
            *(export(password_variable(role), role) for role in ROLES if role != BROKER_PRINCIPAL),
            "then `karma acl --apply` grants each role what it needs (and no more).",
        ]
    )


def _fail(exc: BrokerError) -> typer.Exit:
    _err.print(f"[bold red]error:[/] {escape(str(exc))}")
    return typer.Exit(2)


@broker_app.command()
def start(
    port: PortOption = 9092,
    home: HomeOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the broker.")] = 90,
    secure: Annotated[
        bool,
        typer.Option(
            "--secure",
            help="Listen with SASL_SSL instead of PLAINTEXT: TLS with a CA made under the broker's "
            "home (needs openssl), SCRAM-SHA-512 user 'karma' with a generated password; prints the "
            "client settings. Fixed when the storage is formatted (`reset` to change it).",
        ),
    ] = False,
    mutual_tls: Annotated[
        bool,
        typer.Option(
            "--mutual-tls",
            help="With --secure: an SSL listener that requires a client certificate (one per role is "
            "made beside the CA; its name is the principal) instead of SASL_SSL.",
        ),
    ] = False,
    nodes: NodesOption = 1,
) -> None:
    """Start the broker in the background (resolves its jars with Maven on first use); with
    --nodes, start the cluster's nodes that are not running and print its client settings."""
    if nodes > 1:
        _start_cluster(_cluster(port, home, nodes, secure, mutual_tls), timeout)
        return
    broker = _broker(port, home, secure, mutual_tls)
    state = broker.status()
    if state.running and state.answering:
        if state.secure != secure:
            _err.print(
                f"[bold red]error:[/] the broker on {broker.bootstrap} already runs with "
                f"{_mode(state.secure)}; `karma broker stop --port {port}` first"
            )
            raise typer.Exit(2)
        mode = " with SASL_SSL" if secure else ""
        _out.print(f"broker already up on {broker.bootstrap}{mode} (pid {state.pid})")
    else:
        try:
            with _out.status(f"starting Kafka {broker.config.kafka_version} on {broker.bootstrap}…"):
                broker.start(timeout=timeout, progress=lambda msg: _out.print(f"[cyan]{escape(msg)}[/]"))
        except BrokerError as exc:
            raise _fail(exc) from None
        pid = broker.status().pid
        mode = " with SASL_SSL" if secure else ""
        _out.print(f"[green]broker up on {broker.bootstrap}{mode}[/] (pid {pid}, log {broker.log_file})")
    if secure:
        _out.print(client_settings_text(broker), markup=False, highlight=False, soft_wrap=True)


@broker_app.command()
def stop(port: PortOption = 9092, home: HomeOption = None, nodes: NodesOption = 1) -> None:
    """Stop the broker, or every node of the cluster at once (SIGTERM, then SIGKILL if it hangs)."""
    if nodes > 1:
        cluster = _cluster(port, home, nodes)
        stopped = cluster.stop()
        _out.print(f"cluster on {cluster.bootstrap}: {stopped} of {nodes} nodes were running, now stopped")
        return
    broker = _broker(port, home)
    try:
        stopped = broker.stop()
    except BrokerError as exc:
        raise _fail(exc) from None
    _out.print(f"broker on {broker.bootstrap} " + ("stopped" if stopped else "was not running"))


@broker_app.command()
def status(port: PortOption = 9092, home: HomeOption = None, nodes: NodesOption = 1) -> None:
    """Show whether the broker (or each node) runs and answers; exit code 0 only if all do."""
    if nodes > 1:
        _cluster_status(_cluster(port, home, nodes))
        return
    state = _broker(port, home).status()
    if state.running and state.answering:
        mode = " with SASL_SSL" if state.secure else ""
        _out.print(f"[green]running[/] on {state.bootstrap}{mode} (pid {state.pid}), answering metadata")
        return
    if state.running:
        _out.print(f"[yellow]running[/] (pid {state.pid}) but not answering on {state.bootstrap}")
    else:
        _out.print(f"[red]not running[/] on {state.bootstrap}")
    raise typer.Exit(1)


@broker_app.command()
def reset(port: PortOption = 9092, home: HomeOption = None, nodes: NodesOption = 1) -> None:
    """Delete the stopped broker's (or cluster's) data (topics, offsets); the jar cache stays."""
    if nodes > 1:
        cluster = _cluster(port, home, nodes)
        try:
            removed = cluster.reset()
        except BrokerError as exc:
            raise _fail(exc) from None
        _out.print(f"{'removed' if removed else 'no data at'} {cluster.cluster_dir}")
        return
    broker = _broker(port, home)
    try:
        removed = broker.reset()
    except BrokerError as exc:
        raise _fail(exc) from None
    _out.print(f"{'removed' if removed else 'no data at'} {broker.data_dir}")


# -- the cluster (--nodes 3) ----------------------------------------------------------------------


def _cluster(
    port: int, home: Path | None, nodes: int, secure: bool = False, mutual_tls: bool = False
) -> LocalCluster:
    try:
        return LocalCluster(home, port=port, nodes=nodes, secure=secure, mutual_tls=mutual_tls)
    except BrokerError as exc:
        raise _fail(exc) from None


def _start_cluster(cluster: LocalCluster, timeout: float) -> None:
    down = sum(not broker.running() for broker in cluster.brokers)  # no network probe needed
    if down:
        try:
            with _out.status(f"starting {down} of {cluster.nodes} Kafka nodes on {cluster.bootstrap}…"):
                cluster.start(timeout=timeout, progress=lambda msg: _out.print(f"[cyan]{escape(msg)}[/]"))
        except BrokerError as exc:
            raise _fail(exc) from None
    for node, state in enumerate(cluster.status(), start=1):
        log = cluster.brokers[node - 1].log_file
        _out.print(f"node {node} on {state.bootstrap} (pid {state.pid}, log {log})", highlight=False)
    how = f"up ({down} of {cluster.nodes} nodes started now)" if down else "already up"
    _out.print(
        f"[green]cluster {how}[/]: {cluster.nodes} nodes, topics replicated {cluster.nodes} times, "
        f"min.insync.replicas {cluster.min_insync_replicas}"
    )
    text = (
        client_settings_text(cluster)
        if cluster.secure
        else "\n".join(settings_lines(cluster.client_settings()))
    )
    _out.print(text, markup=False, highlight=False, soft_wrap=True)


def _cluster_status(cluster: LocalCluster) -> None:
    states = cluster.status()
    for node, state in enumerate(states, start=1):
        where = f"on {state.bootstrap}"
        if state.running and state.answering:
            _out.print(f"node {node}: [green]running[/] {where} (pid {state.pid}), answering")
        elif state.running:
            _out.print(f"node {node}: [yellow]running[/] {where} (pid {state.pid}) but not answering")
        else:
            _out.print(f"node {node}: [red]not running[/] {where}")
    up = sum(state.running and state.answering for state in states)
    _out.print(f"{up} of {cluster.nodes} nodes running and answering")
    if up < cluster.nodes:
        raise typer.Exit(1)

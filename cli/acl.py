"""`karma acl`: the least ACL set of this deployment, one principal per role (streams/acls.py),
printed as a table, and with --apply created on the cluster through the admin client."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from karma.cli.common import BootstrapOption, ConfigOption, console, out, run_or_exit, settings_or_exit
from karma.streams.acl_admin import create_acls
from karma.streams.acls import acls_for, principal_name


def acl(
    apply: Annotated[
        bool,
        typer.Option("--apply", help="Create the ACLs on the cluster (as the admin: kafka_security)."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the ACLs as JSON lines.")] = False,
    config: ConfigOption = None,
    bootstrap: BootstrapOption = None,
) -> None:
    """The least Kafka ACLs of each role (producer, generation, rating, judging, trainer, operator);
    --apply creates them.

    For this deployment's topic prefix and app id, each role gets exactly the topics, groups and
    changelogs it needs (README, "Who may touch what"). The admin needs none: it is the broker's
    super user, and --apply runs as it (kafka_security). Existing ACLs are left as they are:
    this adds, it never removes."""
    settings = settings_or_exit(config, "admin", bootstrap_servers=bootstrap)
    acls = acls_for(settings)
    if as_json:
        for rule in acls:
            print(json.dumps(rule.__dict__))
    else:
        table = Table("principal", "resource", "name", "pattern", "operation", title="ALLOW")
        for rule in acls:
            table.add_row(
                f"User:{rule.principal}", rule.resource, rule.name, rule.pattern, rule.operation.upper()
            )
        admin = principal_name(settings, "admin")
        table.add_row(f"User:{admin}", "cluster, every topic and group", "*", "", "ALL (super.users)")
        out.print(table, width=max(out.width, 120))  # names whole, not folded
    if apply:
        created = run_or_exit(create_acls(settings, acls))
        console.print(f"created {created} ACLs on {escape(settings.bootstrap_servers)}")

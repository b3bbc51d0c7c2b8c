"""`karma simulated-server`: the simulated models behind an OpenAI-compatible API, with faults on
demand, so tests and `karma generate/judge --backend openai` have a server to talk to."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from karma.agents.backends.simulated_server import ServerOptions, parse_fail_after, parse_qualities, serve
from karma.agents.kinship import ProfileError
from karma.cli.common import console


def simulated_server(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    latency_s: Annotated[
        float, typer.Option("--latency-s", min=0.0, help="Seconds every chat request waits first.")
    ] = 0.0,
    fail_first: Annotated[int, typer.Option(min=0, help="The first N chat requests get HTTP 500.")] = 0,
    rate_limit_first: Annotated[
        int,
        typer.Option(min=0, help="The first N chat requests (after --fail-first's) get 429, Retry-After: 0."),
    ] = 0,
    fail_when: Annotated[
        list[str] | None,
        typer.Option(help="A chat request whose messages contain TEXT always gets 500 (repeatable)."),
    ] = None,
    fail_model_after: Annotated[
        list[str] | None,
        typer.Option(help="MODEL=N: requests for MODEL get 500 after its first N (a model failing mid-run)."),
    ] = None,
    malformed_first: Annotated[
        int, typer.Option(min=0, help="The first N judge replies are not JSON (HTTP 200).")
    ] = 0,
    malformed_always: Annotated[
        bool, typer.Option("--malformed-always", help="Every judge reply is not JSON.")
    ] = False,
    first_always_wins: Annotated[
        bool, typer.Option("--first-always-wins", help="An order-dependent judge: answer A always wins.")
    ] = False,
    quality: Annotated[
        list[str] | None,
        typer.Option(help="MODEL=Q: latent quality in [0, 1] instead of the profile's (repeatable)."),
    ] = None,
    profiles: Annotated[
        Path | None,
        typer.Option("--profiles", help="Benchmark CSV or YAML (default: the bundled 16-model table)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Judge seed; generation seed when a request has none.")] = 0,
    position_bias: Annotated[float, typer.Option(help="Judge: log-odds bonus of the first shown.")] = 0.3,
    length_bias: Annotated[float, typer.Option(help="Judge: log-odds per log length ratio.")] = 0.5,
    temperature: Annotated[
        float, typer.Option(help="Judge: quality gap that moves the log-odds by 1 (quality_scale).")
    ] = 0.1,
) -> None:
    """Serve the SIMULATED models as an OpenAI-compatible chat-completions API, for tests.

    Not a language model: every reply says it is simulated. Judge requests (the judge prompt's
    fenced answers) get a simulated verdict; anything else a simulated generation. The fault
    options make it slow, failing, rate-limited, malformed or order-dependent. GET /stats counts.
    """
    try:
        options = ServerOptions(
            latency_s=latency_s,
            fail_first=fail_first,
            rate_limit_first=rate_limit_first,
            fail_when=tuple(fail_when or ()),
            fail_model_after=parse_fail_after(fail_model_after or []),
            malformed_first=malformed_first,
            malformed_always=malformed_always,
            first_always_wins=first_always_wins,
            qualities=parse_qualities(quality or []),
            profiles=profiles,
            seed=seed,
            position_bias=position_bias,
            length_bias=length_bias,
            temperature=temperature,
        )
        serve(host, port, options)
    except (ValueError, ProfileError) as exc:  # ProfileError is a ValueError; named for the reader
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except OSError as exc:
        console.print(f"[red]error:[/] cannot listen on {host}:{port}: {exc.strerror or exc}")
        raise typer.Exit(1) from None

"""`karma tail`: any topic's messages as JSON lines, decoded.

A module of its own, as the command line imports a command's module only when it runs
(cli/lazy.py): tail's path is the topic reader (streams/client.py) and the configuration, not
the audit's rules, faust, the stages or the model backends.
"""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Annotated, Any

import typer

from karma.cli.common import BootstrapOption, ConfigOption, run_or_exit, settings_or_exit
from karma.streams.client import Received, read_topic, topic_name


def tail(
    topic: Annotated[
        str,
        typer.Argument(
            help="prompts, responses, pairs, preferences, dlq, ticks, or any full topic name "
            "(another prefix's, e.g. demo-20261129-101010.preferences, or a changelog)."
        ),
    ],
    config: ConfigOption = None,
    bootstrap: BootstrapOption = None,
    from_beginning: Annotated[bool, typer.Option(help="Start at the oldest message.")] = True,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep waiting for new messages.")] = False,
    limit: Annotated[int | None, typer.Option(help="Stop after this many messages.")] = None,
) -> None:
    """Print a topic's messages as JSON lines, decoded (reads without joining a group).

    Each line has topic, partition, offset, the key (text, or key_base64 when it is not UTF-8)
    and the decoded record as "value". A full name ending in .prompts, .responses, .pairs,
    .preferences or .dlq is read as that stage, whatever its prefix; a topic of any other name
    is decoded by the schema id in each message. A message that does not decode shows "error"
    instead; bytes that are not a karma record show "value_base64" and a "note" saying so.
    """
    settings = settings_or_exit(config, "operator", bootstrap_servers=bootstrap)

    async def _tail() -> None:
        count = 0
        async for received in read_topic(
            settings, topic, from_beginning=from_beginning, until_end=not follow
        ):
            print(json.dumps(_printable(received)), flush=True)
            count += 1
            if limit is not None and count >= limit:
                return

    with contextlib.suppress(KeyboardInterrupt):
        run_or_exit(_tail(), settings, f"READ on topic {topic_name(settings, topic)[0]}")


def _printable(received: Received) -> dict[str, Any]:
    """One message as a JSON-ready row; never a bare offset: the record, why it did not decode,
    or its raw bytes."""
    row: dict[str, Any] = {
        "topic": received.topic,
        "partition": received.partition,
        "offset": received.offset,
    }
    try:
        row["key"] = None if received.key is None else received.key.decode()
    except UnicodeDecodeError:  # karma keys are prompt ids; another writer's may be binary
        row["key_base64"] = base64.b64encode(received.key).decode()
    if received.record is not None:
        # Dead letters carry raw bytes: base64, as JSON mode would fail on bytes that are not UTF-8.
        raw = received.record.model_dump(mode="python")
        binary = {name for name, value in raw.items() if isinstance(value, bytes)}
        decoded = received.record.model_dump(mode="json", exclude=binary)
        row["value"] = {
            name: base64.b64encode(raw[name]).decode() if name in binary else decoded[name] for name in raw
        }
    elif received.typed:
        row["error"] = received.error
    elif received.value is None:
        row["value_base64"] = None
        row["note"] = "the message has no value (a tombstone)"
    else:
        row["value_base64"] = base64.b64encode(received.value).decode()
        row["note"] = f"not a valid karma record ({received.error}); the value is shown as base64"
    return row

"""`karma demo`: one end-to-end run on this machine, with a summary of what flowed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from karma.agents.kinship import Scored, load_profiles
from karma.agents.policies import select_pairs
from karma.schemas.models import Preference, Winner
from karma.streams.client import PromptProducer, parse_prompt_file, read_topic
from karma.streams.config import KarmaSettings
from karma.streams.topics import ensure_topics
from karma.tools.processes import spawn_worker, stop_worker


def expected_pairs_per_prompt(settings: KarmaSettings) -> int:
    """How many pairs a prompt yields under the configured policy when every model answers it
    (lengths unknown here: the kin rule's complexity gate is assumed to pass)."""
    profiles = load_profiles(settings.kin.profiles)
    scored = [Scored(f"r-{m}", m, profiles.superiority(m)) for m in settings.model_names]
    return len(select_pairs(settings.policy, scored, profiles, settings.kin.rule()))


async def count_distinct(settings: KarmaSettings, stage: str, id_field: str | None) -> int:
    """Distinct record ids on a topic (or messages, for id_field None), read to its current end."""
    seen: set[Any] = set()
    count = 0
    async for received in read_topic(settings, stage, until_end=True):
        count += 1
        if id_field and received.record is not None:
            seen.add(getattr(received.record, id_field))
    return len(seen) if id_field else count


def run_demo(
    settings: KarmaSettings,
    prompt_lines: list[str],
    output: Path,
    timeout_s: float,
    console: Console,
    progress: Callable[[], Progress],
) -> dict[str, int]:
    asyncio.run(ensure_topics(settings))
    output.parent.mkdir(parents=True, exist_ok=True)
    worker = spawn_worker(settings, output.parent / "worker.log")
    console.print(f"worker started (pid {worker.pid}, log {output.parent / 'worker.log'})")
    try:
        return asyncio.run(_demo(settings, prompt_lines, output, timeout_s, console, progress, worker))
    finally:
        stop_worker(worker)


async def _demo(
    settings: KarmaSettings,
    prompt_lines: list[str],
    output: Path,
    timeout_s: float,
    console: Console,
    progress: Callable[[], Progress],
    worker: Any,
) -> dict[str, int]:
    prompts = []
    for line_no, prompt, error in parse_prompt_file(prompt_lines, "karma-demo"):
        if error:
            console.print(f"[yellow]skipped[/] prompt line {line_no}: {error}")
        elif prompt:
            prompts.append(prompt)
    async with PromptProducer(settings, source="karma-demo") as producer:
        await asyncio.gather(*[await producer.send_prompt(p) for p in prompts])
    console.print(f"submitted {len(prompts)} prompts to {settings.topic('prompts')}")

    expected = expected_pairs_per_prompt(settings) * len({p.prompt_id for p in prompts})
    if not expected:
        console.print(
            f"[yellow]no preference expected:[/] under policy {settings.policy} and these profiles no two "
            "models of the pool are paired (`karma kin` shows why)"
        )
    preferences: dict[str, Preference] = {}
    deadline = time.monotonic() + timeout_s
    with progress() as bar:
        task = bar.add_task("waiting for preferences", total=expected)
        async for received in read_topic(settings, "preferences", idle_timeout_s=5.0):
            if isinstance(received.record, Preference):
                preferences[received.record.preference_id] = received.record
                bar.update(task, completed=len(preferences))
            if len(preferences) >= expected or time.monotonic() > deadline:
                break
        while len(preferences) < expected and time.monotonic() < deadline and worker.poll() is None:
            async for received in read_topic(settings, "preferences", idle_timeout_s=2.0):
                if isinstance(received.record, Preference):
                    preferences[received.record.preference_id] = received.record
            bar.update(task, completed=len(preferences))
    with output.open("w") as f:
        for preference in preferences.values():
            f.write(json.dumps(preference.model_dump(mode="json")) + "\n")
    return {
        "prompts": len(prompts),
        "responses": await count_distinct(settings, "responses", "response_id"),
        "pairs": await count_distinct(settings, "pairs", "pair_id"),
        "preferences": len(preferences),
        "ties": sum(p.winner is Winner.TIE for p in preferences.values()),
        "dlq": await count_distinct(settings, "dlq", None),
        "missing": max(0, expected - len(preferences)),
        "simulated": sum(p.simulated or p.response_a.simulated for p in preferences.values()),
    }

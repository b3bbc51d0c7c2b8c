"""A model that cannot load, on the real broker: `karma run` with a pool whose transformers model
names a folder that holds no checkpoint stops before it consumes, with one error line naming the
model, the folder and the cause, and exit code 3; the prompts stay uncommitted for the next
worker (the group's lag on them is all of them)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

from karma.streams.lag import LagMonitor
from tests.e2e.conftest import make_prompts

EX_MODEL_LOAD = 3  # cli/workers.py


def prompts_lag(settings: Any) -> int:
    """The group's lag on the prompts topic: every prompt when it never committed."""

    async def read() -> int:
        monitor = LagMonitor(settings, settings.app_id, [settings.topic("prompts")])
        await monitor.start()
        try:
            return sum((await monitor.read()).values())
        finally:
            await monitor.stop()

    return asyncio.run(read())


def test_a_model_that_cannot_load_stops_karma_run_before_it_consumes(
    pipeline_factory: Any, tmp_path: Path
) -> None:
    no_checkpoint = tmp_path / "llama-bad"
    no_checkpoint.mkdir()
    (no_checkpoint / "README.md").write_text("weights still being copied\n")
    pool = [
        {"name": "llama-2-13b-chat"},
        {"name": "vicuna-33b", "backend": "transformers", "model": str(no_checkpoint)},
    ]
    pipeline = pipeline_factory(pool=pool)
    prompts = make_prompts(6, tag="load")
    pipeline.submit(prompts)

    worker = pipeline.start_worker()
    try:
        code = worker.wait(timeout=180)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker did not stop:\n{pipeline.log()}") from None
    pipeline.workers.remove(worker)

    assert code == EX_MODEL_LOAD, pipeline.log()
    errors = [line for line in pipeline.log_lines() if line.startswith("error:")]
    assert len(errors) == 1, pipeline.log()
    assert errors[0].startswith(f"error: cannot load model vicuna-33b from {no_checkpoint}: "), errors
    assert "config.json" in errors[0]  # the cause, in transformers' words
    assert "Traceback" not in pipeline.log()
    assert not pipeline.read("responses")  # not even the simulated model answered
    assert prompts_lag(pipeline.settings) == len(prompts)  # nothing committed

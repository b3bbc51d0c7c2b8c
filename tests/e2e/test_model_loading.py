"""Loading models, on the real broker.

- A model that cannot load: `karma run` with a pool whose transformers model names a folder that
  holds no checkpoint stops before it consumes, with one error line naming the model, the folder
  and the cause, and exit code 3; the prompts stay uncommitted for the next worker (the group's
  lag on them is all of them).
- A tiny random Llama (built here, context 32 tokens) through the transformers backend: /readyz
  says "loading model" until it is loaded, then ready; a prompt longer than its context is
  dead-lettered `too_long` by name while the other prompts are answered.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from karma.schemas.models import DeadLetter, Prompt, Response
from karma.streams.lag import LagMonitor
from tests.agents.backends.test_transformers_real import CONTEXT, tiny_llama
from tests.e2e.conftest import Pipeline, make_prompts

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


def readyz(pipeline: Pipeline) -> str | None:
    """/readyz's answer, or None while nothing answers on the port."""
    url = f"http://127.0.0.1:{pipeline.settings.metrics_port}/readyz"
    try:
        return urllib.request.urlopen(url, timeout=5).read().decode().strip()
    except urllib.error.HTTPError as exc:  # 503: not ready, and why
        return exc.read().decode().strip()
    except OSError:
        return None


def readiness_until_ready(pipeline: Pipeline, timeout_s: float = 180.0) -> list[str]:
    """Every distinct /readyz answer, in order, until "ready"."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while not seen or seen[-1] != "ready":
        assert time.monotonic() < deadline, f"{seen}\n{pipeline.log()}"
        answer = readyz(pipeline)
        if answer is not None and (not seen or seen[-1] != answer):
            seen.append(answer)
        time.sleep(0.05)
    return seen


def test_a_tiny_llama_loads_before_the_worker_is_ready_and_refuses_a_prompt_over_its_context(
    pipeline_factory: Any, tmp_path: Path
) -> None:
    checkpoint = tiny_llama(tmp_path / "tiny-llama")
    max_tokens = 4
    pool = [
        {"name": "llama-2-13b-chat"},
        {
            "name": "vicuna-33b",
            "backend": "transformers",
            "model": str(checkpoint),
            "max_tokens": max_tokens,
            "temperature": 0,
        },
    ]
    pipeline = pipeline_factory(pool=pool)
    short = make_prompts(4, tag="tiny")  # five tokens each
    long = Prompt(prompt_id="e2etiny-long", text="why " * 40)  # 40 tokens, over 32 - 4
    pipeline.submit([*short[:2], long, *short[2:]])

    pipeline.start_worker()
    seen = readiness_until_ready(pipeline)
    # torch and the checkpoint load in seconds: /readyz says so before anything else
    assert seen[0].startswith("loading model ") and "vicuna-33b" in seen[0], seen
    assert seen.index("ready") > 0

    def answered(received: list[Any]) -> bool:
        return {r.record.prompt_id for r in received if r.record.model == "vicuna-33b"} >= {
            p.prompt_id for p in [*short, long]
        }

    responses = [r.record for r in pipeline.wait_for("responses", answered) if r.record.model == "vicuna-33b"]
    assert all(isinstance(r, Response) for r in responses)
    by_prompt = {r.prompt_id: r for r in responses}
    assert all(by_prompt[p.prompt_id].error is None and not by_prompt[p.prompt_id].simulated for p in short)
    assert by_prompt[long.prompt_id].error is not None

    letters = [r.record for r in pipeline.read("dlq") if isinstance(r.record, DeadLetter)]
    [too_long] = [x for x in letters if x.error_type == "too_long"]
    assert too_long.prompt_id == long.prompt_id and too_long.models == ["vicuna-33b"]
    assert too_long.stage == "generation"
    assert f"is 40 tokens, over the {CONTEXT - max_tokens} the model takes" in too_long.reason
    assert str(checkpoint) in too_long.reason

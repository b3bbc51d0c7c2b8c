"""The loop closed on the quick lab: real models answer, the verifier labels, `karma train` turns the
preferences into a new checkpoint version, and the generation worker answers with it while
prompts keep flowing. A trainer SIGKILLed mid-round trains that round again after its restart
and no preference is trained on twice; `karma audit` accounts for every prompt across the switch;
online competency tells the new version apart from the model it was trained from."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from karma.lab.build import BuildResult
from karma.schemas.models import Checkpoint, Preference, Response, Winner, response_id_for
from karma.streams.client import Received
from karma.tools.processes import settings_env
from tests.e2e.conftest import Pipeline, audit, competency
from tests.e2e.test_lab import heldout_prompts, lab_config

STUDENT = "lab-generalist-m"
ROUND = 12


def start_trainer(pipeline: Pipeline, out: Path, log: Path, rounds: int) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "karma.cli", "train", "--model", STUDENT, "--out", str(out)]
    command += ["--round-size", str(ROUND), "--rounds", str(rounds), "--judge", "verifier"]
    return subprocess.Popen(
        command,
        env={**os.environ, **settings_env(pipeline.settings), "COLUMNS": "200"},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )


def decided(received: list[Received]) -> dict[str, Preference]:
    """The preferences with a winner (what DPO can learn from), by id."""
    return {
        x.record.preference_id: x.record
        for x in received
        if isinstance(x.record, Preference) and x.record.winner != Winner.TIE
    }


def wait_for_line(log: Path, text: str, process: subprocess.Popen[str], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text():
        assert process.poll() is None, f"the trainer exited {process.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} in {timeout_s} s:\n{log.read_text()}"
        time.sleep(0.05)


def test_a_trained_version_is_served_while_prompts_flow_and_a_killed_trainer_trains_nothing_twice(
    pipeline_factory: Any, lab_quick: BuildResult, tmp_path: Path
) -> None:
    config = lab_config(lab_quick)
    pipeline = pipeline_factory(
        pool=config["pool"],
        kin=config["kin"],
        policy="all",  # every pair, whatever the superiority: pairs stay predictable with online on
        judge={"backend": "verifier"},
        competency={"online": True},
    )
    prompts = heldout_prompts(lab_quick, per_skill=8)
    first, later = prompts[: len(prompts) // 2], prompts[len(prompts) // 2 :]
    pipeline.submit(first)
    pipeline.start_worker()
    pipeline.wait_for("preferences", lambda r: len(decided(r)) >= 2 * ROUND, timeout_s=300)
    out, log = tmp_path / "train", tmp_path / "train.log"

    # Killed while training its first round: nothing published, the round is trained again.
    trainer = start_trainer(pipeline, out, log, rounds=2)
    wait_for_line(log, f"training {STUDENT} version 2", trainer)
    trainer.send_signal(signal.SIGKILL)
    trainer.wait(30)
    assert not [x for x in pipeline.read("checkpoints")], "a killed round published a checkpoint"

    # Prompts keep flowing while the trainer trains and the worker switches.
    flowing = threading.Thread(target=lambda: [pipeline.submit([p]) or time.sleep(0.3) for p in later])
    flowing.start()
    trainer = start_trainer(pipeline, out, tmp_path / "train-again.log", rounds=2)
    assert trainer.wait(300) == 0, (tmp_path / "train-again.log").read_text()
    flowing.join(120)

    checkpoints = [x.record for x in pipeline.read("checkpoints")]
    assert all(isinstance(c, Checkpoint) for c in checkpoints)
    assert [(c.model, c.version, c.parent_version) for c in checkpoints] == [(STUDENT, 2, 1), (STUDENT, 3, 2)]
    v2, v3 = checkpoints
    assert len(v2.preference_ids) == len(v3.preference_ids) == ROUND
    assert not set(v2.preference_ids) & set(v3.preference_ids), "a preference trained on twice"
    assert set(v2.preference_ids) | set(v3.preference_ids) <= set(decided(pipeline.read("preferences")))
    assert Path(v3.path, "config.json").exists() and v3.parent_path == v2.path

    # The worker answers with version 3 once it has it: new ids, while the others stay at 1.
    sent = {p.prompt_id for p in prompts}
    after = [p for p in heldout_prompts(lab_quick, per_skill=10) if p.prompt_id not in sent]
    pipeline.submit(after)
    every = len(config["pool"]) * (len(prompts) + len(after))
    responses = pipeline.wait_for("responses", lambda r: len(r) >= every, timeout_s=180)
    answers = [x.record for x in responses if isinstance(x.record, Response)]
    served = [r for r in answers if r.model == STUDENT and r.model_version == 3]
    assert all(r.response_id == response_id_for(r.prompt_id, STUDENT, version=3) for r in served)
    assert {r.model_version for r in answers if r.model != STUDENT} == {1}
    per_prompt = [(r.prompt_id, r.model) for r in answers]
    assert len(per_prompt) == len(set(per_prompt)), "a prompt answered twice by one model"
    assert {r.prompt_id for r in served} >= {p.prompt_id for p in after}, "after the switch: version 3"
    assert any(f"model {STUDENT}: version" in line and "-> 3" in line for line in pipeline.log_lines())
    ledger = audit(pipeline)
    assert ledger["unaccounted_total"] == 0
    # Accounted for is not enough: no prompt was lost to a failure of the stages themselves.
    failures = [
        x.record for x in pipeline.read("dlq") if getattr(x.record, "error_type", None) == "exception"
    ]
    assert not failures, failures[:3]

    # Version 3's verdicts are its own evidence: a row of its own in `karma competency`, and a
    # superiority of its own in the rating stage that pairs by it.
    v3_player = f"{STUDENT}@v3"
    judged = pipeline.wait_for(
        "preferences",
        lambda r: any(
            isinstance(x.record, Preference)
            and (STUDENT, 3)
            in {(c.model, c.model_version) for c in (x.record.response_a, x.record.response_b)}
            for x in r
        ),
        timeout_s=120,
    )
    assert judged
    rows = competency(pipeline)
    assert rows[v3_player]["version"] == 3 and rows[v3_player]["comparisons"] > 0
    assert rows[STUDENT]["version"] == 1 and rows[STUDENT]["comparisons"] > 0  # its verdicts before
    pipeline.wait_for_metrics(
        lambda text: f'karma_model_superiority{{estimate="blended",model="{v3_player}"}}' in text,
        timeout_s=60,
    )

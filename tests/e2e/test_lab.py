"""Real language models in the stream: the quick lab's checkpoints (small Llama models trained here,
karma.lab) answer through the transformers backend in the worker, and through the openai backend
from `transformers serve` (Hugging Face's own OpenAI-compatible server); the verifier labels each
pair against the prompt's reference. Nothing here is simulated, and every record says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from karma.agents.scoring import score
from karma.lab.build import BuildResult
from karma.schemas.models import Preference, Prompt, Response, Winner
from tests.conftest import free_ports
from tests.e2e.conftest import Pipeline, audit

PROMPTS_PER_SKILL = 4


def heldout_prompts(lab: BuildResult, per_skill: int = PROMPTS_PER_SKILL) -> list[Prompt]:
    """The first held-out prompts of every skill, as `karma submit` would read them."""
    prompts: dict[str, list[Prompt]] = {}
    for line in (lab.out / "prompts" / "heldout.jsonl").read_text().splitlines():
        prompt = Prompt.from_json(json.loads(line), source="lab")
        prompts.setdefault(prompt.metadata["skill"], []).append(prompt)
    assert len(prompts) >= 6, f"the lab has {len(prompts)} skills"
    return [p for skill in sorted(prompts) for p in prompts[skill][:per_skill]]


def lab_config(lab: BuildResult) -> dict[str, Any]:
    return yaml.safe_load((lab.out / "pool.yaml").read_text())


def check_verified(pipeline: Pipeline, prompts: list[Prompt], backend: str) -> list[Preference]:
    """Every pair of every prompt is judged by the verifier, and each label is the checked truth:
    recomputed here from the answers on the topic and the prompt's reference."""
    wanted = {p.prompt_id for p in prompts}
    pairs = pipeline.wait_for(
        "pairs",
        lambda r: {x.record.prompt_id for x in r} >= wanted,  # type: ignore[union-attr]
        timeout_s=300,
    )
    pair_ids = {x.record.pair_id for x in pairs}  # type: ignore[union-attr]
    received = pipeline.wait_for(
        "preferences",
        lambda r: {x.record.pair_id for x in r} >= pair_ids,  # type: ignore[union-attr]
        timeout_s=300,
    )
    responses = [x.record for x in pipeline.read("responses")]
    assert len(responses) >= len(prompts) * 2
    for response in responses:
        assert isinstance(response, Response) and not response.simulated and response.backend == backend
    metadata = {p.prompt_id: p.metadata for p in prompts}
    preferences = [x.record for x in received if isinstance(x.record, Preference)]
    assert {p.pair_id for p in preferences} == pair_ids
    for pref in preferences:
        assert pref.judge == "verifier" and not pref.simulated, pref
        meta = metadata[pref.prompt_id]
        right_a = score(meta["scorer"], pref.response_a.text, meta["reference"])
        right_b = score(meta["scorer"], pref.response_b.text, meta["reference"])
        assert (pref.score_a, pref.score_b) == (right_a, right_b), pref
        assert not pref.response_a.simulated and not pref.response_b.simulated
        if right_a == right_b:
            assert pref.winner == Winner.TIE, pref
        else:  # the winner is the answer that matches the reference
            assert pref.winner == (Winner.A if right_a > right_b else Winner.B), pref
    return preferences


def test_the_quick_lab_through_the_transformers_backend_labelled_by_the_verifier(
    pipeline_factory: Any, lab_quick: BuildResult
) -> None:
    config = lab_config(lab_quick)
    # policy `all`: every pair of answers, so that right-against-wrong pairs surely occur.
    pipeline = pipeline_factory(
        pool=config["pool"], kin=config["kin"], policy="all", judge={"backend": "verifier"}
    )
    prompts = heldout_prompts(lab_quick)
    pipeline.submit(prompts)
    pipeline.start_worker()
    preferences = check_verified(pipeline, prompts, backend="transformers")
    decided = [p for p in preferences if p.winner != Winner.TIE]
    assert decided, "no pair of a right and a wrong answer: the lab's models do not differ"
    ledger = audit(pipeline)
    assert ledger["unaccounted_total"] == 0 and ledger["counts"]["complete"] == len(prompts)


@pytest.fixture
def transformers_serve(lab_quick: BuildResult, tmp_path: Path) -> Iterator[str]:
    """`transformers serve` (Hugging Face's OpenAI-compatible server) on a free loopback port,
    offline: it loads a lab checkpoint by its path when a request names it."""
    port = free_ports(1)[0]
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "transformers"), "serve", "--port", str(port), "--device", "cpu"],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{base}/health", timeout=2).read()
            break
        except OSError:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "transformers serve did not answer in 120 s"
            time.sleep(0.5)
    try:
        yield f"{base}/v1"
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_the_openai_backend_against_transformers_serve_on_lab_checkpoints(
    pipeline_factory: Any, lab_quick: BuildResult, transformers_serve: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAB_SERVE_API_KEY", "unused")  # the backend wants a key; serve takes any
    config = lab_config(lab_quick)
    pool = [
        {
            "name": spec["name"],
            "backend": "openai",
            "base_url": transformers_serve,
            "model": spec["model"],  # the checkpoint's path: serve loads it by that name
            "api_key_env": "LAB_SERVE_API_KEY",
            "temperature": 0.0,
            "max_tokens": spec["max_tokens"],
            "max_concurrency": 4,
        }
        for spec in config["pool"][:3]
    ]
    pipeline = pipeline_factory(pool=pool, kin=config["kin"], policy="all", judge={"backend": "verifier"})
    prompts = heldout_prompts(lab_quick, per_skill=2)
    pipeline.submit(prompts)
    pipeline.start_worker()
    check_verified(pipeline, prompts, backend="openai")
    assert audit(pipeline)["unaccounted_total"] == 0
    # The server ran the lab's checkpoints: its greedy answers are the ones the checkpoint gives here.
    served = {(r.record.model, r.record.prompt_id): r.record.text for r in pipeline.read("responses")}
    paths = {spec["name"]: spec["model"] for spec in pool}
    local = greedy_answers(paths, prompts, max_tokens=pool[0]["max_tokens"])
    assert served == local


def greedy_answers(
    paths: dict[str, str], prompts: list[Prompt], max_tokens: int
) -> dict[tuple[str, str], str]:
    """Each checkpoint's greedy answer to each prompt, by transformers in this process."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    answers = {}
    for name, path in paths.items():
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        for prompt in prompts:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt.text}], tokenize=False, add_generation_prompt=True
            )
            inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
            with torch.inference_mode():
                out = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
            reply = out[0, inputs["input_ids"].shape[1] :]
            answers[(name, prompt.prompt_id)] = tokenizer.decode(reply, skip_special_tokens=True)
    return answers


def test_karma_eval_on_the_lab_reports_zebras_checked_accuracy(
    kafka_bootstrap: str, lab_quick: BuildResult, tmp_path: Path
) -> None:
    out, prompts = tmp_path / "eval", tmp_path / "prompts.jsonl"
    # Two prompts of every skill (the held-out file is ordered by skill).
    prompts.write_text("".join(p.model_dump_json() + "\n" for p in heldout_prompts(lab_quick, per_skill=2)))
    run = subprocess.run(
        [sys.executable, "-m", "karma.cli", "eval", "--pool", "lab", "--lab", str(lab_quick.out)]
        + ["--prompts", str(prompts), "--policies", "maxgap,all", "--out", str(out)]
        + ["--bootstrap", kafka_bootstrap],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = {row["policy"]: row for row in json.loads((out / "report.json").read_text())["policies"]}
    models = len(lab_config(lab_quick)["pool"])
    assert report["all"]["pairs_per_prompt"] == models * (models - 1) / 2
    assert report["maxgap"]["pairs_per_prompt"] == 1.0
    for row in report.values():
        assert row["dlq"] == 0
        # The verifier is the judge: its labels are the checked truth, and zebra is scored on the
        # pairs with exactly one right answer.
        assert row["checked_accuracy_n"] == row["zebra_checked_accuracy_n"] == row["checked_pairs"]
        if row["checked_pairs"]:
            assert row["checked_accuracy"] == 1.0
            assert 0.0 <= row["zebra_checked_accuracy"] <= 1.0
    assert report["all"]["checked_pairs"] > 0

"""The pipeline as shipped: `karma run` with every setting at its default, online competency
included (the other e2e tests turn it off and shorten the backstop, tick and lag intervals).

With online competency the pairs a prompt gets depend on the verdicts the rating stage has seen,
and in the default pool two models sit 0.0002 apart (llama-2-13b-chat 0.4511, wizardlm-13b
0.4514): a single verdict between them moves either by ~0.005 (one comparison weighs
1/(1+20) at the default `evidence`), enough to swap them and change which neighbours pair. So
which pairs a burst of prompts gets is not predictable; what is:

- the first prompt, submitted alone, is paired before any verdict exists: its pairs are the
  prior's, exactly what the oracle says for the default pool;
- every prompt of the burst after it ends as preferences, each pair kin by the rule under the
  superiorities it carries, every pair judged once, nothing dead-lettered;
- once every verdict is counted (the worker reports 2 comparisons per preference) the
  superiority stays put until the next verdict: a prompt submitted then, alone, gets exactly the
  oracle's pairs under the superiority the worker reports on /metrics;
- `karma audit` finds every prompt complete and nothing unaccounted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from karma.schemas.models import KinPair, Preference, Prompt, Response, pair_id_for, response_id_for
from karma.streams.client import Received
from karma.streams.config import KarmaSettings
from karma.tools.processes import settings_env, stop_worker
from tests.conftest import free_ports
from tests.e2e.conftest import Pipeline, audit, ids, make_prompts
from tests.oracle import Table, expected_pair_ids, read_table

# The only settings not at their defaults, each because it cannot be:
# - bootstrap_servers: the session's broker runs on a free port, not 127.0.0.1:9092;
# - topic_prefix, app_id: the session broker is shared by every e2e test (and, with
#   KARMA_TEST_BOOTSTRAP, may be a broker where `karma.` topics and the `karma` group are
#   someone's demo), so the test's topics, group and changelogs are its own;
# - metrics_port: 9108 may be taken by another worker on the machine; /metrics is read here.
# data_dir keeps its default, a relative path: the worker runs in the test's tmp folder.
EXCEPTIONS = ("bootstrap_servers", "topic_prefix", "app_id", "metrics_port")
READY_TIMEOUT_S = 120.0  # a shared 2-core machine starts faust and joins the group slowly
BURST = 30


@pytest.fixture
def shipped(kafka_bootstrap: str, tmp_path: Path) -> Iterator[tuple[Pipeline, Callable[[], None]]]:
    """A pipeline whose settings are the defaults but for EXCEPTIONS, and a function that starts
    `karma run` for it with no other KARMA_* variable in its environment."""
    run = uuid.uuid4().hex[:8]
    given: dict[str, Any] = {
        "bootstrap_servers": kafka_bootstrap,
        "topic_prefix": f"t{run}.",
        "app_id": f"karma-test-{run}",
        "metrics_port": free_ports(1)[0],
    }
    assert set(given) == set(EXCEPTIONS)
    settings = KarmaSettings(**given)
    # Every other setting is the declared default (none leaked in from a KARMA_* variable or
    # KARMA_CONFIG of the test's own environment).
    assert settings.model_dump(exclude=set(EXCEPTIONS)) == KarmaSettings.model_construct().model_dump(
        exclude=set(EXCEPTIONS)
    )
    assert settings.competency.online  # the shipped default this test is about
    pipeline = Pipeline(settings=settings, workdir=tmp_path / run)
    pipeline.workdir.mkdir(parents=True)

    def start() -> None:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("KARMA_")}
        env |= {k: v for k, v in settings_env(settings).items() if k.lower().removeprefix("karma_") in given}
        with (pipeline.workdir / "worker.log").open("ab") as log:
            pipeline.workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "karma.cli", "run"],
                    env=env,
                    cwd=pipeline.workdir,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    try:
        yield pipeline, start
    finally:
        for worker in pipeline.workers:
            stop_worker(worker, timeout=20)


def wait_until_ready(pipeline: Pipeline) -> None:
    url = f"http://127.0.0.1:{pipeline.settings.metrics_port}/readyz"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.HTTPError, OSError):
            pass
        for worker in pipeline.workers:
            if worker.poll() is not None:
                pytest.fail(f"worker exited with {worker.returncode}\n{pipeline.log()}")
        if time.monotonic() > deadline:
            pytest.fail(f"worker not ready after {READY_TIMEOUT_S} s\n{pipeline.log()}")
        time.sleep(0.3)


def records(received: list[Received], kind: type[Any]) -> list[Any]:
    return [r.record for r in received if isinstance(r.record, kind)]


def settled(pipeline: Pipeline, prompts: list[Prompt]) -> tuple[list[KinPair], list[Preference]]:
    """The pairs and preferences once each prompt has pairs and every pair its preference."""
    wanted = {p.prompt_id for p in prompts}
    pairs: list[KinPair] = []

    def done(received: list[Received]) -> bool:
        nonlocal pairs
        pairs = [p for p in records(pipeline.read("pairs"), KinPair) if p.prompt_id in wanted]
        judged = {p.preference_id for p in records(received, Preference)}
        return {p.prompt_id for p in pairs} == wanted and {p.pair_id for p in pairs} <= judged

    received = pipeline.wait_for("preferences", done, timeout_s=60)
    return pairs, [p for p in records(received, Preference) if p.prompt_id in wanted]


def answer_words(pipeline: Pipeline, prompt: Prompt) -> dict[str, int]:
    """The words of each model's answer to `prompt`, as the length gate counts them."""
    answers = [r for r in records(pipeline.read("responses"), Response) if r.prompt_id == prompt.prompt_id]
    assert sorted(r.model for r in answers) == sorted(pipeline.settings.model_names)
    assert not [r for r in answers if r.failed]
    return {r.model: len(r.text.split()) for r in answers}


def reported(pipeline: Pipeline) -> tuple[dict[str, float], float]:
    """The blended superiority per model and the total comparisons the worker reports."""
    blended, comparisons = {}, 0.0
    for family in text_string_to_metric_families(pipeline.metrics()):
        for sample in family.samples:
            if sample.name == "karma_model_superiority" and sample.labels["estimate"] == "blended":
                blended[sample.labels["model"]] = sample.value
            elif sample.name == "karma_model_comparisons":
                comparisons += sample.value
    return blended, comparisons


def expected_for(
    pipeline: Pipeline, prompt: Prompt, table: Table, superiority: dict[str, float] | None = None
) -> set[str]:
    kin = pipeline.settings.kin
    return expected_pair_ids(
        prompt.prompt_id,
        pipeline.settings.model_names,
        tau=kin.tau,
        delta=kin.delta,
        min_length_ratio=kin.min_length_ratio,
        table=table,
        superiority=superiority,
        lengths=answer_words(pipeline, prompt),
    )


def assert_kin_as_carried(pair: KinPair, table: Table, pipeline: Pipeline, words: dict[str, int]) -> None:
    """A pair is kin by the rule under the superiorities it carries (what pairing used)."""
    kin = pipeline.settings.kin
    a, b = pair.response_a, pair.response_b
    assert a.model != b.model and a.superiority <= b.superiority, pair
    assert a.response_id == response_id_for(pair.prompt_id, a.model), pair
    assert b.response_id == response_id_for(pair.prompt_id, b.model), pair
    assert pair.pair_id == pair_id_for(pair.prompt_id, a.response_id, b.response_id), pair
    assert pair.similarity == pytest.approx(table.similarity(a.model, b.model), abs=1e-12), pair
    assert pair.similarity >= kin.tau, pair
    assert pair.gap == pytest.approx(b.superiority - a.superiority, abs=1e-12), pair
    assert pair.gap <= kin.delta, pair
    assert min(words[a.model], words[b.model]) >= kin.min_length_ratio * max(words[a.model], words[b.model])


def test_the_pipeline_with_every_setting_at_its_default(shipped: tuple[Pipeline, Callable[[], None]]) -> None:
    pipeline, start = shipped
    table = read_table()
    prior = {m: table.superiority(m) for m in pipeline.settings.model_names}
    started = time.monotonic()
    start()
    wait_until_ready(pipeline)
    timings = {"ready": time.monotonic() - started}

    # 1. The first prompt, alone: no verdict exists yet, so it is paired by the prior profiles.
    [first] = make_prompts(1, tag="defaults-first")
    pipeline.submit([first])
    pairs, preferences = settled(pipeline, [first])
    expected = expected_for(pipeline, first, table)
    # The default pool's two kin pairs (tests/test_oracle.py works them out from the table).
    assert len(expected) == 2
    assert {p.pair_id for p in pairs} == {p.preference_id for p in preferences} == expected
    for pair in pairs:
        for side in (pair.response_a, pair.response_b):
            assert side.superiority == pytest.approx(prior[side.model], abs=1e-12), pair
    timings["first prompt"] = time.monotonic() - started

    # 2. A burst: its verdicts move competency while it is paired, so only the rule is checked.
    burst = make_prompts(BURST, tag="defaults")
    pipeline.submit(burst)
    pairs, preferences = settled(pipeline, burst)
    words = {prompt.prompt_id: answer_words(pipeline, prompt) for prompt in burst}
    for pair in pairs:
        assert_kin_as_carried(pair, table, pipeline, words[pair.prompt_id])
    pair_ids = [p.pair_id for p in pairs]
    assert len(pair_ids) == len(set(pair_ids))  # each pair emitted once
    # Every pair of both waves judged exactly once, and no preference without its pair.
    assert sorted(ids(pipeline.read("preferences"))) == sorted([*pair_ids, *expected])
    assert {p.prompt_id for p in pairs} == {p.prompt_id for p in burst}  # each ended as preferences
    timings["burst"] = time.monotonic() - started

    # 3. Once the worker has counted every verdict (2 comparisons each) and refreshed, its
    # superiority holds until the next verdict: a prompt submitted now, alone, is paired by it.
    judged = len(set(ids(pipeline.read("preferences"))))
    deadline = time.monotonic() + 30
    while (now := reported(pipeline))[1] != 2 * judged:
        assert time.monotonic() < deadline, f"comparisons {now[1]}, not {2 * judged}\n{pipeline.log()}"
        time.sleep(0.5)
    blended = now[0]
    assert set(blended) == set(prior)
    # Online competency is on, as shipped: the verdicts moved the models they compared.
    moved = {m for m in blended if blended[m] != pytest.approx(prior[m], abs=1e-9)}
    assert moved, blended
    [last] = make_prompts(1, tag="defaults-last")
    pipeline.submit([last])
    pairs, preferences = settled(pipeline, [last])
    expected = expected_for(pipeline, last, table, superiority=blended)
    assert expected  # llama-2-13b-chat and wizardlm-13b (cosine 0.977) stay each other's neighbours
    assert {p.pair_id for p in pairs} == {p.preference_id for p in preferences} == expected, (blended, pairs)
    for pair in pairs:
        for side in (pair.response_a, pair.response_b):
            assert side.superiority == pytest.approx(blended[side.model], abs=1e-12), pair
    timings["last prompt"] = time.monotonic() - started

    assert pipeline.read("dlq") == []
    ledger = audit(pipeline)
    assert ledger["unaccounted_total"] == 0
    assert ledger["submitted"] == BURST + 2
    assert ledger["counts"]["complete"] == BURST + 2, ledger
    timings["audit"] = time.monotonic() - started
    print("seconds since start:", {k: round(v, 1) for k, v in timings.items()})
    print("blended - prior:", {m: round(blended[m] - prior[m], 4) for m in sorted(moved)})
    print("last prompt's pairs:", sorted((p.response_a.model, p.response_b.model) for p in pairs))

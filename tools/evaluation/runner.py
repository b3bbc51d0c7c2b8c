"""`karma eval`'s orchestration: one real pipeline per pairing policy over one prompt set, then
the report (figures: metrics.py; report: report.py).

`run_eval` gives each policy a fresh topic prefix and consumer group, ensures its topics, spawns
one `karma run` worker (tools/processes.py), submits the prompts, then waits until the
pipeline has *drained*. How many pairs a policy yields cannot be predicted (online competency
moves superiority as verdicts arrive), so draining is measured (`drive`): every response is on
the responses topic, the worker's group has committed everything on the responses and pairs
topics, and every pair has its preference. The inputs are here too: `parse_policies`,
`load_prompts`, `with_pool`, the simulator's ground truth (`ground_truth`,
`simulator_assumptions`) where the whole pipeline is simulated, and the checked truth
(`checked_truth`) where prompts carry references.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from aiokafka import TopicPartition
from rich.console import Console
from rich.progress import Progress, TaskID

from karma.agents.backends.simulated import SimulatedJudge, build_judge
from karma.agents.kinship import load_profiles
from karma.agents.policies import POLICIES
from karma.agents.scoring import REFERENCE_KEY
from karma.schemas.models import Preference, Prompt
from karma.streams.client import PromptProducer, TopicReader, parse_prompt_file, read_topic
from karma.streams.config import KarmaSettings, ModelSpec
from karma.streams.lag import LagMonitor
from karma.streams.topics import ensure_topics
from karma.tools.evaluation.metrics import PolicySummary, Truth, reference_truth, summarise
from karma.tools.evaluation.report import write_report
from karma.tools.processes import spawn_worker, stop_worker

PoolSource = Literal["profiles", "config"]
POLL_INTERVAL_S = 1.0
# The topics whose distinct ids tell how far a run is, and the id field of each one's records.
ID_FIELDS = {"responses": "response_id", "pairs": "pair_id", "preferences": "preference_id"}


class EvalError(RuntimeError):
    """An evaluation that could not run or did not drain; the message says which policy and why."""


# -- inputs -------------------------------------------------------------------------------------


def parse_policies(text: str | None) -> list[str]:
    """`kin,sup` -> ["kin", "sup"]; None or empty means every policy. Unknown names raise
    ValueError naming the valid ones."""
    if not text or not text.strip():
        return list(POLICIES)
    chosen = list(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    unknown = [p for p in chosen if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown policy {', '.join(unknown)}; choose from {', '.join(POLICIES)}")
    if not chosen:
        raise ValueError(f"no policy given; choose from {', '.join(POLICIES)}")
    return chosen


def load_prompts(
    path: Path | None, limit: int | None = None, warn: Callable[[str], None] = lambda _: None
) -> list[Prompt]:
    """The prompts of a JSONL file (default: the bundled 50), de-duplicated by id, first `limit`.
    A bad line is reported through `warn` and skipped."""
    if path is None:
        text = resources.files("karma.tools").joinpath("data/sample_prompts.jsonl").read_text()
    else:
        text = path.read_text()
    prompts: dict[str, Prompt] = {}
    for line_no, prompt, error in parse_prompt_file(text.splitlines(), "karma-eval"):
        if error is not None:
            warn(f"{path or 'sample_prompts.jsonl'}:{line_no}: {error}")
        elif prompt is not None:
            prompts.setdefault(prompt.prompt_id, prompt)
    chosen = list(prompts.values())
    return chosen[:limit] if limit is not None else chosen


def with_pool(settings: KarmaSettings, source: PoolSource) -> KarmaSettings:
    """`config`: the configured pool, backends and all. `profiles`: every model of the profile
    table, simulated, keeping the simulated settings (latent quality, latency) configured for a
    model that is in both."""
    if source == "config":
        return settings
    configured = {spec.name: spec for spec in settings.pool}
    pool = []
    for name in load_profiles(settings.kin.profiles).vectors:
        spec = configured.get(name)
        if spec is None:
            pool.append(ModelSpec(name=name))
        else:
            pool.append(
                ModelSpec(
                    name=name,
                    latent_quality=spec.latent_quality,
                    simulated_latency_s=spec.simulated_latency_s,
                )
            )
    return settings.model_copy(update={"pool": pool})


def _simulated_judge(settings: KarmaSettings) -> SimulatedJudge | None:
    """The simulated judge the worker builds, where the whole pipeline is simulated; else None."""
    if settings.judge.backend != "simulated" or any(spec.backend != "simulated" for spec in settings.pool):
        return None
    return build_judge(settings)


def ground_truth(settings: KarmaSettings) -> Callable[[str], float] | None:
    """The latent quality of each model where the whole pipeline is simulated; else None."""
    judge = _simulated_judge(settings)
    return None if judge is None else judge.quality


def checked_truth(prompts: Sequence[Prompt], default_scorer: str) -> Truth | None:
    """Which answer of a pair is right, by its prompt's reference (as the verifier judge checks it,
    with `judge.scorer` for a prompt that names no scorer); None when no prompt has a reference."""
    with_reference = {p.prompt_id: p.metadata for p in prompts if p.metadata.get(REFERENCE_KEY, "").strip()}
    return reference_truth(with_reference, default_scorer) if with_reference else None


def simulator_assumptions(settings: KarmaSettings, mean_words: dict[str, float]) -> dict[str, Any] | None:
    """The simulator's parameters as the report states them; None for real backends. Read from
    the judge the worker builds, so the report says what ran whatever the settings are called."""
    judge = _simulated_judge(settings)
    if judge is None:
        return None
    return {
        "judge": {
            "quality_scale": judge.temperature,
            "position_bias": judge.position_bias,
            "length_bias": judge.length_bias,
        },
        "latent_quality": {spec.name: judge.quality(spec.name) for spec in settings.pool},
        "quality_source": {
            spec.name: "configured" if spec.latent_quality is not None else "prior superiority"
            for spec in settings.pool
        },
        "mean_words": mean_words,
        "seed": settings.seed,
    }


# -- running the pipeline -----------------------------------------------------------------------


@dataclass
class EvalResult:
    """What `run_eval` gives back: the figures per policy, the report's files, the wall time."""

    summaries: list[PolicySummary]
    paths: dict[str, Path]
    seconds: float
    preferences: dict[
        str, list[Preference]
    ]  # policy -> its preferences (`karma eval --train` trains on them)


def run_eval(
    settings: KarmaSettings,
    policies: Sequence[str],
    prompts: Sequence[Prompt],
    out_dir: Path,
    *,
    timeout_s: float = 300.0,
    console: Console | None = None,
    progress: Callable[[], Progress] | None = None,
    info: dict[str, Any] | None = None,
) -> EvalResult:
    """Runs the pipeline once per policy over `prompts` with `settings.pool`, then writes the
    report into `out_dir`. Raises EvalError naming the policy when a run does not drain."""
    console = console or Console(stderr=True)
    started = time.monotonic()
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    quality = ground_truth(settings)
    truth = checked_truth(prompts, settings.judge.scorer)
    summaries: list[PolicySummary] = []
    by_policy: dict[str, list[Preference]] = {}
    words: dict[str, dict[str, int]] = {}  # model -> response id -> words
    out_dir.mkdir(parents=True, exist_ok=True)
    bar_or_none = progress or partial(Progress, disable=True)  # rich draws nothing when disabled
    with tempfile.TemporaryDirectory(prefix="karma-eval-") as data_dir, bar_or_none() as bar:
        for policy in policies:
            run = settings.model_copy(
                update={
                    "policy": policy,
                    "topic_prefix": f"eval-{stamp}-{policy}.",
                    "app_id": f"karma-eval-{stamp}-{policy}",
                    "data_dir": Path(data_dir) / policy,
                    "metrics_port": 0,
                    "lag_interval_s": 0.0,  # the worker's lag gauge: nobody scrapes it here
                }
            )
            log_path = out_dir / "logs" / f"worker-{policy}.log"
            task = bar.add_task(f"{policy:>7}: starting worker", total=None)
            policy_started = time.monotonic()
            asyncio.run(ensure_topics(run))
            worker = spawn_worker(run, log_path)
            try:
                preferences, dlq = asyncio.run(drive(run, prompts, timeout_s, worker, log_path, bar, task))
            finally:
                stop_worker(worker)
            by_policy[policy] = preferences
            for p in preferences:
                for c in (p.response_a, p.response_b):
                    words.setdefault(c.model, {})[c.response_id] = len(c.text.split())
            summaries.append(
                summarise(
                    policy,
                    len(prompts),
                    preferences,
                    quality,
                    truth,
                    seconds=round(time.monotonic() - policy_started, 2),
                    dlq=dlq,
                    topic_prefix=run.topic_prefix,
                )
            )
    seconds = time.monotonic() - started
    mean_words = {m: round(statistics.fmean(ws.values()), 2) for m, ws in sorted(words.items())}
    run_info = {
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "prompts": len(prompts),
        "pool": settings.model_names,
        "policies": list(policies),
        "bootstrap_servers": settings.bootstrap_servers,
        "partitions": settings.partitions,
        "kin": settings.kin.model_dump(mode="json"),
        "competency": settings.competency.model_dump(mode="json"),
        "judge": settings.judge.model_dump(mode="json"),
        "seed": settings.seed,
        "seconds": round(seconds, 1),
        **(info or {}),
    }
    paths = write_report(summaries, out_dir, simulator_assumptions(settings, mean_words), run_info)
    return EvalResult(summaries=summaries, paths=paths, seconds=seconds, preferences=by_policy)


async def drive(
    settings: KarmaSettings,
    prompts: Sequence[Prompt],
    timeout_s: float,
    worker: subprocess.Popen[bytes],
    log_path: Path,
    bar: Progress,
    task: TaskID,
    *,
    earlier: int = 0,
) -> tuple[list[Preference], int]:
    """Submits the prompts, waits until the pipeline has drained, returns its preferences (every
    one on the topic) and how many dead letters it wrote. `earlier`: prompts the pipeline was
    given before these (`karma loop` drives one pipeline several times)."""
    policy = settings.policy
    expected = (len({p.prompt_id for p in prompts}) + earlier) * len(settings.pool)
    async with PromptProducer(settings, source="karma-eval") as producer:
        await asyncio.gather(*[await producer.send_prompt(p) for p in prompts])
    ids: dict[str, set[str]] = {stage: set() for stage in ID_FIELDS}  # the distinct ids seen so far
    # The rating stage may also consume `preferences` (online competency): only the topics whose
    # consumers must be done before the counts are final are checked.
    monitor = LagMonitor(settings, settings.app_id, [settings.topic("responses"), settings.topic("pairs")])
    deadline = time.monotonic() + timeout_s
    previous: tuple[int, int, int] | None = None
    lag: dict[TopicPartition, int] = {}
    async with contextlib.AsyncExitStack() as stack:
        readers = {
            stage: await stack.enter_async_context(TopicReader(settings, stage)) for stage in ID_FIELDS
        }
        await monitor.start()
        stack.push_async_callback(monitor.stop)
        while True:
            for stage, reader in readers.items():
                # A message that does not decode is the worker's to send to the DLQ; not ours to count.
                new = await reader.read_to_end()
                ids[stage].update(getattr(r.record, ID_FIELDS[stage]) for r in new if r.record is not None)
            lag = await monitor.read()
            responses, pairs, judged = (ids[s] for s in ("responses", "pairs", "preferences"))
            counts = (len(responses), len(pairs), len(judged))
            drained = len(responses) >= expected and bool(lag) and not any(lag.values()) and judged == pairs
            bar.update(
                task,
                description=f"{policy:>7}: {len(responses)}/{expected} responses, "
                f"{len(judged)}/{len(pairs)} pairs judged",
                total=expected + len(pairs),
                completed=len(responses) + len(judged),
            )
            # Twice in a row with nothing new: a pair published just before a commit has landed.
            if drained and counts == previous:
                break
            previous = counts if drained else None
            if worker.poll() is not None:
                raise EvalError(
                    f"policy {policy}: the worker exited with code {worker.returncode}; see {log_path}"
                )
            if time.monotonic() > deadline:
                behind = {f"{tp.topic}[{tp.partition}]": n for tp, n in lag.items() if n}
                raise EvalError(
                    f"policy {policy}: not drained after {timeout_s:g} s: "
                    f"{len(responses)}/{expected} responses, {len(judged)}/{len(pairs)} pairs judged, "
                    f"uncommitted {behind or 'none'}; see the worker log {log_path}"
                )
            await asyncio.sleep(POLL_INTERVAL_S)
    preferences: dict[str, Preference] = {}
    async for received in read_topic(settings, "preferences", until_end=True):
        if isinstance(received.record, Preference):
            preferences.setdefault(received.record.preference_id, received.record)
    dlq = sum([1 async for _ in read_topic(settings, "dlq", until_end=True)])
    return list(preferences.values()), dlq

"""Measuring a pool: every model of the configured pool answers every benchmark prompt through
its own backend (agents/backends: simulated, openai, vllm, transformers), in batches, and each
answer is scored. No Kafka: the backends are called directly, as the generation stage calls them.

Models run one after the other, each closed before the next is built, so that two local
checkpoints never share the memory. A request the backend fails on for good (`BackendError`, after
its own retries) scores 0 and is counted; so is a batch whose `generate` raised (a backend bug),
one failure per prompt, kind `exception`: a long run is not lost to one bad batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from karma.agents.backends import BackendError, GenerationRequest, make_generator
from karma.streams.config import KarmaSettings, ModelSpec
from karma.tools.profile.benchmark import Item, skills_of
from karma.tools.profile.table import ProfileTable
from karma.tools.profile.tally import Failure, ModelTally

# (model, prompts done so far; 0 as the model starts): the command line's progress bar.
Progress = Callable[[str, int], None]


class BackendBuildError(RuntimeError):
    """A model whose backend cannot be built (an SDK not installed, a bad spec)."""


@dataclass(frozen=True)
class Measured:
    tallies: list[ModelTally]  # in the pool's order
    skills: tuple[str, ...]

    def table(self) -> ProfileTable:
        return ProfileTable(
            columns=self.skills,
            scores={t.model: t.accuracy() for t in self.tallies},
            counts={t.model: dict(t.counts) for t in self.tallies},
        )


async def measure_pool(
    settings: KarmaSettings,
    items: Sequence[Item],
    batch_size: int | None = None,
    progress: Progress = lambda model, done: None,
) -> Measured:
    """Every model of `settings.pool` on `items`."""
    size = batch_size or settings.batch_size
    tallies = [await measure_model(spec, settings, items, size, progress) for spec in settings.pool]
    return Measured(tallies=tallies, skills=tuple(skills_of(list(items))))


async def measure_model(
    spec: ModelSpec, settings: KarmaSettings, items: Sequence[Item], batch_size: int, progress: Progress
) -> ModelTally:
    progress(spec.name, 0)  # its clock starts here: building a backend (loading a model) takes time
    try:
        generator = make_generator(spec, settings)
    except BackendError as exc:
        raise BackendBuildError(f"model {spec.name} (backend {spec.backend}): {exc.reason}") from None
    tally = ModelTally(spec.name)
    try:
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            requests = [GenerationRequest(i.prompt.prompt_id, i.prompt.text, settings.seed) for i in batch]
            try:
                outcomes = await generator.generate(requests)
            except Exception as exc:  # noqa: BLE001 - a backend bug costs its batch, not the run
                outcomes = [BackendError(f"{type(exc).__name__}: {exc}", kind="exception")] * len(batch)
            for item, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BackendError):
                    tally.add(item, Failure(outcome.kind, outcome.reason))
                else:
                    tally.add(item, outcome.text)
            progress(spec.name, start + len(batch))
    finally:
        await generator.close()
    return tally

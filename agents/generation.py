"""Generation stage: each prompt on karma.prompts becomes one response per model.

Prompts are taken in batches (`Stage.in_batches`: up to `batch_size`, or whatever arrived
within `batch_wait_s`), and every model of the worker gets the whole batch at once, so a GPU
engine or a remote server has enough requests in flight to stay busy. Two batches are handled at
once (`generation_batches_in_flight`): the next one waits at the model while the last one's
answers are published, so the model does not idle on the broker. A request that fails
for good (after the backend's retries) goes to the dead-letter topic with the reason and, as a
failure record (a Response with `error`), to the responses topic, so the rating stage knows the
model is accounted for; the other models' responses, and the rest of the batch, go on.

Checkpoints: the worker follows karma.checkpoints (written by `karma train`). At start it reads
the topic to its end and loads each model's newest version instead of the configured checkpoint;
then it keeps reading, and switches a model to a newer version as soon as it reads one (and a
batch that starts before that switch is done waits for it), so an idle worker is on the new
version before the next prompt comes (`Generator.switch`: a batch in flight finishes on the
old weights). Every response
names the version that wrote it (`model_version`, part of its id from version 2), so a prompt
is answered once per model, by whichever version took its batch. A backend that cannot switch
(openai) says so once in the log and serves on; a checkpoint that does not load is logged and
skipped, the old version serving on.

Sizes (streams/sizes.py): a prompt too large to travel beside two answers is dead-lettered
before any model works on it (`error_type: too_large`, by the group that reports bad prompts);
an answer too long to travel beside its prompt and another answer is handled as a failure of
its model (`too_large`), and so is an answer whose record the broker refuses.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka.errors import KafkaError

from karma.agents.backends import BackendError, Generation, GenerationRequest, Generator, make_generator
from karma.agents.backends.base import ModelLoadError, SwitchUnsupported
from karma.schemas.models import Checkpoint, Prompt, Response, response_id_for
from karma.streams.client import TopicNotFoundError, TopicReader
from karma.streams.codecs import encode
from karma.streams.config import ModelSpec
from karma.streams.delivery import Outbox, Refusal
from karma.streams.metrics import BACKEND_REQUESTS, CHECKPOINT_SWITCHES, MODEL_VERSION
from karma.streams.sizes import TextBudget
from karma.streams.stage import Stage

STAGE = "generation"
FOLLOW_RETRY_S = 10.0
log = logging.getLogger(__name__)


def to_response(prompt: Prompt, generator: Generator, generated: Generation | BackendError) -> Response:
    """The answer, or the failure record that accounts for this model on this prompt."""
    failed = isinstance(generated, BackendError)
    version = generator.version if isinstance(generated, BackendError) else generated.model_version
    return Response(
        response_id=response_id_for(prompt.prompt_id, generator.model, version=version),
        prompt_id=prompt.prompt_id,
        prompt_text=prompt.text,
        model=generator.model,
        text="" if failed else generated.text,
        backend=generator.backend,
        simulated=False if failed else generated.simulated,
        num_tokens=0 if failed else generated.num_tokens,
        latency_ms=0.0 if failed else generated.latency_ms,
        error=generated.reason if failed else None,
        prompt_metadata=prompt.metadata,  # on to the pairs, for the judge (the verifier's reference)
        model_version=version,
    )


def newest_versions(checkpoints: list[Checkpoint]) -> dict[str, Checkpoint]:
    """Each model's checkpoint of the highest version (a version published twice: the first)."""
    newest: dict[str, Checkpoint] = {}
    for checkpoint in checkpoints:
        if checkpoint.model not in newest or checkpoint.version > newest[checkpoint.model].version:
            newest[checkpoint.model] = checkpoint
    return newest


class CheckpointFollower:
    """The generators of one worker, kept on their models' newest checkpoints (module docstring)."""

    def __init__(self, stage: Stage, generators: list[Generator]) -> None:
        self.stage = stage
        self.generators = generators
        self.newest: dict[str, Checkpoint] = {}
        self._given_up: dict[str, int] = {}  # model -> the version it could not switch to
        self._switching = {g.model: asyncio.Lock() for g in generators}
        self._loaded: set[str] = set()  # models loaded at start: `follow` may switch them
        for g in generators:
            MODEL_VERSION.labels(g.model).set(g.version)

    def saw(self, checkpoints: list[Checkpoint]) -> None:
        mine = {g.model for g in self.generators}
        for model, checkpoint in newest_versions(checkpoints).items():
            known = self.newest.get(model)
            if model in mine and (known is None or checkpoint.version > known.version):
                self.newest[model] = checkpoint

    async def read_to_end(self) -> bool:
        """What karma.checkpoints holds now; False (and a warning) when it cannot be read: the
        worker then starts on the configured checkpoints, and `follow` keeps trying."""
        try:
            async with TopicReader(self.stage.settings, "checkpoints") as reader:
                received = await reader.read_to_end()
        except (TopicNotFoundError, KafkaError) as exc:
            log.warning("cannot read the checkpoints topic (%s): serving the configured checkpoints", exc)
            return False
        self.saw([r.record for r in received if isinstance(r.record, Checkpoint)])
        return True

    async def load(self, generator: Generator) -> None:
        """The worker's start: the newest version of the model, or the configured checkpoint."""
        await self.read_to_end()
        checkpoint = self.newest.get(generator.model)
        if checkpoint is None:
            await generator.load()
        else:
            await self._switch(generator, checkpoint)  # loads it: nothing was loaded before
        self._loaded.add(generator.model)

    async def follow(self) -> None:
        """Reads karma.checkpoints as it grows (a faust task, for the worker's life); a topic that
        cannot be read is tried again every `FOLLOW_RETRY_S`."""
        while True:
            try:
                async with TopicReader(self.stage.settings, "checkpoints") as reader:
                    while True:
                        received = await reader.poll(timeout_ms=1000)
                        checkpoints = [r.record for r in received if isinstance(r.record, Checkpoint)]
                        self.saw(checkpoints)
                        if checkpoints:
                            await self._switch_now()
            except (TopicNotFoundError, KafkaError) as exc:
                log.warning("cannot follow the checkpoints topic (%s); trying again", exc)
                await asyncio.sleep(FOLLOW_RETRY_S)

    async def _switch_now(self) -> None:
        """The loaded generators on their newest versions, as soon as `follow` reads one; what
        fails here is logged, and the next batch's `catch_up` tries again."""
        try:
            await self.catch_up(only=self._loaded)
        except Exception:
            log.exception("switching to a new checkpoint failed; the next batch tries again")

    async def catch_up(self, only: set[str] | None = None) -> None:
        """Before a batch: each generator (of `only`, when given) on its newest version, unless
        it cannot be."""
        for generator in self.generators:
            if only is not None and generator.model not in only:
                continue
            checkpoint = self.newest.get(generator.model)
            if checkpoint is None or checkpoint.version <= generator.version:
                continue
            if self._given_up.get(generator.model) == checkpoint.version:
                continue
            async with self._switching[generator.model]:  # two batches in flight: one switches
                if checkpoint.version > generator.version:
                    await self._switch(generator, checkpoint)

    async def _switch(self, generator: Generator, checkpoint: Checkpoint) -> None:
        model, old = generator.model, generator.version
        try:
            await generator.switch(model, checkpoint.path, checkpoint.version)
        except SwitchUnsupported as exc:
            self._given_up[model] = checkpoint.version
            CHECKPOINT_SWITCHES.labels(model, "unsupported").inc()
            log.warning("model %s stays on version %d: %s", model, old, exc)
            return
        except ModelLoadError as exc:
            self._given_up[model] = checkpoint.version
            CHECKPOINT_SWITCHES.labels(model, "failed").inc()
            log.error("model %s stays on version %d: version %d: %s", model, old, checkpoint.version, exc)
            return
        CHECKPOINT_SWITCHES.labels(model, "switched").inc()
        MODEL_VERSION.labels(model).set(checkpoint.version)
        log.info("model %s: version %d -> %d (%s)", model, old, checkpoint.version, checkpoint.path)


def register(stage: Stage, models: list[ModelSpec]) -> None:
    settings = stage.settings
    generators = [make_generator(spec, settings) for spec in models]
    checkpoints = CheckpointFollower(stage, generators)
    # Loaded before the worker consumes (/readyz: "loading model X" meanwhile), at the newest
    # version karma.checkpoints names; closed when it stops.
    for g in generators:
        stage.expect_model(g.model, lambda g=g: checkpoints.load(g))
    stage.closers.extend(g.close for g in generators)
    stage.app.task(checkpoints.follow)
    # With one consumer group per model every group reads a bad prompt; only the group that
    # serves the pool's first model reports it, so it is dead-lettered once, not once a model.
    reports_bad_prompts = settings.pool[0].name in {spec.name for spec in models}

    async def generate_batch(events: list[Any], outbox: Outbox) -> None:
        prompts = await stage.decode_batch(events, Prompt, outbox, report_errors=reports_bad_prompts)
        budget = stage.delivery.text_budget()
        travelling = []
        for event, prompt in prompts:
            too_large = budget.prompt_too_large(prompt.text, prompt.metadata)
            if too_large is None:
                travelling.append((event, prompt))
            elif reports_bad_prompts:  # before any model works on it (streams/sizes.py)
                await outbox.dead_letter(
                    event,
                    reason=f"prompt {prompt.prompt_id}: {too_large}",
                    error_type="too_large",
                    prompt_id=prompt.prompt_id,
                )
        if not travelling:
            return
        requests = [GenerationRequest(p.prompt_id, p.text, settings.seed) for _, p in travelling]
        await checkpoints.catch_up()  # a newer checkpoint is taken between batches, never within one
        # Every model works on the batch at the same time.
        outcomes = await asyncio.gather(*(g.generate(requests) for g in generators))
        for generator, results in zip(generators, outcomes, strict=True):
            for (event, prompt), result in zip(travelling, results, strict=True):
                outcome = "ok" if not isinstance(result, BackendError) else result.kind
                BACKEND_REQUESTS.labels(STAGE, generator.backend, generator.model, outcome).inc()
                await publish_answer(outbox, event, prompt, generator, result, budget)

    @stage.app.agent(stage.topics["prompts"], name="generate")
    async def generate(stream):  # type: ignore[no-untyped-def]
        await stage.in_batches(
            stream, STAGE, generate_batch, concurrent=settings.generation_batches_in_flight
        )


async def publish_answer(
    outbox: Outbox,
    event: Any,
    prompt: Prompt,
    generator: Generator,
    result: Generation | BackendError,
    budget: TextBudget,
) -> None:
    """The answer, or a dead letter and the failure record that accounts for the model: when the
    backend failed, when the answer is too long to travel beside its prompt and another answer,
    or when the broker refuses the answer's record."""
    if not isinstance(result, BackendError):
        too_large = budget.answer_too_large(prompt.text, result.text, prompt.metadata)
        if too_large is not None:
            result = BackendError(too_large, kind="too_large")
    if isinstance(result, BackendError):
        await outbox.dead_letter(
            event,
            reason=f"prompt {prompt.prompt_id}, model {generator.model}: {result.reason}",
            error_type=result.kind,
            prompt_id=prompt.prompt_id,
            models=[generator.model],
        )

    async def failure_record(refusal: Refusal) -> None:
        why = f"the answer's record was not written: {refusal.detail}"
        failed = BackendError(why, kind=refusal.error_type)
        record = to_response(prompt, generator, failed)
        await outbox.publish(
            "responses",
            prompt.prompt_id,
            encode(record),
            record_id=record.response_id,
            models=[generator.model],
        )

    # The answer or the failure record: the rating stage completes a prompt when every model is
    # accounted for, instead of waiting out a clock.
    response = to_response(prompt, generator, result)
    await outbox.publish(
        "responses",
        prompt.prompt_id,
        encode(response),
        record_id=response.response_id,
        models=[generator.model],  # a refused answer's letter names its model
        cause=event,
        on_refused=None if response.failed else failure_record,
    )

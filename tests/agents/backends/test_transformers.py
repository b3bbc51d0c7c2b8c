"""The transformers backend without torch: its pure helpers, one batched call per batch in a worker
thread, the judge's retries of only the malformed verdicts (through a fake runner), and the clear
error when torch or transformers is missing. Nothing here loads a model (see
deploy/gpu/transformers_smoke.py for that)."""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from karma.agents.backends import (
    BackendError,
    Generation,
    GenerationRequest,
    JudgeReply,
    JudgeRequest,
    ModelLoadError,
)
from karma.agents.backends import transformers as transformers_backend
from karma.agents.backends.chat_format import Message
from karma.agents.backends.transformers import (
    HFRunner,
    LocalOutput,
    TooLong,
    TransformersGenerator,
    TransformersJudge,
    context_tokens,
    cpu_share,
    logprob_tokens,
    stop_token_ids,
    tokenizer_kwargs,
    too_long,
    trim_generated,
)
from karma.agents.judge_prompt import judge_messages, soft_label
from karma.streams.config import JudgeSettings, ModelSpec

HINT = r"pip install 'karma-stream\[transformers\]'"
VALID = '{"winner": "B", "confidence": 0.7, "rationale": "more precise"}'


class FakeRunner:
    """Stands in for HFRunner: answers each conversation from a script keyed by its first words."""

    context_tokens: int | None = 10_000

    def __init__(self, answers: dict[str, list[LocalOutput]] | None = None, delay_s: float = 0.0) -> None:
        self.answers = answers or {}
        self.delay_s = delay_s
        self.calls: list[dict[str, Any]] = []

    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        seed: int,
        temperature: float,
        max_tokens: int,
        top_logprobs: int,
        max_prompt_tokens: int | None = None,
    ) -> list[LocalOutput | TooLong]:
        counts = [len(c[-1]["content"].split()) for c in conversations]  # words stand for tokens
        results: list[LocalOutput | TooLong] = [TooLong(n) for n in counts]
        rows = [i for i, n in enumerate(counts) if max_prompt_tokens is None or n <= max_prompt_tokens]
        if not rows:
            return results
        conversations = [conversations[i] for i in rows]
        self.calls.append(
            {
                "conversations": conversations,
                "seed": seed,
                "temperature": temperature,
                "max_tokens": max_tokens,
                "top_logprobs": top_logprobs,
                "thread": threading.get_ident(),
            }
        )
        time.sleep(self.delay_s)
        outputs = []
        for conversation in conversations:
            lines = conversation[-1]["content"].split("\n")
            key = lines[1] if len(lines) > 1 else lines[0]  # a judge prompt's question is its second line
            if key in self.answers:
                outputs.append(self.answers[key].pop(0))
            else:
                text = f"answer to {conversation[-1]['content']}"
                outputs.append(LocalOutput(text, len(text.split())))
        for row, output in zip(rows, outputs, strict=True):
            results[row] = output
        return results


def patch_acquire(monkeypatch: pytest.MonkeyPatch, acquire: Any) -> None:
    """Stands `acquire` in for loading a checkpoint, in a thread or in a child process alike."""
    monkeypatch.setattr(transformers_backend, "require_transformers", lambda: None)
    monkeypatch.setattr(transformers_backend, "acquire_runner", acquire)
    monkeypatch.setattr(transformers_backend, "acquire_process_runner", acquire)


def judge_spec(**overrides: Any) -> JudgeSettings:
    return JudgeSettings(**{"backend": "transformers", "name": "j", "model": "/ckpt", **overrides})


def judge_request(question: str, seed: int = 0) -> JudgeRequest:
    return JudgeRequest(f"pair-{question}", question, "first answer", "second answer", "m1", "m2", seed)


# --- pure helpers -----------------------------------------------------------------------------------


def test_the_models_processes_of_a_worker_share_its_cores() -> None:
    assert cpu_share(1, {}, cores=8) == 8  # one model: every core, as torch would take
    assert cpu_share(3, {}, cores=8) == 2
    assert cpu_share(7, {}, cores=2) == 1  # never none
    assert cpu_share(3, {"OMP_NUM_THREADS": "4"}, cores=8) is None  # the operator's word stands


def test_tokenizer_kwargs_keep_only_what_concerns_the_tokenizer() -> None:
    args = {"torch_dtype": "bfloat16", "device_map": "auto", "revision": "main", "trust_remote_code": True}
    assert tokenizer_kwargs(args) == {"revision": "main", "trust_remote_code": True}


def test_stop_token_ids_accept_ints_lists_and_none() -> None:
    assert stop_token_ids(2, None, [128001, 128009], 2) == {2, 128001, 128009}
    assert stop_token_ids(None) == set()


def test_trim_generated_cuts_at_the_first_stop_token() -> None:
    assert trim_generated([5, 6, 2, 0, 0], {0, 2}) == [5, 6]
    assert trim_generated([5, 6, 7], {0, 2}) == [5, 6, 7]
    assert trim_generated([0, 0], {0}) == []


def test_logprob_tokens_give_soft_label_its_form() -> None:
    names = {1: '{"', 2: "winner", 3: '":', 4: ' "', 5: "A", 6: "B", 7: "tie"}
    token_ids = [1, 2, 3, 4, 5]
    steps = [([-0.01], [i]) for i in token_ids[:-1]] + [([-0.3, -1.5, -3.0], [5, 6, 7])]
    tokens = logprob_tokens(token_ids, steps, names.__getitem__)
    assert tokens[1] == ("winner", [("winner", -0.01)])
    assert tokens[-1] == ("A", [("A", -0.3), ("B", -1.5), ("tie", -3.0)])
    assert soft_label(tokens) == pytest.approx(math.exp(-0.3) / (math.exp(-0.3) + math.exp(-1.5)))
    # a reply trimmed at EOS has fewer tokens than recorded steps: the extra steps are dropped
    assert len(logprob_tokens(token_ids[:2], steps, names.__getitem__)) == 2


# --- the generator ------------------------------------------------------------------------------------


def test_generator_runs_the_batch_in_one_call_in_a_worker_thread() -> None:
    runner = FakeRunner(delay_s=0.2)
    spec = ModelSpec(name="tiny", backend="transformers", model="/ckpt", temperature=0.9, max_tokens=32)
    generator = TransformersGenerator(spec, runner=runner)
    requests = [GenerationRequest(f"p-{i}", f"question {i}", seed=7 + i) for i in range(3)]

    async def run() -> tuple[list[Any], int]:
        ticks = 0

        async def heartbeat() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        beating = asyncio.create_task(heartbeat())
        results = await generator.generate(requests)
        beating.cancel()
        return results, ticks

    results, ticks = asyncio.run(run())
    assert ticks >= 5  # the event loop kept running while the model did
    [call] = runner.calls
    assert call["thread"] != threading.get_ident()
    assert [c[-1]["content"] for c in call["conversations"]] == ["question 0", "question 1", "question 2"]
    assert call["conversations"][0] == [{"role": "user", "content": "question 0"}]
    assert (call["seed"], call["temperature"], call["max_tokens"], call["top_logprobs"]) == (7, 0.9, 32, 0)
    assert [r.text for r in results] == [
        "answer to question 0",
        "answer to question 1",
        "answer to question 2",
    ]
    assert all(isinstance(r, Generation) and r.num_tokens == 4 and not r.simulated for r in results)
    assert all(r.latency_ms >= 200 for r in results)


def test_a_failed_batch_is_an_error_per_request() -> None:
    class Broken(FakeRunner):
        def generate(self, *args: Any, **kwargs: Any) -> list[LocalOutput]:
            raise RuntimeError("CUDA out of memory")

    generator = TransformersGenerator(ModelSpec(name="tiny", backend="transformers"), runner=Broken())
    results = asyncio.run(generator.generate([GenerationRequest("p-1", "a"), GenerationRequest("p-2", "b")]))
    assert len(results) == 2
    for result in results:
        assert isinstance(result, BackendError) and result.kind == "backend"
        assert result.reason == "tiny: generation failed: RuntimeError: CUDA out of memory"
    assert asyncio.run(generator.generate([])) == []


# --- the judge ----------------------------------------------------------------------------------------


def test_judge_asks_again_only_for_the_malformed_verdicts() -> None:
    good_logprobs = [("{", []), ('"winner"', []), (":", []), ("B", [("B", -0.1), ("A", -2.5)])]
    runner = FakeRunner(
        {
            "q-good": [LocalOutput(VALID, 12, good_logprobs)],
            "q-late": [LocalOutput("I prefer B.", 3), LocalOutput(VALID, 12)],
            "q-bad": [LocalOutput("no", 1), LocalOutput('{"winner": "D"}', 4), LocalOutput("still no", 2)],
        }
    )
    judge = TransformersJudge(judge_spec(verdict_attempts=3), runner=runner)
    requests = [
        judge_request("q-good", seed=5),
        judge_request("q-late", seed=9),
        judge_request("q-bad", seed=9),
    ]
    good, late, bad = asyncio.run(judge.judge(requests))

    assert isinstance(good, JudgeReply) and good.verdict.winner == "B" and good.raw == VALID
    assert good.p_first == pytest.approx(math.exp(-2.5) / (math.exp(-2.5) + math.exp(-0.1)))
    assert isinstance(late, JudgeReply) and late.p_first is None and not late.simulated
    assert isinstance(bad, BackendError) and bad.kind == "verdict"
    assert "3 attempt(s)" in bad.reason and "still no" in bad.reason and bad.reason.startswith("judge j:")
    # one call per attempt, with only the requests still pending, seeded from the first of them
    assert [len(c["conversations"]) for c in runner.calls] == [3, 2, 1]
    assert [c["seed"] for c in runner.calls] == [5, 9 + 1, 9 + 2]
    assert all(
        c["top_logprobs"] == 5 and c["temperature"] == 0.0 and c["max_tokens"] == 256 for c in runner.calls
    )
    assert runner.calls[0]["conversations"][0][0]["role"] == "system"


def test_judge_without_logprobs_asks_for_none() -> None:
    runner = FakeRunner({"q": [LocalOutput(VALID, 12)]})
    judge = TransformersJudge(judge_spec(logprobs=False), runner=runner)
    [result] = asyncio.run(judge.judge([judge_request("q")]))
    assert isinstance(result, JudgeReply) and runner.calls[0]["top_logprobs"] == 0


def test_judge_batch_failure_is_a_backend_error_for_the_pending_requests() -> None:
    class FailsSecondTime(FakeRunner):
        def generate(self, conversations: Any, *args: Any) -> list[LocalOutput]:
            if self.calls:
                raise RuntimeError("device lost")
            return super().generate(conversations, *args)

    runner = FailsSecondTime({"ok": [LocalOutput(VALID, 12)], "retry": [LocalOutput("?", 1)]})
    judge = TransformersJudge(judge_spec(), runner=runner)
    ok, retry = asyncio.run(judge.judge([judge_request("ok"), judge_request("retry")]))
    assert isinstance(ok, JudgeReply)
    assert isinstance(retry, BackendError) and retry.kind == "backend" and "device lost" in retry.reason


def test_a_model_that_cannot_load_fails_each_request(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(model_id: str, engine_args: dict[str, Any]) -> Any:
        raise OSError(f"{model_id} is not a local folder")

    monkeypatch.setattr(transformers_backend, "require_transformers", lambda: None)
    patch_acquire(monkeypatch, broken)
    judge = TransformersJudge(judge_spec())
    results = asyncio.run(judge.judge([judge_request("a"), judge_request("b")]))
    for result in results:
        assert isinstance(result, BackendError) and "cannot load /ckpt" in result.reason
        assert "is not a local folder" in result.reason


# --- the context rule -----------------------------------------------------------------------------------


def test_the_context_is_the_smaller_of_the_configs_and_the_tokenizers_limits() -> None:
    assert context_tokens(2048, 4096) == 2048
    assert context_tokens(8192, 1024) == 1024
    assert context_tokens(2048, int(1e30)) == 2048  # a tokenizer with no limit of its own says 1e30
    assert context_tokens(None, None) is None


def test_a_prompt_fits_when_it_leaves_room_for_max_tokens() -> None:
    assert too_long("prompt p", 96, context=128, max_tokens=32) is None
    why = too_long("prompt p", 97, context=128, max_tokens=32)
    assert why == "prompt p is 97 tokens, over the 96 the model takes (context 128 tokens less max_tokens 32)"


def test_a_prompt_too_long_for_the_context_is_refused_and_the_rest_of_the_batch_goes_on() -> None:
    runner = FakeRunner()
    runner.context_tokens = 40  # FakeRunner counts words as tokens
    spec = ModelSpec(name="tiny", backend="transformers", model="/ckpt/tiny", max_tokens=32)
    generator = TransformersGenerator(spec, runner=runner)
    requests = [
        GenerationRequest("short", "a short question"),
        GenerationRequest("long", " ".join(["word"] * 9)),
        GenerationRequest("fits", " ".join(["word"] * 8)),
    ]
    short, long, fits = asyncio.run(generator.generate(requests))
    assert isinstance(short, Generation) and isinstance(fits, Generation)
    assert isinstance(long, BackendError) and long.kind == "too_long"
    assert long.reason == (
        "/ckpt/tiny: prompt long is 9 tokens, over the 8 the model takes "
        "(context 40 tokens less max_tokens 32)"
    )
    [call] = runner.calls  # only the fitting prompts reached the model
    assert [c[-1]["content"] for c in call["conversations"]] == ["a short question", " ".join(["word"] * 8)]


def test_a_batch_of_only_too_long_prompts_runs_nothing() -> None:
    runner = FakeRunner()
    runner.context_tokens = 4
    generator = TransformersGenerator(
        ModelSpec(name="tiny", backend="transformers", max_tokens=2), runner=runner
    )
    [result] = asyncio.run(generator.generate([GenerationRequest("p", "one two three")]))
    assert isinstance(result, BackendError) and result.kind == "too_long" and runner.calls == []


def test_a_judge_pass_too_long_for_the_context_is_refused_alone() -> None:
    runner = FakeRunner({"q-short": [LocalOutput(VALID, 12)]})
    judge = TransformersJudge(judge_spec(max_tokens=16), runner=runner)
    # FakeRunner counts the words of the judge prompt: the rendered prompt of a long question is over
    short = judge_request("q-short")
    prompt_words = len(
        judge_messages(short.question, short.first_text, short.second_text, short.tag)[-1]["content"].split()
    )
    runner.context_tokens = 16 + prompt_words
    long = JudgeRequest("pair-long", "q-long " + "word " * 50, "first answer", "second answer", "m1", "m2")
    good, refused = asyncio.run(judge.judge([short, long]))
    assert isinstance(good, JudgeReply)
    assert isinstance(refused, BackendError) and refused.kind == "too_long"
    assert "pair pair-long is" in refused.reason and f"over the {prompt_words}" in refused.reason
    assert [len(c["conversations"]) for c in runner.calls] == [1]


# --- loading ------------------------------------------------------------------------------------------


def test_load_acquires_the_model_in_a_thread_once(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[tuple[str, int]] = []

    def acquire(model_id: str, engine_args: dict[str, Any]) -> FakeRunner:
        loaded.append((model_id, threading.get_ident()))
        return FakeRunner()

    monkeypatch.setattr(transformers_backend, "require_transformers", lambda: None)
    patch_acquire(monkeypatch, acquire)
    generator = TransformersGenerator(ModelSpec(name="tiny", backend="transformers", model="/ckpt"))

    async def run() -> list[Any]:
        await generator.load()
        return await generator.generate([GenerationRequest("p", "q")])

    [result] = asyncio.run(run())
    assert isinstance(result, Generation)
    assert [model for model, _ in loaded] == ["/ckpt"] and loaded[0][1] != threading.get_ident()


@pytest.mark.parametrize(
    ("raised", "cause"),
    [
        (OSError("/ckpt does not appear to have a file named\nconfig.json."), "OSError: /ckpt does not"),
        (MemoryError(), "MemoryError"),
        (BackendError("the transformers backend needs torch"), "the transformers backend needs torch"),
    ],
)
def test_a_model_that_cannot_load_is_one_line_naming_the_model_the_path_and_the_cause(
    monkeypatch: pytest.MonkeyPatch, raised: Exception, cause: str
) -> None:
    def broken(model_id: str, engine_args: dict[str, Any]) -> Any:
        raise raised

    monkeypatch.setattr(transformers_backend, "require_transformers", lambda: None)
    patch_acquire(monkeypatch, broken)
    generator = TransformersGenerator(ModelSpec(name="tiny", backend="transformers", model="/ckpt"))
    with pytest.raises(ModelLoadError) as failed:
        asyncio.run(generator.load())
    text = str(failed.value)
    assert text.startswith(f"cannot load model tiny from /ckpt: {cause}") and "\n" not in text
    assert (failed.value.model, failed.value.path) == ("tiny", "/ckpt")


# --- without torch ------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["torch", "transformers"])
def test_without_torch_or_transformers_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # the import now fails, installed or not
    with pytest.raises(BackendError, match=HINT) as raised:
        TransformersGenerator(ModelSpec(name="tiny", backend="transformers"))
    assert missing in raised.value.reason
    with pytest.raises(BackendError, match=HINT):
        TransformersJudge(judge_spec())
    with pytest.raises(BackendError, match=HINT):  # the lazy import in the loader says the same
        HFRunner("/ckpt", {})

"""Smoke test of the `vllm` backend on a GPU machine: a real vLLM engine, a small model.

    pip install -e '.[vllm]'
    python deploy/gpu/vllm_smoke.py --model Qwen/Qwen2.5-0.5B-Instruct

Builds a VLLMGenerator and a VLLMJudge on the same checkpoint (they must share one engine),
generates for 8 prompts in one batch, then judges 4 pairs (a generated answer against a curt
canned one) in both orders, and prints the figures: responses, tokens/s, verdicts parsed, soft
labels present, pairs judged consistently.

Then the in-place reload (what a generation worker does when `karma train` publishes a new
version): a greedy generator alone on its engine answers 4 prompts, switches to a second
checkpoint of the same model (`--reload-model`, or a copy written here with transformers whose
final norm is negated, so that its greedy answers must differ), answers again, switches back to
the first checkpoint and answers a third time. It checks that one engine served all three (no
second engine was built), that the second checkpoint's answers differ, that the first's come
back identical, and that each answer names its version (1, 2, 3); it prints the reload times.

It exits 1 on any failure: a generation or judge error, an empty response, a second engine, no
soft label at all (that would mean the logprob translation is broken), or a reload that did not
change, or did not restore, the answers. NOT run in this project's CI: there is no GPU and no
vLLM here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from karma.agents.backends import BackendError, Generation, GenerationRequest, JudgeReply, JudgeRequest
from karma.agents.backends import vllm as vllm_backend
from karma.agents.backends.vllm import VLLMGenerator, VLLMJudge
from karma.streams.config import JudgeSettings, ModelSpec

PROMPTS = [
    "Explain why the sky is blue in two sentences.",
    "Give three tips for writing readable Python code.",
    "What is the difference between a process and a thread?",
    "Summarise the plot of Romeo and Juliet in one paragraph.",
    "How does a hash table handle collisions?",
    "Write a haiku about Apache Kafka.",
    "What causes the seasons on Earth?",
    "Name two advantages of unit tests.",
]
CANNED = "I am not sure."


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="Qwen/Qwen2.5-0.5B-Instruct", help="checkpoint id or path")
    parser.add_argument("--max-tokens", type=int, default=128, help="longest response")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--eager", action="store_true", help="skip CUDA graph capture (faster start)")
    parser.add_argument(
        "--reload-model",
        default=None,
        help="a second checkpoint of --model to reload in place (default: a changed copy written here)",
    )
    return parser.parse_args()


def engine_args_of(args: argparse.Namespace) -> dict[str, Any]:
    engine_args: dict[str, Any] = {
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "max_model_len": args.max_model_len,
    }
    if args.eager:
        engine_args["enforce_eager"] = True
    return engine_args


async def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    engine_args = engine_args_of(args)
    generator = VLLMGenerator(
        ModelSpec(
            name="smoke-generator",
            backend="vllm",
            model=args.model,
            temperature=0.7,
            max_tokens=args.max_tokens,
            engine_args=engine_args,
        )
    )
    judge = VLLMJudge(
        JudgeSettings(name="smoke-judge", backend="vllm", model=args.model, engine_args=dict(engine_args))
    )
    failures: list[str] = []
    figures: dict[str, Any] = {"model": args.model}
    try:
        started = time.perf_counter()
        [warm] = await generator.generate([GenerationRequest("warm-up", "Say hello.", seed=0)])
        figures["engine_start_and_first_reply_s"] = round(time.perf_counter() - started, 1)
        if isinstance(warm, BackendError):
            return figures, [f"warm-up: {warm.reason}"]

        requests = [GenerationRequest(f"p-{i}", text, seed=i) for i, text in enumerate(PROMPTS)]
        started = time.perf_counter()
        results = await generator.generate(requests)
        elapsed = time.perf_counter() - started
        generations = [r for r in results if isinstance(r, Generation)]
        for request, result in zip(requests, results, strict=True):
            if isinstance(result, BackendError):
                failures.append(f"{request.prompt_id}: {result.reason}")
            elif not result.text.strip():
                failures.append(f"{request.prompt_id}: empty response")
            else:
                print(f"--- {request.prompt_id} ({result.num_tokens} tokens): {result.text[:300]!r}")
        tokens = sum(g.num_tokens for g in generations)
        figures |= {
            "responses": f"{len(generations)}/{len(requests)}",
            "batch_s": round(elapsed, 2),
            "tokens": tokens,
            "tokens_per_s": round(tokens / elapsed, 1) if elapsed else None,
        }
        if len(generations) < 4:
            return figures, failures

        judge_requests: list[JudgeRequest] = []
        for i in range(4):
            real = results[i]
            assert isinstance(real, Generation)
            pair = f"pair-{i}"
            judge_requests.append(JudgeRequest(pair, PROMPTS[i], real.text, CANNED, "model", "canned", i))
            judge_requests.append(JudgeRequest(pair, PROMPTS[i], CANNED, real.text, "canned", "model", i))
        started = time.perf_counter()
        replies = await judge.judge(judge_requests)
        figures["judge_batch_s"] = round(time.perf_counter() - started, 2)
        verdicts = [r for r in replies if isinstance(r, JudgeReply)]
        for request, reply in zip(judge_requests, replies, strict=True):
            if isinstance(reply, BackendError):
                failures.append(
                    f"{request.pair_id} ({request.first_model} first): {reply.kind}: {reply.reason}"
                )
            else:
                print(f"--- {request.pair_id} A={request.first_model}: {reply.raw!r} p_first={reply.p_first}")
        real_wins = consistent = 0
        for i in range(4):
            ab, ba = replies[2 * i], replies[2 * i + 1]
            if isinstance(ab, JudgeReply) and isinstance(ba, JudgeReply):
                real_wins += (ab.verdict.winner == "A") + (ba.verdict.winner == "B")
                consistent += {"A": "B", "B": "A", "tie": "tie"}[ab.verdict.winner] == ba.verdict.winner
        soft = sum(r.p_first is not None for r in verdicts)
        figures |= {
            "verdicts_parsed": f"{len(verdicts)}/{len(judge_requests)}",
            "soft_labels_present": f"{soft}/{len(judge_requests)}",
            "pairs_consistent_in_both_orders": f"{consistent}/4",
            "generated_answer_preferred": f"{real_wins}/{len(judge_requests)}",
            "engines_built": len(vllm_backend._ENGINES),
        }
        if verdicts and soft == 0:
            failures.append("no soft label from any verdict: the logprob translation is broken")
        if len(vllm_backend._ENGINES) != 1:
            failures.append(f"{len(vllm_backend._ENGINES)} engines for one checkpoint (expected 1, shared)")
        return figures, failures
    finally:
        await generator.close()
        await judge.close()


def write_changed_copy(model: str, out: Path) -> str:
    """A copy of `model` whose final norm is negated: the logits flip sign, so greedy decoding
    picks other tokens. Same architecture and tokenizer: what an in-place reload accepts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    weights = AutoModelForCausalLM.from_pretrained(model, torch_dtype="auto")  # the dtype vLLM serves
    with torch.no_grad():
        weights.get_decoder().norm.weight.neg_()
    weights.save_pretrained(out)
    AutoTokenizer.from_pretrained(model).save_pretrained(out)
    return str(out)


async def reload_in_place(args: argparse.Namespace, second: str) -> tuple[dict[str, Any], list[str]]:
    """Greedy answers on --model, on `second` reloaded into the same engine, and on --model again."""
    engine_args = engine_args_of(args)
    spec = ModelSpec(
        name="smoke-reload",
        backend="vllm",
        model=args.model,
        temperature=0.0,
        max_tokens=32,
        engine_args=engine_args,
    )
    generator = VLLMGenerator(spec)
    requests = [GenerationRequest(f"r-{i}", text, seed=0) for i, text in enumerate(PROMPTS[:4])]
    failures: list[str] = []
    figures: dict[str, Any] = {"reload_model": second}
    answers: list[list[str]] = []
    engines: set[int] = set()
    try:
        for version, path in ((1, args.model), (2, second), (3, args.model)):
            if version > 1:
                started = time.perf_counter()
                await generator.switch("smoke-reload", path, version)
                figures[f"reload_to_version_{version}_s"] = round(time.perf_counter() - started, 2)
            results = await generator.generate(requests)
            engines.add(id(generator._model))
            texts = []
            for request, result in zip(requests, results, strict=True):
                if isinstance(result, BackendError):
                    failures.append(f"version {version}, {request.prompt_id}: {result.reason}")
                elif result.model_version != version:
                    failures.append(
                        f"{request.prompt_id}: answered as version {result.model_version}, not {version}"
                    )
                texts.append(result.text if isinstance(result, Generation) else "")
            print(f"--- version {version} ({path}): {texts[0][:120]!r}")
            answers.append(texts)
    finally:
        await generator.close()
    figures |= {
        "engines_for_three_versions": len(engines),
        "answers_changed_by_version_2": sum(a != b for a, b in zip(answers[0], answers[1], strict=True)),
        "answers_restored_by_version_3": sum(a == c for a, c in zip(answers[0], answers[2], strict=True)),
    }
    if len(engines) != 1:
        failures.append(f"{len(engines)} engines for three versions: the reload was not in place")
    if answers[1] == answers[0]:
        failures.append("the second checkpoint's greedy answers are the first's: its weights were not loaded")
    if answers[2] != answers[0]:
        failures.append("reloading the first checkpoint did not give its greedy answers back")
    return figures, failures


def main() -> int:
    args = parse_args()
    try:
        figures, failures = asyncio.run(run(args))
        with tempfile.TemporaryDirectory() as scratch:
            second = args.reload_model or write_changed_copy(args.model, Path(scratch) / "changed")
            reloaded, reload_failures = asyncio.run(reload_in_place(args, second))
        figures |= reloaded
        failures += reload_failures
    except BackendError as exc:  # e.g. vLLM not installed
        print(f"FAILED: {exc.reason}", file=sys.stderr)
        return 1
    print(json.dumps(figures, indent=2))
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    print("vllm smoke: " + ("FAILED" if failures else "OK"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

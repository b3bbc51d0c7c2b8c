"""Smoke test of the `transformers` backend with no download: a tiny random Llama built here.

    pip install -e '.[transformers]'
    python deploy/gpu/transformers_smoke.py            # CPU; --cuda to let it use a GPU

Trains a word-level tokenizer on a few sentences (`tokenizers`), wraps it in
PreTrainedTokenizerFast, builds a randomly initialised LlamaForCausalLM (hidden size 64, 2
layers) on its vocabulary and saves both to a temporary folder, twice: once without and once
with a chat template. Then, through the backend:

1. TransformersGenerator samples 4 prompts in one batch (temperature 0.8), twice with the same
   seeds: every request must get a Generation, and the two runs the same texts (seeded);
2. the same greedily (temperature 0), and on the chat-template checkpoint;
3. the loaded model's runner, asked for top-5 log-probabilities, must return 5 finite
   alternatives per generated token;
4. TransformersJudge on the tiny model, whose vocabulary has no "{", must end every request
   as BackendError(kind="verdict") after its retries (the retry path, not a crash).

It prints the responses and exits 1 on any failure. The texts are noise (random weights):
this checks the plumbing, not quality. NOT run in this project's CI: torch is not installed here.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import tempfile
from pathlib import Path

from tiny_llama import CHAT_TEMPLATE, save_tiny_llama  # beside this script

from karma.agents.backends import BackendError, Generation, GenerationRequest, JudgeRequest
from karma.agents.backends import transformers as transformers_backend
from karma.agents.backends.transformers import TransformersGenerator, TransformersJudge
from karma.streams.config import JudgeSettings, ModelSpec

SENTENCES = [
    "the sky is blue because air scatters blue light more than red light",
    "a process has its own memory while threads share the memory of their process",
    "kafka keeps messages in partitions and consumers read them in order",
    "user assistant system : question answer winner confidence rationale",
    "write short functions with clear names and test them",
    "the seasons come from the tilt of the earth",
]
PROMPTS = ["why is the sky blue", "what is a thread", "how does kafka keep order", "name the seasons"]


def build_tiny_checkpoint(folder: Path, chat_template: bool) -> None:
    """A word-level tokenizer and a random 2-layer Llama on its vocabulary, saved to `folder`."""
    save_tiny_llama(folder, SENTENCES, chat_template=CHAT_TEMPLATE if chat_template else None)


async def generate_twice(folder: Path, temperature: float, failures: list[str]) -> None:
    spec = ModelSpec(
        name="tiny", backend="transformers", model=str(folder), temperature=temperature, max_tokens=12
    )
    requests = [GenerationRequest(f"p-{i}", text, seed=1) for i, text in enumerate(PROMPTS)]
    runs = []
    for _ in range(2):
        generator = TransformersGenerator(spec)
        runs.append(await generator.generate(requests))
        await generator.close()
    label = f"{folder.name}, temperature {temperature}"
    for request, first, second in zip(requests, *runs, strict=True):
        if not isinstance(first, Generation) or not isinstance(second, Generation):
            failures.append(f"{label}, {request.prompt_id}: {first!r} / {second!r}")
            continue
        print(f"--- {label}, {request.prompt_id} ({first.num_tokens} tokens): {first.text!r}")
        if first.text != second.text:
            failures.append(f"{label}, {request.prompt_id}: same seed, different texts")


def check_logprobs(folder: Path, failures: list[str]) -> None:
    runner = transformers_backend.acquire_runner(str(folder), {})
    try:
        conversations = [[{"role": "user", "content": p}] for p in PROMPTS]
        outputs = runner.generate(conversations, seed=3, temperature=0.0, max_tokens=8, top_logprobs=5)
    finally:
        transformers_backend.release_runner(runner)
    for i, output in enumerate(outputs):
        steps = output.logprobs or []
        if len(steps) != output.num_tokens:
            failures.append(f"logprobs, p-{i}: {len(steps)} steps for {output.num_tokens} tokens")
        for token, alternatives in steps:
            if len(alternatives) != 5 or not all(math.isfinite(lp) and lp <= 0 for _, lp in alternatives):
                failures.append(f"logprobs, p-{i}: bad alternatives for {token!r}: {alternatives}")
                break
            if alternatives[0][0] != token:  # greedy: the chosen token is the most probable one
                failures.append(f"logprobs, p-{i}: greedy token {token!r} is not the top alternative")
                break
    print(f"--- logprobs: {sum(len(o.logprobs or []) for o in outputs)} steps recorded")


async def check_judge(folder: Path, failures: list[str]) -> None:
    spec = JudgeSettings(
        name="tiny-judge", backend="transformers", model=str(folder), max_tokens=16, verdict_attempts=2
    )
    judge = TransformersJudge(spec)
    requests = [
        JudgeRequest(f"pair-{i}", PROMPTS[i], "blue light", "red light", "m1", "m2", seed=i) for i in range(2)
    ]
    replies = await judge.judge(requests)
    await judge.close()
    for request, reply in zip(requests, replies, strict=True):
        print(f"--- judge {request.pair_id}: {reply!r}"[:300])
        if not (isinstance(reply, BackendError) and reply.kind == "verdict"):
            failures.append(f"judge {request.pair_id}: expected a verdict error, got {reply!r}")


async def run(root: Path) -> list[str]:
    plain, templated = root / "tiny-plain", root / "tiny-chat"
    build_tiny_checkpoint(plain, chat_template=False)
    build_tiny_checkpoint(templated, chat_template=True)
    failures: list[str] = []
    await generate_twice(plain, 0.8, failures)
    await generate_twice(plain, 0.0, failures)
    await generate_twice(templated, 0.8, failures)
    check_logprobs(templated, failures)
    await check_judge(plain, failures)
    if transformers_backend._RUNNERS:
        failures.append(f"{len(transformers_backend._RUNNERS)} model(s) still loaded after every close()")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cuda", action="store_true", help="let torch use a GPU (default: CPU only)")
    args = parser.parse_args()
    if not args.cuda:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported
    try:
        transformers_backend.require_transformers()  # the install hint rather than a bare ImportError
        with tempfile.TemporaryDirectory(prefix="karma-tiny-llama-") as root:
            failures = asyncio.run(run(Path(root)))
    except (BackendError, ImportError) as exc:
        print(f"FAILED: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    print("transformers smoke: " + ("FAILED" if failures else "OK"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

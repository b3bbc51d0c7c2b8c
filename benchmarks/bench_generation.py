"""Tokens per second of a transformers generation worker in the pipeline, beside bare batched
`model.generate` on the same checkpoint, prompts and batch size, in one run. Prints figures; it is
not a test.

    .venv/bin/python benchmarks/bench_generation.py --model DIR [--prompts 256] [--batch-size 32]
        [--max-tokens 16] [--repeats 3] [--bootstrap HOST:PORT] [--json PATH]

DIR is any Hugging Face causal LM checkpoint (a `karma lab build` model, or your own); the default
is the largest model of the quick lab (.cache/lab-quick, built by the test suite or by
`karma lab build --quick --out .cache/lab-quick`). Needs the lab extra (torch, transformers).

- bare: this process loads the checkpoint as the transformers backend does (AutoTokenizer and
  AutoModelForCausalLM, left padding, the chat template when there is one, greedy), warms up on
  one batch, then generates the prompts batch by batch; tokens are each reply's own tokens (up to
  its end-of-sequence), as the backend counts them. tokens/s = tokens / seconds.
- pipeline: the same prompts are published to a fresh prompts topic BEFORE a `karma worker
  generate --model NAME` process starts (batch_size = --batch-size, batch_wait_s 0.5); the worker
  loads the model, joins its group and drains the backlog. tokens/s counts the responses'
  `num_tokens` after its first batch over the span from the first batch's last response to the
  last response (broker timestamps), so start-up, model loading and the group join are not in it,
  just as the bare side leaves out its warm-up batch. With a throw-away broker (no --bootstrap),
  one short pipeline run goes first, not counted: a fresh broker's JVM spends its first seconds
  compiling, which a running cluster has done long before.
- the worker runs the model as configured by default (`engine_process: true`: in a child process,
  agents/backends/transformers.py ProcessRunner); --in-thread runs it in a thread of the worker
  instead, to see what the child process buys.

The ratio is pipeline / bare of the medians of --repeats runs each, alternated (bare, pipeline,
bare, ...) so that other load on the machine falls on both. Both sides use the same threads
(torch.set_num_threads(--threads) here; the worker, and its model's process, get OMP_NUM_THREADS).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _kafka_bench import BenchError, TopicProbe, load_average, publish, start_local_broker

from karma.agents.backends.chat_format import render_chat
from karma.agents.backends.transformers import stop_token_ids, trim_generated
from karma.schemas.models import Prompt, Response
from karma.streams.codecs import decode, encode
from karma.streams.config import KarmaSettings
from karma.streams.topics import ensure_topics
from karma.tools.processes import spawn_worker, stop_worker

REPO = Path(__file__).resolve().parents[1]
QUICK_LAB = REPO / ".cache" / "lab-quick"


def default_model() -> Path | None:
    """The quick lab's largest model, by its weights' size, if the lab was built."""
    weights = sorted(QUICK_LAB.glob("**/models/*/model.safetensors"), key=lambda p: p.stat().st_size)
    return weights[-1].parent if weights else None


def lab_prompts(count: int) -> list[Prompt]:
    """Held-out lab prompts when the model's lab has them, else arithmetic questions."""
    files = sorted(QUICK_LAB.glob("**/prompts/heldout.jsonl"))
    prompts: list[Prompt] = []
    if files:
        for line in files[0].read_text().splitlines():
            if line.strip():
                prompts.append(Prompt.from_json(json.loads(line), source="bench"))
    if not prompts:
        prompts = [
            Prompt(prompt_id=f"g-{i}", text=f"{i * 37 % 900 + 100}+{i * 53 % 900 + 100}")
            for i in range(count)
        ]
    return [
        prompts[i % len(prompts)].model_copy(update={"prompt_id": f"bench-{i:05d}"}) for i in range(count)
    ]


# -- bare generate --------------------------------------------------------------------------------


class Bare:
    def __init__(self, model_dir: Path, threads: int) -> None:
        import torch
        import transformers

        torch.set_num_threads(threads)
        self.torch = torch
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # The reply's end as the transformers backend finds it (agents/backends/transformers.py).
        self.stop_ids = stop_token_ids(
            self.tokenizer.eos_token_id,
            self.tokenizer.pad_token_id,
            self.model.generation_config.eos_token_id,
        )

    def batch(self, texts: Sequence[str], max_tokens: int) -> int:
        rendered = [render_chat(self.tokenizer, [{"role": "user", "content": t}]) for t in texts]
        with self.torch.inference_mode():
            inputs = self.tokenizer(
                [r.text for r in rendered],
                return_tensors="pt",
                padding=True,
                add_special_tokens=not rendered[0].templated,
            )
            out = self.model.generate(
                **inputs, max_new_tokens=max_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id
            )
        replies = out[:, inputs["input_ids"].shape[1] :].tolist()
        return sum(len(trim_generated(row, self.stop_ids)) for row in replies)

    def run(self, prompts: Sequence[Prompt], batch_size: int, max_tokens: int) -> tuple[int, float]:
        self.batch([p.text for p in prompts[:batch_size]], max_tokens)  # warm-up, not counted
        tokens, started = 0, time.perf_counter()
        for i in range(0, len(prompts), batch_size):
            tokens += self.batch([p.text for p in prompts[i : i + batch_size]], max_tokens)
        return tokens, time.perf_counter() - started


# -- the pipeline ---------------------------------------------------------------------------------


async def pipeline_run(
    args: argparse.Namespace, bootstrap: str, workdir: Path, prompts: Sequence[Prompt], rep: int
) -> tuple[int, float, float]:
    """(tokens after the first batch, their span in s, wall s from spawn to the last response)."""
    tag = f"gbench-{uuid.uuid4().hex[:6]}-{rep}"
    name = "bench-model"
    settings = KarmaSettings(
        bootstrap_servers=bootstrap,
        topic_prefix=f"{tag}.",
        app_id=tag,
        data_dir=workdir / tag,
        metrics_port=0,
        lag_interval_s=0,
        partitions=1,
        batch_size=args.batch_size,
        batch_wait_s=0.5,
        competency={"online": False},
        # The settings want two models (pairs need them); the worker serves the first alone.
        pool=[
            {
                "name": name,
                "backend": "transformers",
                "model": str(args.model),
                "temperature": 0.0,
                "max_tokens": args.max_tokens,
                "engine_process": not args.in_thread,
            },
            {"name": "unserved"},
        ],
    )
    await ensure_topics(settings)
    await publish(bootstrap, settings.topic("prompts"), [(p.prompt_id.encode(), encode(p)) for p in prompts])
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    spawned = time.monotonic()
    process = spawn_worker(settings, workdir / f"{tag}.log", "worker", "generate", "--model", name)
    try:
        async with TopicProbe(bootstrap, settings.topic("responses")) as probe:
            while await probe.count() < len(prompts):
                if process.poll() is not None:
                    log = (workdir / f"{tag}.log").read_text()[-3000:]
                    raise BenchError(f"the generation worker exited with {process.returncode}:\n{log}")
                if time.monotonic() - spawned > args.cap_s:
                    raise BenchError(f"the pipeline run passed --cap-s {args.cap_s}")
                await asyncio.sleep(0.5)
            wall = time.monotonic() - spawned
            messages = await probe.read_all()
    finally:
        stop_worker(process)
    responses = sorted(((m.timestamp, decode(m.value, Response)) for m in messages), key=lambda item: item[0])
    replies = [(ts, r) for ts, r in responses if not r.failed]
    first_batch_end = replies[args.batch_size - 1][0]
    after = [r.num_tokens or 0 for ts, r in replies[args.batch_size :]]
    span = (replies[-1][0] - first_batch_end) / 1000
    return sum(after), span, wall


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a causal LM checkpoint directory")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    parser.add_argument(
        "--in-thread",
        action="store_true",
        help="the worker runs the model in a thread (engine_process: false)",
    )
    parser.add_argument("--bootstrap", default=None, help="a broker to use instead of a throw-away one")
    parser.add_argument("--jars-home", type=Path, default=REPO / ".cache" / "karma")
    parser.add_argument("--cap-s", type=float, default=600.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    args.model = args.model or default_model()
    if args.model is None or not (args.model / "config.json").is_file():
        parser.error(
            f"--model {args.model}: not a checkpoint directory (no config.json); build the quick lab "
            "(`karma lab build --quick --out .cache/lab-quick`) or pass a checkpoint"
        )
    if args.prompts < 2 * args.batch_size:
        parser.error("--prompts must be at least twice --batch-size (the first batch is not counted)")
    return args


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    prompts = lab_prompts(args.prompts)
    print(
        f"model {args.model}; {len(prompts)} prompts, batch {args.batch_size}, max_tokens {args.max_tokens}; "
        f"the worker runs it {'in a thread' if args.in_thread else 'in a child process'}"
    )
    print(f"load average at start: {load_average()}")
    bare = Bare(args.model, args.threads)
    with tempfile.TemporaryDirectory(prefix="gbench-") as tmp:
        workdir = Path(tmp)
        broker = None
        bootstrap = args.bootstrap
        if bootstrap is None:
            broker = start_local_broker(workdir / "broker", args.jars_home)
            bootstrap = broker.bootstrap
        try:
            if broker is not None:  # a fresh broker's JVM compiles its hot paths on first use
                await pipeline_run(args, bootstrap, workdir, prompts[: 2 * args.batch_size], -1)
                print("[0] pipeline warm-up on the fresh broker: not counted")
            bare_rates, pipe_rates, walls = [], [], []
            for rep in range(args.repeats):
                tokens, seconds = bare.run(prompts, args.batch_size, args.max_tokens)
                bare_rates.append(tokens / seconds)
                print(
                    f"[{rep + 1}] bare: {tokens:,} tokens in {seconds:.2f} s = {bare_rates[-1]:,.1f} tokens/s"
                )
                tokens, span, wall = await pipeline_run(args, bootstrap, workdir, prompts, rep)
                pipe_rates.append(tokens / span)
                walls.append(wall)
                print(
                    f"[{rep + 1}] pipeline: {tokens:,} tokens in {span:.2f} s = {pipe_rates[-1]:,.1f} tok/s"
                    f" (wall from spawn {wall:.1f} s, start-up and model load included)"
                )
        finally:
            if broker is not None:
                broker.stop()
    result = {
        "model": str(args.model),
        "prompts": len(prompts),
        "batch_size": args.batch_size,
        "max_tokens": args.max_tokens,
        "engine_process": not args.in_thread,
        "bare_tokens_per_s": bare_rates,
        "pipeline_tokens_per_s": pipe_rates,
        "pipeline_wall_s": walls,
        "bare_median": statistics.median(bare_rates),
        "pipeline_median": statistics.median(pipe_rates),
    }
    if not result["bare_median"]:
        raise BenchError(f"{args.model} generated no tokens (every reply ends at once): use a trained model")
    result["ratio"] = result["pipeline_median"] / result["bare_median"]
    # each repeat's pipeline beside the bare run just before it: the same moment's load on both
    result["ratios_per_repeat"] = [p / b for p, b in zip(pipe_rates, bare_rates, strict=True)]
    result["ratio_per_repeat_median"] = statistics.median(result["ratios_per_repeat"])
    print(
        f"median tokens/s: bare {result['bare_median']:,.1f}, pipeline {result['pipeline_median']:,.1f}; "
        f"pipeline / bare = {result['ratio']:.2f}"
    )
    per_repeat = ", ".join(f"{r:.2f}" for r in result["ratios_per_repeat"])
    print(f"pipeline / bare per repeat: {per_repeat}; median {result['ratio_per_repeat_median']:.2f}")
    print(f"load average at end: {load_average()}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = asyncio.run(main_async(args))
    except BenchError as exc:
        print(f"bench_generation: {exc}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

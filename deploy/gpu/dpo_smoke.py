"""Smoke test of the training side: a `karma export` shard through TRL's DPOTrainer, on CPU, no
download.

    pip install -e '.[transformers,export]' trl       # or: make smoke-dpo
    python deploy/gpu/dpo_smoke.py                      # a shard made here by the exporter's code
    python deploy/gpu/dpo_smoke.py --shard data/prefs/shard-000000.parquet   # one of yours

Without --shard it makes one with the exporter's own code (tools/export/): a dozen
preferences, ties among them, encoded as on the topic and committed through `ShardBuilder` and
`ShardStore` into a temporary folder, so the rows are exactly what `karma export` writes. The
shard (JSONL or Parquet, plain strings or chat messages) is loaded with
`datasets.load_dataset` as a trainer would. Then it trains a word-level tokenizer on the shard's
texts (`tokenizers`), builds a randomly initialised LlamaForCausalLM (hidden size 32, 2 layers)
on that vocabulary, and runs DPOTrainer for a few steps (batch 2, reference model: a frozen copy).
It prints the losses, and exits 1 unless every logged loss is finite and the run ended cleanly.
The model learns nothing (random weights, three steps): it checks the plumbing between the
exporter's rows and TRL. NOT run in this project's CI: torch is not installed there.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from tiny_llama import save_tiny_llama  # beside this script

from karma.schemas.models import Candidate, Preference, Winner
from karma.streams.codecs import encode
from karma.tools.export.files import Layout, ShardFormat
from karma.tools.export.rows import COLUMNS, RowFilter
from karma.tools.export.shards import ShardBuilder, ShardStore

PROMPTS = [
    "why is the sky blue",
    "what is a thread",
    "how does kafka keep order",
    "name the seasons",
    "what makes a good test",
    "why do we sleep",
]
GOOD = "because {topic} follows from a clear reason and here is the careful answer"
BAD = "no idea maybe {topic} who knows"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} [EOS] {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


def make_shard(folder: Path, fmt: ShardFormat, messages: bool) -> Path:
    """One shard written by the exporter's code from preferences as the topic carries them."""
    store = ShardStore.open(folder, "smoke.preferences", Layout(fmt, messages, RowFilter()))
    with store:
        builder = ShardBuilder(store, {0: 0}, shard_rows=1_000)
        for n in range(12):
            topic = PROMPTS[n % len(PROMPTS)]
            winner = Winner.TIE if n % 5 == 4 else (Winner.A if n % 2 else Winner.B)
            good, bad = GOOD.format(topic=topic), BAD.format(topic=topic)
            a, b = (good, bad) if winner == Winner.A else (bad, good)
            builder.add(0, n, encode(_preference(n, topic, a, b, winner)))
        manifest = builder.flush()
    assert manifest is not None and manifest.shard is not None
    print(f"--- shard made by the exporter: {manifest.rows} rows, skipped {manifest.skipped}")
    return folder / manifest.shard


def _preference(n: int, prompt: str, text_a: str, text_b: str, winner: Winner) -> Preference:
    def candidate(side: str, text: str) -> Candidate:
        return Candidate(
            response_id=f"r-{n}-{side}", model=f"model-{side}", text=text, superiority=0.5, simulated=True
        )

    return Preference(
        preference_id=f"pair-{n}",
        pair_id=f"pair-{n}",
        prompt_id=f"p-{n}",
        prompt_text=prompt,
        response_a=candidate("a", text_a),
        response_b=candidate("b", text_b),
        winner=winner,
        consistent=True,
        verdict_ab=winner,
        verdict_ba=winner,
        confidence=0.9,
        judge="smoke-judge",
        simulated=True,
        policy="kin",
        gap=0.1,
        soft_label=0.8 if winner == Winner.A else 0.2,
    )


def load_shard(path: Path) -> Any:
    """The shard as a trainer loads it: `datasets`, the builder named by the file's extension."""
    from datasets import load_dataset

    builder = "parquet" if path.suffix == ".parquet" else "json"
    dataset = load_dataset(builder, data_files=str(path), split="train")
    missing = [c for c in ("prompt", "chosen", "rejected") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{path} has no {', '.join(missing)} column(s): not a `karma export` shard?")
    if dataset.column_names != list(COLUMNS):
        print(f"--- note: columns {dataset.column_names} differ from the exporter's {list(COLUMNS)}")
    return dataset


def _texts(value: Any) -> list[str]:
    """The text of a column value: a string, or TRL's conversational list of messages."""
    return [value] if isinstance(value, str) else [m["content"] for m in value]


def build_tiny_model(dataset: Any, folder: Path) -> tuple[Any, Any]:
    """A word-level tokenizer trained on the shard's texts and a random 2-layer Llama on its
    vocabulary, saved to `folder`: no hub download."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    corpus = [t for row in dataset for c in ("prompt", "chosen", "rejected") for t in _texts(row[c])]
    corpus.append("user assistant :")  # the chat template's own words
    # Saved and loaded back: DPOTrainer builds the frozen reference model from the policy's path.
    # The template is used only when the shard holds chat messages.
    vocabulary = save_tiny_llama(
        folder, corpus, chat_template=CHAT_TEMPLATE, hidden_size=32, max_positions=512
    )
    model = LlamaForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"--- tiny Llama: vocabulary {vocabulary}, {parameters} parameters")
    return model, tokenizer


def train(dataset: Any, model: Any, tokenizer: Any, folder: Path, steps: int) -> list[float]:
    """DPOTrainer for `steps` steps; the losses it logged."""
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(folder / "run"),
        max_steps=steps,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        max_length=256,
        gradient_checkpointing=False,  # nothing to save on a 2-layer model, and no warnings
        use_cpu=not os.environ.get("CUDA_VISIBLE_DEVICES"),
        bf16=False,
        disable_tqdm=True,
        seed=0,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    losses = [float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
    print(f"--- trained {result.global_step} steps, final training loss {result.training_loss:.4f}")
    return losses


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shard", type=Path, help="a `karma export` shard (.jsonl or .parquet); default: make one"
    )
    parser.add_argument(
        "--format", choices=[f.value for f in ShardFormat], default="parquet", help="of the shard made here"
    )
    parser.add_argument("--messages", action="store_true", help="make the shard in chat-message format")
    parser.add_argument("--steps", type=int, default=3, help="DPO steps (default 3)")
    parser.add_argument("--cuda", action="store_true", help="let torch use a GPU (default: CPU only)")
    args = parser.parse_args()
    if not args.cuda:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported
    try:
        with tempfile.TemporaryDirectory(prefix="karma-dpo-smoke-") as root:
            shard = args.shard or make_shard(Path(root) / "prefs", ShardFormat(args.format), args.messages)
            dataset = load_shard(shard)
            print(f"--- {shard.name}: {dataset.num_rows} rows, columns {dataset.column_names}")
            model, tokenizer = build_tiny_model(dataset, Path(root) / "tiny-llama")
            losses = train(dataset, model, tokenizer, Path(root), args.steps)
    except ImportError as exc:
        print(f"FAILED: {exc} (pip install -e '.[transformers,export]' trl)", file=sys.stderr)
        return 1
    print("--- losses: " + ", ".join(f"{loss:.4f}" for loss in losses))
    failures = []
    if len(losses) != args.steps:
        failures.append(f"{len(losses)} losses logged for {args.steps} steps")
    if not all(math.isfinite(loss) for loss in losses):
        failures.append(f"a loss is not finite: {losses}")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    print("dpo smoke: " + ("FAILED" if failures else "OK"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

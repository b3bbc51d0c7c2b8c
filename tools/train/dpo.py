"""One round of DPO (TRL's DPOTrainer) on a checkpoint: a parent checkpoint and the preference rows
of `karma export` in, a trained checkpoint and the round's numbers out. No Kafka, and no files but
the checkpoint written to `staging` (TRL's own output goes to a temporary folder, removed after).

Why this shape: continual training is a chain of rounds, each a parent checkpoint and the
preferences gathered since; each round's child must be a plain Hugging Face checkpoint that the
transformers backend, `transformers serve` and `vllm serve` load like any other, whichever method
trained it. So a LoRA round merges its adapter into the weights before saving, and the reference
model is always the parent itself (TRL loads a frozen copy from the parent's path for a full
round, and disables the adapter for a LoRA one): each round is pulled towards the preferences and
held near the checkpoint it started from.

The rows are TRL's conversational preference rows, as `row_of(preference, messages=True)` makes
them (tools/export/rows.py); only `prompt`, `chosen` and `rejected` are read, the provenance
columns beside them are left out of the dataset. TRL renders them with the tokenizer's chat
template: the prompt with the generation prompt, and prompt + answer, the answer's tokens being
what the two renderings do not share.

torch, transformers, trl, peft and datasets are imported inside the functions: the CLI imports this
module and must start without them (`pip install 'karma-stream[train]'` brings them).
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

INSTALL_HINT = "pip install 'karma-stream[train]'"
COLUMNS = ("prompt", "chosen", "rejected")  # what DPOTrainer reads of a row
# TRL's default truncation; a model with fewer positions is cut to what it has.
MAX_LENGTH = 1024


@dataclass(frozen=True)
class DpoSettings:
    method: Literal["full", "lora"] = "full"
    beta: float = 0.1
    # TRL's default (1e-6) is made for billion-parameter models and long runs: on the lab models
    # (0.015 to 0.4 M parameters; 8 steps for a round of 64 preferences) it moves nothing. Measured
    # on the quick lab, 64 held-out prompts, rejected = the model's own wrong answer: at 3e-5 the
    # summed log-probability margin of chosen over rejected grows by 10 to 65 nats on each of the
    # five larger models (1 on lab-tiny) and greedy held-out accuracy moves by at most a point or
    # two; at 1e-4 the margin grows 2-3 times more but accuracy falls by up to 10 points (DPO
    # pushes the chosen answers down too). LoRA moves about ten times less at the same rate: give
    # it ~3e-4.
    learning_rate: float = 3e-5
    epochs: int = 1
    batch_size: int = 8
    seed: int = 0
    lora_rank: int = 8
    # Above 0, the round's loss is DPO plus this weight times the chosen answers' negative
    # log-likelihood (TRL's loss_type ["sigmoid", "sft"], as RPO does): DPO alone lowers the
    # likelihood of the chosen answers too, so greedy answers need not improve.
    sft_weight: float = 0.0


@dataclass(frozen=True)
class RoundResult:
    loss: float  # mean DPO loss of the round's logged steps (TRL log_history "loss")
    # TRL measures these on each batch before its update, so the first step's are always 0 (the
    # policy is the reference): the means lag the trained model a little.
    reward_margin: float  # mean "rewards/margins"
    reward_accuracy: float  # mean "rewards/accuracies"
    steps: int
    seconds: float  # the whole round but the imports: loading, training, merging and saving


class TrainError(RuntimeError):
    """A round that cannot run: the message says why (no rows, a missing SDK naming
    `pip install 'karma-stream[train]'`, ...)."""


def train_round(
    parent: Path, rows: Sequence[Mapping[str, Any]], staging: Path, settings: DpoSettings
) -> RoundResult:
    """Loads the checkpoint at `parent` (AutoModelForCausalLM + AutoTokenizer, Hugging Face format),
    trains one DPO round on `rows` (TRL conversational rows: prompt=[{"role":"user","content":...}],
    chosen=[{"role":"assistant",...}], rejected=[...]; extra keys ignored), the reference model being
    the parent as TRL handles it (ref_model=None), and saves the trained model, its tokenizer and
    generation config to `staging` (created; must not exist yet). LoRA: peft adapter trained then
    merged (merge_and_unload) before saving, so `staging` is always a plain checkpoint that
    AutoModelForCausalLM.from_pretrained loads. CPU unless CUDA is available. Deterministic for a
    seed."""
    _check(parent, rows, staging, settings)
    modules = _import_sdk(settings.method)
    started = time.perf_counter()  # after the imports: a process pays for them once, not each round
    torch, transformers, trl, datasets = (modules[n] for n in ("torch", "transformers", "trl", "datasets"))

    # Only the three columns: the provenance columns (ids, policies, scores that may be null) are
    # nothing DPO reads, and need not be columns Arrow can type across the rows.
    dataset = datasets.Dataset.from_list([{c: row[c] for c in COLUMNS} for row in rows])
    peft_config = None
    if settings.method == "lora":
        peft_config = modules["peft"].LoraConfig(
            r=settings.lora_rank,
            lora_alpha=2 * settings.lora_rank,  # the usual scale of 2
            lora_dropout=0.0,  # dropout would make the round depend on more than the seed
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )

    staging.parent.mkdir(parents=True, exist_ok=True)  # before training: a bad path fails at once
    with _quiet(transformers, datasets), tempfile.TemporaryDirectory(prefix="karma-dpo-") as scratch:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(parent))
        model = transformers.AutoModelForCausalLM.from_pretrained(str(parent))
        # Trained in fp32 (small updates vanish in bf16 weights, and the CPU has no fast bf16),
        # saved in the parent's dtype. TRL loads the reference in the policy's dtype.
        saved_dtype, use_cache = model.dtype, model.config.use_cache
        model = model.float()
        args = trl.DPOConfig(
            output_dir=str(Path(scratch) / "trl"),
            num_train_epochs=settings.epochs,
            per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            beta=settings.beta,
            seed=settings.seed,
            data_seed=settings.seed,
            max_length=min(MAX_LENGTH, _positions(model.config)),
            logging_steps=1,
            report_to=[],
            save_strategy="no",
            disable_tqdm=True,
            gradient_checkpointing=False,  # on by TRL's default: memory these models do not need
            bf16=False,  # on by TRL's default: the round trains in fp32 (above)
            use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0,
            **_losses(settings),
        )
        trainer = trl.DPOTrainer(
            model=model,
            ref_model=None,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        # With tqdm off, Trainer prints every step's log dict instead; the numbers are returned.
        trainer.remove_callback(transformers.PrinterCallback)
        trainer.train()
        history = trainer.state.log_history
        steps = int(trainer.state.global_step)
        trained = trainer.model
        if settings.method == "lora":
            trained = trained.merge_and_unload()
        trained = trained.to(saved_dtype)
        # Trainer sets `use_cache` to its own argument (False); a child saved so would generate
        # without its KV cache wherever the config is read.
        trained.config.use_cache = use_cache
        # A round that fails while saving leaves no half checkpoint behind (one killed outright
        # leaves `staging`, which the caller clears: it must not exist when a round starts).
        staging.mkdir()
        try:
            trained.save_pretrained(str(staging))  # weights, config and generation config
            tokenizer.save_pretrained(str(staging))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return RoundResult(
        loss=_mean(history, "loss"),
        reward_margin=_mean(history, "rewards/margins"),
        reward_accuracy=_mean(history, "rewards/accuracies"),
        steps=steps,
        seconds=time.perf_counter() - started,
    )


def _losses(settings: DpoSettings) -> dict[str, Any]:
    if settings.sft_weight <= 0:
        return {}
    return {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, settings.sft_weight]}


def _check(parent: Path, rows: Sequence[Mapping[str, Any]], staging: Path, settings: DpoSettings) -> None:
    """What can be told before anything heavy is imported."""
    if not rows:
        raise TrainError("no preference rows to train on: a DPO round needs at least one")
    for n, row in enumerate(rows):
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise TrainError(f"row {n} has no {', '.join(missing)}: not a DPO preference row")
    if staging.exists():
        raise TrainError(f"staging {staging} exists already: a round writes a new checkpoint")
    if not (parent / "config.json").is_file():
        raise TrainError(f"parent {parent} is not a Hugging Face checkpoint (no config.json)")
    if settings.method not in ("full", "lora"):
        raise TrainError(f"method {settings.method!r} is neither 'full' nor 'lora'")
    if settings.epochs < 1 or settings.batch_size < 1 or settings.lora_rank < 1:
        raise TrainError(f"epochs, batch_size and lora_rank must be at least 1: {settings}")
    if not (settings.learning_rate > 0 and settings.beta > 0):
        raise TrainError(f"learning_rate and beta must be positive: {settings}")


def _import_sdk(method: str) -> dict[str, Any]:
    names = ["torch", "transformers", "datasets", "trl"] + (["peft"] if method == "lora" else [])
    modules: dict[str, Any] = {}
    for name in names:
        try:
            modules[name] = __import__(name)
        except ImportError as exc:
            raise TrainError(f"DPO training needs {name} ({exc}): {INSTALL_HINT}") from exc
    return modules


@contextmanager
def _quiet(transformers: Any, datasets: Any) -> Iterator[None]:
    """No progress bars (loading weights, tokenizing the rows, writing shards) during the round;
    the switches are process-wide, so they are put back as they were."""
    logging = transformers.utils.logging
    bars, dataset_bars = logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled()
    logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if bars:
            logging.enable_progress_bar()
        if dataset_bars:
            datasets.enable_progress_bars()


def _positions(config: Any) -> int:
    positions = getattr(config.get_text_config(), "max_position_embeddings", None)
    return int(positions) if positions else MAX_LENGTH


def _mean(history: Sequence[Mapping[str, Any]], key: str) -> float:
    """The mean of a metric over the logged training steps (the final summary entry has no such
    key); NaN when no step logged it."""
    values = [float(entry[key]) for entry in history if key in entry]
    return sum(values) / len(values) if values else math.nan

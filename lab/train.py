"""Training one lab model from scratch: a tiny Llama, seeded, on a mixture of skills, on the CPU.

Each step draws a batch whose examples take their skill with probability proportional to the
recipe's steps for it, so a recipe of {add: 600, reverse: 200} spends three quarters of its
examples on addition. The loss is on the answer and `<eos>` only: the question is given, not
learned. Sequences are `<bos>question=answer<eos>` (lab/tokenizer.py), right-padded; generation
pads on the left, and both give the first real token position 0 (the attention mask sets the
positions at generation), so a model sees at inference exactly what it was trained on.

torch and transformers are imported inside the functions: the lab's pure parts (skills, recipes,
the build key) load without them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from karma.lab.skills import Example, examples, skill_seed
from karma.lab.tokenizer import BOS, EOS, PAD, SEPARATOR, UNK, save_tokenizer, vocabulary

IGNORE = -100  # the label torch's cross-entropy skips


@dataclass(frozen=True)
class Size:
    """A tiny Llama: hidden width, layers and attention heads (the MLP is 3x the width)."""

    hidden: int
    layers: int
    heads: int = 4

    def describe(self) -> str:
        return f"{self.layers}x{self.hidden}"


@dataclass(frozen=True)
class Hyper:
    """Optimisation settings shared by every model of a build."""

    batch: int = 64
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.01


def llama_config(size: Size) -> Any:
    from transformers import LlamaConfig

    vocab = vocabulary()
    return LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=size.hidden,
        intermediate_size=size.hidden * 3,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[PAD],
    )


class Encoder:
    """Examples to padded tensors without the tokenizer's per-call overhead (same ids: one per char)."""

    def __init__(self) -> None:
        self.vocab = vocabulary()
        self.unk = self.vocab[UNK]

    def ids(self, text: str) -> list[int]:
        return [self.vocab.get(c, self.unk) for c in text]

    def batch(self, batch: list[Example]) -> dict[str, Any]:
        import torch

        rows, labels = [], []
        for example in batch:
            prompt = [self.vocab[BOS], *self.ids(example.question), self.vocab[SEPARATOR]]
            answer = [*self.ids(example.answer), self.vocab[EOS]]
            rows.append(prompt + answer)
            labels.append([IGNORE] * len(prompt) + answer)
        width = max(len(r) for r in rows)
        pad = self.vocab[PAD]
        return {
            "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
            "labels": torch.tensor([lab + [IGNORE] * (width - len(lab)) for lab in labels]),
        }


def learning_rate(step: int, total: int, hyper: Hyper) -> float:
    """Linear warm-up, then cosine decay to a tenth: tiny models take a high rate early."""
    if step < hyper.warmup:
        return hyper.lr * (step + 1) / hyper.warmup
    progress = (step - hyper.warmup) / max(1, total - hyper.warmup)
    return hyper.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_model(
    out: Path,
    size: Size,
    steps: Mapping[str, int],
    seed: int,
    hyper: Hyper = Hyper(),
    progress: Callable[[int, float], None] | None = None,
    threads: int = 1,
) -> float:
    """Trains a model of `size` for sum(steps) steps on the skills' mixture and saves it (with its
    tokenizer and generation config) to `out`; returns the mean loss of the last 50 steps.
    `progress(step, loss)` is called after every step; `threads` is torch's intra-op threads."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    config = llama_config(size)
    model = LlamaForCausalLM(config)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": hyper.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=hyper.lr,
        betas=(0.9, 0.98),
    )
    skills = [s for s, n in steps.items() if n > 0]
    weights = [steps[s] for s in skills]
    total = sum(weights)
    streams = {s: examples(s, "train", seed, stream="train") for s in skills}
    mixer = random.Random(skill_seed(seed, "mixture", "train"))
    encoder = Encoder()
    recent: list[float] = []
    for step in range(total):
        chosen = mixer.choices(skills, weights=weights, k=hyper.batch)
        batch = encoder.batch([next(streams[s]) for s in chosen])
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, total, hyper)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        recent = [*recent[-49:], loss.item()]
        if progress is not None:
            progress(step + 1, recent[-1])
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        do_sample=False,
        max_new_tokens=8,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    save_tokenizer(out)
    return sum(recent) / len(recent) if recent else float("nan")

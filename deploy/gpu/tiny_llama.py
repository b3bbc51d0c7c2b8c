"""A tiny random Llama and a word-level tokenizer trained on a given corpus, saved to a folder:
what the CPU smoke scripts load instead of a hub checkpoint (nothing can be downloaded here).
Needs torch, tokenizers and transformers (`.venv-torch`, see the Makefile)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

# A chat template in the tokenizer's own words, for the backends' and TRL's chat paths.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


def save_tiny_llama(
    folder: Path,
    corpus: Iterable[str],
    *,
    chat_template: str | None = CHAT_TEMPLATE,
    hidden_size: int = 64,
    max_positions: int = 2048,
) -> int:
    """Saves the tokenizer and a random 2-layer Llama on its vocabulary to `folder`; returns the
    vocabulary size. Seeded, so the same corpus gives the same weights."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    raw = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(list(corpus), trainers.WordLevelTrainer(special_tokens=specials))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )
    if chat_template:
        tokenizer.chat_template = chat_template
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return len(tokenizer)

"""The transformers backend with torch and transformers, on a tiny random Llama built here (a
LlamaConfig of a few hundred parameters saved to tmp_path, a word-level tokenizer built with the
`tokenizers` library), on the CPU, no download: the model loads before use, a prompt longer than
the context is refused (`too_long`) while the rest of the batch is answered, and a folder that
holds no checkpoint, or a corrupt config, is one clear ModelLoadError."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from karma.agents.backends import BackendError, Generation, GenerationRequest, ModelLoadError
from karma.agents.backends.transformers import TransformersGenerator
from karma.streams.config import ModelSpec

WORDS = ["the", "a", "question", "answer", "is", "what", "why", "word", "cat", "dog"]
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
CONTEXT = 32  # max_position_embeddings of the tiny model
MAX_TOKENS = 4


def tiny_llama(folder: Path) -> Path:
    """A random Llama with a context of CONTEXT tokens and its tokenizer, saved to `folder`."""
    vocab = {token: i for i, token in enumerate([*SPECIALS, *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def generator_for(path: Path, name: str = "tiny") -> TransformersGenerator:
    spec = ModelSpec(name=name, backend="transformers", model=str(path), max_tokens=MAX_TOKENS, temperature=0)
    return TransformersGenerator(spec)


def test_a_prompt_over_the_context_is_refused_and_the_rest_of_the_batch_is_answered(tmp_path: Path) -> None:
    generator = generator_for(tiny_llama(tmp_path / "tiny"))
    long_text = " ".join(["word"] * (CONTEXT - MAX_TOKENS + 1))  # one token over what fits
    fitting_text = " ".join(["word"] * (CONTEXT - MAX_TOKENS))  # exactly what fits
    requests = [
        GenerationRequest("short", "what is the question"),
        GenerationRequest("long", long_text),
        GenerationRequest("fits", fitting_text),
    ]

    async def run() -> list[Generation | BackendError]:
        await generator.load()
        try:
            return await generator.generate(requests)
        finally:
            await generator.close()

    short, long, fits = asyncio.run(run())
    assert isinstance(short, Generation) and isinstance(fits, Generation)
    assert 0 < short.num_tokens <= MAX_TOKENS and not short.simulated
    assert isinstance(long, BackendError) and long.kind == "too_long"
    # the plain-text prompt gets no BOS here (the word-level tokenizer adds none): words are tokens
    limit = CONTEXT - MAX_TOKENS
    assert long.reason == (
        f"{tmp_path / 'tiny'}: prompt long is {limit + 1} tokens, over the {limit} the model takes "
        f"(context {CONTEXT} tokens less max_tokens {MAX_TOKENS})"
    )


def test_a_folder_that_is_no_checkpoint_is_one_clear_load_error(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-checkpoint"
    empty.mkdir()
    with pytest.raises(ModelLoadError) as failed:
        asyncio.run(generator_for(empty, name="llama-bad").load())
    text = str(failed.value)
    assert text.startswith(f"cannot load model llama-bad from {empty}: ")
    assert "\n" not in text and len(text) <= 500
    assert "config.json" in failed.value.cause  # transformers' own words on the config, on one line


def test_a_corrupt_config_is_one_clear_load_error(tmp_path: Path) -> None:
    folder = tiny_llama(tmp_path / "tiny")
    (folder / "config.json").write_text('{"model_type": "llama", "hidden_size": ')  # cut short
    with pytest.raises(ModelLoadError) as failed:
        asyncio.run(generator_for(folder).load())
    text = str(failed.value)
    assert text.startswith(f"cannot load model tiny from {folder}: ") and "\n" not in text
    assert "not a valid JSON file" in failed.value.cause


def test_the_tiny_checkpoint_is_what_the_tests_think(tmp_path: Path) -> None:
    # guards the two tests above: a config whose context is not CONTEXT would test nothing
    folder = tiny_llama(tmp_path / "tiny")
    assert json.loads((folder / "config.json").read_text())["max_position_embeddings"] == CONTEXT

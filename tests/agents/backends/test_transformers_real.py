"""The transformers backend with torch and transformers, on a tiny random Llama built here (a
LlamaConfig of a few hundred parameters saved to tmp_path, a word-level tokenizer built with the
`tokenizers` library), on the CPU, no download: the model loads before use, a prompt longer than
the context is refused (`too_long`) while the rest of the batch is answered, and a folder that
holds no checkpoint, or a corrupt config, is one clear ModelLoadError."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from karma.agents.backends import BackendError, Generation, GenerationRequest, ModelLoadError
from karma.agents.backends.transformers import HFRunner, ProcessRunner, TooLong, TransformersGenerator
from karma.streams.config import ModelSpec

WORDS = ["the", "a", "question", "answer", "is", "what", "why", "word", "cat", "dog"]
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
CONTEXT = 32  # max_position_embeddings of the tiny model
MAX_TOKENS = 4


def tiny_llama(folder: Path, seed: int = 0, hidden_size: int = 16) -> Path:
    """A random Llama (weights drawn with `seed`) with a context of CONTEXT tokens and its
    tokenizer, saved to `folder`."""
    vocab = {token: i for i, token in enumerate([*SPECIALS, *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def generator_for(path: Path, name: str = "tiny", engine_process: bool = True) -> TransformersGenerator:
    spec = ModelSpec(
        name=name,
        backend="transformers",
        model=str(path),
        max_tokens=MAX_TOKENS,
        temperature=0,
        engine_process=engine_process,
    )
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


TEXTS = ["what is the question", " ".join(["word"] * 20), "why a cat", "the dog is"]
CONVERSATIONS = [[{"role": "user", "content": t}] for t in TEXTS]


def answers(runner: Any, conversations: list[Any], max_prompt_tokens: int | None = None) -> list[Any]:
    return runner.generate(conversations, 0, 0.0, MAX_TOKENS, 0, max_prompt_tokens)


def test_a_prompt_set_aside_by_the_context_rule_changes_no_other_answer(tmp_path: Path) -> None:
    # The batch is tokenized once; setting the long prompt aside drops the left padding only it
    # needed, so the others' answers are those of a batch that never had it.
    runner = HFRunner(str(tiny_llama(tmp_path / "tiny")), {})
    with_long = answers(runner, CONVERSATIONS, max_prompt_tokens=10)
    assert with_long[1] == TooLong(20)
    without = answers(runner, [CONVERSATIONS[i] for i in (0, 2, 3)])
    assert [with_long[i] for i in (0, 2, 3)] == without
    assert any(o.num_tokens for o in without)  # real replies compared, not empty ones


def test_the_model_in_a_child_process_answers_as_in_a_thread(tmp_path: Path) -> None:
    folder = str(tiny_llama(tmp_path / "tiny"))
    child = ProcessRunner(folder, {})
    try:
        assert child.context_tokens == CONTEXT
        assert answers(child, CONVERSATIONS, 10) == answers(HFRunner(folder, {}), CONVERSATIONS, 10)
    finally:
        child.close()


def test_a_child_process_that_dies_fails_the_batch_in_hand_and_is_started_again(tmp_path: Path) -> None:
    child = ProcessRunner(str(tiny_llama(tmp_path / "tiny")), {})
    try:
        expected = answers(child, CONVERSATIONS)
        [process] = multiprocessing.active_children()
        os.kill(process.pid, signal.SIGKILL)  # as the kernel's OOM killer would
        process.join(10)
        with pytest.raises(RuntimeError, match="ended unexpectedly .* started again for the next batch"):
            answers(child, CONVERSATIONS)
        assert answers(child, CONVERSATIONS) == expected  # a new child, the model loaded again
    finally:
        child.close()
    assert multiprocessing.active_children() == []  # closed: no child left behind


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


# --- a new version, loaded into the model in place ------------------------------------------------

ASKED = [GenerationRequest(f"p-{i}", text) for i, text in enumerate(TEXTS)]


def texts(results: list[Any]) -> list[tuple[str, int]]:
    assert all(isinstance(r, Generation) for r in results), results
    return [(r.text, r.model_version) for r in results]


@pytest.mark.parametrize("engine_process", [False, True], ids=["in a thread", "in a child process"])
def test_a_new_version_is_loaded_into_the_same_model_and_a_bad_one_is_undone(
    tmp_path: Path, engine_process: bool
) -> None:
    first, second = tiny_llama(tmp_path / "v1"), tiny_llama(tmp_path / "v2", seed=1)
    other_shape = tiny_llama(tmp_path / "v3", seed=2, hidden_size=32)  # not a version of this model

    async def run() -> tuple[list[Any], ...]:
        fresh = generator_for(second, engine_process=engine_process)
        await fresh.load()
        expected = await fresh.generate(ASKED)
        await fresh.close()

        generator = generator_for(first, engine_process=engine_process)
        await generator.load()
        try:
            before = await generator.generate(ASKED)
            model = generator._model
            await generator.switch("tiny", str(second), 2)
            assert generator._model is model  # in place: no second model was loaded
            after = await generator.generate(ASKED)
            with pytest.raises(ModelLoadError, match=f"cannot load model tiny from {other_shape}"):
                await generator.switch("tiny", str(other_shape), 3)
            kept = await generator.generate(ASKED)
        finally:
            await generator.close()
        return expected, before, after, kept

    expected, before, after, kept = asyncio.run(run())
    assert [t for t, _ in texts(before)] != [t for t, _ in texts(expected)]  # else this proves nothing
    assert texts(after) == [(t, 2) for t, _ in texts(expected)]  # the second version's own answers
    assert texts(kept) == texts(after)  # the bad checkpoint was undone: version 2 serves on

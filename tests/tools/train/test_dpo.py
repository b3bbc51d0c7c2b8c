"""One DPO round (tools/train/dpo.py) on the quick lab's real models (tests/conftest.py
`lab_quick`), on the CPU: a round must move the model towards the chosen answers, leave a plain
checkpoint whatever the method, and give the same weights for the same seed and rows.

The rows are what `karma export --messages` makes of preferences (`row_of(..., messages=True)`),
provenance columns and nulls included, on held-out prompts: the chosen answer is the reference,
the rejected one the parent's own greedy answer where that is wrong, else the reference with its
last character changed. So the round pushes the model away from what it says when it errs.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from karma.schemas.models import Winner
from karma.tools.export.rows import COLUMNS, row_of
from karma.tools.train.dpo import DpoSettings, RoundResult, TrainError, train_round
from tests import records

PARENT = "lab-generalist-m"  # right on ~17% of the held-out prompts: wrong answers of its own to reject
ROWS = 64


def parent_of(lab_quick: Any) -> Path:
    return Path(lab_quick.out) / "models" / PARENT


def load(folder: Path) -> tuple[Any, Any]:
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.eval()
    return model, AutoTokenizer.from_pretrained(folder)


def greedy(model: Any, tokenizer: Any, question: str) -> str:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def changed(answer: str) -> str:
    """A wrong answer next to the right one: its last character moved on by one."""
    last = answer[-1]
    moved = str((int(last) + 1) % 10) if last.isdigit() else chr((ord(last) - ord("a") + 1) % 26 + ord("a"))
    return answer[:-1] + moved


def make_rows(lab_quick: Any, n: int = ROWS) -> list[dict[str, Any]]:
    """`n` export rows on held-out prompts of every skill (see the module docstring). The winner
    alternates between A and B, so `row_of` turns half of them to the chosen side."""
    lines = (Path(lab_quick.out) / "prompts" / "heldout.jsonl").read_text().splitlines()
    prompts = random.Random(0).sample([json.loads(line) for line in lines], n)
    model, tokenizer = load(parent_of(lab_quick))
    rows = []
    for i, prompt in enumerate(prompts):
        right = prompt["metadata"]["reference"]
        said = greedy(model, tokenizer, prompt["text"])
        wrong = said if said and said != right else changed(right)
        winner = Winner.A if i % 2 == 0 else Winner.B
        texts = (right, wrong) if winner == Winner.A else (wrong, right)
        prompt_id = prompt["prompt_id"]
        a = records.candidate("model-a", text=texts[0], prompt_id=prompt_id)
        b = records.candidate("model-b", text=texts[1], prompt_id=prompt_id)
        preference = records.preference(prompt_id, a, b, winner, prompt_text=prompt["text"], gap=0.3)
        row = row_of(preference, messages=True)
        assert row is not None and row["chosen"] == [{"role": "assistant", "content": right}]
        rows.append(row)
    return rows


def answer_logp(
    model: Any, tokenizer: Any, prompt: list[dict[str, str]], answer: list[dict[str, str]]
) -> float:
    """log p(answer | prompt) as the chat template renders them (`<bos>question=` then
    `answer<eos>`): the sum over the answer's tokens, <eos> included."""
    context = tokenizer.apply_chat_template(
        prompt, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    whole = tokenizer.apply_chat_template(prompt + answer, tokenize=True, return_dict=True)
    context_ids, ids = context["input_ids"], whole["input_ids"]
    assert ids[: len(context_ids)] == context_ids
    tokens = torch.tensor([ids])
    with torch.no_grad():
        logps = model(tokens).logits[0, :-1].log_softmax(-1)
    per_token = logps.gather(1, tokens[0, 1:, None])[:, 0]
    return float(per_token[len(context_ids) - 1 :].sum())


def margin(folder: Path, rows: Sequence[dict[str, Any]]) -> float:
    """Sum over the rows of log p(chosen | prompt) - log p(rejected | prompt) under `folder`."""
    model, tokenizer = load(folder)
    return sum(
        answer_logp(model, tokenizer, row["prompt"], row["chosen"])
        - answer_logp(model, tokenizer, row["prompt"], row["rejected"])
        for row in rows
    )


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def rows(lab_quick: Any) -> list[dict[str, Any]]:
    return make_rows(lab_quick)


def test_a_full_round_moves_the_model_towards_the_chosen_answers(
    lab_quick: Any, rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    """64 rows in batches of 8 are 8 steps; the child is a checkpoint that loads like its parent
    (same tokenizer and chat template, a generation config), and under it the chosen answers
    gained on the rejected ones: the summed log-probability margin grew. A round that did
    nothing, or trained the wrong way round, fails here."""
    assert set(COLUMNS) <= set(rows[0])  # the provenance columns ride along, nulls among them
    assert rows[0]["soft_label"] is None and rows[0]["chosen_score"] is None
    parent, staging = parent_of(lab_quick), tmp_path / "child"

    result = train_round(parent, rows, staging, DpoSettings())

    assert result.steps == 8
    # log 2 and a margin of 0 where the policy is the reference: a round that learned nothing
    assert math.isfinite(result.loss) and result.loss < math.log(2) - 1e-3
    assert result.reward_margin > 1e-3 and 0.5 < result.reward_accuracy <= 1
    assert result.seconds > 0
    assert (staging / "generation_config.json").is_file()
    # The parent's config as it was: Trainer's use_cache=False is not saved with the child.
    config = json.loads((staging / "config.json").read_text())
    assert config == json.loads((parent / "config.json").read_text())
    child, tokenizer = load(staging)
    assert type(child).__name__ == "LlamaForCausalLM"
    question = [{"role": "user", "content": "12+34"}]
    assert (
        tokenizer.apply_chat_template(question, add_generation_prompt=True, tokenize=False) == "<bos>12+34="
    )
    before, after = margin(parent, rows), margin(staging, rows)
    assert after > before + 1.0, f"margin {before:.2f} -> {after:.2f}"
    assert weights(parent).keys() == weights(staging).keys()


def test_a_lora_round_leaves_a_plain_merged_checkpoint(
    lab_quick: Any, rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The adapter is merged before saving: no adapter files, the parent's tensor names and
    shapes, other values; and the merged model moved the same way a full round does. (LoRA moves
    less at the same rate, hence 3e-4 here.)"""
    parent, staging = parent_of(lab_quick), tmp_path / "child"

    result = train_round(parent, rows, staging, DpoSettings(method="lora", learning_rate=3e-4, lora_rank=4))

    assert result.steps == 8 and math.isfinite(result.loss)
    assert not (staging / "adapter_config.json").exists()
    assert not (staging / "adapter_model.safetensors").exists()
    old, new = weights(parent), weights(staging)
    assert {k: v.shape for k, v in new.items()} == {k: v.shape for k, v in old.items()}
    assert not any("lora" in k for k in new)
    assert any(not torch.equal(old[k], new[k]) for k in old)
    load(staging)  # a plain checkpoint: AutoModelForCausalLM, no peft
    assert margin(staging, rows) > margin(parent, rows)


def test_the_same_seed_and_rows_give_the_same_weights(
    lab_quick: Any, rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Twice the same round, bit for bit; another seed shuffles the rows otherwise and lands
    elsewhere (so the equality is not the absence of randomness). 20 rows in batches of 8 over
    two epochs are 3 + 3 steps: the last batch of an epoch is a short one."""
    parent = parent_of(lab_quick)
    settings = DpoSettings(epochs=2, seed=7, learning_rate=1e-4)

    def run(name: str, settings: DpoSettings) -> RoundResult:
        return train_round(parent, rows[:20], tmp_path / name, settings)

    first, second = run("first", settings), run("second", settings)
    run("other", DpoSettings(epochs=2, seed=8, learning_rate=1e-4))

    assert first.steps == second.steps == 6
    assert (first.loss, first.reward_margin) == (second.loss, second.reward_margin)
    a, b, c = weights(tmp_path / "first"), weights(tmp_path / "second"), weights(tmp_path / "other")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_a_round_that_cannot_run_says_why(
    lab_quick: Any, rows: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No rows, a row that is no preference, a staging folder already there (left as it was), a
    parent that is no checkpoint, a missing SDK: each a TrainError that names the cause."""
    parent, staging = parent_of(lab_quick), tmp_path / "child"
    with pytest.raises(TrainError, match="no preference rows"):
        train_round(parent, [], staging, DpoSettings())
    with pytest.raises(TrainError, match="row 1 has no rejected"):
        train_round(parent, [rows[0], {"prompt": "p", "chosen": "c"}], staging, DpoSettings())
    with pytest.raises(TrainError, match="not a Hugging Face checkpoint"):
        train_round(tmp_path, rows, staging, DpoSettings())
    staging.mkdir()
    (staging / "keep.txt").write_text("an earlier round")
    with pytest.raises(TrainError, match="exists already"):
        train_round(parent, rows, staging, DpoSettings())
    assert [p.name for p in staging.iterdir()] == ["keep.txt"]

    monkeypatch.setitem(sys.modules, "trl", None)  # `import trl` raises ImportError
    with pytest.raises(TrainError, match=r"needs trl .*pip install 'karma-stream\[train\]'"):
        train_round(parent, rows, tmp_path / "other", DpoSettings())
    assert not (tmp_path / "other").exists()


def test_the_module_imports_without_the_training_sdks() -> None:
    """The CLI imports dpo.py before it knows whether it will train: torch, transformers, trl,
    peft and datasets are imported by a round, not by the module (a fresh interpreter)."""
    sdks = ("torch", "transformers", "trl", "peft", "datasets")
    code = f"import sys, karma.tools.train.dpo; print([m for m in {sdks!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"

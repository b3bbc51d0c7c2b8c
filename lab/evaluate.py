"""Held-out accuracy of a saved lab model, per skill, measured as the pipeline would ask it.

The model is loaded and run by the transformers backend's own runner (agents/backends/
transformers.py HFRunner: AutoTokenizer and AutoModelForCausalLM from the saved directory, the
chat template, left padding, greedy decoding), each question sent as a user message, and every
answer checked by the prompt's scorer (agents/scoring.py). So profiles.csv says what the models
do when served, not what a training loop believes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from karma.agents.scoring import score
from karma.lab.skills import SKILLS, Example

MAX_TOKENS = 8  # the longest answer (6 characters) and <eos>, with room for a wrong longer one
EVAL_BATCH = 128


def accuracy(model_dir: Path, heldout: Mapping[str, Sequence[Example]], threads: int = 1) -> dict[str, float]:
    """Per skill: the share of its held-out questions answered right (greedy)."""
    import torch

    from karma.agents.backends.transformers import HFRunner

    torch.set_num_threads(threads)

    runner = HFRunner(str(model_dir), {})
    result: dict[str, float] = {}
    for skill, questions in heldout.items():
        right = 0.0
        for start in range(0, len(questions), EVAL_BATCH):
            chunk = questions[start : start + EVAL_BATCH]
            conversations = [[{"role": "user", "content": e.question}] for e in chunk]
            outputs = runner.generate(
                conversations, seed=0, temperature=0.0, max_tokens=MAX_TOKENS, top_logprobs=0
            )
            right += sum(
                score(SKILLS[skill].scorer, o.text, e.answer) for o, e in zip(outputs, chunk, strict=True)
            )
        result[skill] = right / len(questions)
    return result

"""Chat messages to one prompt string, for backends that run the model in-process (vllm, transformers).

Pure functions over a duck-typed tokenizer (anything with `chat_template` and
`apply_chat_template`, as Hugging Face and vLLM tokenizers have): no model library is imported
here, so the unit tests run without torch or vLLM.

- A tokenizer with a chat template formats the messages with it (generation prompt appended).
  Templates that refuse a system message (Gemma's, for one) get it folded into the first user
  message instead, so the judge's rules still come first.
- A tokenizer without one (a base model) gets the contents as plain text, one blank line apart.

`RenderedPrompt.templated` says which: a template already writes the BOS token, so the caller
must then tokenize without adding special tokens again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Message = dict[str, str]


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    templated: bool  # True: the chat template wrote the special tokens itself


def plain_text(messages: Sequence[Message]) -> str:
    """The contents alone, for a model without a chat template."""
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


def fold_system(messages: Sequence[Message]) -> list[Message]:
    """The system message(s) prepended to the first user message, for templates without a system role."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if not system:
        return rest
    if rest and rest[0]["role"] == "user":
        rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
        return rest
    return [{"role": "user", "content": system}, *rest]


def render_chat(tokenizer: Any, messages: Sequence[Message]) -> RenderedPrompt:
    """The prompt text of `messages` for `tokenizer`'s model."""
    if not getattr(tokenizer, "chat_template", None):
        return RenderedPrompt(plain_text(messages), templated=False)
    try:
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    except Exception:
        # Jinja templates raise on a role they do not know; only a system message is worth a retry.
        if not any(m["role"] == "system" for m in messages):
            raise
        text = tokenizer.apply_chat_template(
            fold_system(messages), tokenize=False, add_generation_prompt=True
        )
    return RenderedPrompt(str(text), templated=True)

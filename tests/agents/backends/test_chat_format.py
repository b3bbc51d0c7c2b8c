"""Chat messages to one prompt: the tokenizer's template when it has one, plain text otherwise."""

from __future__ import annotations

from typing import Any

import pytest

from karma.agents.backends.chat_format import RenderedPrompt, fold_system, plain_text, render_chat

MESSAGES = [{"role": "system", "content": "Rules."}, {"role": "user", "content": "Question?"}]


class Templated:
    chat_template = "{% for m in messages %}...{% endfor %}"

    def __init__(self, system_role: bool = True) -> None:
        self.system_role = system_role
        self.seen: list[list[dict[str, str]]] = []

    def apply_chat_template(self, messages: Any, tokenize: bool, add_generation_prompt: bool) -> str:
        assert tokenize is False and add_generation_prompt is True
        self.seen.append(messages)
        if not self.system_role and any(m["role"] == "system" for m in messages):
            raise ValueError("System role not supported")  # what Gemma's template raises
        return "|".join(f"{m['role']}:{m['content']}" for m in messages) + "|assistant:"


def test_a_chat_template_formats_the_messages() -> None:
    assert render_chat(Templated(), MESSAGES) == RenderedPrompt(
        "system:Rules.|user:Question?|assistant:", templated=True
    )


def test_without_a_template_the_contents_are_plain_text() -> None:
    class Base:
        chat_template = None

    rendered = render_chat(Base(), MESSAGES)
    assert rendered == RenderedPrompt("Rules.\n\nQuestion?\n\n", templated=False)
    assert plain_text(MESSAGES[1:]) == "Question?\n\n"


def test_a_template_without_a_system_role_gets_it_in_the_first_user_message() -> None:
    tokenizer = Templated(system_role=False)
    rendered = render_chat(tokenizer, MESSAGES)
    assert rendered.text == "user:Rules.\n\nQuestion?|assistant:"
    assert len(tokenizer.seen) == 2 and MESSAGES[1]["content"] == "Question?"  # the input is not changed


def test_a_template_error_without_a_system_message_is_raised() -> None:
    tokenizer = Templated()
    tokenizer.apply_chat_template = lambda *a, **k: (_ for _ in ()).throw(ValueError("broken"))  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="broken"):
        render_chat(tokenizer, MESSAGES[1:])


def test_fold_system_cases() -> None:
    assert fold_system(MESSAGES[1:]) == MESSAGES[1:]
    assert fold_system(MESSAGES[:1]) == [{"role": "user", "content": "Rules."}]

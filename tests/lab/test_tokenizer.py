"""The character tokenizer: a round trip, a load by AutoTokenizer, and the chat template rendering
the training format (what the transformers backend and `transformers serve` send the model)."""

from __future__ import annotations

from pathlib import Path

from karma.agents.backends.chat_format import render_chat
from karma.lab.tokenizer import CHARACTERS, build_tokenizer, save_tokenizer, training_text


def test_round_trip_one_token_per_character() -> None:
    tokenizer = build_tokenizer()
    text = "count a abcab " + CHARACTERS
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text
    assert len(set(tokenizer(CHARACTERS, add_special_tokens=False)["input_ids"])) == len(CHARACTERS)


def test_auto_tokenizer_loads_it_with_its_special_tokens_and_template(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    save_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == ("<pad>", "<bos>", "<eos>")
    assert len({tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}) == 3
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "12+34"}]
    assert (
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == "<bos>12+34="
    )
    assert (
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False) == "<bos>12+34"
    )
    answered = [*messages, {"role": "assistant", "content": "46"}]
    assert tokenizer.apply_chat_template(answered, tokenize=False) == training_text("12+34", "46")
    rendered = render_chat(tokenizer, messages[1:])
    assert rendered.templated and rendered.text == "<bos>12+34="
    ids = tokenizer(rendered.text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and len(ids) == len("12+34=") + 1

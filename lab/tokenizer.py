"""The lab models' tokenizer: one token per character, in Hugging Face format.

Built with the `tokenizers` library (WordLevel over single characters) and wrapped as a
`PreTrainedTokenizerFast`, so `AutoTokenizer.from_pretrained(dir)` loads it like any model's.
Its chat template renders the last user message in the training format, `<bos>question=`, and
the model continues with the answer and `<eos>`: the transformers backend
(agents/backends/chat_format.py), `transformers serve` and `vllm serve` all apply a chat template
when there is one, so the models are asked exactly as they were taught.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL = (PAD, BOS, EOS, UNK)
# Every character a question or answer of lab/skills.py may hold, and a few more for free text.
CHARACTERS = string.digits + string.ascii_lowercase + " +-*=.,?"
SEPARATOR = "="  # between the question and the answer

# The last user message (a judge's or a user's system message is not part of the format);
# with an assistant message after it (a training pair rendered by hand), the answer and <eos>.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(question='', answer=none) -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{%- set ns.question = message['content'] -%}"
    "{%- set ns.answer = none -%}"
    "{%- elif message['role'] == 'assistant' -%}{%- set ns.answer = message['content'] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{ bos_token }}{{ ns.question }}"
    "{%- if ns.answer is not none -%}" + SEPARATOR + "{{ ns.answer }}{{ eos_token }}"
    "{%- elif add_generation_prompt -%}" + SEPARATOR + "{%- endif -%}"
)


def vocabulary() -> dict[str, int]:
    """Special tokens first (pad 0, bos 1, eos 2, unk 3), then one id per character."""
    return {token: i for i, token in enumerate((*SPECIAL, *CHARACTERS))}


def build_tokenizer() -> Any:
    """A PreTrainedTokenizerFast over `vocabulary()`, with bos/eos/pad/unk and the chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab=vocabulary(), unk_token=UNK))
    # Every character its own word (spaces included), and decoding glues them back without spaces.
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",  # decoder-only generation: every reply starts right after its prompt
        model_max_length=64,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tokenizer(directory: Path) -> None:
    build_tokenizer().save_pretrained(str(directory))


def prompt_text(question: str) -> str:
    """What the chat template renders for a question with the generation prompt."""
    return f"{BOS}{question}{SEPARATOR}"


def training_text(question: str, answer: str) -> str:
    return f"{BOS}{question}{SEPARATOR}{answer}{EOS}"

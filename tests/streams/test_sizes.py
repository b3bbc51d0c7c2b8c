"""Record sizes: what a prompt's texts may take of the smallest record limit on their way, and
the topics' limits as the broker reports them (a real broker for those)."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka.admin import NewTopic

from karma.schemas.models import Winner
from karma.streams.codecs import encode
from karma.streams.config import KarmaSettings
from karma.streams.kafka_clients import new_admin
from karma.streams.sizes import (
    PRODUCER_MAX_REQUEST_BYTES,
    RECORD_OVERHEAD_BYTES,
    Limit,
    TextBudget,
    read_limits,
    record_size,
    text_cost,
)
from tests import records

LONGEST_ID = "m" * 256  # schemas/models.py Id: model names and ids are at most 256 characters


def test_the_overhead_covers_a_preference_with_the_longest_names_and_empty_texts() -> None:
    a = records.candidate(LONGEST_ID, "r" * 256, text="")
    b = records.candidate(LONGEST_ID[:-1] + "n", "s" * 256, text="")
    pair = records.kin_pair("p" * 256, a, b, pair_id="q" * 256, prompt_text="?", policy="hybrid")
    preference = records.preference_on(pair, Winner.TIE, judge="j" * 256).model_copy(
        update={"preference_id": "x" * 256, "soft_label": 0.5}
    )
    assert record_size(b"p" * 256, encode(preference)) < RECORD_OVERHEAD_BYTES


def test_a_prompt_leaves_each_of_two_answers_half_of_what_it_does_not_take() -> None:
    budget = TextBudget("karma.pairs", Limit(100_000, "test"), min_answer_room=16_384)
    prompt = "q" * 40_000
    room = budget.room(prompt)
    assert room == (100_000 - RECORD_OVERHEAD_BYTES - text_cost(prompt)) // 2
    assert budget.prompt_too_large(prompt) is None
    assert budget.answer_too_large(prompt, "a" * (room - 2)) is None  # json adds two quotes
    reason = budget.answer_too_large(prompt, "a" * room)
    assert reason is not None and f"may take {room:,}" in reason and "karma.pairs" in reason


def test_a_prompt_that_leaves_too_little_room_for_two_answers_is_too_large_and_says_why() -> None:
    budget = TextBudget("karma.responses", Limit(1_000_000, "the producer's max_request_size"), 16_384)
    reason = budget.prompt_too_large("x" * 999_000)
    assert reason is not None
    assert "999,002 bytes" in reason and "karma.responses takes records of at most 1,000,000 bytes" in reason


def test_text_is_measured_as_escaped_json_never_less_than_its_utf8() -> None:
    for text in ("plain", "naïve café", "日本語", "tab\tand\x00nul", "🙂"):
        assert text_cost(text) >= len(text.encode())
    assert text_cost("日本語") == len('"\\u65e5\\u672c\\u8a9e"')


def test_limits_are_read_from_the_topics_own_configuration(kafka_bootstrap: str) -> None:
    run = uuid.uuid4().hex[:8]
    settings = KarmaSettings(bootstrap_servers=kafka_bootstrap, max_message_bytes=50_000)
    small, plain, missing = f"sz{run}.small", f"sz{run}.plain", f"sz{run}.missing"

    async def scenario() -> None:
        admin = new_admin(settings)
        await admin.start()
        try:
            await admin.create_topics(
                [
                    NewTopic(small, 1, 1, topic_configs={"max.message.bytes": "5000"}),
                    NewTopic(plain, 1, 1),
                ]
            )
        finally:
            await admin.close()

    asyncio.run(scenario())
    limits = asyncio.run(read_limits(settings, [small, plain, missing]))
    assert limits.of(small) == Limit(5_000, "its max.message.bytes")
    # The broker's default (1,048,588) is above what the producer sends at all.
    assert limits.of(plain) == Limit(PRODUCER_MAX_REQUEST_BYTES, "the producer's max_request_size")
    assert limits.of(missing).max_bytes == 50_000 and "setting max_message_bytes" in limits.of(missing).source
    assert limits.smallest([small, plain]) == (small, limits.of(small))

"""Producers nobody on this project wrote publish plain JSON prompts: librdkafka (through
confluent-kafka) and Kafka's own console producer from the broker's distribution. The prompts
become preferences like the SDK's framed Avro ones; what is not a prompt goes to the DLQ with the
reason, and the audit accounts for every message."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from karma.localkafka.broker import LocalBroker
from karma.schemas.models import DeadLetter, Prompt, prompt_id_for
from tests.conftest import local_broker_config
from tests.e2e.conftest import audit, ids

CONSOLE_PRODUCER = "org.apache.kafka.tools.ConsoleProducer"


def publish_with_librdkafka(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    for key, value in messages:
        producer.produce(topic, value=value, key=key)
    assert producer.flush(30) == 0, "librdkafka could not deliver every message"


def publish_with_console_producer(lib_dir: Path, bootstrap: str, topic: str, lines: list[str]) -> None:
    """`kafka-console-producer.sh` as an operator runs it: one message per stdin line, `key|value`."""
    java = shutil.which("java")
    assert java, "java is needed for the broker anyway"
    done = subprocess.run(
        [
            java,
            "-cp",
            f"{lib_dir}/*",
            CONSOLE_PRODUCER,
            "--bootstrap-server",
            bootstrap,
            "--topic",
            topic,
            "--property",
            "parse.key=true",
            "--property",
            "key.separator=|",
        ],  # fmt: skip
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_json_prompts_from_other_producers_become_preferences(pipeline_factory: Any, tmp_path: Path) -> None:
    pipeline = pipeline_factory()
    settings = pipeline.settings
    topic = settings.topic("prompts")

    objects = [{"prompt_id": f"json-{i}", "text": f"Plain JSON prompt {i}"} for i in range(3)]
    bare = ["A bare JSON string, no key", "Another bare string"]
    publish_with_librdkafka(
        settings.bootstrap_servers,
        topic,
        [(o["prompt_id"].encode(), json.dumps(o).encode()) for o in objects]
        + [(None, json.dumps(text).encode()) for text in bare]
        + [(b"bad-xml", b"<prompt>not JSON, not Avro</prompt>"), (b"bad-typo", b'{"txt": "typo"}')],
    )
    lib_dir = LocalBroker(local_broker_config(tmp_path / "jars-only")).ensure_jars()
    publish_with_console_producer(
        lib_dir,
        settings.bootstrap_servers,
        topic,
        ['console-1|{"prompt_id": "console-1", "text": "From the console producer", "source": "ops"}'],
    )

    prompts = [Prompt(prompt_id=o["prompt_id"], text=o["text"]) for o in objects]
    prompts += [Prompt(prompt_id=prompt_id_for(text, "json"), text=text) for text in bare]
    prompts.append(Prompt(prompt_id="console-1", text="From the console producer"))
    expected = pipeline.expected_preference_ids(prompts)
    pipeline.start_worker()

    received = pipeline.wait_for("preferences", lambda r: set(ids(r)) >= expected)
    assert set(ids(received)) == expected
    letters = pipeline.wait_for("dlq", lambda r: len(r) >= 2)
    by_prompt = {r.record.prompt_id: r.record for r in letters if isinstance(r.record, DeadLetter)}
    assert set(by_prompt) == {"bad-xml", "bad-typo"}
    assert by_prompt["bad-xml"].error_type == "decode"
    assert "first byte is 0x3c: neither framed Avro (0x00) nor JSON" in by_prompt["bad-xml"].reason
    assert by_prompt["bad-typo"].error_type == "validation"
    assert "missing 'text'" in by_prompt["bad-typo"].reason
    assert by_prompt["bad-typo"].value == b'{"txt": "typo"}'  # the bytes, for a replay once fixed

    ledger = audit(pipeline)
    assert ledger["counts"]["unaccounted"] == 0
    assert ledger["counts"]["complete"] == len(prompts)

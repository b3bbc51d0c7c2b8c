"""Every Kafka client of the project is made here (consumers, producers, admin clients), so how
they connect (bootstrap servers, and the cluster's security settings) is set in one place."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from karma.streams.config import KarmaSettings


def client_options(settings: KarmaSettings) -> dict[str, Any]:
    """The keyword arguments every aiokafka client of these settings gets."""
    return {"bootstrap_servers": settings.bootstrap_servers}


def new_consumer(settings: KarmaSettings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(*topics, **client_options(settings), **options)


def new_producer(settings: KarmaSettings, **options: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(**client_options(settings), **options)


def new_admin(settings: KarmaSettings, **options: Any) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**client_options(settings), **options)

"""The ACLs of streams/acls.py on a real cluster: created, deleted and listed through the admin
client (aiokafka's CreateAcls, DeleteAcls and DescribeAcls requests; its admin client has the
protocol but no method for them). The caller's credentials must be the admin's (a super user,
or ALTER on the cluster)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from aiokafka.errors import for_code
from aiokafka.protocol.admin import CreateAclsRequest, DeleteAclsRequest, DescribeAclsRequest
from aiokafka.protocol.api import Request

from karma.streams.acls import Acl
from karma.streams.config import KarmaSettings
from karma.streams.kafka_clients import new_admin

__all__ = ["create_acls", "delete_acls", "describe_acls"]

# Kafka's wire codes (org.apache.kafka.common.acl and resource).
_RESOURCE = {"topic": 2, "group": 3}
_PATTERN = {"literal": 3, "prefixed": 4}
_OPERATION = {"read": 3, "write": 4, "create": 5, "describe": 8}
_ANY = 1
_ALLOW = 3
_ALL_HOSTS = "*"


def _request_args(acl: Acl) -> tuple[int, str, int, str, str, int, int]:
    return (
        _RESOURCE[acl.resource],
        acl.name,
        _PATTERN[acl.pattern],
        f"User:{acl.principal}",
        _ALL_HOSTS,
        _OPERATION[acl.operation],
        _ALLOW,
    )


def _raise_on(error_code: int, error_message: str | None, what: str) -> None:
    if error_code:
        raise for_code(error_code)(f"{what}: {error_message or 'refused'}")


async def _send_each(settings: KarmaSettings, requests: list[Request]) -> list[Any]:
    """Sends the requests at once through one admin client; their responses, in order."""
    admin = new_admin(settings, request_timeout_ms=10_000)
    await admin.start()
    try:
        return await asyncio.gather(*(admin._send_request(request) for request in requests))
    finally:
        await admin.close()


async def create_acls(settings: KarmaSettings, acls: Iterable[Acl]) -> int:
    """Creates the ACLs (one that exists already is left as it is); returns how many were sent."""
    acls = list(acls)
    responses = await _send_each(settings, [CreateAclsRequest(*_request_args(acl)) for acl in acls])
    for acl, response in zip(acls, responses, strict=True):
        for error_code, error_message in response.creation_responses:
            _raise_on(error_code, error_message, f"creating {acl}")
    return len(acls)


async def delete_acls(settings: KarmaSettings, acls: Iterable[Acl]) -> int:
    """Deletes exactly these ACLs; returns how many the broker deleted."""
    responses = await _send_each(settings, [DeleteAclsRequest(*_request_args(acl)) for acl in acls])
    deleted = 0
    for response in responses:
        for error_code, error_message, matching in response.filter_responses:
            _raise_on(error_code, error_message, "deleting ACLs")
            deleted += len(matching)
    return deleted


async def describe_acls(settings: KarmaSettings) -> list[Acl]:
    """Every ALLOW ACL on topics and groups that the broker holds, sorted."""
    names = {code: name for name, code in _RESOURCE.items()}
    patterns = {code: name for name, code in _PATTERN.items()}
    operations = {code: name for name, code in _OPERATION.items()}
    [response] = await _send_each(settings, [DescribeAclsRequest(_ANY, None, _ANY, None, None, _ANY, _ALLOW)])
    _raise_on(response.error_code, response.error_message, "describing ACLs")
    found = []
    for resource_type, name, pattern, entries in response.resources:
        for principal, _host, operation, _permission in entries:
            if resource_type in names and pattern in patterns and operation in operations:
                found.append(
                    Acl(
                        principal.removeprefix("User:"),
                        names[resource_type],  # type: ignore[arg-type]
                        name,
                        patterns[pattern],  # type: ignore[arg-type]
                        operations[operation],  # type: ignore[arg-type]
                    )
                )
    return sorted(found)

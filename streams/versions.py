"""The faust-streaming and aiokafka releases the workers were written and tested against.

The workers override private internals of both: faust-streaming's consumer drain loop, fetch and
seek after a flow stop (streams/transport.py), its table recovery's hand-over to the agents
(streams/recovery.py) and its table changelog writes (streams/delivery.py ConfirmedTable), and
they lean on aiokafka's fetcher re-reading the partitions it is given. A release that changes
any of those can lose messages silently, so pyproject.toml pins both and a worker checks at
start that the installed releases are these. Another release stops the worker with a message
that names it, unless `allow_untested_versions` is set (then it is a warning): run the suite
(`make test`) against a new release before you allow it.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

log = logging.getLogger(__name__)

# Keep in step with the pins in pyproject.toml (tests/streams/test_versions.py checks that).
WRITTEN_AGAINST: dict[str, str] = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}


class UntestedVersionError(RuntimeError):
    """An installed faust-streaming or aiokafka release that the overrides were not written for."""


def installed(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def untested_versions(installed_of: dict[str, str | None] | None = None) -> list[str]:
    """One line per package whose installed release is not the one written against."""
    found = installed_of if installed_of is not None else {p: installed(p) for p in WRITTEN_AGAINST}
    return [
        f"{package} {found.get(package) or '(not installed)'} is installed; the workers override its "
        f"internals as of {package} {wanted} (pip install '{package}=={wanted}')"
        for package, wanted in WRITTEN_AGAINST.items()
        if found.get(package) != wanted
    ]


def check_versions(allow_untested: bool, installed_of: dict[str, str | None] | None = None) -> None:
    """Raises UntestedVersionError naming each release that differs; with `allow_untested`, logs a
    warning instead."""
    problems = untested_versions(installed_of)
    if not problems:
        return
    if allow_untested:
        for problem in problems:
            log.warning("%s; starting anyway (allow_untested_versions)", problem)
        return
    raise UntestedVersionError(
        "; ".join(problems) + ". Set allow_untested_versions (KARMA_ALLOW_UNTESTED_VERSIONS=true) to start "
        "anyway, after running the suite against it"
    )

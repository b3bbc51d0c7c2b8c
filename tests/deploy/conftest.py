"""The deploy tests reuse the end-to-end pipeline fixture (tests/e2e/conftest.py)."""

from __future__ import annotations

from tests.e2e.conftest import pipeline_factory

__all__ = ["pipeline_factory"]

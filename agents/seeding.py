"""Deterministic randomness: the same parts always give the same random stream, so a replayed
message makes the same choices (pair sampling, simulated text and verdicts)."""

from __future__ import annotations

import hashlib
import random


def seeded_rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))

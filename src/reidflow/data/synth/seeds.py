"""Independent random streams derived from (seed, domain name, purpose, index).

Nothing here reads global state, the clock, ``hash()`` (salted per process) or dict/set order, so
the same inputs give the same stream in any process; this is what makes the output bytes
independent of the number of workers.
"""

from __future__ import annotations

import hashlib
from enum import IntEnum

import numpy as np


class Stream(IntEnum):
    SPLIT = 1
    CAMERA = 2
    IDENTITY = 3
    PLAN = 4
    RENDER = 5
    DISTRACTOR = 6
    DISTRACTOR_IDENTITY = 7
    DISTRACTOR_RENDER = 8


def _name_key(domain: str) -> list[int]:
    digest = hashlib.sha256(domain.encode("utf-8")).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]


def stream(seed: int, domain: str, purpose: Stream, index: int = 0) -> np.random.Generator:
    """A generator for one purpose (e.g. the looks of identity ``index``) of one domain."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    entropy = [int(seed), *_name_key(domain), int(purpose), int(index)]
    return np.random.default_rng(np.random.SeedSequence(entropy))

"""Shared by the benchmarks: wall time and peak traced memory of one call."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from typing import Any


def measure(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
    """(result, seconds, peak extra MiB allocated through Python/NumPy during the call)."""
    tracemalloc.start()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, seconds, peak / 2**20

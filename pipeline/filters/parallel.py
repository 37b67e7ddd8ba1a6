"""Vectorised batches on several cores: threads, because the batch kernels (Arrow compute,
numpy sorts and ufuncs) release the GIL, so no data is copied between processes."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from pydantic import Field

T = TypeVar("T")
R = TypeVar("R")

MAX_DEFAULT_WORKERS = 4  # more threads mostly add memory (one batch in flight each)


def workers_field():
    return Field(None, ge=1, description="Threads over the row batches (default: the CPU count, "
                                         f"at most {MAX_DEFAULT_WORKERS})")


def map_batches(fn: Callable[[T], R], batches: Sequence[T], workers: int | None = None) -> list[R]:
    """`[fn(b) for b in batches]`, in order, on up to `workers` threads."""
    n = workers or min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS)
    if n <= 1 or len(batches) <= 1:
        return [fn(b) for b in batches]
    with ThreadPoolExecutor(min(n, len(batches)), thread_name_prefix="prefpipe-batch") as pool:
        return list(pool.map(fn, batches))

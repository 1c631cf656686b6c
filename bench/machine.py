"""What the bench scripts beside this one share: the machine they ran on, a clean Redis."""

from __future__ import annotations

import os
import platform
from contextlib import suppress

import redis

from memory_tiers import TIERS, Keys


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo."""
    with suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """Cores and CPU model, e.g. '2 x Intel(R) Xeon(R) Processor'."""
    return f"{os.cpu_count()} x {cpu_name()}"


def clean(client: redis.Redis, prefix: str) -> None:
    """Drop the indexes and keys under `prefix` (benches only: the service never scans)."""
    keys = Keys(prefix)
    for tier in TIERS:
        with suppress(redis.ResponseError):
            client.execute_command("FT.DROPINDEX", keys.index(tier))
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}:*", count=10_000):
        batch.append(key)
        if len(batch) == 10_000:
            client.unlink(*batch)
            batch = []
    if batch:
        client.unlink(*batch)

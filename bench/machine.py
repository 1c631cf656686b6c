"""What a bench says about the machine it ran on (imported by the scripts beside it)."""

from __future__ import annotations

import os
import platform
from contextlib import suppress


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

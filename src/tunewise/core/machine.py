"""The machine a measurement was taken on."""

from __future__ import annotations

import os

__all__ = ["measuring_cores"]


def measuring_cores() -> int:
    """Cores this process may run on: recorded as ``latency_cores`` with every latency the baseline
    and train stages measure, so the decision scales a latency from the machine that measured it."""
    try:
        return len(os.sched_getaffinity(0)) or 1  # a container's or taskset's share, not the host's
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1

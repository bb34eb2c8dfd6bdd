"""The machine a measurement was taken on."""

from __future__ import annotations

import os

__all__ = ["end_with_parent", "measuring_cores"]


def measuring_cores() -> int:
    """Cores this process may run on: recorded as ``latency_cores`` with every latency the baseline
    and train stages measure, so the decision scales a latency from the machine that measured it."""
    try:
        return len(os.sched_getaffinity(0)) or 1  # a container's or taskset's share, not the host's
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def end_with_parent() -> None:
    """Have the kernel stop this process when its parent ends (Linux; elsewhere nothing).

    For worker processes that write into a run folder: a parent killed with SIGKILL cannot stop
    them itself, and a worker left running would go on writing beside the resumed run."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    pr_set_pdeathsig = 1  # <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # the parent ended before the call took effect
        os.kill(os.getpid(), signal.SIGTERM)

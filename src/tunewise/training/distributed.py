"""Several training processes on one machine: ``tunewise train --nproc N``.

The command re-launches itself under ``torch.distributed.run`` (torchrun) with N workers. Each
worker joins the process group (gloo on CPU, NCCL on GPUs), and the recipe in
:mod:`tunewise.training.recipe` shards the batches by rank and wraps the loss in DistributedDataParallel.
Rank 0 runs the train stage as usual (it logs, validates, checkpoints and writes the outputs); the
other ranks only take part in training (:func:`tunewise.pipeline.stages.train.fit_worker`).

torchrun is used rather than ``torch.multiprocessing.spawn`` because it is what teams already run
on multi-GPU nodes and clusters: the same command line scales to ``--nnodes`` without changes here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from datetime import timedelta

__all__ = ["WORKER_ENV", "barrier", "destroy_process_group", "in_worker", "init_process_group", "launch", "rank"]

# Set in the launched workers, so a worker does not launch again.
WORKER_ENV = "TUNEWISE_DDP_WORKER"
# Rank 0 predicts the test set between candidates while the other ranks wait at the next
# collective: the default 30 minutes is too short for an LLM candidate on a CPU.
COLLECTIVE_TIMEOUT = timedelta(hours=6)


def in_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1" and "LOCAL_RANK" in os.environ


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``tunewise <argv>`` in ``nproc`` worker processes with torchrun; returns the exit code."""
    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {nproc}")
    # The workers do not get --nproc (the environment tells them they are workers); torchrun's own
    # parser would also take it for an abbreviation of its --nproc-per-node.
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "tunewise.cli.main",
        *args,
    ]
    env = {**os.environ, WORKER_ENV: "1"}
    # torchrun sets OMP_NUM_THREADS=1 per worker unless it is set; the recipe picks threads per rank itself.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(cmd, env=env)


def init_process_group() -> tuple[int, int]:
    """Join the group torchrun set up (environment variables); returns (rank, world size)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    return dist.get_rank(), dist.get_world_size()


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()

"""How a run computes on this machine: the device, native bf16 and autocast, the thread count,
the activation-memory estimate (and so gradient checkpointing), glibc's heap, the rank under
torch.distributed, and transformers' load report kept quiet. torch is imported on use.

Speed and memory (measured on SmolLM2-135M, demo replies, batch 8, max_length 256, 1 thread of a
shared AVX512-BF16 CPU; numbers in the train report): batches are grouped by length (shuffled
mega-batches, sorted inside: little padding) and padded per batch; attention is torch SDPA;
``precision: auto`` runs the matmuls under bf16 autocast where the hardware has native bf16
(2x the tokens/s of fp32 here). Activations, not weights, fill the memory of a small model (2.3 MB
a token in fp32): gradient checkpointing is switched on for just enough layers (every n-th) to keep
the largest batch under ``activation_memory_gib``, and stays off for short batches.
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunewise.config.sections import TrainConfig
from tunewise.training.plan import RunPlan
from tunewise.training.settings import TrainError, adapted_layer_count


@dataclass
class Runtime:
    """How this run computes: resolved from the settings, the hardware and the plan."""

    device: str
    precision: str  # "fp32" or "bf16"
    threads: int
    checkpoint_every_n_layers: int | None  # gradient checkpointing of every n-th layer; None: off
    activation_gib: float  # estimated activations of the largest batch without checkpointing
    activation_gib_per_token: float = 0.0
    activation_budget_gib: float = 0.0


def resolve_runtime(config: TrainConfig, plan: RunPlan, base_config: Any) -> Runtime:
    device = _resolve_device(config)
    native = native_bf16(device)
    if config.precision == "bf16" and not native:
        raise TrainError(
            f"train.precision: bf16, but this {'GPU' if device == 'cuda' else 'CPU'} has no native bf16 "
            "(CPU: AVX512-BF16 or AMX); emulated bf16 is slower than fp32: use precision: fp32 or auto"
        )
    precision = "bf16" if config.precision == "bf16" or (config.precision == "auto" and native) else "fp32"
    largest = plan.batch_size * plan.longest
    layers = layers_keeping_activations(config, plan, base_config)
    estimate = activation_gib(base_config, largest, precision, layers=layers)
    every_n: int | None = None
    if config.gradient_checkpointing:
        every_n = 1
    elif config.gradient_checkpointing is None and plan.method == "lora" and estimate > config.activation_memory_gib:
        # Checkpointing a share f of the layers keeps (1 - f) of the activations: the smallest f that
        # fits the budget, as every n-th layer (n = 1: all), costs the least recomputation.
        share = 1 - config.activation_memory_gib / estimate
        every_n = max(1, int(1 / share))
    threads = config.num_threads or _fastest_thread_count(max(1, (os.cpu_count() or 1) // max(plan.world_size, 1)))
    # Forced on (gradient_checkpointing: true): a budget of 0 makes every batch recompute.
    budget = 0.0 if config.gradient_checkpointing else config.activation_memory_gib
    return Runtime(
        device,
        precision,
        threads,
        every_n,
        round(estimate, 3),
        activation_gib(base_config, 1, precision, layers=layers),
        budget,
    )


def layers_keeping_activations(config: TrainConfig, plan: RunPlan, base_config: Any) -> int:
    """Layers whose activations backward needs: LoRA's adapted layers (below the lowest adapter
    nothing requires grad, so autograd keeps nothing), every layer of a fully trained encoder.

    Counting all 30 of SmolLM2's layers for a classifier adapted on 10 estimated BANKING77's largest
    batch at 1.97 GiB instead of 0.66, over the 0.75 GiB budget: every layer was checkpointed and the
    frozen layers' output was not cached, 0.93 steps/s in the default run.
    """
    n_layers = int(getattr(base_config, "num_hidden_layers", 0) or 0)
    if plan.method != "lora" or not n_layers:
        return n_layers
    return adapted_layer_count(plan.task, n_layers, config.lora_layers)


def _resolve_device(config: TrainConfig) -> str:
    import torch

    if config.device == "cuda" and not torch.cuda.is_available():
        raise TrainError("train.device: cuda, but torch sees no CUDA device; use device: auto or cpu")
    return "cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()) else "cpu"


def native_bf16(device: str) -> bool:
    import torch

    if device == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:  # oneDNN's check: AVX512-BF16 or AMX; without them bf16 matmuls are emulated (slow)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    import torch

    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16")


def activation_gib(base_config: Any, tokens: int, precision: str, *, layers: int | None = None) -> float:
    """Activation memory a transformer keeps for backward, for ``tokens`` tokens in one batch.

    Per layer and token about 16 vectors of the hidden size and 6 of the MLP size are saved
    (norm inputs and outputs, q/k/v, attention output, SwiGLU gate/up/product, LoRA dropout
    copies); measured on SmolLM2 with LoRA on all projections: 2.28 MB per token in fp32 (the
    formula gives 2.21), 0.65x that under bf16 autocast.
    """
    hidden = int(getattr(base_config, "hidden_size", 0) or 0)
    mlp = int(getattr(base_config, "intermediate_size", 0) or 4 * hidden)
    if layers is None:  # every layer keeps its activations
        layers = int(getattr(base_config, "num_hidden_layers", 0) or 0)
    bytes_per_value = 4.0 if precision == "fp32" else 2.6
    return tokens * layers * (16 * hidden + 6 * mlp) * bytes_per_value / 2**30


PROBE_ROUNDS = 5  # _fastest_thread_count: interleaved rounds of the one- and many-thread probes
ONE_THREAD_MARGIN = 0.7  # one thread when its probe takes under 0.7x the many-thread one's (median round)


def _fastest_thread_count(limit: int) -> int:
    """``limit`` threads, or 1 if a short probe (a small MLP stack, ~50 ms a round) runs clearly faster on one.

    With other processes busy on the same cores, OpenMP threads wait for each other at every
    operation: on this project's shared 2-core machine two threads ran training steps 2x and
    inference 6x slower than one. Measured rather than guessed from the load average, which also
    counts this process's own earlier work.
    """
    import torch

    if limit <= 1:
        return 1
    before = torch.get_num_threads()
    generator = torch.Generator().manual_seed(0)
    x, w1, w2 = (torch.randn(shape, generator=generator) for shape in ((64, 576), (576, 1536), (1536, 576)))

    def probe(threads: int) -> float:
        torch.set_num_threads(threads)
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            h = x
            for _ in range(4):
                h = torch.nn.functional.silu(h @ w1) @ w2
                h = h / (h.pow(2).mean(-1, keepdim=True).sqrt() + 1e-6)
            best = min(best, time.perf_counter() - started)
        return best

    try:
        # The median of interleaved rounds, and one thread only when clearly faster: this 2-core
        # machine's second core is at times taken away for a few hundred ms, and a single probe pair
        # then put one thread ahead (2 of 80 times by more than 1.9x) though two threads trained
        # 1.27x faster over minutes; a wrong pick costs training 1.3-1.4x. Busy cores make one thread
        # 2-6x faster in every round.
        return threads_from_probe([probe(1) / probe(limit) for _ in range(PROBE_ROUNDS)], limit)
    finally:
        torch.set_num_threads(before)


def threads_from_probe(ratios: list[float], limit: int) -> int:
    """1 when the median round's one-thread / ``limit``-thread time is under ONE_THREAD_MARGIN, else ``limit``."""
    return 1 if statistics.median(ratios) < ONE_THREAD_MARGIN else limit


def load_base_config(base_path: Path, method: str, trust_remote_code: bool) -> Any:
    """The base model's config (sizes), read without loading weights."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(base_path, local_files_only=True, trust_remote_code=trust_remote_code)


def rank_and_world_size() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (macOS, musl): their allocators behave differently; nothing to do
        return None


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 4 << 20


def bound_heap_growth() -> None:
    """Serve allocations of 4 MiB and more straight from mmap on a CPU (glibc), for this process.

    A step allocates and frees hundreds of MB of differently sized tensors. glibc's default
    (a threshold that grows up to 32 MiB) keeps them on the heap, which fragments: the peak
    resident size of a batch-8, length-256 LoRA step of SmolLM2 varied between 2.5 and 3.7 GiB
    from run to run. Measured (4 steps, 2 threads): no bound 2.96 GiB at 244 tokens/s; 16 MiB
    2.75 GiB, 236; 8 MiB 2.7-2.8 GiB, 249; 4 MiB 1.89 GiB, 195; 1 MiB 1.62 GiB, 128-136 (every
    mmap'd page is zeroed by the kernel on first touch: small thresholds cost speed).
    """
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        libc.malloc_trim(0)  # what loading left on the heap


def is_oom(error: BaseException) -> bool:
    text = str(error)
    return "out of memory" in text.lower() or "DefaultCPUAllocator" in text


def quiet_transformers() -> contextlib.AbstractContextManager:
    """Silence transformers' load report (missing `score` weights are expected: the head is new)."""
    import transformers

    @contextlib.contextmanager
    def quiet() -> Iterator[None]:
        level = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()
        try:
            yield
        finally:
            transformers.logging.set_verbosity(level)
            if bars:
                transformers.utils.logging.enable_progress_bar()

    return quiet()

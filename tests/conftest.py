"""Shared fixtures: paths to the real BANKING77 data beside the clone, and a quiet environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BANKING77 = SHARED / "datasets" / "banking77"

os.environ.setdefault("TUNEWISE_PROGRESS", "off")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def banking77() -> Path:
    if not (BANKING77 / "train.csv").exists():
        pytest.fail(f"BANKING77 not found at {BANKING77}; CI keeps ../shared beside the clone")
    return BANKING77


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module single-threaded: on a shared 2-core machine a second OpenMP thread spins and
    made every LLM forward pass several times slower (measured 4x)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

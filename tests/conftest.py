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

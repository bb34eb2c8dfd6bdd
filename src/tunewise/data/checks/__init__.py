"""Curation checks. Each module defines Check subclasses and registers them with
``tunewise.data.curate.register``; importing this package registers every check that exists."""

from __future__ import annotations

import importlib

for _module in ("text", "pii", "conflicts", "dedup", "labels", "topic", "generation"):
    try:
        importlib.import_module(f"{__name__}.{_module}")
    except ModuleNotFoundError as exc:  # a module not written yet; anything else is a real error
        if exc.name != f"{__name__}.{_module}":
            raise

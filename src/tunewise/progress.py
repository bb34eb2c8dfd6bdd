"""Progress display for long work: rows or steps, rate and ETA (Rich).

One helper so every stage shows the same columns; it writes to stderr so that stdout stays
clean for ``--json`` output, and stays quiet when not on a terminal unless forced.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


class _Rate(TextColumn):
    def __init__(self, unit: str) -> None:
        super().__init__("")
        self.unit = unit

    def render(self, task):  # type: ignore[override]
        speed = task.finished_speed or task.speed
        from rich.text import Text

        return Text(f"{speed:,.0f} {self.unit}/s" if speed else f"- {self.unit}/s", style="cyan")


@contextmanager
def progress(description: str, total: int | None, unit: str = "rows") -> Iterator:
    """``with progress("hashing", n) as advance: advance(k)``."""
    disable = os.environ.get("TUNEWISE_PROGRESS", "auto") == "off" or (
        not sys.stderr.isatty() and os.environ.get("TUNEWISE_PROGRESS") != "on"
    )
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
        transient=False,
    )
    with bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1, **fields) -> None:
            bar.update(task, advance=n, **fields)

        yield advance

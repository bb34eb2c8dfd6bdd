"""What every ``tunewise`` command group shares: the consoles, the common options, error handling.

tunewise.cli.main (the pipeline commands) and tunewise.cli.serve (serve, monitor, retrain, promote,
rollback) both import these; neither imports the other's internals.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tunewise.config.sections import ProjectConfig
from tunewise.core.errors import TunewiseError
from tunewise.models.loading import quiet_known_warnings
from tunewise.pipeline.precheck import load_config

__all__ = ["ConfigOpt", "JsonOpt", "RunIdOpt", "err", "out", "prepare_process"]

out = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="project config file")]
RunIdOpt = Annotated[str, typer.Option("--run-id", help="run folder name under runs/")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]


def prepare_process() -> None:
    """Runs before every command (the Typer app's callback), not when tunewise is imported.

    Weights load from local folders in well under a second: transformers' per-file loading bars
    only interleave with tunewise's own progress display. A user's explicit setting wins.
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    quiet_known_warnings()


def known_errors() -> tuple[type[BaseException], ...]:
    # every tunewise error (ConfigError, StageError, IngestError, ...) derives from TunewiseError
    return (TunewiseError, FileExistsError)


def fail_with(exc: BaseException) -> None:
    """The error's message and, for a TunewiseError with one, its hint (what to do) on stderr; exit 1."""
    err.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
    hint = getattr(exc, "hint", None) if isinstance(exc, TunewiseError) else None
    if hint:
        err.print(f"hint: {hint}", markup=False, highlight=False)
    raise typer.Exit(1)


def load_project(config: Path) -> ProjectConfig:
    try:
        return load_config(config)
    except known_errors() as exc:  # a ConfigError, or an error of the precheck load_config runs
        fail_with(exc)
        raise  # unreachable

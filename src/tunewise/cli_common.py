"""What every ``tunewise`` command group shares: the consoles, the common options, error handling.

tunewise.cli (the pipeline commands) and tunewise.serve_cli (serve, monitor, retrain, promote,
rollback) both import these; neither imports the other's internals.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .config import ConfigError, ProjectConfig, load_config

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


def _known_errors() -> tuple[type[BaseException], ...]:
    # imported when a command handles an error, not at start-up: candidates loads scikit-learn, and
    # `tunewise --help` should not wait for it
    from .artifacts import ArtifactWriteError
    from .candidates import CandidateError
    from .ingest import IngestError
    from .models import ModelNotFoundError
    from .runner import StageError

    return (ConfigError, StageError, IngestError, ModelNotFoundError, CandidateError, FileExistsError,
            ArtifactWriteError)


def _fail(exc: BaseException) -> None:
    err.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
    raise typer.Exit(1)


def _load(config: Path) -> ProjectConfig:
    try:
        return load_config(config)
    except ConfigError as exc:
        _fail(exc)
        raise  # unreachable

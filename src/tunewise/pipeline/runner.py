"""The stage runner: runs pipeline stages in order into ``runs/<run-id>/<stage>/``.

A stage is cached by a key made of its config sections, the keys of the stages it reads, the
digests of the user files it reads, and the tunewise version. A stage folder holds
``_stage.json`` (key, status, metrics, timing) written last and atomically: a stage whose marker
is missing or stale re-runs, so a killed run resumes at the stage it was in.

Each stage is a plain function ``fn(ctx) -> dict`` of metrics, registered with ``@stage``;
``tunewise run`` and the per-stage CLI commands both go through :func:`run_stages`.

One process at a time writes a run folder: :func:`run_lock` holds an ``flock`` on
``runs/<run-id>/.lock`` (which records the holder's pid and start time) for the whole of
:func:`run_stages`, and a second ``tunewise run`` on the folder is refused with that pid. The
kernel drops the lock when its holder dies, so a crashed or killed run never blocks the next one.
The other commands that write into a run folder take the same lock (:func:`existing_run_lock`).
Run folders are owner-only (0700): they hold the users' rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunewise import __version__
from tunewise.config.sections import ProjectConfig
from tunewise.core.artifacts import (
    PRIVATE_DIR_MODE,
    ArtifactWriteError,
    file_digest,
    make_private_dirs,
    read_json,
    write_json,
)
from tunewise.core.progress import console
from tunewise.core.runs import StageError, check_run_id, run_lock


@dataclass
class StageContext:
    config: ProjectConfig
    run_dir: Path
    name: str
    # run-time choices that do not change results (e.g. the curation engine): not in the cache key
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return self.run_dir / self.name

    def path(self, artifact: str) -> Path:
        """Path of this stage's own artifact."""
        return self.dir / artifact

    def input(self, stage: str, artifact: str) -> Path:
        """Path of an earlier stage's artifact; a clear error when it is not there."""
        p = self.run_dir / stage / artifact
        if not p.exists():
            raise StageError(
                f"stage '{self.name}' needs {p}, which stage '{stage}' writes; run `tunewise {stage}` first"
            )
        return p


@dataclass
class StageSpec:
    name: str
    fn: Callable[[StageContext], dict[str, Any]]
    sections: tuple[str, ...]
    reads: tuple[str, ...]  # earlier stages whose artifacts it reads
    user_files: Callable[[ProjectConfig], list[Path]] = field(default=lambda cfg: [])
    help: str = ""


# Registered in pipeline order; a stage module registers itself on import.
STAGES: dict[str, StageSpec] = {}
PIPELINE_ORDER = ("ingest", "curate", "split", "baseline", "train", "evaluate", "decide", "report")


def stage(
    name: str,
    *,
    sections: tuple[str, ...] = (),
    reads: tuple[str, ...] = (),
    user_files: Callable[[ProjectConfig], list[Path]] | None = None,
    help: str = "",
):
    if name not in PIPELINE_ORDER:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(PIPELINE_ORDER)}")

    def register(fn: Callable[[StageContext], dict[str, Any]]):
        STAGES[name] = StageSpec(
            name,
            fn,
            sections,
            reads,
            user_files or (lambda cfg: []),
            help or (fn.__doc__ or "").strip().splitlines()[0],
        )
        return fn

    return register


def load_stages() -> dict[str, StageSpec]:
    """Import the stage modules that exist, in pipeline order, so they register."""
    import importlib

    for name in PIPELINE_ORDER:
        try:
            importlib.import_module(f"tunewise.pipeline.stages.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"tunewise.pipeline.stages.{name}":
                raise
    return {n: STAGES[n] for n in PIPELINE_ORDER if n in STAGES}


def _stage_key(spec: StageSpec, cfg: ProjectConfig, upstream_keys: dict[str, str]) -> str:
    payload = {
        "version": __version__,
        "stage": spec.name,
        "task": cfg.task,
        "seed": cfg.seed,
        "sections": {s: cfg.section(s) for s in spec.sections},
        "upstream": {s: upstream_keys.get(s) for s in spec.reads},
        "files": {str(p): (file_digest(p) if p.is_file() else None) for p in spec.user_files(cfg)},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _marker(run_dir: Path, name: str) -> dict | None:
    p = run_dir / name / "_stage.json"
    try:
        return read_json(p)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run_stages(
    cfg: ProjectConfig,
    run_id: str = "default",
    *,
    only: list[str] | None = None,
    force: set[str] | None = None,
    tracker: Any = None,
    options: dict[str, Any] | None = None,
) -> dict[str, dict]:
    """Run (or reuse) the stages up to and including those in ``only`` (all when None).

    Stages that ``only`` needs are brought up to date first: asking for ``split`` runs ingest
    and curate when their cache is stale. Returns each stage's marker.
    """
    stages = load_stages()
    force = set(force or ())
    unknown = force - set(stages)
    if unknown:
        raise StageError(f"--force names unknown stage(s) {sorted(unknown)}; stages: {', '.join(stages)}")
    wanted = list(stages) if not only else _with_dependencies(stages, only)
    run_dir = cfg.resolve(cfg.runs_dir) / check_run_id(run_id)
    with ExitStack() as held:
        try:
            held.enter_context(run_lock(run_dir))
            # owner-only: the folder holds the users' rows (a folder made by an older version is tightened)
            os.chmod(run_dir, PRIVATE_DIR_MODE)
        except OSError as exc:  # runs_dir is a file, a read-only folder, ...
            raise StageError(f"cannot use run folder {run_dir}: {exc}") from exc
        return _run_locked(cfg, run_dir, stages, wanted, force, tracker, options)


def _run_locked(
    cfg: ProjectConfig,
    run_dir: Path,
    stages: dict[str, StageSpec],
    wanted: list[str],
    force: set[str],
    tracker: Any,
    options: dict[str, Any] | None,
) -> dict[str, dict]:
    try:
        write_json(run_dir / "config.json", cfg.model_dump(mode="json"))
    except ArtifactWriteError as exc:
        raise StageError(str(exc)) from exc

    keys: dict[str, str] = {}
    results: dict[str, dict] = {}
    for name in wanted:
        spec = stages[name]
        key = _stage_key(spec, cfg, keys)
        keys[name] = key
        marker = _marker(run_dir, name)
        if marker and marker.get("key") == key and marker.get("status") == "done" and name not in force:
            console.print(f"[dim]{name}: up to date (cached {marker.get('finished')})[/dim]")
            results[name] = marker
            continue
        stage_dir = run_dir / name
        try:
            if stage_dir.exists():  # stale or half-done: start the stage clean
                shutil.rmtree(stage_dir)
            make_private_dirs(stage_dir)
        except OSError as exc:
            raise StageError(f"stage '{name}' cannot start: cannot clear {stage_dir}: {exc}") from exc
        console.print(f"[bold cyan]{name}[/bold cyan]: running")
        t0 = time.perf_counter()
        try:
            metrics = spec.fn(StageContext(cfg, run_dir, name, dict(options or {}))) or {}
            elapsed = time.perf_counter() - t0
            marker = {
                "stage": name,
                "key": key,
                "status": "done",
                "seconds": round(elapsed, 3),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "metrics": metrics,
                "params": {s: cfg.section(s) for s in spec.sections},
            }
            write_json(stage_dir / "_stage.json", marker)
        except ArtifactWriteError as exc:
            # no marker: the stage runs again next time, from a clean folder
            raise StageError(f"stage '{name}' stopped: {exc}") from exc
        console.print(f"[green]{name}[/green]: done in {elapsed:.1f}s")
        if tracker is not None:
            tracker.log_stage(name, marker)
        results[name] = marker
    return results


def _with_dependencies(stages: dict[str, StageSpec], only: list[str]) -> list[str]:
    missing = [n for n in only if n not in stages]
    if missing:
        raise StageError(f"unknown or unavailable stage(s) {missing}; available: {', '.join(stages)}")
    needed: set[str] = set()

    def add(n: str) -> None:
        if n in needed:
            return
        needed.add(n)
        for dep in stages[n].reads:
            if dep in stages:
                add(dep)

    for n in only:
        add(n)
    return [n for n in stages if n in needed]


def timings(run_dir: Path) -> dict[str, float]:
    out = {}
    for name in PIPELINE_ORDER:
        m = _marker(run_dir, name)
        if m:
            out[name] = m.get("seconds", 0.0)
    return out

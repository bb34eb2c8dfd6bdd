"""distill's pool and teacher: the unlabelled rows (without the ones already labelled or doubted),
the teacher built or loaded from the run (a local candidate or the hosted LLM), and its labels.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunewise.core.artifacts import read_json
from tunewise.core.errors import TunewiseError
from tunewise.core.layout import RunLayout
from tunewise.core.progress import progress
from tunewise.core.text import dedup_keys
from tunewise.workflows.labelling import LabellingError, read_pool as read_unlabelled

API_TEACHERS = ("api_zero_shot", "api_few_shot")  # --agree asks both
LOCAL_CHUNK = 256  # rows per progress step for a local teacher


class DistillError(TunewiseError, ValueError):
    """Distillation cannot run as asked; the message names the file, option or field."""


class DistillStopped(DistillError):
    """Labelling stopped (a spending cap); what was labelled is written, ``summary`` says what."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


# =============================================================================================
# The pool


def read_pool(cfg: Any, path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """An unlabelled file as records (id, input, context, pool_id, source_file, source_line) and what
    was skipped, read by the same reader as ``add-labels`` (tunewise.workflows.labelling.read_pool); a label
    column is reported in ``info["ignored_label_column"]`` and not read."""

    try:
        frame, info = read_unlabelled(cfg, path)
    except LabellingError as exc:
        raise DistillError(f"--pool {exc}") from None
    frame = frame.rename(columns={"id": "pool_id"})
    frame.insert(0, "id", [f"teacher-{i}" for i in range(len(frame))])  # unique whatever the file's ids are
    frame["source_file"] = str(path)
    return frame, info


def exclude_known(pool: pd.DataFrame, frames: dict[str, pd.DataFrame], cfg: Any) -> tuple[pd.DataFrame, dict[str, int]]:
    """Drop pool rows the project already has: the same normalised text as a gold row (train: labelled
    already; validation or test: it would leak into what the students are scored on), near-duplicates
    of validation and test rows (the split stage's leakage measure), and copies inside the pool."""
    from tunewise.data.split import find_leakage  # on use: loads scipy, sklearn

    keys = dedup_keys(pool["input"].astype(str).tolist())
    gold_train = set(dedup_keys(frames["train"]["input"].astype(str).tolist()))
    held = pd.concat([frames["validation"], frames["test"]], ignore_index=True)
    held_keys = set(dedup_keys(held["input"].astype(str).tolist()))
    keep = np.ones(len(pool), dtype=bool)
    counts = {"already_labelled": 0, "same_as_validation_or_test": 0, "near_validation_or_test": 0, "pool_copies": 0}
    seen: set[str] = set()
    for i, key in enumerate(keys):
        if key in held_keys:
            counts["same_as_validation_or_test"] += 1
        elif key in gold_train:
            counts["already_labelled"] += 1
        elif key in seen:
            counts["pool_copies"] += 1
        else:
            seen.add(key)
            continue
        keep[i] = False
    pool = pool[keep].reset_index(drop=True)
    if len(pool) and len(held):
        leaking = {pool_id for pool_id, _, _ in find_leakage(held, pool, cfg.split.leakage_threshold, cfg.split.seed)}
        counts["near_validation_or_test"] = len(leaking)
        pool = pool[~pool["id"].isin(leaking)].reset_index(drop=True)
    return pool, counts


def doubted_rows(
    cfg: Any, run_dir: Path, frames: dict[str, pd.DataFrame]
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """(suspect rows in the train split, suspect rows curation dropped, counts) from the run's curation.
    Curation sees the training file only: with a test file (data.test) its ids may repeat test ids."""
    path = RunLayout(run_dir).curate_issues
    if not path.exists():
        raise DistillError(
            f"--relabel-suspects reads the rows curation flagged from {path}, which is not there: "
            "run `tunewise curate` first"
        )
    issues = pd.read_parquet(path, columns=["id", "issue"])
    ids = set(issues.loc[issues["issue"] == "suspected_label_error", "id"].dropna().astype(str))
    train = frames["train"]
    in_train = train[train["id"].astype(str).isin(ids)].reset_index(drop=True)
    held_splits = ("validation",) if cfg.data.test else ("validation", "test")
    held = sum(int(frames[s]["id"].astype(str).isin(ids).sum()) for s in held_splits)
    dropped = pd.DataFrame()
    records = run_dir / "ingest" / "records.parquet"
    placed = set(train["id"].astype(str)).union(*(set(frames[s]["id"].astype(str)) for s in held_splits))
    if records.exists():
        ingested = pd.read_parquet(records)
        outside = ingested["id"].astype(str).isin(ids - placed)
        dropped = ingested.loc[outside, ["id", "input", "context"]].reset_index(drop=True)
        dropped = dropped.assign(
            pool_id=dropped["id"].astype(str),
            source_file=str(records),
            source_line=pd.NA,
            id=[f"teacher-suspect-{i}" for i in range(len(dropped))],
        )
    counts = {
        "suspects": len(ids),
        "in_train": len(in_train),
        "in_validation_or_test": held,
        "dropped_by_curation": len(dropped),
    }
    return in_train, dropped, counts


# =============================================================================================
# The teacher


@dataclass
class Teacher:
    name: str
    candidate: Any
    how: str  # how it was obtained (endpoint, loaded, refit)
    api: bool
    predictions: dict[str, pd.DataFrame] = field(default_factory=dict)  # validation, test, pool, suspects
    reused: dict[str, str] = field(default_factory=dict)  # split -> file reused instead of predicting


def _built(run_dir: Path) -> dict[str, str]:
    """Candidates the run built: name -> where (baseline predictions, a trained model)."""
    out = {}
    for stage in ("baseline", "train"):
        for path in sorted((run_dir / stage / "predictions").glob("*.parquet")):
            if not path.name.endswith(".validation.parquet"):
                out.setdefault(path.stem, stage)
    return out


def _stage_current(cfg: Any, run_dir: Path, stage: str, sections: Sequence[str]) -> bool:
    """Whether the run's ``stage`` ran with the config's current ``sections`` (its predictions still hold)."""

    marker = run_dir / stage / "_stage.json"
    if not marker.exists():
        return False
    params = (read_json(marker) or {}).get("params") or {}
    return all(params.get(s) == cfg.section(s) for s in sections)


def build_teacher(
    cfg: Any, run_dir: Path, run_id: str, name: str, frames: dict[str, pd.DataFrame], no_cache: bool
) -> Teacher:
    from tunewise.candidates.factory import load_run_candidate, run_candidate  # on use: loads scipy, sklearn
    from tunewise.candidates.finetuned import FineTunedCandidate  # on use: loads scipy, sklearn
    from tunewise.candidates.registry import CandidateError, candidate_class  # on use: loads scipy, sklearn

    built = _built(run_dir)
    if name in API_TEACHERS:
        if cfg.baseline.api_llm is None:
            raise DistillError(
                f"--teacher {name}: the API teachers call the endpoint of baseline.api_llm, which the "
                "config does not set: add baseline.api_llm (base_url, model, prices) to the config"
            )
    elif name not in built:
        listed = ", ".join(sorted(built)) or "no candidate yet (run `tunewise baseline` or `tunewise train`)"
        raise DistillError(
            f"--teacher {name!r}: not found: run {run_id!r} built {listed}; the API teachers "
            f"{', '.join(API_TEACHERS)} call the endpoint of baseline.api_llm"
        )
    try:
        cls = candidate_class(name)
    except CandidateError as exc:
        raise DistillError(f"--teacher: {exc}") from None
    if cls.task != "classify":
        raise DistillError(f"--teacher {name!r} is a {cls.task} candidate; distill labels rows for classification")
    teacher_train = frames["train"]
    if issubclass(cls, FineTunedCandidate):
        candidate = run_candidate(name, cfg, run_dir)
        how = f"loaded from {run_dir / 'train' / name}"
    else:
        loaded = load_run_candidate(name, cfg, run_dir, teacher_train)  # a cheap one the baseline stage saved
        try:
            candidate = (
                loaded
                if loaded is not None
                else run_candidate(
                    name, cfg, run_dir, teacher_train, frames["validation"], **({"no_cache": True} if no_cache else {})
                )
            )
        except CandidateError as exc:
            raise DistillError(f"--teacher {name}: {exc}") from None
        how = (
            f"{cfg.baseline.api_llm.model} at {cfg.baseline.api_llm.base_url}"
            if name in API_TEACHERS
            else f"loaded from {RunLayout(run_dir).fitted(name)}"
            if loaded is not None
            else f"refit on {len(teacher_train):,} gold training rows"
        )
    teacher = Teacher(name, candidate, how, name in API_TEACHERS)
    # predictions the run already has on validation and test, from a stage run with today's settings
    stage = built.get(name)
    sections = {"baseline": ("baseline", "models"), "train": ("train", "models")}.get(stage or "", ())
    if stage and _stage_current(cfg, run_dir, stage, sections):
        for split in ("validation", "test"):
            path = RunLayout(run_dir).predictions(stage, name, split)
            if path.exists():
                teacher.predictions[split] = pd.read_parquet(path)
                teacher.reused[split] = str(path)
    return teacher


def _chunk_rows(candidate: Any) -> int:
    if getattr(candidate, "max_concurrency", None):
        return max(1, int(candidate.batch_size) * int(candidate.max_concurrency) * 2)
    return LOCAL_CHUNK


def teacher_labels(teacher: Teacher, frame: pd.DataFrame, what: str) -> tuple[pd.DataFrame, Exception | None]:
    """The teacher's predictions for ``frame`` in chunks, with progress lines; a spending cap stops it
    and the rows predicted before the batch that would have crossed it are returned with the error."""
    from tunewise.candidates.api_spending import SpendingCapReached  # on use: loads scipy, sklearn
    from tunewise.candidates.registry import check_predictions  # on use: loads scipy, sklearn

    parts: list[pd.DataFrame] = []
    stopped: Exception | None = None
    step = _chunk_rows(teacher.candidate)
    with progress(f"distill: {teacher.name} labels {what}", len(frame), unit="rows") as advance:
        for start in range(0, len(frame), step):
            chunk = frame.iloc[start : start + step]
            try:
                predicted = teacher.candidate.predict(chunk)
            except SpendingCapReached as exc:
                parts.append(exc.predictions)
                stopped = exc
                break
            check_predictions(predicted, chunk, teacher.candidate)
            parts.append(predicted)
            advance(len(chunk))
    done = pd.concat(parts, ignore_index=True) if parts else frame.iloc[:0].assign(prediction=[], score=[])
    return done, stopped

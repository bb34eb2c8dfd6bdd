"""Distillation (``tunewise distill``): a teacher labels an unlabelled pool, the small models learn from it.

The question: "we prompt a large hosted model today; can a small fine-tuned model learn its answers
and serve them for a fraction of the price?" The teacher is an ``api_*`` candidate (the endpoint of
``baseline.api_llm``) or any candidate the run built; the students are the run's fine-tuned
candidates (``train.candidates``, or ``--students``, cheap ones too).

1. Pool: an unlabelled file read with ingest's readers (a label column in it is ignored, with a
   warning), and/or ``--relabel-suspects``: the rows curation flagged as likely label errors. Rows
   whose text the project already has are skipped (the same text after normalisation, and
   near-duplicates of validation or test rows, as the split stage measures them): a teacher row is
   never a copy of a row it is scored on.
2. Labelling: the teacher predicts the pool (progress lines; the API cache makes a re-run free;
   ``max_usd`` and ``max_usd_project`` stop it before a batch that would cross them, keeping what
   was labelled).
3. Filter: by confidence, keep rows whose teacher score is at least ``min_confidence``; by default
   the lowest threshold at which the teacher's *validation* accuracy on the rows it keeps reaches
   the student's target (``--target``; else the decision's target, the reference's score x (1 +
   threshold); else the best gold-trained student's validation accuracy), said in the output. Or by
   agreement (``--agree``): api_zero_shot and api_few_shot both label the pool, and rows where both
   give the same label are kept. Failed requests and answers that are no label are never kept.
4. Artifact: every labelled row, with its teacher label, confidence, whether it was kept and why,
   goes to ``runs/<run>/distill/teacher_rows.parquet``; ``summary.json`` beside it.
5. Students: a new run ``<run>-distilled`` (or ``--out-run-id``) gets the source run's validation and
   test splits as they are and a train split of gold rows plus the kept teacher rows (``source`` =
   ``teacher``, ``teacher``, ``teacher_confidence``; relabelled suspects also ``gold_label``); the
   train stage's own function trains the fine-tuned students there.
6. Report: every student against every teacher on the gold test set with the evaluation's paired
   comparison (bootstrap intervals from shared resamples, McNemar), against the same student
   trained on gold alone when the source run has it, and the monthly cost of each (``roi``; an API
   teacher priced by its measured tokens), with the teacher's labelling as a one-time cost line.

Classification only: confidence and agreement are defined on labels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunewise.core.artifacts import json_safe, make_private_dirs, read_json, write_json, write_parquet
from tunewise.core.errors import TunewiseError
from tunewise.core.layout import RunLayout
from tunewise.core.progress import console, progress
from tunewise.core.runs import check_run_id, run_lock
from tunewise.core.text import dedup_keys
from tunewise.pipeline.runner import StageContext
from tunewise.pipeline.stages.train import resolve_candidates, run as train_stage
from tunewise.workflows.labelling import LabellingError, read_pool as read_unlabelled

__all__ = ["API_TEACHERS", "DistillError", "DistillStopped", "choose_min_confidence", "distill", "read_pool"]

API_TEACHERS = ("api_zero_shot", "api_few_shot")  # --agree asks both
LOCAL_CHUNK = 256  # rows per progress step for a local teacher
MIN_KEPT_SHARE = 0.05  # a threshold must keep this share of validation rows (and 10 rows) to be chosen
COMPARED = ("accuracy", "macro_f1")


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


def _exclude_known(
    pool: pd.DataFrame, frames: dict[str, pd.DataFrame], cfg: Any
) -> tuple[pd.DataFrame, dict[str, int]]:
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


def _suspects(
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


def _build_teacher(
    cfg: Any, run_dir: Path, run_id: str, name: str, frames: dict[str, pd.DataFrame], no_cache: bool
) -> Teacher:
    from tunewise.candidates.factory import run_candidate  # on use: loads scipy, sklearn
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
        try:
            candidate = run_candidate(
                name, cfg, run_dir, teacher_train, frames["validation"], **({"no_cache": True} if no_cache else {})
            )
        except CandidateError as exc:
            raise DistillError(f"--teacher {name}: {exc}") from None
        how = (
            f"{cfg.baseline.api_llm.model} at {cfg.baseline.api_llm.base_url}"
            if name in API_TEACHERS
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


def _label(teacher: Teacher, frame: pd.DataFrame, what: str) -> tuple[pd.DataFrame, Exception | None]:
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


# =============================================================================================
# The filter


def choose_min_confidence(
    scores: np.ndarray, correct: np.ndarray, target: float | None, min_rows: int | None = None
) -> dict[str, Any]:
    """The lowest confidence threshold at which the rows kept (score >= threshold) are at least
    ``target`` accurate, among thresholds keeping ``min_rows`` rows; when none reaches it, the most
    accurate such threshold (``reached`` False). Every validation score is a candidate threshold."""
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n = len(scores)
    if n == 0:
        return {"threshold": 0.0, "reached": False, "kept": 0, "accuracy": None, "n": 0}
    min_rows = max(1, min(n, min_rows if min_rows is not None else max(10, math.ceil(MIN_KEPT_SHARE * n))))
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], np.cumsum(correct[order])
    last = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])  # the last row of each distinct score
    kept = last + 1
    accuracy = hits[last] / kept
    thresholds = ranked[last]
    eligible = kept >= min_rows
    if target is not None:
        reaching = np.flatnonzero(eligible & (accuracy >= target - 1e-12))
        if len(reaching):
            i = reaching[-1]  # the lowest threshold: the most rows
            return {
                "threshold": float(thresholds[i]),
                "reached": True,
                "kept": int(kept[i]),
                "accuracy": float(accuracy[i]),
                "n": n,
                "min_rows": min_rows,
            }
    if not eligible.any():
        i = len(last) - 1
    else:
        candidates = np.flatnonzero(eligible)
        i = candidates[np.lexsort((-kept[candidates], -accuracy[candidates]))[0]]  # most accurate, then most rows
    return {
        "threshold": float(thresholds[i]),
        "reached": target is None,
        "kept": int(kept[i]),
        "accuracy": float(accuracy[i]),
        "n": n,
        "min_rows": min_rows,
    }


def _correct(predictions: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    expected = truth.set_index(truth["id"].astype(str))["label"].astype(str)
    return (
        predictions["prediction"].astype(str).to_numpy() == expected.reindex(predictions["id"].astype(str)).to_numpy()
    )


def _student_target(
    cfg: Any, run_dir: Path, frames: dict[str, pd.DataFrame], students: Sequence[str]
) -> tuple[float | None, str]:
    """The accuracy the students aim for: the decision's target, else the best gold-trained student's
    validation accuracy (noisier labels than that would pull it down)."""

    decision_path = run_dir / "decide" / "decision.json"
    decision = (read_json(decision_path) or {}).get("decision", {}) if decision_path.exists() else {}
    target, source = decision.get("target_score"), "the decision's target"
    if target is None:
        summary_path = RunLayout(run_dir).summary("evaluate")
        comparison = (read_json(summary_path) or {}).get("comparison") or {} if summary_path.exists() else {}
        if comparison.get("baseline_score") is not None:
            target = comparison["baseline_score"] * (1 + comparison.get("threshold", cfg.evaluate.threshold))
            source = "the evaluation's target"
    if target is not None and target <= 1.0:
        return float(target), f"{source} ({target:.3f})"
    skipped = f"{source} {target:.3f} is above accuracy 1; " if target is not None else ""
    best: tuple[float, str] | None = None
    for name in students:
        for stage in ("train", "baseline"):
            path = RunLayout(run_dir).predictions(stage, name, "validation")
            if path.exists():
                accuracy = float(_correct(pd.read_parquet(path), frames["validation"]).mean())
                if best is None or accuracy > best[0]:
                    best = (accuracy, name)
                break
    if best is not None:
        return best[0], f"{skipped}{best[1]}'s validation accuracy trained on gold rows alone ({best[0]:.3f})"
    return None, f"{skipped}no decision and no gold-trained student in the run to set a target"


# =============================================================================================
# Students, comparison, costs


def _resolve_students(cfg: Any, names: Sequence[str] | None) -> list[str]:
    from tunewise.candidates.registry import CANDIDATES, CandidateError, candidate_class  # on use: loads scipy, sklearn

    if not names:
        return resolve_candidates(cfg.task, cfg.train.candidates)
    allowed = sorted(
        n for n, c in CANDIDATES.items() if c.task == "classify" and c.kind in ("finetuned", "cheap") and not c.combines
    )
    for name in names:
        try:
            cls = candidate_class(name)
        except CandidateError as exc:
            raise DistillError(f"--students: {exc}") from None
        if cls.task != "classify" or cls.kind not in ("finetuned", "cheap") or cls.combines:
            raise DistillError(
                f"--students: {name!r} is a {cls.kind} {cls.task} candidate; students are fine-tuned "
                f"or cheap classifiers: {', '.join(allowed)}"
            )
    return list(dict.fromkeys(names))


def _train_students(
    cfg: Any, out_dir: Path, students: list[str], frames: dict[str, pd.DataFrame]
) -> dict[str, pd.DataFrame]:
    """Train the students on the distilled run's split; their test predictions by name."""
    import shutil

    from tunewise.candidates.registry import CANDIDATES, check_predictions  # on use: loads scipy, sklearn
    from tunewise.decision.curve import candidate_factory  # on use: loads scipy

    predictions: dict[str, pd.DataFrame] = {}
    tuned = [s for s in students if CANDIDATES[s].kind == "finetuned"]
    if tuned:
        stage_dir = out_dir / "train"
        shutil.rmtree(stage_dir, ignore_errors=True)  # a new teacher set: nothing earlier still holds
        make_private_dirs(stage_dir)
        tuned_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"candidates": tuned})})
        train_stage(StageContext(tuned_cfg, out_dir, "train"))
        for name in tuned:
            predictions[name] = pd.read_parquet(RunLayout(out_dir).predictions("train", name))
    factory = candidate_factory(cfg)
    for name in (s for s in students if CANDIDATES[s].kind != "finetuned"):
        console.print(f"distill: {name} (cheap) on {len(frames['train']):,} rows")
        candidate = factory(name).fit(frames["train"], frames["validation"])
        for split in ("test", "validation"):
            predicted = candidate.predict(frames[split])
            check_predictions(predicted, frames[split], candidate)
            write_parquet(RunLayout(out_dir).predictions("baseline", name, split), predicted)
            if split == "test":
                predictions[name] = predicted
    return predictions


def _gold_only(run_dir: Path, name: str) -> pd.DataFrame | None:
    for stage in ("train", "baseline"):
        path = RunLayout(run_dir).predictions(stage, name)
        if path.exists():
            return pd.read_parquet(path)
    return None


def _running_cost(name: str, predictions: pd.DataFrame, roi: Any, usd_per_request: float | None) -> dict[str, Any]:
    from tunewise.decision.decide import (  # on use: loads scipy, sklearn
        DecisionError,
        monthly_running_cost,
        serving_memory_gib,
    )

    latency = pd.to_numeric(predictions["latency_ms"], errors="coerce").dropna()
    median = float(np.median(latency)) if len(latency) else 0.0
    try:
        if usd_per_request is not None:
            return monthly_running_cost(median, roi, usd_per_request=usd_per_request)
        return monthly_running_cost(median, roi, memory_gib=serving_memory_gib(name))
    except DecisionError as exc:
        return {"usd": None, "arithmetic": str(exc)}


def _usage_rows(teacher: Teacher, ids: set[str]) -> pd.DataFrame | None:
    if not teacher.api:
        return None
    usage = teacher.candidate.usage_frame()
    return usage[usage["id"].astype(str).isin(ids)]


def _labelling_line(teacher: Teacher, ids: set[str], what: str, seconds: float) -> dict[str, Any]:
    usage = _usage_rows(teacher, ids)
    if usage is None:
        return {
            "item": f"{teacher.name}: labelling {what} (one-time)",
            "usd": 0.0,
            "rows": len(ids),
            "arithmetic": f"{len(ids):,} rows in {seconds:.1f} s on this machine (a local model: no price per request)",
        }
    answered = usage[usage["status"] != "failed"]
    usd = float(usage["usd"].sum())
    spent = float(usage.loc[~usage["cached"].astype(bool), "usd"].sum())
    per_row = usd / len(answered) if len(answered) else 0.0
    cached = int(usage["cached"].astype(bool).sum())
    now = (
        f"${spent:.4f} spent in this run" + (f", {cached:,} rows came from the cache" if cached else "")
        if spent > 0 or not cached
        else "nothing spent in this run: every row came from the cache"
    )
    return {
        "item": f"{teacher.name}: labelling {what} (one-time)",
        "usd": usd,
        "rows": len(usage),
        "spent_now_usd": spent,
        "cached_rows": cached,
        "arithmetic": f"{len(answered):,} answered rows x ${per_row:.4g} a row (measured tokens at the "
        f"endpoint's prices) = ${usd:.4f}; {now}",
    }


# =============================================================================================
# The command


def distill(
    cfg: Any,
    run_id: str = "default",
    *,
    pool: str | Path | None = None,
    relabel_suspects: bool = False,
    teacher: str | None = None,
    agree: bool = False,
    min_confidence: float | None = None,
    target: float | None = None,
    students: Sequence[str] | None = None,
    out_run_id: str | None = None,
    no_cache: bool = False,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Label ``pool`` (and/or the suspected label errors) with the teacher, keep the rows it is sure
    of, train the students on gold + teacher rows in a new run, and compare them (see the module
    docstring). Returns the summary also written to ``runs/<run_id>/distill/summary.json``."""

    if cfg.task != "classify":
        raise DistillError(
            "distill labels rows by a teacher's answers and confidence: it works for classify "
            "projects; this project's task is generate"
        )
    if pool is None and not relabel_suspects:
        raise DistillError("nothing to label: give --pool FILE (unlabelled rows) and/or --relabel-suspects")
    if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
        raise DistillError(f"--min-confidence is a probability in [0, 1], got {min_confidence}")
    teachers = list(API_TEACHERS) if agree else [teacher] if teacher else []
    if not teachers:
        raise DistillError("give --teacher NAME (an api_* candidate or one the run built), or --agree")
    if agree and teacher and teacher not in API_TEACHERS:
        raise DistillError(f"--agree asks {' and '.join(API_TEACHERS)}; --teacher {teacher!r} is not one of them")
    run_dir = cfg.resolve(cfg.runs_dir) / check_run_id(run_id)
    out_run_id = check_run_id(out_run_id or f"{run_id}-distilled")
    if out_run_id == run_id:
        raise DistillError(f"--out-run-id {out_run_id!r} is the source run: the students go to a run of their own")
    paths = RunLayout(run_dir).splits()
    for path in paths.values():
        if not path.exists():
            raise DistillError(
                f"{path} not found: run `tunewise split` (and `tunewise train` for the gold-only "
                f"students) on run {run_id!r} first"
            )
    pool_frame, pool_info = read_pool(cfg, pool) if pool is not None else (None, None)
    student_names = _resolve_students(cfg, students)
    with run_lock(run_dir):
        frames = {split: pd.read_parquet(path) for split, path in paths.items()}
        return _distill_locked(
            cfg,
            run_id,
            run_dir,
            out_run_id,
            frames,
            pool_frame,
            pool_info,
            relabel_suspects,
            teachers,
            agree,
            min_confidence,
            target,
            student_names,
            no_cache,
            dry_run,
        )


def _write_summary(path: Path, summary: dict[str, Any]) -> None:

    write_json(path, json_safe(summary))  # JSON has no NaN: an empty interval is null


def _distill_locked(
    cfg: Any,
    run_id: str,
    run_dir: Path,
    out_run_id: str,
    frames: dict[str, pd.DataFrame],
    pool_frame: pd.DataFrame | None,
    pool_info: dict | None,
    relabel_suspects: bool,
    teacher_names: list[str],
    agree: bool,
    min_confidence: float | None,
    target: float | None,
    students: list[str],
    no_cache: bool,
    dry_run: bool,
) -> dict[str, Any]:

    notes: list[str] = []
    summary: dict[str, Any] = {
        "run_id": run_id,
        "out_run_id": out_run_id,
        "teachers": teacher_names,
        "filter": "agreement" if agree else "confidence",
        "students": students,
        "notes": notes,
        "status": "running",
    }
    # -- what the teacher labels
    parts, counts = [], {}
    if pool_frame is not None:
        if pool_info["ignored_label_column"]:
            notes.append(
                f"--pool {pool_info['file']}: column {pool_info['ignored_label_column']!r} looks like labels; "
                "they are ignored (the teacher labels the pool; gold labels go in with `tunewise add-labels`)"
            )
        for problem in pool_info["unreadable"][:5]:
            notes.append(f"skipped unreadable pool row: {problem}")
        kept_pool, counts = _exclude_known(pool_frame, frames, cfg)
        parts.append(kept_pool)
        summary["pool"] = {
            **{k: v for k, v in pool_info.items() if k != "unreadable"},
            "unreadable": len(pool_info["unreadable"]),
            "skipped": counts,
            "to_label": len(kept_pool),
        }
    relabel = pd.DataFrame()
    if relabel_suspects:
        relabel, dropped, suspect_counts = _suspects(cfg, run_dir, frames)
        if len(dropped):
            dropped, dropped_counts = _exclude_known(dropped, frames, cfg)
            suspect_counts["dropped_skipped"] = dropped_counts
            parts.append(dropped)
        summary["suspects"] = suspect_counts
        if not suspect_counts["suspects"]:
            notes.append(f"curation flagged no suspected label error in run {run_id!r}: nothing to relabel")
    to_label = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["id", "input", "context"])
    if not len(to_label) and not len(relabel):
        raise DistillError(
            "nothing left to label: "
            + (
                f"every pool row is already in the project's data ({counts})"
                if pool_frame is not None
                else "no suspected label errors"
            )
        )
    summary["rows_to_label"] = len(to_label) + len(relabel)

    # -- the teachers
    teachers = [_build_teacher(cfg, run_dir, run_id, name, frames, no_cache) for name in teacher_names]
    for t in teachers:
        console.print(f"distill: teacher {t.name} ({t.how})")
    if dry_run:
        return _dry_run(teachers, frames, to_label, relabel, summary)
    labels = sorted(set(frames["train"]["label"].astype(str)))
    started = time.perf_counter()
    stopped: Exception | None = None
    seconds: dict[str, float] = {}
    for t in teachers:
        if "validation" not in t.predictions:  # what the confidence threshold is chosen on
            t.predictions["validation"], stopped = _label(
                t, frames["validation"], f"{len(frames['validation']):,} validation rows"
            )
        if stopped is None and len(to_label):
            t0 = time.perf_counter()
            t.predictions["pool"], stopped = _label(t, to_label, f"the pool ({len(to_label):,} rows)")
            seconds[t.name] = time.perf_counter() - t0
        if stopped is None and len(relabel):
            t.predictions["suspects"], stopped = _label(t, relabel, f"{len(relabel):,} suspected label errors")
        if stopped is not None:
            break
    summary["labelling_seconds"] = round(time.perf_counter() - started, 2)

    # -- the filter, on what was labelled
    rule = _filter_rule(cfg, run_dir, frames, teachers, agree, min_confidence, target, students, labels, notes)
    summary["rule"] = rule
    rows = _teacher_rows(teachers, to_label, relabel, labels, rule)
    artifact = run_dir / "distill" / "teacher_rows.parquet"
    write_parquet(artifact, rows)
    summary["artifact"] = str(artifact)
    summary["labelled"] = _labelled_counts(rows)
    if stopped is not None:
        summary["status"] = "stopped"
        summary["stopped"] = str(stopped)
        summary["cap"] = {
            "scope": getattr(stopped, "scope", None),
            "spent_usd": getattr(stopped, "spent_usd", None),
            "estimate_usd": getattr(stopped, "estimate_usd", None),
            "max_usd": getattr(stopped, "max_usd", None),
        }
        summary["costs"] = {
            "one_time": [_labelling_line(t, set(rows["id"]), "the pool", seconds.get(t.name, 0.0)) for t in teachers]
        }
        _write_summary(run_dir / "distill" / "summary.json", summary)
        raise DistillStopped(
            f"distill stopped while labelling: {stopped} {summary['labelled']['labelled']:,} rows "
            f"labelled so far are kept in {artifact}; no student was trained. Re-run with a higher "
            "cap: cached answers cost nothing again",
            summary,
        )

    # -- the distilled run: gold validation and test as they are, gold + kept teacher rows in train
    out_dir = cfg.resolve(cfg.runs_dir) / out_run_id
    distilled = _distilled_frames(frames, rows)
    added = rows.loc[rows["kept"] & (rows["part"] == "pool"), "id"] if len(rows) else pd.Series(dtype=str)
    leaked = set(added) & set(frames["test"]["id"].astype(str))
    if leaked:  # never happens by construction: every pool id is new
        raise DistillError(f"teacher rows {sorted(leaked)[:3]} collide with test ids; nothing was trained")
    with run_lock(out_dir):
        for split, frame in distilled.items():
            write_parquet(RunLayout(out_dir).split(split), frame)
        relabelled = int(distilled["train"]["gold_label"].notna().sum()) if "gold_label" in distilled["train"] else 0
        console.print(
            f"distill: run {out_run_id!r}: {len(added):,} teacher rows + {len(frames['train']):,} gold rows "
            f"({relabelled:,} relabelled by the teacher) to train {', '.join(students)}"
        )
        summary["train_rows"] = {"teacher": len(added), "gold": len(frames["train"]), "relabelled": relabelled}
        student_predictions = _train_students(cfg, out_dir, students, distilled)
        for t in teachers:  # the teacher on the whole gold test set, when the run had no predictions from it
            if "test" not in t.predictions:
                t.predictions["test"], stopped = _label(t, frames["test"], f"{len(frames['test']):,} test rows")
                if stopped is not None:
                    notes.append(f"{t.name} on the test set stopped: {stopped}; compared on the rows it answered")
        summary["comparisons"] = _compare(cfg, run_dir, frames["test"], labels, teachers, student_predictions)
        summary["costs"] = _costs(cfg, run_dir, teachers, student_predictions, rows, seconds)
        summary["status"] = "done"
        _write_summary(out_dir / "distill" / "summary.json", summary)
    _write_summary(run_dir / "distill" / "summary.json", summary)

    return json_safe(summary)


def _dry_run(
    teachers: list[Teacher],
    frames: dict[str, pd.DataFrame],
    to_label: pd.DataFrame,
    relabel: pd.DataFrame,
    summary: dict[str, Any],
) -> dict[str, Any]:
    """What each API teacher would cost, per part (the pool, the suspects, validation and test); nothing sent."""
    estimates = {}
    for t in teachers:
        if not t.api:
            estimates[t.name] = {"usd": 0.0, "method": "a local model: no price per request"}
            continue
        parts = {
            "pool": to_label,
            "suspects": relabel,
            **{s: frames[s] for s in ("validation", "test") if s not in t.predictions},
        }
        by_part = {part: t.candidate.estimate_cost(frame) for part, frame in parts.items() if len(frame)}
        estimates[t.name] = {
            "usd": float(sum(e["usd"] for e in by_part.values())),
            "rows_to_request": int(sum(e["rows_to_request"] for e in by_part.values())),
            "parts": by_part,
            "method": next(iter(by_part.values()))["method"] if by_part else "",
        }
    summary.update(status="dry_run", estimates=estimates)
    return summary


def _filter_rule(
    cfg: Any,
    run_dir: Path,
    frames: dict[str, pd.DataFrame],
    teachers: list[Teacher],
    agree: bool,
    min_confidence: float | None,
    target: float | None,
    students: list[str],
    labels: list[str],
    notes: list[str],
) -> dict[str, Any]:
    """The threshold (given, or chosen on validation) and what the teacher does on validation at it."""
    validation = frames["validation"]
    scored = []
    for t in teachers:
        predictions = t.predictions.get("validation")
        if predictions is not None and len(predictions):
            scored.append((t.name, predictions))
    rule: dict[str, Any] = {"kind": "agreement" if agree else "confidence"}
    if agree:
        rule["min_confidence"] = min_confidence if min_confidence is not None else 0.0
        if len(scored) == 2:
            (_, a), (_, b) = scored
            joined = a.merge(b, on="id", suffixes=("_a", "_b"))
            agreeing = joined[(joined["prediction_a"] == joined["prediction_b"]) & joined["prediction_a"].isin(labels)]
            correct = _correct(agreeing.rename(columns={"prediction_a": "prediction"}), validation)
            rule["validation"] = {
                "rows": len(joined),
                "agree": len(agreeing),
                "accuracy_when_agreeing": float(correct.mean()) if len(correct) else None,
            }
        rule["message"] = f"kept: rows where {' and '.join(t.name for t in teachers)} give the same label" + (
            f" with confidence >= {min_confidence:g}" if min_confidence is not None else ""
        )
        return rule
    name, predictions = scored[0] if scored else (teachers[0].name, None)
    if predictions is None:
        rule.update(min_confidence=min_confidence or 0.0, message="no validation predictions: threshold as given")
        return rule
    scores = pd.to_numeric(predictions["score"], errors="coerce").fillna(0.0).to_numpy()
    correct = _correct(predictions, validation) & predictions["prediction"].isin(labels).to_numpy()
    graded = len(np.unique(scores[predictions["prediction"].isin(labels).to_numpy()])) > 1
    if min_confidence is not None:
        kept = scores >= min_confidence
        rule.update(
            min_confidence=float(min_confidence),
            chosen_on_validation=False,
            validation={
                "rows": len(scores),
                "kept": int(kept.sum()),
                "accuracy": float(correct[kept].mean()) if kept.any() else None,
                "accuracy_all": float(correct.mean()),
            },
        )
        rule["message"] = (
            f"min-confidence {min_confidence:g} (given): {name} keeps {int(kept.sum())} of "
            f"{len(scores)} validation rows, " + (f"{correct[kept].mean():.3f} accurate" if kept.any() else "none")
        )
        return rule
    if target is not None:
        target_source = f"--target {target:.3f}"
    else:
        target, target_source = _student_target(cfg, run_dir, frames, students)
    choice = choose_min_confidence(scores, correct, target)
    rule.update(
        min_confidence=choice["threshold"],
        chosen_on_validation=True,
        target=target,
        target_source=target_source,
        validation={
            "rows": choice["n"],
            "kept": choice["kept"],
            "accuracy": choice["accuracy"],
            "accuracy_all": float(correct.mean()),
            "reached_target": choice["reached"],
        },
    )
    if not graded:
        rule["message"] = (
            f"{name} gives no graded confidence on validation (every answer scores "
            f"{scores.max() if len(scores) else 1:g}: no log-probabilities from the endpoint?): every "
            f"labelled row is kept; its validation accuracy is {correct.mean():.3f}"
        )
        rule["min_confidence"] = float(scores.min()) if len(scores) else 0.0
    elif target is None:
        rule["message"] = (
            f"min-confidence {choice['threshold']:.3g} chosen on validation ({target_source}): the most "
            f"accurate threshold, {choice['accuracy']:.3f} on the {choice['kept']} rows it keeps"
        )
    elif choice["reached"]:
        rule["message"] = (
            f"min-confidence {choice['threshold']:.3g} chosen on validation: {name} is "
            f"{choice['accuracy']:.3f} accurate on the {choice['kept']} of {choice['n']} validation "
            f"rows at or above it, >= the students' target {target:.3f} ({target_source})"
        )
    else:
        rule["message"] = (
            f"min-confidence {choice['threshold']:.3g} chosen on validation: no threshold makes {name} "
            f"reach the students' target {target:.3f} ({target_source}); this is its most accurate "
            f"one, {choice['accuracy']:.3f} on the {choice['kept']} of {choice['n']} rows it keeps"
        )
        notes.append(rule["message"])
    return rule


def _teacher_rows(
    teachers: list[Teacher], to_label: pd.DataFrame, relabel: pd.DataFrame, labels: list[str], rule: dict[str, Any]
) -> pd.DataFrame:
    """Every labelled row: teacher label and confidence, whether it is kept, and why not."""
    threshold = float(rule.get("min_confidence") or 0.0)
    out = []
    for part, frame in (("pool", to_label), ("suspects", relabel)):
        answers = [t.predictions.get(part) for t in teachers]
        if not len(frame) or any(a is None for a in answers):
            continue
        ids = set.intersection(*(set(a["id"].astype(str)) for a in answers))
        rows = frame[frame["id"].astype(str).isin(ids)].reset_index(drop=True)
        if not len(rows):
            continue
        by = [a.set_index(a["id"].astype(str)).reindex(rows["id"].astype(str)) for a in answers]
        first = by[0]["prediction"].astype(str).to_numpy()
        scores = np.min([pd.to_numeric(b["score"], errors="coerce").fillna(0.0).to_numpy() for b in by], axis=0)
        valid = np.isin(first, labels)
        same = np.all([b["prediction"].astype(str).to_numpy() == first for b in by], axis=0)
        why = np.where(
            ~valid,
            "no label (failed request or answer outside the labels)",
            np.where(
                ~same, "the prompts disagree", np.where(scores < threshold, f"confidence below {threshold:.3g}", "")
            ),
        )
        if "label" in rows.columns:  # a relabelled suspect: the label it had
            rows = rows.assign(gold_label=rows["label"].astype(str))
        frame_out = rows.assign(
            label=first,
            teacher="+".join(t.name for t in teachers),
            teacher_confidence=scores,
            kept=why == "",
            why_not=why,
            part=part,
        )
        if len(teachers) > 1:
            for t, b in zip(teachers, by):
                frame_out[f"answer_{t.name}"] = b["prediction"].astype(str).to_numpy()
        out.append(frame_out)
    if not out:
        return pd.DataFrame(
            columns=["id", "input", "context", "label", "teacher", "teacher_confidence", "kept", "why_not", "part"]
        ).astype({"kept": bool})
    rows = pd.concat(out, ignore_index=True)
    rows["source"] = "teacher"
    return rows


def _labelled_counts(rows: pd.DataFrame) -> dict[str, Any]:
    reasons = rows.loc[~rows["kept"], "why_not"].value_counts().to_dict() if len(rows) else {}
    return {
        "labelled": len(rows),
        "kept": int(rows["kept"].sum()) if len(rows) else 0,
        "dropped": {str(k): int(v) for k, v in reasons.items()},
    }


def _distilled_frames(frames: dict[str, pd.DataFrame], rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Train: gold rows (relabelled suspects where the teacher kept another label) + kept pool rows;
    validation and test: the gold splits as they are."""
    train = frames["train"].copy()
    train["source"] = train["source"].fillna("gold") if "source" in train.columns else "gold"
    train["teacher"] = None
    train["teacher_confidence"] = np.nan
    kept = rows[rows["kept"]] if len(rows) else rows
    suspects = kept[kept["part"] == "suspects"] if len(kept) else kept
    if len(suspects):
        by_id = suspects.set_index(suspects["id"].astype(str))
        ids = train["id"].astype(str)
        new_label = ids.map(by_id["label"])
        changed = new_label.notna() & (new_label != train["label"].astype(str))
        train["gold_label"] = train["label"].astype(str).where(changed, None)
        train.loc[changed, "label"] = new_label[changed]
        train.loc[changed, "source"] = "teacher"
        train.loc[changed, "teacher"] = ids.map(by_id["teacher"])[changed]
        train.loc[changed, "teacher_confidence"] = ids.map(by_id["teacher_confidence"])[changed]
    added = kept[kept["part"] == "pool"] if len(kept) else kept
    if len(added):
        added = added.assign(synthetic=False)[
            [
                c
                for c in (
                    "id",
                    "input",
                    "context",
                    "label",
                    "source_file",
                    "source_line",
                    "synthetic",
                    "source",
                    "teacher",
                    "teacher_confidence",
                    "pool_id",
                )
                if c in added.columns
            ]
        ]
        train = pd.concat([train, added], ignore_index=True)
    for column in ("source", "teacher", "pool_id", "gold_label", "source_file"):
        if column in train.columns:
            train[column] = train[column].astype(object).where(train[column].notna(), None)
    if "source_line" in train.columns:
        train["source_line"] = pd.to_numeric(train["source_line"], errors="coerce").astype("Int64")
    return {"train": train, "validation": frames["validation"], "test": frames["test"]}


def _compare(
    cfg: Any,
    run_dir: Path,
    test: pd.DataFrame,
    labels: list[str],
    teachers: list[Teacher],
    students: dict[str, pd.DataFrame],
) -> list[dict[str, Any]]:
    """Each student (trained on gold + teacher rows) against each teacher and against itself trained on
    gold alone, on the gold test set: the evaluation's paired comparison."""
    from tunewise.evaluation.robustness import primary_score  # on use: loads scipy, sklearn
    from tunewise.evaluation.scores import Resampler, compare_scores, score_classification  # on use: loads scipy

    level, seed = cfg.evaluate.confidence_level, cfg.seed
    resampler = Resampler(cfg.evaluate.n_resamples, seed)
    truth_ids = set(test["id"].astype(str))
    pool_of_labels = set(labels) | set(test["label"].astype(str))
    opponents: dict[str, tuple[str, pd.DataFrame]] = {}
    for t in teachers:
        if t.predictions.get("test") is not None and len(t.predictions["test"]):
            opponents[f"teacher {t.name}"] = (t.name, t.predictions["test"])
    gold_only = {name: _gold_only(run_dir, name) for name in students}
    for frame in [
        *students.values(),
        *(p for _, p in opponents.values()),
        *(g for g in gold_only.values() if g is not None),
    ]:
        pool_of_labels |= set(frame["prediction"].astype(str))
    all_labels = sorted(pool_of_labels)

    def scores(frame: pd.DataFrame) -> Any:
        frame = frame[frame["id"].astype(str).isin(truth_ids)]
        return score_classification(frame.assign(prediction=frame["prediction"].astype(str)), test, all_labels)

    def point(frame: pd.DataFrame) -> dict[str, Any]:
        value, n, interval = primary_score("classify", frame, test, cfg.evaluate.n_resamples, level, seed)
        return {"accuracy": value, "ci": list(interval), "n": n}

    out = []
    for name, predictions in students.items():
        mine = scores(predictions)
        against = dict(opponents)
        if gold_only[name] is not None:
            against[f"{name} trained on gold alone"] = (name, gold_only[name])
        for what, (other, other_predictions) in against.items():
            result = compare_scores(mine, scores(other_predictions), COMPARED, resampler, level, seed)
            if result is None:
                continue
            out.append(
                {
                    "student": name,
                    "against": what,
                    "other": other,
                    "n": result["n"],
                    "student_accuracy": point(predictions),
                    "other_accuracy": point(other_predictions),
                    "metrics": result["metrics"],
                }
            )
    return out


def _costs(
    cfg: Any,
    run_dir: Path,
    teachers: list[Teacher],
    students: dict[str, pd.DataFrame],
    rows: pd.DataFrame,
    seconds: dict[str, float],
) -> dict[str, Any]:
    from tunewise.decision.decide import _measured_usd_per_request  # on use: loads scipy, sklearn

    roi = cfg.roi
    one_time = []
    pool_ids = set(rows.loc[rows["part"] == "pool", "id"]) if len(rows) else set()
    suspect_ids = set(rows.loc[rows["part"] == "suspects", "id"]) if len(rows) else set()
    for t in teachers:
        if pool_ids:
            one_time.append(_labelling_line(t, pool_ids, "the pool", seconds.get(t.name, 0.0)))
        if suspect_ids:
            one_time.append(_labelling_line(t, suspect_ids, "suspected label errors", 0.0))
        scored = {
            str(i)
            for s in ("validation", "test")
            if s not in t.reused and s in t.predictions
            for i in t.predictions[s]["id"]
        }
        if scored and t.api:
            one_time.append(_labelling_line(t, scored, "validation and test (to choose and compare)", 0.0))
    monthly = {}
    for t in teachers:
        test = t.predictions.get("test")
        usd_per_request = None
        if t.api:
            usd_per_request = (t.candidate.info().get("usage") or {}).get(
                "usd_per_row_mean"
            ) or _measured_usd_per_request(run_dir).get(t.name, 0.0)
        if test is not None and len(test):
            monthly[f"teacher {t.name}"] = _running_cost(t.name, test, roi, usd_per_request)
    for name, predictions in students.items():
        monthly[f"student {name}"] = _running_cost(name, predictions, roi, None)
    note = (
        None
        if roi.monthly_volume
        else "roi.monthly_volume is not set: monthly costs are for 0 requests (a serving instance kept on still costs)"
    )
    return {
        "one_time": one_time,
        "one_time_usd": float(sum(line["usd"] for line in one_time)),
        "monthly": monthly,
        "monthly_volume": roi.monthly_volume,
        "note": note,
    }

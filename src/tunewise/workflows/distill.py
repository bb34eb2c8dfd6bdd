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

Classification only: confidence and agreement are defined on labels. The pool and the teacher are
:mod:`tunewise.workflows.distill_teacher`; the filter, the students and their comparison and costs
are :mod:`tunewise.workflows.distill_students`; here, the command that runs them in order.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunewise.core.artifacts import json_safe, write_json, write_parquet
from tunewise.core.layout import RunLayout
from tunewise.core.progress import console
from tunewise.core.runs import check_run_id, run_lock
from tunewise.workflows.distill_students import (
    choose_min_confidence,
    compare_students,
    correct_mask,
    distilled_frames,
    labelled_counts,
    labelling_line,
    resolve_students,
    student_costs,
    student_target,
    train_students,
)
from tunewise.workflows.distill_teacher import (
    API_TEACHERS,
    DistillError,
    DistillStopped,
    Teacher,
    build_teacher,
    doubted_rows,
    exclude_known,
    read_pool,
    teacher_labels,
)

__all__ = ["API_TEACHERS", "DistillError", "DistillStopped", "choose_min_confidence", "distill", "read_pool"]


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
    student_names = resolve_students(cfg, students)
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
        kept_pool, counts = exclude_known(pool_frame, frames, cfg)
        parts.append(kept_pool)
        summary["pool"] = {
            **{k: v for k, v in pool_info.items() if k != "unreadable"},
            "unreadable": len(pool_info["unreadable"]),
            "skipped": counts,
            "to_label": len(kept_pool),
        }
    relabel = pd.DataFrame()
    if relabel_suspects:
        relabel, dropped, suspect_counts = doubted_rows(cfg, run_dir, frames)
        if len(dropped):
            dropped, dropped_counts = exclude_known(dropped, frames, cfg)
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
    teachers = [build_teacher(cfg, run_dir, run_id, name, frames, no_cache) for name in teacher_names]
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
            t.predictions["validation"], stopped = teacher_labels(
                t, frames["validation"], f"{len(frames['validation']):,} validation rows"
            )
        if stopped is None and len(to_label):
            t0 = time.perf_counter()
            t.predictions["pool"], stopped = teacher_labels(t, to_label, f"the pool ({len(to_label):,} rows)")
            seconds[t.name] = time.perf_counter() - t0
        if stopped is None and len(relabel):
            t.predictions["suspects"], stopped = teacher_labels(t, relabel, f"{len(relabel):,} suspected label errors")
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
    summary["labelled"] = labelled_counts(rows)
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
            "one_time": [labelling_line(t, set(rows["id"]), "the pool", seconds.get(t.name, 0.0)) for t in teachers]
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
    distilled = distilled_frames(frames, rows)
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
        student_predictions = train_students(cfg, out_dir, students, distilled)
        for t in teachers:  # the teacher on the whole gold test set, when the run had no predictions from it
            if "test" not in t.predictions:
                t.predictions["test"], stopped = teacher_labels(t, frames["test"], f"{len(frames['test']):,} test rows")
                if stopped is not None:
                    notes.append(f"{t.name} on the test set stopped: {stopped}; compared on the rows it answered")
        summary["comparisons"] = compare_students(cfg, run_dir, frames["test"], labels, teachers, student_predictions)
        summary["costs"] = student_costs(cfg, run_dir, teachers, student_predictions, rows, seconds)
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
            correct = correct_mask(agreeing.rename(columns={"prediction_a": "prediction"}), validation)
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
    correct = correct_mask(predictions, validation) & predictions["prediction"].isin(labels).to_numpy()
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
        target, target_source = student_target(cfg, run_dir, frames, students)
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

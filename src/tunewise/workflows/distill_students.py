"""distill's filter, students and comparison: the confidence threshold chosen on validation, the
students trained on the teacher's labels, and how they compare with the teacher and with gold
alone, with their costs.
"""

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunewise.core.artifacts import make_private_dirs, read_json, write_parquet
from tunewise.core.layout import RunLayout
from tunewise.core.progress import console
from tunewise.pipeline.runner import StageContext
from tunewise.pipeline.stages.train import resolve_candidates, run as train_stage
from tunewise.workflows.distill_teacher import DistillError, Teacher

MIN_KEPT_SHARE = 0.05  # a threshold must keep this share of validation rows (and 10 rows) to be chosen
COMPARED = ("accuracy", "macro_f1")


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


def correct_mask(predictions: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    expected = truth.set_index(truth["id"].astype(str))["label"].astype(str)
    return (
        predictions["prediction"].astype(str).to_numpy() == expected.reindex(predictions["id"].astype(str)).to_numpy()
    )


def student_target(
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
                accuracy = float(correct_mask(pd.read_parquet(path), frames["validation"]).mean())
                if best is None or accuracy > best[0]:
                    best = (accuracy, name)
                break
    if best is not None:
        return best[0], f"{skipped}{best[1]}'s validation accuracy trained on gold rows alone ({best[0]:.3f})"
    return None, f"{skipped}no decision and no gold-trained student in the run to set a target"


# =============================================================================================
# Students, comparison, costs


def resolve_students(cfg: Any, names: Sequence[str] | None) -> list[str]:
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


def train_students(
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


def labelling_line(teacher: Teacher, ids: set[str], what: str, seconds: float) -> dict[str, Any]:
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


def labelled_counts(rows: pd.DataFrame) -> dict[str, Any]:
    reasons = rows.loc[~rows["kept"], "why_not"].value_counts().to_dict() if len(rows) else {}
    return {
        "labelled": len(rows),
        "kept": int(rows["kept"].sum()) if len(rows) else 0,
        "dropped": {str(k): int(v) for k, v in reasons.items()},
    }


def distilled_frames(frames: dict[str, pd.DataFrame], rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
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


def compare_students(
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


def student_costs(
    cfg: Any,
    run_dir: Path,
    teachers: list[Teacher],
    students: dict[str, pd.DataFrame],
    rows: pd.DataFrame,
    seconds: dict[str, float],
) -> dict[str, Any]:
    from tunewise.decision.run_facts import read_measured_usd_per_request  # on use: loads scipy, sklearn

    roi = cfg.roi
    one_time = []
    pool_ids = set(rows.loc[rows["part"] == "pool", "id"]) if len(rows) else set()
    suspect_ids = set(rows.loc[rows["part"] == "suspects", "id"]) if len(rows) else set()
    for t in teachers:
        if pool_ids:
            one_time.append(labelling_line(t, pool_ids, "the pool", seconds.get(t.name, 0.0)))
        if suspect_ids:
            one_time.append(labelling_line(t, suspect_ids, "suspected label errors", 0.0))
        scored = {
            str(i)
            for s in ("validation", "test")
            if s not in t.reused and s in t.predictions
            for i in t.predictions[s]["id"]
        }
        if scored and t.api:
            one_time.append(labelling_line(t, scored, "validation and test (to choose and compare)", 0.0))
    monthly = {}
    for t in teachers:
        test = t.predictions.get("test")
        usd_per_request = None
        if t.api:
            usd_per_request = (t.candidate.info().get("usage") or {}).get(
                "usd_per_row_mean"
            ) or read_measured_usd_per_request(run_dir).get(t.name, 0.0)
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

"""Evaluation: every candidate on the held-out test set, with intervals, paired tests and a gate.

What it answers, for each candidate that the baseline and train stages scored:

- classify: accuracy, macro / micro / weighted precision, recall and F1, a per-class table, the
  confusion matrix with its largest confusions, calibration (ECE), accuracy against coverage when
  the least confident answers are deferred, and an out-of-scope threshold chosen on validation;
- generate: chrF and BLEU (sacrebleu), ROUGE-L, embedding similarity, length ratio, format
  compliance and the share of replies with unsupported facts (``tunewise.evaluation.metrics_gen``);
- a bootstrap interval for every metric and, against the baseline, a paired test (McNemar for
  correctness, a sign-flip permutation test for per-example generation scores) and the relative
  improvement with its own interval from the same resamples (``tunewise.core.stats``);
- the same per slice column, with the largest gap between slices and the slices where a
  candidate is worse than the baseline beyond noise;
- robustness under seeded perturbations, over-fitting (train / validation / test side by side);
- a gate: the chosen candidate's relative improvement over the baseline must reach the threshold
  with the lower end of its interval above zero, and it must not lose to the best cheap candidate.

Comparisons use only the ids both candidates scored: LLM candidates score a sample of the test
set (``baseline/sample_ids.json``), so a comparison with one of them runs on that sample and says
how many examples it used. A candidate whose predictions name ids outside the test set is left
out with a message, never compared on a different set.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunewise.candidates.ensemble import (
    MIN_MEMBERS,
    TOO_FEW_MEMBERS,
    EnsembleCandidate,
    choose_members,
    combine_predictions,
    proba_matrix,
    validation_accuracy,
)
from tunewise.candidates.registry import CANDIDATES, PREDICTION_COLUMNS, Candidate
from tunewise.config.sections import EvaluateConfig  # noqa: F401  (re-exported: the evaluate section)
from tunewise.core.artifacts import read_json, write_csv, write_json, write_parquet
from tunewise.core.errors import TunewiseError
from tunewise.core.perturb import PERTURBATIONS, perturb
from tunewise.core.progress import track
from tunewise.core.records import answer_column
from tunewise.core.stats import (
    calibration_error_resampled,
    class_counts,
    classification_metrics_with_ci,
    compare_paired,
    expected_calibration_error,
    mcnemar,
    mean_with_ci,
    paired_permutation,
    percentile_interval,
    precision_recall_f1,
    ratio_resampled,
    resample_weights,
)
from tunewise.evaluation.metrics_gen import FactChecker, bleu_from_statistics, chrf_from_statistics, score_generation

__all__ = [
    "DEFAULT_BASELINE",
    "PERTURBATION_KINDS",
    "PRIMARY_METRIC",
    "CandidatePredictions",
    "ClassifyScores",
    "EvaluateConfig",
    "Evaluation",
    "EvaluationError",
    "GenerateScores",
    "choose_threshold",
    "compare_scores",
    "coverage_curve",
    "evaluate_candidates",
    "gate_exit_code",
    "ensemble_candidate",
    "load_incumbent_predictions",
    "load_run_predictions",
    "meaningful",
    "pairwise_primary",
    "pick_incumbent",
    "overfitting_report",
    "perturb_texts",
    "primary_score",
    "robustness_report",
    "score_classification",
    "score_generation_predictions",
]

PRIMARY_METRIC = {"classify": "accuracy", "generate": "chrf"}
# Secondary metrics compared against the baseline besides the primary one.
COMPARED_METRICS = {"classify": ("accuracy", "macro_f1"), "generate": ("chrf", "bleu", "rouge_l", "embedding_similarity")}
DEFAULT_BASELINE = {"classify": "zero_shot_llm", "generate": "zero_shot_llm_gen"}
# evaluate.baseline: predictions:FILE names the team's current system's answers on the test file
PREDICTIONS_PREFIX = "predictions:"
INCUMBENT_NAME = "incumbent"
LOWER_IS_BETTER = frozenset({"ece", "unsupported_fact_rate"})
PERTURBATION_KINDS = tuple(PERTURBATIONS)  # typos, casing, punctuation, fillers
COVERAGE_LEVELS = tuple(round(1.0 - 0.05 * i, 2) for i in range(11))  # 100% .. 50%


class EvaluationError(TunewiseError, ValueError):
    """Evaluation cannot run as asked; the message names the file or candidate."""

    hint = "check the evaluate section of the config and that `tunewise train` finished for this run"


# ---------------------------------------------------------------------------------------------
# Loading predictions


@dataclass
class CandidatePredictions:
    """One candidate's predictions (the ``tunewise.candidates.registry`` columns) on test, validation, train."""

    name: str
    kind: str
    test: pd.DataFrame
    validation: pd.DataFrame | None = None
    train: pd.DataFrame | None = None
    source: str = "baseline"  # the stage that wrote them
    expensive: bool = False
    members: list[str] | None = None  # a candidate that combines others (the ensemble): their names


def read_predictions(path: Path) -> pd.DataFrame:
    """A predictions parquet with the contract's columns; ids as strings."""
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise EvaluationError(f"{path}: cannot read predictions ({type(exc).__name__}: {exc})") from None
    missing = [c for c in ("id", "prediction") if c not in frame.columns]
    if missing:
        raise EvaluationError(f"{path}: predictions lack column(s) {missing}; expected {list(PREDICTION_COLUMNS)}")
    frame = frame.copy()
    frame["id"] = frame["id"].astype(str)
    frame["prediction"] = frame["prediction"].fillna("").astype(str)
    if "score" not in frame.columns:
        frame["score"] = np.nan
    if frame["id"].duplicated().any():
        raise EvaluationError(f"{path}: id {frame.loc[frame['id'].duplicated(), 'id'].iloc[0]!r} appears more than once")
    return frame


def _stage_kinds(stage_dir: Path) -> dict[str, dict]:
    try:
        summary = read_json(stage_dir / "summary.json")
    except (FileNotFoundError, ValueError):
        return {}
    return {c["name"]: c for c in summary.get("candidates", []) if isinstance(c, dict) and "name" in c}


def load_run_predictions(run_dir: str | Path, stages: Sequence[str] = ("baseline", "train")) -> tuple[list[CandidatePredictions], list[dict]]:
    """Every candidate's predictions under ``runs/<id>/<stage>/predictions/``; (found, skipped).

    ``<name>.parquet`` holds test predictions, ``<name>.validation.parquet`` and
    ``<name>.train.parquet`` the other splits when the stage wrote them. A stage that has not run
    (no train stage yet) is simply absent; a candidate its summary lists without a predictions
    file is reported in ``skipped``.
    """
    run_dir = Path(run_dir)
    found: dict[str, CandidatePredictions] = {}
    skipped: list[dict] = []
    for stage in stages:
        folder = run_dir / stage / "predictions"
        listed = _stage_kinds(run_dir / stage)
        files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
        tests = [p for p in files if not p.name.endswith((".validation.parquet", ".train.parquet"))]
        for path in tests:
            name = path.name[: -len(".parquet")]
            if name in found:
                skipped.append({"name": name, "reason": f"{path}: a candidate of this name came from stage "
                                f"{found[name].source!r} already; rename one"})
                continue
            meta = listed.get(name, {})
            registered = CANDIDATES.get(name)
            kind = meta.get("kind") or (registered.kind if registered else ("finetuned" if stage == "train" else "baseline"))
            expensive = bool(meta.get("expensive", registered.expensive if registered else stage == "train"))
            try:
                test = read_predictions(path)
                extra = {split: read_predictions(p) if (p := folder / f"{name}.{split}.parquet").exists() else None
                         for split in ("validation", "train")}
            except EvaluationError as exc:
                skipped.append({"name": name, "reason": str(exc)})
                continue
            found[name] = CandidatePredictions(name, kind, test, extra["validation"], extra["train"], stage, expensive)
        for name in listed:
            if name not in found and not any(s["name"] == name for s in skipped):
                skipped.append({"name": name, "reason": f"stage {stage!r} lists candidate {name!r} but "
                                f"{folder / (name + '.parquet')} does not exist; re-run `tunewise {stage}`"})
    return list(found.values()), skipped


def ensemble_candidate(candidates: Sequence[CandidatePredictions], labels: Sequence[str], *,
                       name: str = EnsembleCandidate.name) -> tuple[CandidatePredictions | None, dict[str, Any]]:
    """The ``ensemble`` candidate from its members' stored predictions: no model runs again.

    Its members rule and combination rule are the candidate's (``tunewise.candidates.ensemble``): every
    fine-tuned candidate with probabilities, plus the cheap one with the best validation accuracy;
    the mean of their class probabilities on the test (and validation) ids every member scored;
    the sum of their latencies. Validation predictions carry the true ``label`` for the ranking.
    Returns (candidate or None, what was done).
    """
    labels = sorted(labels)
    usable = {c.name: c for c in candidates if proba_matrix(c.test, labels) is not None}
    pool = [(c.name, c.kind, validation_accuracy(c.validation) if c.validation is not None else None)
            for c in usable.values()]
    members = [usable[n] for n in choose_members(pool)]
    info: dict[str, Any] = {"members": [m.name for m in members]}
    if len(members) < MIN_MEMBERS:
        info["reason"] = TOO_FEW_MEMBERS
        return None, info
    test = combine_predictions([m.test for m in members], labels)
    validation = None
    if all(m.validation is not None and proba_matrix(m.validation, labels) is not None for m in members):
        validation = combine_predictions([m.validation for m in members], labels)
    info["n_test"] = len(test)
    return CandidatePredictions(name, EnsembleCandidate.kind, test, validation, None, "evaluate",
                                any(m.expensive for m in members), members=info["members"]), info


def load_incumbent_predictions(path: str | Path, test: pd.DataFrame) -> tuple[CandidatePredictions, dict[str, Any]]:
    """The team's current system's answers on the test file (``evaluate.baseline: predictions:FILE``).

    Columns ``id``, ``prediction``, optional ``latency_ms`` and ``usd`` (cost of one request);
    CSV, TSV, JSONL or Parquet. Joined on id: ids the file lacks are compared on the rows it has
    (and counted), ids the test set lacks are dropped (and counted). Nothing is guessed."""
    path = Path(path)
    if not path.exists():
        raise EvaluationError(f"evaluate.baseline: predictions file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif suffix in (".jsonl", ".ndjson"):
            frame = pd.read_json(path, lines=True, dtype=False)
        elif suffix == ".json":
            frame = pd.read_json(path, dtype=False)
        else:
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise EvaluationError(f"{path}: cannot read the incumbent's predictions ({type(exc).__name__}: {exc})") from None
    missing = [c for c in ("id", "prediction") if c not in frame.columns]
    if missing:
        raise EvaluationError(f"{path}: the incumbent's predictions lack column(s) {missing}; expected id, prediction "
                              "and optionally latency_ms, usd")
    frame = frame.assign(id=frame["id"].astype(str), prediction=frame["prediction"].fillna("").astype(str))
    repeated = frame["id"][frame["id"].duplicated()]
    if len(repeated):
        line = int(repeated.index[0]) + 2  # a header line, then 1-based rows
        raise EvaluationError(f"{path}, line {line}: field id {repeated.iloc[0]!r} appears more than once")
    for column in ("latency_ms", "usd"):
        if column in frame.columns:
            values = pd.to_numeric(frame[column], errors="coerce")
            bad = values.isna() | (values < 0)
            if bad.any():
                at = int(np.flatnonzero(bad.to_numpy())[0])
                raise EvaluationError(f"{path}, line {at + 2}: field {column} must be a number >= 0, got "
                                      f"{frame[column].iloc[at]!r}")
            frame[column] = values.astype(float)
    test_ids = test["id"].astype(str)
    extra = frame.loc[~frame["id"].isin(set(test_ids)), "id"]
    absent = test_ids[~test_ids.isin(set(frame["id"]))]
    kept = frame[frame["id"].isin(set(test_ids))].reset_index(drop=True)
    predictions = pd.DataFrame({"id": kept["id"], "prediction": kept["prediction"], "score": np.nan,
                                "latency_ms": kept["latency_ms"] if "latency_ms" in kept else np.nan})
    if "usd" in kept:
        predictions["usd"] = kept["usd"]
    info = {"file": str(path), "rows": int(len(frame)), "matched": int(len(kept)),
            "missing_ids": int(len(absent)), "missing_examples": absent.head(5).tolist(),
            "extra_ids": int(len(extra)), "extra_examples": extra.head(5).tolist(),
            "has_latency": "latency_ms" in frame.columns, "has_usd": "usd" in frame.columns,
            "usd_per_request": float(kept["usd"].mean()) if "usd" in kept and len(kept) else None}
    if not len(kept):
        raise EvaluationError(f"{path}: none of its {len(frame)} ids is a test id (first: "
                              f"{frame['id'].iloc[0] if len(frame) else 'none'!r}); the file must answer the test file's rows")
    return CandidatePredictions(INCUMBENT_NAME, "incumbent", predictions, None, None, "evaluate", False), info


def _check_ids(candidate: CandidatePredictions, test_ids: set[str]) -> str | None:
    """Why the candidate cannot be compared on this test set, or None."""
    if len(candidate.test) == 0:
        return f"candidate {candidate.name!r} ({candidate.source}): the predictions file is empty"
    unknown = candidate.test.loc[~candidate.test["id"].isin(test_ids), "id"]
    if len(unknown):
        return (f"candidate {candidate.name!r} ({candidate.source}): {len(unknown)} of {len(candidate.test)} prediction "
                f"ids are not in the test set (first: {unknown.iloc[0]!r}); its predictions were made on another "
                f"split, so it is left out rather than compared on a different set; re-run `tunewise {candidate.source}`")
    return None


# ---------------------------------------------------------------------------------------------
# Per-example scores of one candidate, and metrics of any subset under any resamples


class _Resampler:
    """Bootstrap count matrices by sample size, seeded; the few most recent ones kept."""

    def __init__(self, n_resamples: int, seed: int, keep: int = 8) -> None:
        self.n_resamples, self.seed, self.keep = n_resamples, seed, keep
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def __call__(self, n: int) -> np.ndarray:
        if n in self._cache:
            self._cache.move_to_end(n)
            return self._cache[n]
        weights = resample_weights(n, self.n_resamples, self.seed)
        self._cache[n] = weights
        while len(self._cache) > self.keep:
            self._cache.popitem(last=False)
        return weights


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    return percentile_interval(np.asarray(values, dtype=np.float64), level)


@dataclass
class ClassifyScores:
    """A classifier's predictions on ``ids`` as label indices into ``labels``."""

    ids: np.ndarray
    y_true: np.ndarray
    y_pred: np.ndarray
    confidence: np.ndarray
    labels: list[str]
    answered: np.ndarray | None = None  # confidence >= the out-of-scope threshold
    oos_index: int | None = None

    @property
    def correct(self) -> np.ndarray:
        return self.y_true == self.y_pred

    def take(self, positions: np.ndarray) -> ClassifyScores:
        return ClassifyScores(self.ids[positions], self.y_true[positions], self.y_pred[positions],
                              self.confidence[positions], self.labels,
                              None if self.answered is None else self.answered[positions], self.oos_index)

    def paired_values(self, metric: str) -> tuple[np.ndarray, str] | None:
        return (self.correct, "mcnemar") if metric == "accuracy" else None

    def metrics(self, weights: np.ndarray | None, level: float) -> tuple[dict, dict, dict]:
        point, ci, resampled = classification_metrics_with_ci(self.y_true, self.y_pred, len(self.labels), weights, level)
        finite = np.isfinite(self.confidence)
        if finite.all():
            point["ece"] = expected_calibration_error(self.confidence, self.correct)
            if weights is not None:
                resampled["ece"] = calibration_error_resampled(self.confidence, self.correct, weights)
                ci["ece"] = _interval(resampled["ece"], level)
        if self.answered is not None:
            ones = np.ones(len(self.ids), dtype=bool)
            ratios = {"coverage": (self.answered, ones), "selective_accuracy": (self.answered & self.correct, self.answered)}
            if self.oos_index is not None and (self.y_true == self.oos_index).any():
                is_oos = self.y_true == self.oos_index
                says_oos = ~self.answered | (self.y_pred == self.oos_index)
                final_correct = np.where(self.answered, self.correct, is_oos)
                ratios["in_scope_accuracy"] = (final_correct & ~is_oos, ~is_oos)
                ratios["oos_recall"] = (says_oos & is_oos, is_oos)
                ratios["oos_precision"] = (says_oos & is_oos, says_oos)
            for name, (num, den) in ratios.items():
                point[name] = float(num.sum() / den.sum()) if den.sum() else float("nan")
                if weights is not None:
                    resampled[name] = ratio_resampled(num, den, weights)
                    ci[name] = _interval(resampled[name], level)
        return point, ci, resampled


@dataclass
class GenerateScores:
    """A generator's per-example scores on ``ids`` and its additive corpus statistics."""

    ids: np.ndarray
    frame: pd.DataFrame
    chrf_stats: np.ndarray
    bleu_stats: np.ndarray

    def take(self, positions: np.ndarray) -> GenerateScores:
        return GenerateScores(self.ids[positions], self.frame.iloc[positions].reset_index(drop=True),
                              self.chrf_stats[positions], self.bleu_stats[positions])

    def paired_values(self, metric: str) -> tuple[np.ndarray, str] | None:
        # corpus chrF is compared through its sentence-level scores (the same statistics per row)
        column = {"chrf": "chrf", "rouge_l": "rouge_l", "embedding_similarity": "embedding_similarity"}.get(metric)
        if column is None or column not in self.frame.columns:
            return None
        return self.frame[column].to_numpy(np.float64), "paired_permutation"

    def metrics(self, weights: np.ndarray | None, level: float) -> tuple[dict, dict, dict]:
        point: dict[str, float] = {}
        ci: dict[str, tuple[float, float]] = {}
        resampled: dict[str, np.ndarray] = {}
        for name, stats, fn in (("chrf", self.chrf_stats, chrf_from_statistics), ("bleu", self.bleu_stats, bleu_from_statistics)):
            point[name] = float(fn(stats.sum(axis=0))) if len(stats) else float("nan")
            if weights is not None:
                resampled[name] = fn(weights.astype(np.float64) @ stats)
                ci[name] = _interval(resampled[name], level)
        means = {"rouge_l": "rouge_l", "embedding_similarity": "embedding_similarity", "format_compliance": "format_ok"}
        values = {name: self.frame[col].to_numpy(np.float64) for name, col in means.items() if col in self.frame.columns}
        if "n_unsupported" in self.frame.columns:
            values["unsupported_fact_rate"] = (self.frame["n_unsupported"].to_numpy() > 0).astype(np.float64)
        for name, v in values.items():
            p, interval, res = mean_with_ci(v, weights, level)
            point[name] = p
            if weights is not None:
                ci[name], resampled[name] = interval, res
        words, ref_words = self.frame["reply_words"].to_numpy(), self.frame["reference_words"].to_numpy()
        point["length_ratio"] = float(words.sum() / ref_words.sum()) if ref_words.sum() else float("nan")
        if weights is not None:
            resampled["length_ratio"] = ratio_resampled(words, ref_words, weights)
            ci["length_ratio"] = _interval(resampled["length_ratio"], level)
        return point, ci, resampled


Scores = ClassifyScores | GenerateScores


def _truth_for(ids: Sequence[str], truth: pd.DataFrame, column: str) -> pd.Series:
    return truth.set_index(truth["id"].astype(str))[column].reindex(list(ids))


def score_classification(predictions: pd.DataFrame, truth: pd.DataFrame, labels: list[str],
                         threshold: float | None = None, out_of_scope_label: str | None = None) -> ClassifyScores:
    """Index predictions and true labels (``truth``: id, label) into the label list ``labels``."""
    index = {label: i for i, label in enumerate(labels)}
    ids = predictions["id"].astype(str).to_numpy()
    expected = _truth_for(ids, truth, "label").astype(str).to_numpy()
    unknown = sorted({x for x in (*expected, *predictions["prediction"]) if x not in index})
    if unknown:
        raise EvaluationError(f"labels {unknown[:5]} are missing from the label list")
    confidence = pd.to_numeric(predictions["score"], errors="coerce").to_numpy(np.float64)
    answered = confidence >= threshold if threshold is not None else None
    oos = index.get(out_of_scope_label) if out_of_scope_label is not None else None
    return ClassifyScores(ids, np.array([index[x] for x in expected]), np.array([index[x] for x in predictions["prediction"]]),
                          confidence, labels, answered, oos)


def score_generation_predictions(predictions: pd.DataFrame, truth: pd.DataFrame, *, checker: FactChecker | None = None,
                                 format_pattern: str | None = None, encoder: str | None = None) -> GenerateScores:
    """Score replies against ``truth`` (id, target, input)."""
    ids = predictions["id"].astype(str).to_numpy()
    references = _truth_for(ids, truth, "target").fillna("").astype(str).tolist()
    inputs = _truth_for(ids, truth, "input").fillna("").astype(str).tolist() if "input" in truth.columns else None
    scored = score_generation(predictions["prediction"].astype(str).tolist(), references, inputs,
                              checker=checker if inputs is not None else None, format_pattern=format_pattern, encoder=encoder)
    return GenerateScores(ids, scored.per_example, scored.chrf_stats, scored.bleu_stats)


# ---------------------------------------------------------------------------------------------
# Paired comparison on shared ids


def _common_positions(a: Scores, b: Scores) -> tuple[np.ndarray, np.ndarray]:
    pos_b = {x: i for i, x in enumerate(b.ids)}
    pa = np.array([i for i, x in enumerate(a.ids) if x in pos_b], dtype=np.int64)
    pb = np.array([pos_b[a.ids[i]] for i in pa], dtype=np.int64)
    return pa, pb


def compare_scores(candidate: Scores, baseline: Scores, metrics: Sequence[str], resampler: _Resampler, level: float,
                   seed: int = 0) -> dict | None:
    """Candidate against baseline on the ids both scored: per metric, the difference and the
    relative improvement with intervals from the same resamples, and a paired test; None when
    they share no id."""
    pa, pb = _common_positions(candidate, baseline)
    if len(pa) == 0:
        return None
    a, b = candidate.take(pa), baseline.take(pb)
    weights = resampler(len(pa))
    point_a, _, res_a = a.metrics(weights, level)
    point_b, _, res_b = b.metrics(weights, level)
    out: dict[str, Any] = {"n": int(len(pa)), "metrics": {}}
    for metric in metrics:
        if metric not in point_a or metric not in point_b:
            continue
        paired = a.paired_values(metric)
        if paired is not None:
            values_a, test = paired
            values_b = b.paired_values(metric)[0]
            if test == "mcnemar":
                p_value, test = mcnemar(values_a, values_b)
            else:
                p_value = paired_permutation(values_a, values_b, seed=seed)
        else:
            p_value, test = float("nan"), "bootstrap_only"
        out["metrics"][metric] = compare_paired(metric, point_a[metric], point_b[metric], res_a[metric], res_b[metric],
                                                p_value, test, len(pa), level).as_dict()
    return out


# ---------------------------------------------------------------------------------------------
# Classification extras: threshold, coverage, per class, confusions


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, target_precision: float,
                     min_coverage: float = 0.1) -> dict:
    """The lowest confidence at which the answers at or above it reach ``target_precision``.

    Lowest, so the most answers are kept. When no cut reaches the target, the cut with the best
    precision among those answering at least ``min_coverage`` of the rows is used and
    ``reached`` is False.
    """
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, bool)
    n = len(confidence)
    if n == 0 or not np.isfinite(confidence).all():
        return {"threshold": None, "reached": False, "reason": "no validation predictions with a confidence"}
    order = np.argsort(-confidence, kind="stable")
    sorted_conf, sorted_correct = confidence[order], correct[order]
    precision = np.cumsum(sorted_correct) / np.arange(1, n + 1)
    # a cut is only possible between different confidences: ties are answered together
    cut = np.r_[sorted_conf[:-1] > sorted_conf[1:], True]
    feasible = np.flatnonzero(cut & (precision >= target_precision))
    reached = len(feasible) > 0
    if reached:
        j = int(feasible[-1])
    else:
        allowed = np.flatnonzero(cut & (np.arange(1, n + 1) >= max(1, math.ceil(min_coverage * n))))
        j = int(allowed[np.argmax(precision[allowed])])
    return {"threshold": float(sorted_conf[j]), "reached": bool(reached), "target_precision": target_precision,
            "validation_precision": float(precision[j]), "validation_coverage": (j + 1) / n, "n_validation": n}


def coverage_curve(confidence: np.ndarray, correct: np.ndarray, levels: Sequence[float] = COVERAGE_LEVELS) -> list[dict]:
    """Accuracy of the most confident share of answers, for each coverage level (the rest deferred)."""
    n = len(confidence)
    if n == 0 or not np.isfinite(confidence).all():
        return []
    order = np.argsort(-np.asarray(confidence, np.float64), kind="stable")
    hits = np.cumsum(np.asarray(correct, np.float64)[order])
    out = []
    for level in levels:
        k = max(1, math.ceil(level * n))
        out.append({"coverage": float(level), "n_answered": int(k), "accuracy": float(hits[k - 1] / k),
                    "min_confidence": float(confidence[order[k - 1]])})
    return out


def _oos_block(y_true: np.ndarray, y_pred: np.ndarray, is_oos: np.ndarray, flagged: np.ndarray) -> dict:
    """In-scope accuracy and out-of-scope recall, precision, F1 when ``flagged`` rows are answered out of scope."""
    in_scope = ~is_oos
    n_in, n_oos = int(in_scope.sum()), int(is_oos.sum())
    in_right = int((in_scope & ~flagged & (y_pred == y_true)).sum())
    tp, fp = int((flagged & is_oos).sum()), int((flagged & in_scope).sum())
    fn = n_oos - tp
    precision, recall, f1 = (float(v) for v in precision_recall_f1(tp, fp, fn))
    return {"in_scope_accuracy": in_right / n_in if n_in else None,
            "oos_recall": recall if n_oos else None,
            "oos_precision": precision if tp + fp else None,
            "oos_f1": f1 if 2 * tp + fp + fn else None,
            "in_scope_correct": in_right, "oos_caught": tp, "oos_false_alarms": fp, "oos_missed": fn,
            "flagged": tp + fp}


def out_of_scope_metrics(scores: ClassifyScores) -> dict | None:
    """Out-of-scope as a first-class case, when the test set has rows labelled out of scope.

    A row is flagged out of scope when the model predicts the out-of-scope class (``class_only``)
    or, in addition, when its confidence is below the threshold (``with_threshold``). In-scope
    accuracy counts a flagged in-scope row as wrong. The top-level figures are those with the
    threshold when one was applied, else class-only; both blocks show what the threshold adds.
    """
    if scores.oos_index is None:
        return None
    y_true, y_pred = np.asarray(scores.y_true), np.asarray(scores.y_pred)
    is_oos = y_true == scores.oos_index
    if not is_oos.any():
        return None
    by_class = y_pred == scores.oos_index
    class_only = _oos_block(y_true, y_pred, is_oos, by_class)
    with_threshold = None
    if scores.answered is not None:
        with_threshold = _oos_block(y_true, y_pred, is_oos, by_class | ~np.asarray(scores.answered, bool))
    main = with_threshold or class_only
    return {"label": scores.labels[scores.oos_index], "threshold_applied": with_threshold is not None,
            "n": int(len(y_true)), "n_in_scope": int((~is_oos).sum()), "n_oos": int(is_oos.sum()),
            "n_predicted_oos_class": int(by_class.sum()),
            "n_below_threshold": None if scores.answered is None else int((~np.asarray(scores.answered, bool)).sum()),
            **main, "with_threshold": with_threshold, "class_only": class_only}


def _per_class(scores: ClassifyScores, name: str) -> pd.DataFrame:
    counts = class_counts(np.ones((1, len(scores.ids)), np.float32), scores.y_true, scores.y_pred, len(scores.labels))
    tp, fp, fn = counts.tp[0], counts.fp[0], counts.fn[0]
    precision, recall, f1 = precision_recall_f1(tp, fp, fn)
    present = (tp + fp + fn) > 0
    return pd.DataFrame({
        "candidate": name, "label": np.asarray(scores.labels, dtype=object)[present],
        "precision": precision[present], "recall": recall[present], "f1": f1[present],
        "support": (tp + fn)[present].astype(int), "predicted": (tp + fp)[present].astype(int),
    })


def _confusions(scores: ClassifyScores, top: int) -> dict:
    n_labels = len(scores.labels)
    matrix = np.bincount(scores.y_true * n_labels + scores.y_pred, minlength=n_labels * n_labels).reshape(n_labels, n_labels)
    present = np.flatnonzero((matrix.sum(axis=0) + matrix.sum(axis=1)) > 0)
    sub = matrix[np.ix_(present, present)]
    labels = [scores.labels[i] for i in present]
    off = sub.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:top]
    support = sub.sum(axis=1)
    largest = [{"true": labels[i], "predicted": labels[j], "count": int(off[i, j]),
                "share_of_true": float(off[i, j] / support[i]) if support[i] else 0.0}
               for i, j in zip(*np.unravel_index(flat, off.shape)) if off[i, j] > 0]
    return {"labels": labels, "matrix": sub.tolist(), "top": largest}


# ---------------------------------------------------------------------------------------------
# Perturbations for the robustness check: tunewise.core.perturb, shared with training augmentation


def perturb_texts(texts: Sequence[str], kind: str, seed: int = 0) -> list[str]:
    """Every text under one perturbation (``tunewise.core.perturb``: seeded by text, kind and seed)."""
    return [perturb(str(t), kind, seed) for t in texts]


# ---------------------------------------------------------------------------------------------
# The evaluation of all candidates


def _json_safe(obj: Any) -> Any:
    """Non-finite floats become None (JSON has no NaN); tuples and numpy values become plain."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_json_safe(v) for v in obj.tolist()]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:+.1%}"


@dataclass
class Evaluation:
    """What :func:`evaluate_candidates` found; ``write`` puts it under a folder."""

    task: str
    summary: dict
    scores: dict[str, Scores]
    per_example: dict[str, pd.DataFrame]
    per_class: pd.DataFrame | None = None
    confusions: dict = field(default_factory=dict)
    thresholds: dict = field(default_factory=dict)
    coverage: dict = field(default_factory=dict)
    slices: dict = field(default_factory=dict)
    worst: dict = field(default_factory=dict)

    def write(self, out_dir: str | Path) -> list[Path]:
        out = Path(out_dir)
        paths = [write_json(out / "summary.json", _json_safe(self.summary))]
        for name, frame in self.per_example.items():
            paths.append(write_parquet(out / "per_example" / f"{name}.parquet", frame))
        if self.per_class is not None:
            paths.append(write_csv(out / "per_class.csv", self.per_class))
        for artifact, payload in (("confusions.json", self.confusions), ("thresholds.json", self.thresholds),
                                  ("coverage.json", self.coverage), ("slices.json", self.slices),
                                  ("worst_examples.json", self.worst)):
            if payload or artifact == "slices.json":
                paths.append(write_json(out / artifact, _json_safe(payload)))
        paths += write_plots(self, out / "plots")
        return paths


def _label_list(task_labels: Sequence[str], candidates: Sequence[CandidatePredictions], extra: Sequence[str]) -> list[str]:
    labels = set(map(str, task_labels)) | set(map(str, extra))
    for c in candidates:
        labels |= set(c.test["prediction"])
        if c.validation is not None:
            labels |= set(c.validation["prediction"])
    return sorted(labels)


def pick_incumbent(task: str, entries: dict[str, dict], configured: str | None) -> tuple[str | None, str | None]:
    """(incumbent name, note): the configured candidate (or ``predictions:FILE``, loaded as
    ``incumbent``), else the strongest prompted LLM measured: the "pre-trained model before
    fine-tuning" of the minimum-improvement rule, never an arbitrary one of them."""
    primary = PRIMARY_METRIC[task]
    if configured is not None:
        name = INCUMBENT_NAME if configured.startswith(PREDICTIONS_PREFIX) else configured
        if name in entries:
            return name, None
        return None, (f"evaluate.baseline is {configured!r} but it has no usable predictions; "
                      f"available: {', '.join(sorted(entries)) or 'none'}")
    prompted = [n for n, e in entries.items() if e["kind"] == "baseline"]
    best = _best(entries, prompted, primary)
    if best is not None:
        return best, (f"the incumbent is {best}, the strongest prompted LLM measured "
                      f"(of {', '.join(sorted(prompted))}); name the system you run today with evaluate.baseline")
    alternatives = [n for n, e in entries.items() if e["kind"] != "finetuned"]
    best = _best(entries, alternatives, primary)
    if best is not None:
        return best, f"no prompted LLM was measured; the incumbent is {best}, the best candidate that needs no fine-tuning"
    return None, "no baseline: no prompted LLM or other candidate without fine-tuning has predictions; set evaluate.baseline"


def meaningful(task: str, entry: dict, scores: Scores, primary: str) -> dict:
    """Whether a candidate is more than chance: its interval's lower end above the majority-class
    rate (the accuracy of always answering the most frequent label on the same rows, never below
    1 / number of labels). A baseline within noise of that is a strawman: beating it by 15% says
    nothing about fine-tuning."""
    if task != "classify" or primary != "accuracy":
        return {"meaningful": True, "floor": None, "reason": "not checked for this metric"}
    counts = np.bincount(scores.y_true, minlength=len(scores.labels))
    floor = max(float(counts.max() / max(len(scores.y_true), 1)), 1.0 / max(len(set(scores.y_true.tolist())), 1))
    low = (entry.get("ci95", {}).get(primary) or [float("nan")])[0]
    ok = bool(low is not None and math.isfinite(low) and low > floor)
    reason = (f"{entry['name']} scores {entry['metrics'].get(primary, float('nan')):.4g} {primary} (interval from "
              f"{low:.4g}); always answering the most frequent label scores {floor:.4g} on the same rows")
    return {"meaningful": ok, "floor": floor, "lower": low,
            "reason": reason + ("" if ok else ": within noise of chance, not a meaningful baseline")}


def _reference(task: str, entries: dict[str, dict], incumbent: str | None, checks: dict[str, dict],
               primary: str) -> tuple[str | None, str | None]:
    """The candidate the minimum-improvement rule is measured against: the incumbent when it is
    meaningful, else the best meaningful candidate that needs no fine-tuning."""
    if incumbent is None or checks.get(incumbent, {}).get("meaningful", True):
        return incumbent, None
    alternatives = [n for n, e in entries.items() if e["kind"] != "finetuned" and n != incumbent
                    and checks.get(n, {}).get("meaningful", True)]
    best = _best(entries, alternatives, primary)
    if best is None:
        return incumbent, (f"the baseline {incumbent} is not meaningful ({checks[incumbent]['reason']}) and no "
                           "other candidate without fine-tuning is either; comparisons use it all the same")
    return best, (f"the baseline {incumbent} is not meaningful ({checks[incumbent]['reason']}): the "
                  f"minimum-improvement rule is measured against {best}, the best candidate that needs no fine-tuning")


def pairwise_primary(scores: dict[str, Scores], names: Sequence[str], primary: str, resampler: _Resampler,
                     level: float, seed: int) -> dict[str, dict[str, dict]]:
    """Every ordered pair's paired comparison on the primary metric (on the ids both scored):
    ``out[a][b]`` is a against b. The decision reads it to tell which candidates are within noise
    of each other and which beat the cheaper ones."""
    out: dict[str, dict[str, dict]] = {n: {} for n in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            result = compare_scores(scores[a], scores[b], (primary,), resampler, level, seed)
            if result is None or primary not in result["metrics"]:
                continue
            m = result["metrics"][primary]
            lo, hi = m["difference_ci"]
            out[a][b] = {"difference": m["difference"], "difference_ci": [lo, hi], "p_value": m["p_value"],
                         "test": m["test"], "n": m["n"]}
            out[b][a] = {"difference": -m["difference"], "difference_ci": [-hi, -lo], "p_value": m["p_value"],
                         "test": m["test"], "n": m["n"]}
    return out


def _best(entries: dict[str, dict], names: Sequence[str], primary: str) -> str | None:
    scored = [(entries[n]["metrics"].get(primary), n) for n in names]
    scored = [(v, n) for v, n in scored if v is not None and math.isfinite(v)]
    return max(scored, key=lambda item: item[0])[1] if scored else None


def gate_decision(task: str, *, candidate: str | None, baseline: str | None, vs_baseline: dict | None,
                  cheap: str | None, vs_cheap: dict | None, threshold: float, require_beats_cheap: bool = True,
                  notes: Sequence[str] = ()) -> dict:
    """Pass when the relative improvement on the primary metric reaches ``threshold`` with the
    interval's lower end above zero, and the candidate does not lose to the best cheap one beyond
    noise (the difference's interval entirely below zero)."""
    primary = PRIMARY_METRIC[task]
    reasons: list[str] = list(notes)
    passed = True
    if candidate is None or baseline is None:
        return {"passed": False, "candidate": candidate, "baseline": baseline,
                "reasons": reasons + ["no candidate to compare with a baseline"]}
    comparison = (vs_baseline or {}).get("metrics", {}).get(primary)
    if comparison is None:
        return {"passed": False, "candidate": candidate, "baseline": baseline,
                "reasons": reasons + [f"{candidate} and {baseline} share no scored test ids: nothing to compare"]}
    rel, (lo, hi) = comparison["relative_improvement"], comparison["relative_ci"]
    n = comparison["n"]
    if rel is None or not math.isfinite(rel):
        passed = False
        reasons.append(f"relative improvement of {candidate} over {baseline} is undefined ({baseline} scores 0 {primary})")
    else:
        where = f"{primary} {comparison['candidate']:.4g} vs {comparison['baseline']:.4g}, n={n}"
        if rel >= threshold:
            reasons.append(f"{candidate} improves {primary} over {baseline} by {_pct(rel)} ({where}), "
                           f"reaching the {threshold:.0%} threshold")
        else:
            passed = False
            reasons.append(f"{candidate} improves {primary} over {baseline} by {_pct(rel)} ({where}), "
                           f"below the {threshold:.0%} threshold")
        if lo is not None and math.isfinite(lo) and lo > 0:
            reasons.append(f"the {primary} gain is beyond noise: its interval is {_pct(lo)} to {_pct(hi)}")
        else:
            passed = False
            reasons.append(f"the {primary} gain may be noise: its interval ({_pct(lo)} to {_pct(hi)}) reaches zero or below")
    if require_beats_cheap:
        cmp_cheap = (vs_cheap or {}).get("metrics", {}).get(primary)
        if cheap is None:
            reasons.append("no cheap candidate to check against")
        elif cmp_cheap is None:
            passed = False
            reasons.append(f"{candidate} and the cheap candidate {cheap} share no scored test ids")
        else:
            d_lo, d_hi = cmp_cheap["difference_ci"]
            if d_hi is not None and math.isfinite(d_hi) and d_hi < 0:
                passed = False
                reasons.append(f"{candidate} loses to the cheap candidate {cheap} beyond noise: {primary} difference "
                               f"{cmp_cheap['difference']:+.4g} (interval {d_lo:+.4g} to {d_hi:+.4g}, n={cmp_cheap['n']})")
            else:
                reasons.append(f"{candidate} does not lose to the cheap candidate {cheap} beyond noise "
                               f"({primary} difference {cmp_cheap['difference']:+.4g}, interval {d_lo:+.4g} to {d_hi:+.4g})")
    return {"passed": passed, "candidate": candidate, "baseline": baseline, "cheap": cheap, "reasons": reasons}


def gate_exit_code(summary: dict) -> int:
    """0 when the evaluation gate passed, 1 when it failed or the summary holds no gate."""
    gate = summary.get("gate") if isinstance(summary, dict) else None
    return 0 if isinstance(gate, dict) and gate.get("passed") is True else 1


def evaluate_candidates(
    test: pd.DataFrame,
    candidates: Sequence[CandidatePredictions],
    *,
    task: str,
    config: EvaluateConfig | None = None,
    validation: pd.DataFrame | None = None,
    slice_columns: Sequence[str] = (),
    knowledge: Sequence[str] = (),
    encoder: str | None = None,
    seed: int = 0,
    skipped: Sequence[dict] = (),
) -> Evaluation:
    """Score every candidate on ``test`` (records with ``label`` or ``target``), compare each
    with the baseline on shared ids, report slices and apply the gate.

    ``encoder`` turns on embedding similarity (generate); ``knowledge`` (texts) feeds the
    unsupported-facts check; ``validation`` (records) is where out-of-scope thresholds are chosen.
    """
    config = config or EvaluateConfig()
    level = config.confidence_level
    answer = answer_column(task)
    if answer not in test.columns:
        raise EvaluationError(f"the test set has no {answer!r} column (task {task})")
    test = test.copy()
    test["id"] = test["id"].astype(str)
    test_ids = set(test["id"])
    skipped = list(skipped)
    usable: list[CandidatePredictions] = []
    always = config.baseline or DEFAULT_BASELINE[task]  # the baseline stays in even when not listed
    if always.startswith(PREDICTIONS_PREFIX):
        always = INCUMBENT_NAME
    for c in candidates:
        if config.candidates is not None and c.name not in config.candidates and c.name != always:
            continue
        reason = _check_ids(c, test_ids)
        if reason:
            skipped.append({"name": c.name, "reason": reason})
        else:
            usable.append(c)
    if config.candidates is not None:
        for name in config.candidates:
            if not any(c.name == name for c in candidates):
                skipped.append({"name": name, "reason": f"evaluate.candidates lists {name!r} but no stage wrote its predictions"})
    resampler = _Resampler(config.n_resamples, seed)
    primary = PRIMARY_METRIC[task]
    timings: dict[str, float] = {}
    started = time.perf_counter()

    labels: list[str] = []
    if task == "classify":
        seen = [*test["label"].astype(str), config.out_of_scope_label]
        if validation is not None and "label" in validation.columns:
            seen += validation["label"].astype(str).tolist()
        labels = _label_list(seen, usable, [])
    checker = FactChecker(knowledge) if task == "generate" else None
    val_truth = None
    if validation is not None and task == "classify":
        val_truth = validation.assign(id=validation["id"].astype(str))

    scores: dict[str, Scores] = {}
    per_example: dict[str, pd.DataFrame] = {}
    thresholds: dict[str, dict] = {}
    coverage: dict[str, list] = {}
    per_class: list[pd.DataFrame] = []
    confusions: dict[str, dict] = {}
    worst: dict[str, list] = {}
    entries: dict[str, dict] = {}
    slice_frame = test.set_index("id")
    kept_slices = [c for c in slice_columns if c in test.columns]

    for c in usable:
        if task == "classify":
            threshold = None
            if val_truth is not None and c.validation is not None:
                known = c.validation[c.validation["id"].isin(set(val_truth["id"]))]
                val_scores = score_classification(known, val_truth, labels)
                thresholds[c.name] = choose_threshold(val_scores.confidence, val_scores.correct, config.target_precision)
            else:
                thresholds[c.name] = {"threshold": None, "reached": False, "reason": "no validation predictions"}
            threshold = thresholds[c.name]["threshold"]
            s = score_classification(c.test, test, labels, threshold, config.out_of_scope_label)
            coverage[c.name] = coverage_curve(s.confidence, s.correct)
            per_class.append(_per_class(s, c.name))
            confusions[c.name] = _confusions(s, config.top_confusions)
            frame = pd.DataFrame({"id": s.ids, "label": [labels[i] for i in s.y_true],
                                  "prediction": [labels[i] for i in s.y_pred], "confidence": s.confidence,
                                  "correct": s.correct})
            if s.answered is not None:
                frame["answered"] = s.answered
                frame["final_prediction"] = np.where(s.answered, frame["prediction"], config.out_of_scope_label)
            # the worst mistakes are the confident ones
            wrong = frame[~frame["correct"]].sort_values("confidence", ascending=False, kind="stable").head(config.worst_examples)
            if "input" in test.columns:
                wrong = wrong.assign(input=_truth_for(wrong["id"], test, "input").tolist())
            worst[c.name] = wrong.to_dict("records")
        else:
            s = score_generation_predictions(c.test, test, checker=checker, format_pattern=config.format_pattern, encoder=encoder)
            frame = pd.concat([pd.DataFrame({"id": s.ids, "target": _truth_for(s.ids, test, "target").tolist(),
                                             "prediction": c.test["prediction"].tolist()}), s.frame], axis=1)
            lowest = frame.sort_values("chrf", kind="stable").head(config.worst_examples)
            with_facts = frame[frame["n_unsupported"] > 0].head(config.worst_examples) if "n_unsupported" in frame else frame.head(0)
            add_input = (lambda f: f.assign(input=_truth_for(f["id"], test, "input").tolist())) if "input" in test else (lambda f: f)
            worst[c.name] = {"lowest_chrf": add_input(lowest).to_dict("records"),
                             "unsupported_facts": add_input(with_facts).to_dict("records")}
        for col in kept_slices:
            frame[col] = slice_frame[col].reindex(frame["id"]).to_numpy()
        scores[c.name] = s
        per_example[c.name] = frame
        point, ci, _ = s.metrics(resampler(len(s.ids)), level)
        entries[c.name] = {"name": c.name, "kind": c.kind, "source": c.source, "expensive": c.expensive,
                           "metrics": point, "ci95": ci, "n_eval": int(len(s.ids)),
                           "n_test": int(len(test)), "covers_full_test": len(s.ids) == len(test)}
        if c.members:
            entries[c.name]["members"] = list(c.members)
        if task == "classify" and thresholds[c.name].get("threshold") is not None:
            entries[c.name]["out_of_scope_threshold"] = thresholds[c.name]["threshold"]
        if task == "classify":
            oos_metrics = out_of_scope_metrics(s)
            if oos_metrics is not None:
                entries[c.name]["out_of_scope"] = oos_metrics
    timings["score"] = time.perf_counter() - started

    # ---- the incumbent, the reference of the minimum-improvement rule, comparisons and the gate
    started = time.perf_counter()
    incumbent, note = pick_incumbent(task, entries, config.baseline)
    notes = [note] if note else []
    checks = {name: meaningful(task, entries[name], scores[name], primary) for name in entries}
    for name, check in checks.items():
        entries[name]["meaningful"] = check["meaningful"]
        entries[name]["needs_finetuning"] = entries[name]["kind"] == "finetuned"
        entries[name]["on_sample"] = entries[name]["n_eval"] < len(test)
    baseline, reference_note = _reference(task, entries, incumbent, checks, primary)
    if reference_note:
        notes.append(reference_note)
    comparisons: dict[str, dict] = {}
    if baseline is not None:
        for name in entries:
            if name != baseline:
                result = compare_scores(scores[name], scores[baseline], COMPARED_METRICS[task], resampler, level, seed)
                if result is None:
                    skipped.append({"name": name, "reason": f"shares no scored test id with the baseline {baseline}; not compared"})
                else:
                    comparisons[name] = result
    pairwise = pairwise_primary(scores, list(entries), primary, resampler, level, seed)
    others = [n for n in entries if n != baseline]
    finetuned = [n for n in others if entries[n]["kind"] == "finetuned"]
    gate_candidate = _best(entries, finetuned or others, primary)
    # the alternative the fine-tune must not lose to: the best candidate that needs no fine-tuning
    # (cheap models and prompted LLMs alike), other than the reference itself
    cheap = _best(entries, [n for n in entries if entries[n]["kind"] != "finetuned" and n not in (gate_candidate, baseline)
                            and checks[n]["meaningful"]], primary)
    vs_cheap = None
    if gate_candidate is not None and cheap is not None and config.gate_beats_cheap:
        vs_cheap = compare_scores(scores[gate_candidate], scores[cheap], (primary,), resampler, level, seed)
    gate = gate_decision(task, candidate=gate_candidate, baseline=baseline, vs_baseline=comparisons.get(gate_candidate or ""),
                         cheap=cheap, vs_cheap=vs_cheap, threshold=config.threshold,
                         require_beats_cheap=config.gate_beats_cheap, notes=notes)
    head = None
    if gate_candidate is not None and gate_candidate in comparisons and primary in comparisons[gate_candidate]["metrics"]:
        cmp = comparisons[gate_candidate]["metrics"][primary]
        head = {"candidate": gate_candidate, "baseline": baseline, "metric": primary,
                "relative_improvement": cmp["relative_improvement"], "ci95": cmp["relative_ci"],
                "p_value": cmp["p_value"], "test": cmp["test"], "threshold": config.threshold,
                "difference": cmp["difference"], "difference_ci95": cmp["difference_ci"], "n": cmp["n"],
                "candidate_score": cmp["candidate"], "baseline_score": cmp["baseline"],
                "on_sample": cmp["n"] < len(test)}
    timings["compare"] = time.perf_counter() - started

    started = time.perf_counter()
    slices = slice_report(task, scores, test, slice_columns, baseline, config, resampler)
    timings["slices"] = time.perf_counter() - started

    summary = {
        "task": task,
        "primary_metric": primary,
        "ci_level": level,
        "n_resamples": config.n_resamples,
        "n_test": int(len(test)),
        "baseline": baseline,
        "incumbent": {"name": incumbent, "configured": config.baseline, **(checks.get(incumbent or "", {}))},
        "reference_note": reference_note,
        "threshold": config.threshold,
        "candidates": list(entries.values()),
        "pairwise": pairwise,
        "comparison": head,
        "comparisons": {name: {"baseline": baseline, **c} for name, c in comparisons.items()},
        "cheap_check": ({"candidate": gate_candidate, "cheap": cheap, **vs_cheap} if vs_cheap else None),
        "gate": gate,
        "slices_worse_than_baseline": slices.get("worse_than_baseline", []),
        "skipped": skipped,
        "lower_is_better": sorted(LOWER_IS_BETTER),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    if task == "classify":
        summary["out_of_scope"] = {"label": config.out_of_scope_label, "target_precision": config.target_precision,
                                   "test_rows": int((test["label"].astype(str) == config.out_of_scope_label).sum())}
    return Evaluation(task, summary, scores, per_example, pd.concat(per_class, ignore_index=True) if per_class else None,
                      confusions, thresholds, coverage, slices, worst)


# ---------------------------------------------------------------------------------------------
# Slices


def _slice_metrics(task: str, s: Scores, resampler: _Resampler, level: float, min_rows: int) -> dict:
    n = len(s.ids)
    if n < min_rows:
        return {"n": n, "computable": False, "reason": f"only {n} rows (evaluate.min_slice_rows is {min_rows})"}
    point, ci, _ = s.metrics(resampler(n), level)
    names = ("accuracy", "macro_f1") if task == "classify" else ("chrf", "rouge_l")
    out: dict[str, Any] = {"n": n, "computable": True, "metrics": {}, "ci95": {}, "not_computable": {}}
    for name in names:
        if name not in point:
            continue
        if task == "classify" and name == "macro_f1" and len(np.unique(s.y_true)) < 2:
            out["not_computable"][name] = "one class in this slice: macro F1 does not compare classes"
            continue
        out["metrics"][name], out["ci95"][name] = point[name], ci.get(name)
    return out


def slice_report(task: str, scores: dict[str, Scores], test: pd.DataFrame, slice_columns: Sequence[str],
                 baseline: str | None, config: EvaluateConfig, resampler: _Resampler) -> dict:
    """Metrics per value of each slice column, the largest gap, and slices worse than the baseline."""
    primary = PRIMARY_METRIC[task]
    level = config.confidence_level
    report: dict[str, Any] = {"columns": {}, "worse_than_baseline": []}
    by_id = test.set_index(test["id"].astype(str))
    for column in slice_columns:
        if column not in test.columns:
            report["columns"][column] = {"error": f"slice column {column!r} is not in the test set"}
            continue
        values = by_id[column].astype(object).where(by_id[column].notna(), "(missing)").astype(str)
        col_report: dict[str, Any] = {}
        for name, s in scores.items():
            row_values = values.reindex(s.ids).to_numpy()
            per_value: dict[str, Any] = {}
            for value in sorted(set(row_values)):
                part = s.take(np.flatnonzero(row_values == value))
                entry = _slice_metrics(task, part, resampler, level, config.min_slice_rows)
                if baseline is not None and name != baseline and entry["computable"]:
                    base_values = values.reindex(scores[baseline].ids).to_numpy()
                    base_part = scores[baseline].take(np.flatnonzero(base_values == value))
                    cmp = compare_scores(part, base_part, (primary,), resampler, level)
                    if cmp is None or cmp["n"] < config.min_slice_rows:
                        entry["vs_baseline"] = {"computable": False, "reason": f"only {0 if cmp is None else cmp['n']} rows "
                                                f"shared with {baseline} in this slice"}
                    else:
                        c = cmp["metrics"][primary]
                        worse = c["difference_ci"][1] is not None and c["difference_ci"][1] < 0
                        entry["vs_baseline"] = {"computable": True, "difference": c["difference"],
                                                "difference_ci": c["difference_ci"], "p_value": c["p_value"],
                                                "n": c["n"], "worse_beyond_noise": bool(worse)}
                        if worse:
                            report["worse_than_baseline"].append({
                                "column": column, "value": value, "candidate": name, "baseline": baseline,
                                "metric": primary, "difference": c["difference"], "difference_ci": c["difference_ci"], "n": c["n"]})
                per_value[value] = entry
            computable = {v: e["metrics"][primary] for v, e in per_value.items()
                          if e["computable"] and primary in e["metrics"] and math.isfinite(e["metrics"][primary])}
            gap = None
            if len(computable) >= 2:
                high, low = max(computable, key=computable.get), min(computable, key=computable.get)
                gap = {"metric": primary, "high": high, "high_value": computable[high], "low": low,
                       "low_value": computable[low], "gap": computable[high] - computable[low]}
            col_report[name] = {"slices": per_value, "largest_gap": gap}
        report["columns"][column] = col_report
    return report


# ---------------------------------------------------------------------------------------------
# Robustness and over-fitting (need fitted candidates or extra predictions)


def _score_any(task: str, predictions: pd.DataFrame, truth: pd.DataFrame, labels: list[str] | None) -> Scores:
    if task == "classify":
        return score_classification(predictions, truth, labels or [])
    return score_generation_predictions(predictions, truth)


def primary_score(task: str, predictions: pd.DataFrame, truth: pd.DataFrame, n_resamples: int = 2000,
                  level: float = 0.95, seed: int = 0) -> tuple[float, int, tuple[float, float]]:
    """(accuracy or corpus chrF, rows, interval) of ``predictions`` on the ids ``truth`` holds."""
    truth = truth.assign(id=truth["id"].astype(str))
    known = predictions[predictions["id"].astype(str).isin(set(truth["id"]))]
    if len(known) == 0:
        return float("nan"), 0, (float("nan"), float("nan"))
    weights = resample_weights(len(known), n_resamples, seed)
    if task == "classify":
        expected = _truth_for(known["id"].astype(str), truth, "label").astype(str).to_numpy()
        correct = (known["prediction"].astype(str).to_numpy() == expected).astype(np.float64)
        value, interval, _ = mean_with_ci(correct, weights, level)
        return value, len(known), interval
    s = score_generation_predictions(known, truth)
    resampled = chrf_from_statistics(weights.astype(np.float64) @ s.chrf_stats)
    return float(chrf_from_statistics(s.chrf_stats.sum(axis=0))), len(known), _interval(resampled, level)


def robustness_report(task: str, fitted: dict[str, Candidate], sample: pd.DataFrame, *, kinds: Sequence[str],
                      n_resamples: int = 2000, level: float = 0.95, seed: int = 0,
                      skipped: Sequence[dict] = ()) -> dict:
    """Each fitted candidate on ``sample`` (records) as it is and under each perturbation of the
    input: the drop of the primary metric, with a paired interval from the same resamples."""
    primary = PRIMARY_METRIC[task]
    resampler = _Resampler(n_resamples, seed)
    sample = sample.reset_index(drop=True).assign(id=lambda f: f["id"].astype(str))
    perturbed = {kind: sample.assign(input=perturb_texts(sample["input"].fillna("").astype(str).tolist(), kind, seed))
                 for kind in kinds}
    report: dict[str, Any] = {
        "n": int(len(sample)), "metric": primary, "perturbations": list(kinds),
        "examples": {kind: [{"original": o, "perturbed": p} for o, p in
                            zip(sample["input"].head(3).astype(str), perturbed[kind]["input"].head(3))] for kind in kinds},
        "candidates": {}, "skipped": list(skipped),
    }
    for name, candidate in track(fitted.items(), "robustness", unit="candidates"):
        started = time.perf_counter()
        clean_predictions = candidate.predict(sample)
        predictions = {kind: candidate.predict(frame) for kind, frame in perturbed.items()}
        labels = None
        if task == "classify":
            labels = sorted(set(sample["label"].astype(str)) | set(clean_predictions["prediction"])
                            | {p for f in predictions.values() for p in f["prediction"]})
        clean = _score_any(task, clean_predictions, sample, labels)
        clean_point = clean.metrics(None, level)[0][primary]
        entry: dict[str, Any] = {"clean": clean_point, "perturbations": {}}
        for kind, preds in predictions.items():
            cmp = compare_scores(_score_any(task, preds, sample, labels), clean, (primary,), resampler, level, seed)
            c = cmp["metrics"][primary]
            lo, hi = c["difference_ci"]
            entry["perturbations"][kind] = {
                "score": c["candidate"], "drop": 0.0 - c["difference"] + 0.0, "drop_ci": [0.0 - hi, 0.0 - lo],
                "relative_drop": (0.0 - c["difference"]) / clean_point if clean_point else float("nan"),
                "p_value": c["p_value"], "significant": bool(lo > 0 or hi < 0),
            }
        entry["seconds"] = round(time.perf_counter() - started, 3)
        report["candidates"][name] = entry
    return report


def overfitting_report(task: str, rows: dict[str, dict[str, tuple[float, int, tuple[float, float]]]], gap: float) -> dict:
    """Train, validation and test scores side by side; ``rows``: candidate -> split -> (score, n, interval).

    Rule (both parts must hold, so a small validation set does not raise false alarms):

    - ``overfit``: train exceeds validation by more than ``gap`` times the validation score, and
      the train score lies above the validation score's interval (a model that memorised its
      training data);
    - ``validation_test_gap``: validation and test differ by more than ``gap`` times the
      validation score, and the test score lies outside the validation score's interval (the
      validation set does not stand for the test set, or choices tuned on it do not carry over).
    """
    out: dict[str, Any] = {"metric": PRIMARY_METRIC[task], "gap": gap, "rule": (
        f"overfit: train - validation > {gap:g} x validation and train above the validation interval; "
        f"validation_test_gap: |validation - test| > {gap:g} x validation and test outside the validation interval"),
        "candidates": {}}

    def ok(x: float | None) -> bool:
        return x is not None and math.isfinite(x)

    for name, splits in rows.items():
        score = {split: value for split, (value, _, _) in splits.items()}
        entry: dict[str, Any] = {"scores": score, "n": {split: n for split, (_, n, _) in splits.items()},
                                 "ci95": {split: list(ci) for split, (_, _, ci) in splits.items()}, "flags": []}
        train, val, test_score = score.get("train"), score.get("validation"), score.get("test")
        val_lo, val_hi = splits["validation"][2] if "validation" in splits else (float("nan"), float("nan"))
        if ok(train) and ok(val):
            entry["train_minus_validation"] = train - val
            if train - val > gap * max(val, 1e-12) and (not ok(val_hi) or train > val_hi):
                entry["flags"].append("overfit")
        if ok(val) and ok(test_score):
            entry["validation_minus_test"] = val - test_score
            outside = not (ok(val_lo) and ok(val_hi)) or not val_lo <= test_score <= val_hi
            if abs(val - test_score) > gap * max(val, 1e-12) and outside:
                entry["flags"].append("validation_test_gap")
        out["candidates"][name] = entry
    return out


# ---------------------------------------------------------------------------------------------
# Plots


def write_plots(evaluation: Evaluation, out_dir: str | Path) -> list[Path]:
    """Primary metric with interval bars; accuracy-coverage curves; the best candidate's confusions."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    from tunewise.core.artifacts import atomic_path

    out = Path(out_dir)
    paths: list[Path] = []
    summary = evaluation.summary
    primary = summary["primary_metric"]
    entries = [e for e in summary["candidates"] if e["metrics"].get(primary) is not None
               and math.isfinite(e["metrics"][primary])]
    if not entries:
        return paths

    def save(fig: Any, name: str) -> None:
        target = out / name
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(target)

    entries = sorted(entries, key=lambda e: e["metrics"][primary])
    colours = {"baseline": "#888888", "cheap": "#4c72b0", "finetuned": "#dd8452"}
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(entries) + 1.5))
    values = [e["metrics"][primary] for e in entries]
    lows = [v - (e["ci95"].get(primary) or (v, v))[0] for v, e in zip(values, entries)]
    highs = [(e["ci95"].get(primary) or (v, v))[1] - v for v, e in zip(values, entries)]
    ax.barh([f"{e['name']} (n={e['n_eval']})" for e in entries], values, xerr=[lows, highs], capsize=4,
            color=[colours.get(e["kind"], "#55a868") for e in entries])
    ax.set_xlabel(f"{primary} ({summary['ci_level']:.0%} interval)")
    ax.set_title(f"{primary} by candidate")
    save(fig, "primary_metric.png")

    if evaluation.task == "classify" and any(evaluation.coverage.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, curve in evaluation.coverage.items():
            if curve:
                ax.plot([p["coverage"] for p in curve], [p["accuracy"] for p in curve], marker="o", label=name)
        ax.set_xlabel("coverage (share of messages answered, least confident deferred)")
        ax.set_ylabel("accuracy of answered messages")
        ax.invert_xaxis()
        ax.legend(fontsize=8)
        save(fig, "coverage.png")

    if evaluation.task == "classify" and evaluation.confusions:
        best = max(entries, key=lambda e: e["metrics"][primary])["name"]
        conf = evaluation.confusions.get(best)
        if conf and conf["labels"]:
            matrix = np.asarray(conf["matrix"], dtype=np.float64)
            rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
            size = min(14, 3 + 0.15 * len(conf["labels"]))
            fig, ax = plt.subplots(figsize=(size, size))
            ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
            if len(conf["labels"]) <= 40:
                ax.set_xticks(range(len(conf["labels"])), conf["labels"], rotation=90, fontsize=7)
                ax.set_yticks(range(len(conf["labels"])), conf["labels"], fontsize=7)
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            ax.set_title(f"confusions of {best} (share of each true label)")
            safe = re.sub(r"[^\w.-]", "_", best)
            save(fig, f"confusion_{safe}.png")
    return paths


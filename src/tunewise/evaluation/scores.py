"""Per-example scores of one candidate (classify or generate), their bootstrap intervals and paired comparisons."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tunewise.core.stats import (
    calibration_error_resampled,
    classification_metrics_with_ci,
    compare_paired,
    expected_calibration_error,
    mcnemar,
    mean_with_ci,
    paired_permutation,
    percentile_interval,
    ratio_resampled,
    resample_weights,
)
from tunewise.evaluation.base import EvaluationError
from tunewise.evaluation.metrics_gen import FactChecker, bleu_from_statistics, chrf_from_statistics, score_generation


class Resampler:
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


def percentile_ci(values: np.ndarray, level: float) -> tuple[float, float]:
    return percentile_interval(np.asarray(values, dtype=np.float64), level)


@dataclass
class ClassifyScores:
    """A classifier's predictions on ``ids`` as label indices into ``labels``."""

    ids: np.ndarray
    y_true: np.ndarray
    y_pred: np.ndarray
    confidence: np.ndarray
    labels: list[str]
    answered: np.ndarray | None = None  # the threshold's score (confidence or in-scope margin) >= it
    oos_index: int | None = None
    # the best in-scope label per row: what an answered row the model put in the out-of-scope class
    # is answered with, when the out-of-scope cuts reach below its margin (thresholds.choose_oos_cuts)
    in_scope_pred: np.ndarray | None = None

    @property
    def correct(self) -> np.ndarray:
        return self.y_true == self.y_pred

    @property
    def final_pred(self) -> np.ndarray:
        """The answer after out-of-scope handling: the out-of-scope label below the threshold, the
        best in-scope label for an answered out-of-scope-class prediction (when known), else the model's."""
        if self.answered is None or self.oos_index is None:
            return self.y_pred
        answer = self.y_pred
        if self.in_scope_pred is not None:
            answer = np.where((answer == self.oos_index) & (self.in_scope_pred >= 0), self.in_scope_pred, answer)
        return np.where(self.answered, answer, self.oos_index)

    def take(self, positions: np.ndarray) -> ClassifyScores:
        return ClassifyScores(
            self.ids[positions],
            self.y_true[positions],
            self.y_pred[positions],
            self.confidence[positions],
            self.labels,
            None if self.answered is None else self.answered[positions],
            self.oos_index,
            None if self.in_scope_pred is None else self.in_scope_pred[positions],
        )

    def paired_values(self, metric: str) -> tuple[np.ndarray, str] | None:
        return (self.correct, "mcnemar") if metric == "accuracy" else None

    def metrics(self, weights: np.ndarray | None, level: float) -> tuple[dict, dict, dict]:
        point, ci, resampled = classification_metrics_with_ci(
            self.y_true, self.y_pred, len(self.labels), weights, level
        )
        finite = np.isfinite(self.confidence)
        if finite.all():
            point["ece"] = expected_calibration_error(self.confidence, self.correct)
            if weights is not None:
                resampled["ece"] = calibration_error_resampled(self.confidence, self.correct, weights)
                ci["ece"] = percentile_ci(resampled["ece"], level)
        if self.answered is not None:
            ones = np.ones(len(self.ids), dtype=bool)
            final = self.final_pred
            final_correct = final == self.y_true  # unanswered rows: right when out of scope
            ratios = {
                "coverage": (self.answered, ones),
                "selective_accuracy": (self.answered & final_correct, self.answered),
            }
            if self.oos_index is not None and (self.y_true == self.oos_index).any():
                is_oos = self.y_true == self.oos_index
                says_oos = final == self.oos_index
                ratios["in_scope_accuracy"] = (final_correct & ~is_oos, ~is_oos)
                ratios["oos_recall"] = (says_oos & is_oos, is_oos)
                ratios["oos_precision"] = (says_oos & is_oos, says_oos)
            for name, (num, den) in ratios.items():
                point[name] = float(num.sum() / den.sum()) if den.sum() else float("nan")
                if weights is not None:
                    resampled[name] = ratio_resampled(num, den, weights)
                    ci[name] = percentile_ci(resampled[name], level)
        return point, ci, resampled


@dataclass
class GenerateScores:
    """A generator's per-example scores on ``ids`` and its additive corpus statistics."""

    ids: np.ndarray
    frame: pd.DataFrame
    chrf_stats: np.ndarray
    bleu_stats: np.ndarray

    def take(self, positions: np.ndarray) -> GenerateScores:
        return GenerateScores(
            self.ids[positions],
            self.frame.iloc[positions].reset_index(drop=True),
            self.chrf_stats[positions],
            self.bleu_stats[positions],
        )

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
        for name, stats, fn in (
            ("chrf", self.chrf_stats, chrf_from_statistics),
            ("bleu", self.bleu_stats, bleu_from_statistics),
        ):
            point[name] = float(fn(stats.sum(axis=0))) if len(stats) else float("nan")
            if weights is not None:
                resampled[name] = fn(weights.astype(np.float64) @ stats)
                ci[name] = percentile_ci(resampled[name], level)
        means = {"rouge_l": "rouge_l", "embedding_similarity": "embedding_similarity", "format_compliance": "format_ok"}
        values = {
            name: self.frame[col].to_numpy(np.float64) for name, col in means.items() if col in self.frame.columns
        }
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
            ci["length_ratio"] = percentile_ci(resampled["length_ratio"], level)
        return point, ci, resampled


Scores = ClassifyScores | GenerateScores


def truth_for(ids: Sequence[str], truth: pd.DataFrame, column: str) -> pd.Series:
    return truth.set_index(truth["id"].astype(str))[column].reindex(list(ids))


def score_classification(
    predictions: pd.DataFrame,
    truth: pd.DataFrame,
    labels: list[str],
    threshold: float | None = None,
    out_of_scope_label: str | None = None,
    threshold_score: np.ndarray | None = None,
    in_scope_pred: np.ndarray | None = None,
) -> ClassifyScores:
    """Index predictions and true labels (``truth``: id, label) into the label list ``labels``.

    A row is answered when its ``threshold_score`` (one per prediction row; default its confidence)
    reaches ``threshold``; ``in_scope_pred`` (indices into ``labels``, -1 when unknown) is what an
    answered out-of-scope-class prediction is answered with.
    """
    index = {label: i for i, label in enumerate(labels)}
    ids = predictions["id"].astype(str).to_numpy()
    expected = truth_for(ids, truth, "label").astype(str).to_numpy()
    unknown = sorted({x for x in (*expected, *predictions["prediction"]) if x not in index})
    if unknown:
        raise EvaluationError(f"labels {unknown[:5]} are missing from the label list")
    confidence = pd.to_numeric(predictions["score"], errors="coerce").to_numpy(np.float64)
    cut_on = confidence if threshold_score is None else np.asarray(threshold_score, np.float64)
    answered = cut_on >= threshold if threshold is not None else None
    oos = index.get(out_of_scope_label) if out_of_scope_label is not None else None
    return ClassifyScores(
        ids,
        np.array([index[x] for x in expected]),
        np.array([index[x] for x in predictions["prediction"]]),
        confidence,
        labels,
        answered,
        oos,
        None if in_scope_pred is None else np.asarray(in_scope_pred, np.int64),
    )


def score_generation_predictions(
    predictions: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    checker: FactChecker | None = None,
    format_pattern: str | None = None,
    encoder: str | None = None,
) -> GenerateScores:
    """Score replies against ``truth`` (id, target, input)."""
    ids = predictions["id"].astype(str).to_numpy()
    references = truth_for(ids, truth, "target").fillna("").astype(str).tolist()
    inputs = truth_for(ids, truth, "input").fillna("").astype(str).tolist() if "input" in truth.columns else None
    scored = score_generation(
        predictions["prediction"].astype(str).tolist(),
        references,
        inputs,
        checker=checker if inputs is not None else None,
        format_pattern=format_pattern,
        encoder=encoder,
    )
    return GenerateScores(ids, scored.per_example, scored.chrf_stats, scored.bleu_stats)


def _common_positions(a: Scores, b: Scores) -> tuple[np.ndarray, np.ndarray]:
    pos_b = {x: i for i, x in enumerate(b.ids)}
    pa = np.array([i for i, x in enumerate(a.ids) if x in pos_b], dtype=np.int64)
    pb = np.array([pos_b[a.ids[i]] for i in pa], dtype=np.int64)
    return pa, pb


def compare_scores(
    candidate: Scores, baseline: Scores, metrics: Sequence[str], resampler: Resampler, level: float, seed: int = 0
) -> dict | None:
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
        out["metrics"][metric] = compare_paired(
            metric, point_a[metric], point_b[metric], res_a[metric], res_b[metric], p_value, test, len(pa), level
        ).as_dict()
    return out

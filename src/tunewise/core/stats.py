"""Statistics for honest comparisons: bootstrap intervals, paired tests, relative improvement.

Everything is vectorised over resamples: a bootstrap is a (B, n) matrix of how often each example
is drawn, and every metric is computed from weighted counts, so 2,000 resamples of every metric
on a few thousand examples take well under a second. Comparisons between two candidates reuse
the same resample matrix for both (a paired bootstrap), which is what makes the interval of a
difference narrow and right. scipy's ``bootstrap`` handles one statistic at a time with a Python
callback per call; this shape shares the resamples across all metrics and candidates.

Intervals are percentiles of the resampled statistic. tests/test_stats.py simulates paired data
with a true difference of zero (continuous and 0/1 correctness, n=100, 1,000 seeded simulations,
independent resamples each): the 95% interval of the paired difference covers zero in 93-97% of
them, so the percentile interval is kept; BCa would need a jackknife per statistic, which the
counts form does not give for free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps


def resample_weights(n: int, n_resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """(B, n) float32 counts: row b says how many times each example is drawn in resample b."""
    rng = np.random.default_rng(seed)
    if n == 0:
        return np.zeros((n_resamples, 0), dtype=np.float32)
    # n draws with replacement per resample, counted with one bincount over all resamples; the
    # same distribution as a multinomial draw of counts, but ~20x faster for small n (numpy's
    # multinomial pays a per-row cost), which keeps per-slice and simulated bootstraps cheap.
    drawn = rng.integers(0, n, size=(n_resamples, n))
    drawn += np.arange(n_resamples)[:, None] * n
    return np.bincount(drawn.ravel(), minlength=n_resamples * n).reshape(n_resamples, n).astype(np.float32)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return (float("nan"), float("nan"))
    alpha = (1 - level) / 2
    lo, hi = np.quantile(samples, [alpha, 1 - alpha])
    return (float(lo), float(hi))


# ---------------------------------------------------------------------------------------------
# Classification metrics from weighted counts (one row of weights per resample)


@dataclass
class ClassCounts:
    tp: np.ndarray  # (B, C)
    fp: np.ndarray
    fn: np.ndarray
    total: np.ndarray  # (B,)


def class_counts(weights: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> ClassCounts:
    """Weighted true/false positives and false negatives per class, for every resample at once."""
    correct = y_true == y_pred
    eye = np.eye(n_classes, dtype=np.float32)
    # products in the weights' precision (float32 counts are exact below 2^24), ratios in float64
    tp = (weights @ (eye[y_true] * correct[:, None])).astype(np.float64)
    fp = (weights @ (eye[y_pred] * ~correct[:, None])).astype(np.float64)
    fn = (weights @ (eye[y_true] * ~correct[:, None])).astype(np.float64)
    return ClassCounts(tp, fp, fn, weights.sum(axis=1, dtype=np.float64))


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), 0.0)


def precision_recall_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 from (weighted) counts, elementwise; 0 where undefined (scikit-learn's
    ``zero_division=0``). tunewise's one definition: per class, per resample, and out of scope."""
    tp, fp, fn = (np.asarray(x, np.float64) for x in (tp, fp, fn))
    return _safe_div(tp, tp + fp), _safe_div(tp, tp + fn), _safe_div(2 * tp, 2 * tp + fp + fn)


def metrics_from_counts(c: ClassCounts) -> dict[str, np.ndarray]:
    """accuracy and macro / micro / weighted precision, recall and F1, shape (B,) each.

    Matches scikit-learn's definitions with zero_division=0; classes absent from both truth and
    predictions in a resample are left out of the macro average (as sklearn does for labels it
    never sees).
    """
    tp, fp, fn = c.tp, c.fp, c.fn
    precision, recall, f1 = precision_recall_f1(tp, fp, fn)
    support = tp + fn
    present = (support + fp) > 0
    n_present = np.maximum(present.sum(axis=1), 1)
    weight = _safe_div(support, support.sum(axis=1, keepdims=True))
    accuracy = _safe_div(tp.sum(axis=1), c.total)
    # micro averages pool the counts; single-label, they equal accuracy unless some rows carry
    # a prediction outside the counted classes
    micro_precision = _safe_div(tp.sum(axis=1), (tp + fp).sum(axis=1))
    micro_recall = _safe_div(tp.sum(axis=1), (tp + fn).sum(axis=1))
    return {
        "accuracy": accuracy,
        "macro_precision": (precision * present).sum(axis=1) / n_present,
        "macro_recall": (recall * present).sum(axis=1) / n_present,
        "macro_f1": (f1 * present).sum(axis=1) / n_present,
        "micro_precision": micro_precision,
        "micro_recall": micro_recall,
        "micro_f1": _safe_div(2 * micro_precision * micro_recall, micro_precision + micro_recall),
        "weighted_precision": (precision * weight).sum(axis=1),
        "weighted_recall": (recall * weight).sum(axis=1),
        "weighted_f1": (f1 * weight).sum(axis=1),
    }


def classification_metrics_with_ci(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, weights: np.ndarray | None = None, level: float = 0.95
) -> tuple[dict, dict, dict]:
    """Point metrics, their intervals and the resampled values (for paired comparisons)."""
    ones = np.ones((1, len(y_true)), dtype=np.float64)  # float64: point metrics exact to the last digit
    point = {k: float(v[0]) for k, v in metrics_from_counts(class_counts(ones, y_true, y_pred, n_classes)).items()}
    if weights is None:
        return point, {}, {}
    resampled = metrics_from_counts(class_counts(weights, y_true, y_pred, n_classes))
    ci = {k: percentile_interval(v, level) for k, v in resampled.items()}
    return point, ci, resampled


def mean_with_ci(
    values: np.ndarray, weights: np.ndarray | None, level: float = 0.95
) -> tuple[float, tuple[float, float], np.ndarray]:
    """Mean of per-example values (e.g. sentence chrF) with a bootstrap interval."""
    values = np.asarray(values, dtype=np.float64)
    point = float(values.mean()) if values.size else float("nan")
    if weights is None:
        return point, (float("nan"), float("nan")), np.array([])
    resampled = (weights @ values) / weights.sum(axis=1)
    return point, percentile_interval(resampled, level), resampled


# ---------------------------------------------------------------------------------------------
# Paired comparisons


@dataclass
class Comparison:
    metric: str
    candidate: float
    baseline: float
    difference: float
    difference_ci: tuple[float, float]
    relative_improvement: float
    relative_ci: tuple[float, float]
    p_value: float
    test: str
    n: int

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def relative_improvement(candidate: np.ndarray | float, baseline: np.ndarray | float):
    """(candidate - baseline) / baseline; infinite gain from a zero baseline is reported as nan."""
    c, b = np.asarray(candidate, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(b > 0, (c - b) / np.where(b > 0, b, 1), np.nan)
    return float(out) if out.ndim == 0 else out


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray, exact: bool | None = None) -> tuple[float, str]:
    """McNemar's test on paired correctness; exact binomial when discordant pairs are few.

    Same numbers as ``statsmodels.stats.contingency_tables.mcnemar`` (exact=True: binomial;
    exact=False: chi-square with continuity correction). ``exact=None`` picks exact below 25
    discordant pairs, the usual rule.
    """
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a = int(np.sum(a & ~b))
    only_b = int(np.sum(~a & b))
    discordant = only_a + only_b
    if discordant == 0:
        return 1.0, "mcnemar_exact"
    if exact is None:
        exact = discordant < 25
    if exact:
        return float(sps.binomtest(min(only_a, only_b), discordant, 0.5).pvalue), "mcnemar_exact"
    stat = (abs(only_a - only_b) - 1) ** 2 / discordant
    return float(sps.chi2.sf(stat, 1)), "mcnemar_chi2"


def paired_permutation(
    values_a: np.ndarray, values_b: np.ndarray, n_permutations: int = 10_000, seed: int = 0
) -> float:
    """Two-sided sign-flip permutation test of the mean paired difference."""
    d = np.asarray(values_a, np.float64) - np.asarray(values_b, np.float64)
    if d.size == 0 or np.allclose(d, 0):
        return 1.0
    rng = np.random.default_rng(seed)
    observed = abs(d.mean())
    # chunked so memory stays small for long test sets
    hits, done = 0, 0
    while done < n_permutations:
        k = min(2000, n_permutations - done)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(k, d.size))
        hits += int(np.sum(np.abs(signs @ d) / d.size >= observed - 1e-12))
        done += k
    return (hits + 1) / (n_permutations + 1)


def compare_paired(
    metric: str,
    candidate_point: float,
    baseline_point: float,
    candidate_resampled: np.ndarray,
    baseline_resampled: np.ndarray,
    p_value: float,
    test: str,
    n: int,
    level: float = 0.95,
) -> Comparison:
    """Difference and relative improvement with intervals from the same (paired) resamples."""
    diff = candidate_resampled - baseline_resampled
    rel = relative_improvement(candidate_resampled, baseline_resampled)
    return Comparison(
        metric=metric,
        candidate=candidate_point,
        baseline=baseline_point,
        difference=candidate_point - baseline_point,
        difference_ci=percentile_interval(diff, level),
        relative_improvement=relative_improvement(candidate_point, baseline_point),
        relative_ci=percentile_interval(np.asarray(rel), level),
        p_value=p_value,
        test=test,
        n=n,
    )


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017)."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    if confidence.size == 0:
        return float("nan")
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    total = np.bincount(bins, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    nonzero = total > 0
    gap = np.abs(acc_sum[nonzero] - conf_sum[nonzero])
    return float(gap.sum() / confidence.size)


def calibration_error_resampled(
    confidence: np.ndarray, correct: np.ndarray, weights: np.ndarray, n_bins: int = 15
) -> np.ndarray:
    """ECE of every resample at once, (B,): the same bins, with per-bin sums as weighted counts."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    if confidence.size == 0:
        return np.full(weights.shape[0], np.nan)
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    onehot = np.eye(n_bins)[bins]  # (n, bins)
    w = weights.astype(np.float64)
    total = w.sum(axis=1)
    gap = np.abs(w @ (onehot * correct[:, None]) - w @ (onehot * confidence[:, None]))
    return gap.sum(axis=1) / np.where(total > 0, total, 1)


def ratio_resampled(numerator: np.ndarray, denominator: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum(numerator) / sum(denominator) per resample, NaN where the denominator is zero."""
    num = weights @ np.asarray(numerator, np.float64)
    den = weights @ np.asarray(denominator, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def wilson_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (scipy's); (nan, nan) for no trials."""
    if trials <= 0:
        return (float("nan"), float("nan"))
    ci = sps.binomtest(int(successes), int(trials)).proportion_ci(confidence_level=level, method="wilson")
    return (float(ci.low), float(ci.high))


def proportion_upper_bound(successes: np.ndarray | int, trials: int, level: float) -> np.ndarray:
    """One-sided exact (Clopper-Pearson) upper bound of a proportion at ``level``, elementwise over
    ``successes``: the beta quantile ``Beta(k + 1, n - k).ppf(level)``, 1 when k = n."""
    k = np.asarray(successes, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bound = sps.beta.ppf(level, k + 1, np.maximum(trials - k, 1e-300))
    return np.where(k >= trials, 1.0, bound)


def bootstrap_statistic(fn: Callable[[np.ndarray], float], n: int, weights: np.ndarray) -> np.ndarray:
    """Fallback for statistics without a counts form (corpus BLEU): one call per resample."""
    out = np.empty(weights.shape[0])
    for b in range(weights.shape[0]):
        out[b] = fn(np.repeat(np.arange(n), weights[b].astype(int)))
    return out

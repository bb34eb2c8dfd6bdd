"""tunewise.core.stats against the reference implementations, and the interval's coverage by simulation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.proportion import proportion_confint

from tunewise.core.stats import (
    calibration_error_resampled,
    classification_metrics_with_ci,
    compare_paired,
    expected_calibration_error,
    mcnemar,
    mean_with_ci,
    paired_permutation,
    proportion_upper_bound,
    resample_weights,
    wilson_interval,
)


def _sklearn_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    out = {"accuracy": accuracy_score(y_true, y_pred)}
    for average in ("macro", "micro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
        out.update({f"{average}_precision": p, f"{average}_recall": r, f"{average}_f1": f})
    return out


@pytest.fixture
def labelled() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    y_true = rng.integers(0, 6, size=300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 7, size=300))  # class 6 is only predicted
    y_true[:5] = 7  # class 7 is never predicted
    return y_true, y_pred


def test_resample_weights_draw_n_with_replacement_and_are_seeded():
    weights = resample_weights(50, 400, seed=3)
    assert weights.shape == (400, 50) and weights.dtype == np.float32
    assert (weights.sum(axis=1) == 50).all()
    assert np.array_equal(weights, resample_weights(50, 400, seed=3))
    assert not np.array_equal(weights, resample_weights(50, 400, seed=4))
    # each example is drawn Binomial(n, 1/n) times: mean 1, variance about 1 - 1/n
    assert abs(weights.mean() - 1) < 1e-6
    assert abs(weights.var() - (1 - 1 / 50)) < 0.05


def test_classification_metrics_equal_sklearn(labelled):
    y_true, y_pred = labelled
    point, _, _ = classification_metrics_with_ci(y_true, y_pred, n_classes=8)
    expected = _sklearn_metrics(y_true, y_pred)
    for name, value in expected.items():
        assert point[name] == pytest.approx(value, abs=1e-12), name


def test_resampled_metrics_equal_sklearn_on_the_resampled_rows(labelled):
    y_true, y_pred = labelled
    weights = resample_weights(len(y_true), 5, seed=11)
    _, ci, resampled = classification_metrics_with_ci(y_true, y_pred, n_classes=8, weights=weights)
    for b in range(5):
        rows = np.repeat(np.arange(len(y_true)), weights[b].astype(int))
        expected = _sklearn_metrics(y_true[rows], y_pred[rows])
        for name, value in expected.items():
            assert resampled[name][b] == pytest.approx(value, abs=1e-9), (name, b)
    assert ci["accuracy"][0] <= ci["accuracy"][1]


@pytest.mark.parametrize(
    "table", [[[30, 9], [2, 59]], [[10, 40], [25, 25]], [[5, 0], [0, 5]], [[0, 3], [17, 80]], [[100, 41], [60, 299]]]
)
def test_mcnemar_matches_statsmodels(table):
    (a, b), (c, d) = table
    # rows: candidate A correct / wrong; columns: candidate B correct / wrong
    correct_a = np.array([True] * (a + b) + [False] * (c + d))
    correct_b = np.array([True] * a + [False] * b + [True] * c + [False] * d)
    p_exact, test = mcnemar(correct_a, correct_b, exact=True)
    assert test == "mcnemar_exact"
    assert p_exact == pytest.approx(sm_mcnemar(table, exact=True).pvalue, rel=1e-9)
    p_chi2, test = mcnemar(correct_a, correct_b, exact=False)
    if b + c:
        assert test == "mcnemar_chi2"
        assert p_chi2 == pytest.approx(sm_mcnemar(table, exact=False, correction=True).pvalue, rel=1e-9)


def test_paired_difference_interval_covers_zero_in_93_to_97_percent_of_simulations():
    """1,000 seeded simulations per data kind, true difference zero, n=100, 2,000 resamples each.

    Each simulation draws its own resample matrix (as an evaluation does for its own data) and
    goes through the same path as a comparison: resampled means -> compare_paired. The simulated
    data are generated for all simulations at once; the per-simulation work is two matrix-vector
    products, so 2,000 simulations take a few seconds.
    """
    n, sims, resamples = 100, 1000, 2000
    rng = np.random.default_rng(2024)
    # continuous per-example scores (sentence chrF-like, skewed, correlated between candidates)
    shared = rng.beta(2, 5, size=(sims, n))
    continuous = (shared + rng.normal(0, 0.1, size=(sims, n)), shared + rng.normal(0, 0.1, size=(sims, n)))
    # 0/1 correctness, both 70% accurate, agreeing on most examples
    first = rng.random((sims, n)) < 0.7
    redraw = rng.random((sims, n)) < 0.3
    binary = (first.astype(float), np.where(redraw, rng.random((sims, n)) < 0.7, first).astype(float))
    for kind, (a, b) in {"continuous": continuous, "binary": binary}.items():
        covered = 0
        for s in range(sims):
            weights = resample_weights(n, resamples, seed=10_000 + s)
            ra, rb = (weights @ a[s]) / n, (weights @ b[s]) / n
            comparison = compare_paired("m", a[s].mean(), b[s].mean(), ra, rb, 1.0, "t", n)
            low, high = comparison.difference_ci
            covered += low <= 0 <= high
        coverage = covered / sims
        assert 0.93 <= coverage <= 0.97, f"{kind}: the 95% interval covered zero in {coverage:.1%} of simulations"


def test_mean_with_ci_and_ece_resampled_agree_with_point_values():
    rng = np.random.default_rng(5)
    confidence = rng.uniform(0.3, 1.0, 400)
    correct = rng.random(400) < confidence
    identity = np.ones((1, 400), dtype=np.float32)
    assert calibration_error_resampled(confidence, correct, identity)[0] == pytest.approx(
        expected_calibration_error(confidence, correct), abs=1e-12
    )
    point, (low, high), resampled = mean_with_ci(correct.astype(float), resample_weights(400, 1000, 1))
    assert point == pytest.approx(correct.mean())
    assert low < point < high and resampled.shape == (1000,)


def test_wilson_interval_matches_statsmodels():
    for k, n in ((0, 10), (7, 10), (30, 50), (50, 50)):
        low, high = wilson_interval(k, n)
        ref_low, ref_high = proportion_confint(k, n, alpha=0.05, method="wilson")
        assert (low, high) == (pytest.approx(ref_low, abs=1e-12), pytest.approx(ref_high, abs=1e-12))


def test_proportion_upper_bound_is_the_one_sided_clopper_pearson_bound_of_statsmodels():
    # a one-sided bound at 0.9 is the upper end of the two-sided exact interval at 0.8
    ks, n = np.array([0, 1, 3, 10, 231]), 231
    ours = proportion_upper_bound(ks, n, 0.9)
    for k, bound in zip(ks, ours, strict=True):
        expected = 1.0 if k == n else proportion_confint(int(k), n, alpha=0.2, method="beta")[1]
        assert bound == pytest.approx(expected, abs=1e-12)
    assert ours[0] == pytest.approx(1 - 0.1 ** (1 / n))  # no event seen: 1 - (1 - level)^(1/n)
    assert (np.diff(ours) > 0).all()


def test_paired_permutation_separates_a_real_difference_from_none():
    rng = np.random.default_rng(9)
    base = rng.normal(size=200)
    assert paired_permutation(base + 0.3 + rng.normal(0, 0.2, 200), base, seed=1) < 0.001
    assert paired_permutation(base + rng.normal(0, 0.2, 200), base, seed=1) > 0.05

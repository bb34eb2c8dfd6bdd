"""Learning curves (tunewise.decision.curve): the power-law fit, nested stratified subsets, and real curves of
cheap candidates on a slice of BANKING77, locally and as Ray tasks."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest

from tunewise.candidates.factory import build_candidate
from tunewise.decision.curve import CurveError, CurveFit, fit_power_law, learning_curve, nested_subsets, power_law


def test_power_law_fit_recovers_known_parameters():
    ns = np.array([50, 100, 200, 400, 800, 1600, 3200], dtype=float)
    truth = CurveFit(a=2.0, b=0.5, c=0.05)
    fit = fit_power_law(ns, power_law(ns, truth.a, truth.b, truth.c))
    assert (fit.a, fit.b, fit.c) == pytest.approx((2.0, 0.5, 0.05), rel=1e-3, abs=1e-4)
    # with noise of one accuracy point, the plateau is still found within a few points
    noisy = power_law(ns, 2.0, 0.5, 0.05) + np.random.default_rng(0).normal(0, 0.005, len(ns))
    assert fit_power_law(ns, noisy).c == pytest.approx(0.05, abs=0.03)
    assert truth.n_for_error(truth.error(1000.0)) == pytest.approx(1000.0)
    assert truth.n_for_error(0.04) is None  # below the plateau: not reachable
    with pytest.raises(CurveError, match="at least 3"):
        fit_power_law([10, 20], [0.5, 0.4])


def test_subsets_are_nested_stratified_and_raise_thin_classes():
    labels = ["a"] * 100 + ["b"] * 40 + ["c"] * 5
    subsets, notes = nested_subsets(labels, [0.1, 0.5, 1.0], seed=3)
    small, mid, full = subsets[0.1], subsets[0.5], subsets[1.0]
    assert set(small) <= set(mid) <= set(full) and len(full) == 145
    counts = pd.Series(np.asarray(labels)[small]).value_counts()
    assert counts["a"] == 10 and counts["b"] == 4 and counts["c"] == 2  # c: round(0.5) raised to 2
    assert notes and "raised to 2" in notes[0]
    assert nested_subsets(labels, [0.1, 0.5, 1.0], seed=3)[0][0.1].tolist() == small.tolist()
    with pytest.raises(CurveError, match=r"\(0, 1\]"):
        nested_subsets(labels, [0.0, 1.0], seed=0)


def _banking(banking77, n_train: int, n_test: int):
    def records(path, prefix):
        raw = pd.read_csv(path)
        return pd.DataFrame(
            {
                "id": [f"{prefix}{i}" for i in range(len(raw))],
                "input": raw["text"],
                "context": "[]",
                "label": raw["category"],
            }
        )

    train = records(banking77 / "train.csv", "tr").sample(n=n_train, random_state=0).reset_index(drop=True)
    test = records(banking77 / "test.csv", "te").sample(n=n_test, random_state=0).reset_index(drop=True)
    return train, test


# a factory Ray workers can import (a function defined in this test module would not unpickle there)
_factory = functools.partial(build_candidate, config={})


def test_curve_of_a_cheap_model_on_banking77_rises_and_extrapolates(banking77):
    train, test = _banking(banking77, 2500, 600)
    curve = learning_curve(
        train,
        test.head(100),
        test,
        candidates=["tfidf_lr", "majority"],
        factory=_factory,
        fractions=[0.1, 0.25, 0.5, 1.0],
        target=0.99,
        n_resamples=100,
    )
    tfidf = curve["candidates"]["tfidf_lr"]
    accuracy = tfidf["test_accuracy"]
    assert accuracy[-1] > accuracy[0] + 0.15  # 250 rows vs 2,500 rows of 77 intents
    assert tfidf["n"] == [int(curve["sizes"][str(f)]) for f in curve["fractions"]]
    expected = tfidf["expected"]
    assert accuracy[-1] - 0.02 <= expected["2x"]["accuracy"] <= expected["10x"]["accuracy"] <= 1.0
    low, high = expected["5x"]["ci95"]
    assert low <= expected["5x"]["accuracy"] <= high
    target = tfidf["target"]
    assert target["accuracy"] == 0.99 and "message" in target
    if target["reachable"]:
        assert target["n_needed"] > 2500
    else:
        assert "levels off" in target["message"]
    # per-class curves cover every test class, and majority's curve is flat
    assert {r["label"] for r in tfidf["per_class"]} == set(test["label"])
    assert max(curve["candidates"]["majority"]["test_accuracy"]) < 0.1


def test_curve_runs_as_ray_tasks_with_the_same_numbers(banking77):
    pytest.importorskip("ray")
    train, test = _banking(banking77, 600, 200)
    kwargs = dict(candidates=["tfidf_lr"], factory=_factory, fractions=[0.25, 0.5, 1.0], n_resamples=50)
    local = learning_curve(train, test.head(50), test, **kwargs)
    remote = learning_curve(train, test.head(50), test, engine="ray", **kwargs)
    assert remote["candidates"]["tfidf_lr"]["test_accuracy"] == local["candidates"]["tfidf_lr"]["test_accuracy"]
    assert remote["engine"] == "ray"

"""Robustness under seeded perturbations, and over-fitting (train, validation and test side by side)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from tunewise.candidates.registry import Candidate
from tunewise.core.perturb import perturb
from tunewise.core.progress import track
from tunewise.core.stats import (
    mean_with_ci,
    resample_weights,
)
from tunewise.evaluation.base import PRIMARY_METRIC
from tunewise.evaluation.metrics_gen import chrf_from_statistics
from tunewise.evaluation.scores import (
    Resampler,
    Scores,
    compare_scores,
    percentile_ci,
    score_classification,
    score_generation_predictions,
    truth_for,
)


def perturb_texts(texts: Sequence[str], kind: str, seed: int = 0) -> list[str]:
    """Every text under one perturbation (``tunewise.core.perturb``: seeded by text, kind and seed)."""
    return [perturb(str(t), kind, seed) for t in texts]


def _score_any(task: str, predictions: pd.DataFrame, truth: pd.DataFrame, labels: list[str] | None) -> Scores:
    if task == "classify":
        return score_classification(predictions, truth, labels or [])
    return score_generation_predictions(predictions, truth)


def primary_score(
    task: str,
    predictions: pd.DataFrame,
    truth: pd.DataFrame,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, int, tuple[float, float]]:
    """(accuracy or corpus chrF, rows, interval) of ``predictions`` on the ids ``truth`` holds."""
    truth = truth.assign(id=truth["id"].astype(str))
    known = predictions[predictions["id"].astype(str).isin(set(truth["id"]))]
    if len(known) == 0:
        return float("nan"), 0, (float("nan"), float("nan"))
    weights = resample_weights(len(known), n_resamples, seed)
    if task == "classify":
        expected = truth_for(known["id"].astype(str), truth, "label").astype(str).to_numpy()
        correct = (known["prediction"].astype(str).to_numpy() == expected).astype(np.float64)
        value, interval, _ = mean_with_ci(correct, weights, level)
        return value, len(known), interval
    s = score_generation_predictions(known, truth)
    resampled = chrf_from_statistics(weights.astype(np.float64) @ s.chrf_stats)
    return float(chrf_from_statistics(s.chrf_stats.sum(axis=0))), len(known), percentile_ci(resampled, level)


def robustness_report(
    task: str,
    fitted: dict[str, Candidate],
    sample: pd.DataFrame,
    *,
    kinds: Sequence[str],
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    skipped: Sequence[dict] = (),
) -> dict:
    """Each fitted candidate on ``sample`` (records) as it is and under each perturbation of the
    input: the drop of the primary metric, with a paired interval from the same resamples."""
    primary = PRIMARY_METRIC[task]
    resampler = Resampler(n_resamples, seed)
    sample = sample.reset_index(drop=True).assign(id=lambda f: f["id"].astype(str))
    perturbed = {
        kind: sample.assign(input=perturb_texts(sample["input"].fillna("").astype(str).tolist(), kind, seed))
        for kind in kinds
    }
    report: dict[str, Any] = {
        "n": int(len(sample)),
        "metric": primary,
        "perturbations": list(kinds),
        "examples": {
            kind: [
                {"original": o, "perturbed": p}
                for o, p in zip(sample["input"].head(3).astype(str), perturbed[kind]["input"].head(3))
            ]
            for kind in kinds
        },
        "candidates": {},
        "skipped": list(skipped),
    }
    for name, candidate in track(fitted.items(), "robustness", unit="candidates"):
        started = time.perf_counter()
        clean_predictions = candidate.predict(sample)
        predictions = {kind: candidate.predict(frame) for kind, frame in perturbed.items()}
        labels = None
        if task == "classify":
            labels = sorted(
                set(sample["label"].astype(str))
                | set(clean_predictions["prediction"])
                | {p for f in predictions.values() for p in f["prediction"]}
            )
        clean = _score_any(task, clean_predictions, sample, labels)
        clean_point = clean.metrics(None, level)[0][primary]
        entry: dict[str, Any] = {"clean": clean_point, "perturbations": {}}
        for kind, preds in predictions.items():
            cmp = compare_scores(_score_any(task, preds, sample, labels), clean, (primary,), resampler, level, seed)
            c = cmp["metrics"][primary]
            lo, hi = c["difference_ci"]
            entry["perturbations"][kind] = {
                "score": c["candidate"],
                "drop": 0.0 - c["difference"] + 0.0,
                "drop_ci": [0.0 - hi, 0.0 - lo],
                "relative_drop": (0.0 - c["difference"]) / clean_point if clean_point else float("nan"),
                "p_value": c["p_value"],
                "significant": bool(lo > 0 or hi < 0),
            }
        entry["seconds"] = round(time.perf_counter() - started, 3)
        report["candidates"][name] = entry
    return report


def overfitting_report(
    task: str, rows: dict[str, dict[str, tuple[float, int, tuple[float, float]]]], gap: float
) -> dict:
    """Train, validation and test scores side by side; ``rows``: candidate -> split -> (score, n, interval).

    Rule (both parts must hold, so a small validation set does not raise false alarms):

    - ``overfit``: train exceeds validation by more than ``gap`` times the validation score, and
      the train score lies above the validation score's interval (a model that memorised its
      training data);
    - ``validation_test_gap``: validation and test differ by more than ``gap`` times the
      validation score, and the test score lies outside the validation score's interval (the
      validation set does not stand for the test set, or choices tuned on it do not carry over).
    """
    out: dict[str, Any] = {
        "metric": PRIMARY_METRIC[task],
        "gap": gap,
        "rule": (
            f"overfit: train - validation > {gap:g} x validation and train above the validation interval; "
            f"validation_test_gap: |validation - test| > {gap:g} x validation and test outside the validation interval"
        ),
        "candidates": {},
    }

    def ok(x: float | None) -> bool:
        return x is not None and math.isfinite(x)

    for name, splits in rows.items():
        score = {split: value for split, (value, _, _) in splits.items()}
        entry: dict[str, Any] = {
            "scores": score,
            "n": {split: n for split, (_, n, _) in splits.items()},
            "ci95": {split: list(ci) for split, (_, _, ci) in splits.items()},
            "flags": [],
        }
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

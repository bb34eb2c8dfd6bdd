"""Metrics per slice column (bias): the largest gap between slices and where a candidate loses to the baseline."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from tunewise.config.sections import EvaluateConfig
from tunewise.evaluation.base import PRIMARY_METRIC
from tunewise.evaluation.scores import Resampler, Scores, compare_scores


def _slice_metrics(task: str, s: Scores, resampler: Resampler, level: float, min_rows: int) -> dict:
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


def slice_report(
    task: str,
    scores: dict[str, Scores],
    test: pd.DataFrame,
    slice_columns: Sequence[str],
    baseline: str | None,
    config: EvaluateConfig,
    resampler: Resampler,
) -> dict:
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
                        entry["vs_baseline"] = {
                            "computable": False,
                            "reason": f"only {0 if cmp is None else cmp['n']} rows "
                            f"shared with {baseline} in this slice",
                        }
                    else:
                        c = cmp["metrics"][primary]
                        worse = c["difference_ci"][1] is not None and c["difference_ci"][1] < 0
                        entry["vs_baseline"] = {
                            "computable": True,
                            "difference": c["difference"],
                            "difference_ci": c["difference_ci"],
                            "p_value": c["p_value"],
                            "n": c["n"],
                            "worse_beyond_noise": bool(worse),
                        }
                        if worse:
                            report["worse_than_baseline"].append(
                                {
                                    "column": column,
                                    "value": value,
                                    "candidate": name,
                                    "baseline": baseline,
                                    "metric": primary,
                                    "difference": c["difference"],
                                    "difference_ci": c["difference_ci"],
                                    "n": c["n"],
                                }
                            )
                per_value[value] = entry
            computable = {
                v: e["metrics"][primary]
                for v, e in per_value.items()
                if e["computable"] and primary in e["metrics"] and math.isfinite(e["metrics"][primary])
            }
            gap = None
            if len(computable) >= 2:
                high, low = max(computable, key=computable.get), min(computable, key=computable.get)
                gap = {
                    "metric": primary,
                    "high": high,
                    "high_value": computable[high],
                    "low": low,
                    "low_value": computable[low],
                    "gap": computable[high] - computable[low],
                }
            col_report[name] = {"slices": per_value, "largest_gap": gap}
        report["columns"][column] = col_report
    return report

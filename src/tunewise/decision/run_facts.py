"""What the decision reads from a run folder besides the evaluation: latencies and the cores they
were measured on, training summaries, flagged rows, API tokens and prices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tunewise.config.sections import RoiConfig
from tunewise.core.artifacts import read_json
from tunewise.core.layout import RunLayout
from tunewise.decision.costs import CHARS_PER_TOKEN

# =============================================================================================
# Reading a run


def read_latencies(run_dir: Path, names: list[str]) -> dict[str, float]:
    """Median per-request latency (ms) of each candidate's test predictions."""
    out = {}
    for name in names:
        for stage in ("train", "baseline", "evaluate"):  # evaluate: a combined candidate's summed latency
            path = RunLayout(run_dir).predictions(stage, name)
            if path.exists():
                frame = pd.read_parquet(path, columns=["latency_ms"])
                values = pd.to_numeric(frame["latency_ms"], errors="coerce").dropna()
                out[name] = float(np.median(values)) if len(values) else 0.0
                break
    return out


def read_latency_cores(run_dir: Path, names: list[str], members: dict[str, list[str]]) -> dict[str, float]:
    """Cores of the machine that measured each candidate's latency (``latency_cores`` in the train and
    baseline summaries); a combined candidate's (``members`` by name), when its members agree.
    Missing in runs written before it."""
    out: dict[str, float] = {}
    for stage in ("train", "baseline"):  # the order read_latencies reads the predictions in
        path = run_dir / stage / "summary.json"
        if not path.exists():
            continue
        for entry in read_json(path).get("candidates", []):
            cores = entry.get("latency_cores")
            if entry.get("name") in names and entry["name"] not in out and isinstance(cores, int | float) and cores > 0:
                out[entry["name"]] = float(cores)
    for name, parts in members.items():
        member_cores = {out.get(m) for m in parts}
        if name in names and parts and len(member_cores) == 1 and None not in member_cores:
            out[name] = member_cores.pop()
    return out


def read_train_summaries(run_dir: Path) -> dict[str, dict]:
    return {p.parent.name: read_json(p) for p in sorted((run_dir / "train").glob("*/train_summary.json"))}


def read_flagged_rows(run_dir: Path) -> int:
    path = RunLayout(run_dir).curate_issues
    if not path.exists():
        return 0
    issues = pd.read_parquet(path, columns=["id", "action"])
    return int(issues.loc[issues["action"] == "flagged", "id"].nunique())


def read_api_tokens(run_dir: Path, roi: RoiConfig) -> float | None:
    if roi.tokens_per_request is not None:
        return roi.tokens_per_request
    path = RunLayout(run_dir).split("test")
    if not path.exists():
        return None
    texts = pd.read_parquet(path, columns=["input"])["input"].astype(str)
    return float(texts.str.len().mean() / CHARS_PER_TOKEN) if len(texts) else None


def incumbent_usd_per_request(evaluation: dict) -> float | None:
    info = (evaluation.get("incumbent") or {}).get("predictions_file") or {}
    return info.get("usd_per_request")


def read_measured_usd_per_request(run_dir: Path) -> dict[str, float]:
    """Candidates that pay per request (the api_* ones): their measured mean USD a row, from the
    tokens each answer's ``usage`` reported at the endpoint's prices (baseline/summary.json)."""
    path = RunLayout(run_dir).summary("baseline")
    summary = read_json(path) if path.exists() else {}
    out = {}
    for entry in summary.get("candidates") or []:
        usd = ((entry.get("info") or {}).get("usage") or {}).get("usd_per_row_mean")
        if usd is not None:
            out[str(entry["name"])] = float(usd)
    return out

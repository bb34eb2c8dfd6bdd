"""Loading the predictions the baseline and train stages stored, the incumbent's file, and the ensemble built from them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
from tunewise.candidates.registry import CANDIDATES, PREDICTION_COLUMNS
from tunewise.core.artifacts import read_json
from tunewise.evaluation.base import INCUMBENT_NAME, EvaluationError


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
        raise EvaluationError(
            f"{path}: id {frame.loc[frame['id'].duplicated(), 'id'].iloc[0]!r} appears more than once"
        )
    return frame


def _stage_kinds(stage_dir: Path) -> dict[str, dict]:
    try:
        summary = read_json(stage_dir / "summary.json")
    except (FileNotFoundError, ValueError):
        return {}
    return {c["name"]: c for c in summary.get("candidates", []) if isinstance(c, dict) and "name" in c}


def load_run_predictions(
    run_dir: str | Path, stages: Sequence[str] = ("baseline", "train")
) -> tuple[list[CandidatePredictions], list[dict]]:
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
                skipped.append(
                    {
                        "name": name,
                        "reason": f"{path}: a candidate of this name came from stage "
                        f"{found[name].source!r} already; rename one",
                    }
                )
                continue
            meta = listed.get(name, {})
            registered = CANDIDATES.get(name)
            kind = meta.get("kind") or (
                registered.kind if registered else ("finetuned" if stage == "train" else "baseline")
            )
            expensive = bool(meta.get("expensive", registered.expensive if registered else stage == "train"))
            try:
                test = read_predictions(path)
                extra = {
                    split: read_predictions(p) if (p := folder / f"{name}.{split}.parquet").exists() else None
                    for split in ("validation", "train")
                }
            except EvaluationError as exc:
                skipped.append({"name": name, "reason": str(exc)})
                continue
            found[name] = CandidatePredictions(name, kind, test, extra["validation"], extra["train"], stage, expensive)
        for name in listed:
            if name not in found and not any(s["name"] == name for s in skipped):
                skipped.append(
                    {
                        "name": name,
                        "reason": f"stage {stage!r} lists candidate {name!r} but "
                        f"{folder / (name + '.parquet')} does not exist; re-run `tunewise {stage}`",
                    }
                )
    return list(found.values()), skipped


def ensemble_candidate(
    candidates: Sequence[CandidatePredictions], labels: Sequence[str], *, name: str = EnsembleCandidate.name
) -> tuple[CandidatePredictions | None, dict[str, Any]]:
    """The ``ensemble`` candidate from its members' stored predictions: no model runs again.

    Its members rule and combination rule are the candidate's (``tunewise.candidates.ensemble``): every
    fine-tuned candidate with probabilities, plus the cheap one with the best validation accuracy;
    the mean of their class probabilities on the test (and validation) ids every member scored;
    the sum of their latencies. Validation predictions carry the true ``label`` for the ranking.
    Returns (candidate or None, what was done).
    """
    labels = sorted(labels)
    usable = {c.name: c for c in candidates if proba_matrix(c.test, labels) is not None}
    pool = [
        (c.name, c.kind, validation_accuracy(c.validation) if c.validation is not None else None)
        for c in usable.values()
    ]
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
    return CandidatePredictions(
        name,
        EnsembleCandidate.kind,
        test,
        validation,
        None,
        "evaluate",
        any(m.expensive for m in members),
        members=info["members"],
    ), info


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
        raise EvaluationError(
            f"{path}: cannot read the incumbent's predictions ({type(exc).__name__}: {exc})"
        ) from None
    missing = [c for c in ("id", "prediction") if c not in frame.columns]
    if missing:
        raise EvaluationError(
            f"{path}: the incumbent's predictions lack column(s) {missing}; expected id, prediction "
            "and optionally latency_ms, usd"
        )
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
                raise EvaluationError(
                    f"{path}, line {at + 2}: field {column} must be a number >= 0, got {frame[column].iloc[at]!r}"
                )
            frame[column] = values.astype(float)
    test_ids = test["id"].astype(str)
    extra = frame.loc[~frame["id"].isin(set(test_ids)), "id"]
    absent = test_ids[~test_ids.isin(set(frame["id"]))]
    kept = frame[frame["id"].isin(set(test_ids))].reset_index(drop=True)
    predictions = pd.DataFrame(
        {
            "id": kept["id"],
            "prediction": kept["prediction"],
            "score": np.nan,
            "latency_ms": kept["latency_ms"] if "latency_ms" in kept else np.nan,
        }
    )
    if "usd" in kept:
        predictions["usd"] = kept["usd"]
    info = {
        "file": str(path),
        "rows": int(len(frame)),
        "matched": int(len(kept)),
        "missing_ids": int(len(absent)),
        "missing_examples": absent.head(5).tolist(),
        "extra_ids": int(len(extra)),
        "extra_examples": extra.head(5).tolist(),
        "has_latency": "latency_ms" in frame.columns,
        "has_usd": "usd" in frame.columns,
        "usd_per_request": float(kept["usd"].mean()) if "usd" in kept and len(kept) else None,
    }
    if not len(kept):
        raise EvaluationError(
            f"{path}: none of its {len(frame)} ids is a test id (first: "
            f"{frame['id'].iloc[0] if len(frame) else 'none'!r}); the file must answer the test file's rows"
        )
    return CandidatePredictions(INCUMBENT_NAME, "incumbent", predictions, None, None, "evaluate", False), info


def check_ids(candidate: CandidatePredictions, test_ids: set[str]) -> str | None:
    """Why the candidate cannot be compared on this test set, or None."""
    if len(candidate.test) == 0:
        return f"candidate {candidate.name!r} ({candidate.source}): the predictions file is empty"
    unknown = candidate.test.loc[~candidate.test["id"].isin(test_ids), "id"]
    if len(unknown):
        return (
            f"candidate {candidate.name!r} ({candidate.source}): {len(unknown)} of {len(candidate.test)} prediction "
            f"ids are not in the test set (first: {unknown.iloc[0]!r}); its predictions were made on another "
            f"split, so it is left out rather than compared on a different set; re-run `tunewise {candidate.source}`"
        )
    return None

"""Baselines: what the team gets without fine-tuning, measured on the same held-out rows.

For each configured candidate (tunewise.candidates.registry): fit on train, predict the test set and the
validation set (evaluation picks its out-of-scope threshold on validation), and take a quick
look at accuracy (classify) or chrF (generate). The full evaluation, with confidence intervals,
is the evaluate stage.

Expensive candidates (LLM prompting) score the whole test set when that fits the time budget, else
a stratified sample (:func:`plan_expensive_rows`); they fit on and score a stratified sample of at
most ``validation_rows`` validation rows (enough for a threshold; few_shot_llm's prompt search has
answered most of them already). With ``sample_size: auto``
(the default) each one is fitted, scores a probe of random test rows, and the rows/s measured
there decide: everything when ``time_budget_s`` allows it, else a stratified sample sized to fit.
A candidate that must sample draws its sample from the rows the previous one scored, so samples
are nested and the smallest one is common to all. With ``sample_size`` a number, every expensive
candidate scores that stratified sample (no probe); ``null`` scores everything. The common rows go
to ``sample_ids.json`` (``test``, ``validation``, ``stratified_by``, and ``scored_by``: the
expensive candidates that scored fewer than all test rows), so later comparisons are paired on
the same ids. Cheap candidates score everything; their summary also reports the metric on the
sampled ids for a paired quick look.

Artifacts (under ``out_dir``, written as each candidate finishes):
``predictions/<candidate>.parquet`` (test), ``predictions/<candidate>.validation.parquet``,
``models/<candidate>/`` (a cheap candidate's fitted state: JSON and safetensors),
``sample_ids.json`` and ``summary.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunewise.candidates.base import save_fitted
from tunewise.candidates.factory import build_candidate, candidate_settings  # candidate_settings re-exported
from tunewise.candidates.registry import (
    CANDIDATES,
    DEFAULT_CANDIDATES,
    PREDICTION_COLUMNS,
    Candidate,
    CandidateError,
    candidate_class,
    check_predictions,
)
from tunewise.config.sections import BaselineConfig, ModelsConfig  # noqa: F401  (BaselineConfig re-exported)
from tunewise.core.artifacts import write_json, write_parquet
from tunewise.core.machine import measuring_cores
from tunewise.core.progress import console
from tunewise.core.records import answer_column
from tunewise.core.sampling import stratified_sample_ids

__all__ = [
    "BaselineConfig",
    "CandidateRun",
    "build_candidate",
    "candidate_settings",
    "plan_expensive_rows",
    "quick_metrics",
    "resolve_candidates",
    "run_baseline",
    "run_candidate",
    "stratified_sample_ids",
]


# ---------------------------------------------------------------------------------------------
# Which candidates, built how


def resolve_candidates(task: str, config: BaselineConfig, has_knowledge_base: bool) -> tuple[list[str], list[dict]]:
    """(candidates to run, skipped defaults with the reason); wrong names and tasks are errors."""
    if config.candidates is None:
        names = list(DEFAULT_CANDIDATES[task])
        skipped = []
        if "rag_llm_gen" in names and not has_knowledge_base:
            names.remove("rag_llm_gen")
            skipped.append({"name": "rag_llm_gen", "reason": "no knowledge base (data.knowledge_base is not set)"})
        return names, skipped
    for name in config.candidates:
        try:
            cls = candidate_class(name)
        except CandidateError as exc:
            raise CandidateError(f"baseline.candidates: {exc}") from None
        if cls.task != task:
            matching = sorted(n for n, c in CANDIDATES.items() if c.task == task and not c.combines)
            raise CandidateError(
                f"baseline.candidates: {name!r} is a {cls.task} candidate but the project's task is "
                f"{task}; {task} candidates: {', '.join(matching)}"
            )
        if cls.combines:
            raise CandidateError(
                f"baseline.candidates: {name!r} combines other candidates' predictions: the evaluate "
                "stage builds it (evaluate.ensemble), not the baseline stage"
            )
    return list(config.candidates), []


# ---------------------------------------------------------------------------------------------
# The paired sample


# stratified_sample_ids: tunewise.core.sampling (imported above; still importable from here)


# The probe that times an expensive candidate: at least this many test rows (two batches of the
# candidate when its batch is larger), so a batch's fixed costs (shared prefix, padding) are in it.
PROBE_ROWS = 32
# Before the timed probe, one untimed batch (its predictions are kept): a model's first calls pay
# one-time costs (kernel choice, allocator growth, lazy tokenizer and encoder state) that are not
# per-row costs. Timed cold, the probe read 0.229 s a row for a scorer that then ran 0.063 s a row
# on BANKING77 and sampled rows it had time to score.
# A sample forced by the time budget keeps at least this many rows of each split: below that the
# accuracy's interval is too wide to compare anything (+-0.1 at 100 rows).
MIN_BUDGET_SAMPLE = 100


def plan_expensive_rows(
    seconds_per_row: float, n_test: int, n_validation: int, budget_s: float | None
) -> tuple[int, int]:
    """(test rows, validation rows) an expensive candidate scores within ``budget_s`` seconds.

    Everything when the estimate (``seconds_per_row`` times all rows) fits; else the budget is
    split evenly between test and validation (a validation set smaller than its half gives the
    rest to test), never below :data:`MIN_BUDGET_SAMPLE` rows of a split (or the whole split).
    """
    if budget_s is None or seconds_per_row <= 0 or seconds_per_row * (n_test + n_validation) <= budget_s:
        return n_test, n_validation
    affordable = int(budget_s / seconds_per_row)
    n_val = min(n_validation, affordable // 2)
    n_tst = min(n_test, affordable - n_val)
    return max(n_tst, min(n_test, MIN_BUDGET_SAMPLE)), max(n_val, min(n_validation, MIN_BUDGET_SAMPLE))


# ---------------------------------------------------------------------------------------------
# Running one candidate


def quick_metrics(task: str, predictions: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """Accuracy (classify) or corpus chrF (generate, sacrebleu) of ``predictions`` against ``truth``."""
    if len(predictions) == 0:
        return {}
    column = answer_column(task)
    expected = truth.set_index(truth["id"].astype(str))[column].astype(str).reindex(predictions["id"].astype(str))
    if task == "classify":
        return {"accuracy": float((predictions["prediction"].to_numpy() == expected.to_numpy()).mean())}
    import sacrebleu

    return {"chrf": float(sacrebleu.corpus_chrf(predictions["prediction"].tolist(), [expected.tolist()]).score)}


@dataclass
class CandidateRun:
    name: str
    kind: str
    expensive: bool
    test: pd.DataFrame  # predictions
    validation: pd.DataFrame  # predictions
    seconds: dict[str, float] = field(default_factory=dict)  # fit, test, validation
    info: dict[str, Any] = field(default_factory=dict)  # the candidate's info() (e.g. its label shortlist)
    scoring: dict[str, Any] = field(default_factory=dict)  # expensive: the probe, estimate and rows scored

    def summary(self, task: str, test: pd.DataFrame, sample_ids: list[str]) -> dict[str, Any]:
        latency = self.test["latency_ms"].to_numpy(dtype=np.float64)
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "expensive": self.expensive,
            "n_scored": {"test": len(self.test), "validation": len(self.validation)},
            "seconds": {
                **{k: round(v, 3) for k, v in self.seconds.items()},
                "total": round(sum(self.seconds.values()), 3),
            },
            "metrics": quick_metrics(task, self.test, test),
            "latency_ms": (
                {
                    "mean": float(latency.mean()),
                    "p50": float(np.percentile(latency, 50)),
                    "p95": float(np.percentile(latency, 95)),
                }
                if len(latency)
                else {}
            ),
            "latency_cores": measuring_cores(),  # the machine that timed them: decide scales from it
        }
        if self.info:
            out["info"] = self.info
        if self.scoring:
            out["scoring"] = self.scoring
        if not self.expensive:  # the same metric on the LLM sample, for a paired quick look
            on_sample = self.test[self.test["id"].astype(str).isin(set(sample_ids))]
            out["metrics_on_sample"] = quick_metrics(task, on_sample, test)
        return out


def _predict(candidate: Candidate, frame: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    started = time.perf_counter()
    predictions = candidate.predict(frame)
    seconds = time.perf_counter() - started
    check_predictions(predictions, frame, candidate)
    return predictions, seconds


def _info(candidate: Candidate) -> dict[str, Any]:
    info = getattr(candidate, "info", None)
    return dict(info()) if callable(info) else {}


def run_candidate(
    candidate: Candidate,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    test: pd.DataFrame,
    fit_validation: pd.DataFrame | None = None,
) -> CandidateRun:
    """Fit on ``train``, predict ``test`` and ``validation`` (already sampled for expensive candidates).

    ``fit_validation`` (default ``validation``) is what fit sees: the whole validation set, even
    when only a sample of it is scored (the LLM candidates choose their label shortlist on it).
    """
    started = time.perf_counter()
    candidate.fit(train, validation if fit_validation is None else fit_validation)
    fit_seconds = time.perf_counter() - started
    test_predictions, test_seconds = _predict(candidate, test)
    validation_predictions, validation_seconds = _predict(candidate, validation)
    return CandidateRun(
        candidate.name,
        candidate.kind,
        candidate.expensive,
        test_predictions,
        validation_predictions,
        {"fit": fit_seconds, "test": test_seconds, "validation": validation_seconds},
        _info(candidate),
    )


def _rows(frame: pd.DataFrame, ids: list[str] | set[str]) -> pd.DataFrame:
    return frame[frame["id"].astype(str).isin(set(ids))].reset_index(drop=True)


def run_within_budget(
    candidate: Candidate,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    test: pd.DataFrame,
    budget_s: float | None,
    *,
    seed: int,
    by: str | None,
    fit_validation: pd.DataFrame | None = None,
) -> CandidateRun:
    """Fit, time a probe of test rows, then score all of ``test`` and ``validation`` if the estimate
    fits ``budget_s``, else nested stratified samples of them sized to fit (:func:`plan_expensive_rows`).

    The probe's predictions are kept for the rows that are scored anyway, so timing costs nothing
    when everything is scored. ``run.scoring`` records the probe, the estimate and the decision.
    """
    started = time.perf_counter()
    candidate.fit(train, validation if fit_validation is None else fit_validation)
    fit_seconds = time.perf_counter() - started

    rng = np.random.default_rng(seed + 2)
    batch = int(getattr(candidate, "batch_size", 1) or 1)
    n_warm = min(len(test), batch)
    n_probe = min(len(test) - n_warm, max(PROBE_ROWS, 2 * batch))
    chosen = rng.choice(len(test), size=n_warm + n_probe, replace=False)
    warm = test.iloc[np.sort(chosen[:n_warm])].reset_index(drop=True)
    probe = test.iloc[np.sort(chosen[n_warm:])].reset_index(drop=True)
    warm_predictions, warm_seconds = _predict(candidate, warm) if n_warm else (warm.iloc[:0], 0.0)
    timed_predictions, timed_seconds = _predict(candidate, probe) if n_probe else (probe.iloc[:0], 0.0)
    # a test set too small for a timed probe is timed by its warm-up batch (pessimistic, and tiny anyway)
    per_row = timed_seconds / n_probe if n_probe else warm_seconds / max(n_warm, 1)
    probe_predictions = pd.concat([warm_predictions, timed_predictions], ignore_index=True)
    probe_seconds = warm_seconds + timed_seconds
    n_test, n_validation = plan_expensive_rows(per_row, len(test), len(validation), budget_s)
    scoring = {
        "probe_rows": n_probe,
        "warmup_rows": n_warm,
        "seconds_per_row": round(per_row, 4),
        "budget_s": budget_s,
        "estimated_s_all": round(per_row * (len(test) + len(validation)), 1),
        "whole": n_test == len(test) and n_validation == len(validation),
        "n_test": n_test,
        "n_validation": n_validation,
    }
    whole = scoring["whole"]
    if n_test < len(test):
        test = _rows(test, stratified_sample_ids(test, n_test, seed, by))
    if n_validation < len(validation):
        validation = _rows(validation, stratified_sample_ids(validation, n_validation, seed + 1, by))
    console.print(
        f"baseline: {candidate.name}: {per_row:.3f} s a row on a {n_probe}-row probe; scoring "
        + (
            f"all {len(test)} test and {len(validation)} validation rows"
            if whole
            else f"a stratified sample of {len(test)} test and {len(validation)} validation rows "
            f"(budget {budget_s:.0f} s)"
        )
    )

    # the probe rows already scored are not scored again; predictions go back to frame order
    kept = probe_predictions[probe_predictions["id"].astype(str).isin(set(test["id"].astype(str)))]
    rest = test[~test["id"].astype(str).isin(set(kept["id"].astype(str)))].reset_index(drop=True)
    rest_predictions, rest_seconds = _predict(candidate, rest) if len(rest) else (kept.iloc[:0], 0.0)
    test_predictions = (
        pd.concat([kept, rest_predictions], ignore_index=True)
        .set_index("id", drop=False)
        .loc[test["id"].astype(str)]
        .reset_index(drop=True)
    )
    check_predictions(test_predictions, test, candidate)
    validation_predictions, validation_seconds = _predict(candidate, validation)
    seconds = {"fit": fit_seconds, "test": probe_seconds + rest_seconds, "validation": validation_seconds}
    return CandidateRun(
        candidate.name,
        candidate.kind,
        candidate.expensive,
        test_predictions,
        validation_predictions,
        seconds,
        _info(candidate),
        scoring,
    )


# ---------------------------------------------------------------------------------------------
# All configured candidates


def run_baseline(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    test: pd.DataFrame,
    *,
    task: str,
    config: BaselineConfig,
    models: ModelsConfig,
    knowledge_base: str | Path | None = None,
    task_description: str | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run every configured candidate; returns the summary (and writes artifacts when ``out_dir`` is set).

    Names and settings are checked before any model loads, so a typo fails in a second.
    """
    names, skipped = resolve_candidates(task, config, has_knowledge_base=bool(knowledge_base))
    settings = candidate_settings(config, models, knowledge_base=knowledge_base, task_description=task_description)
    candidates = [build_candidate(name, settings) for name in names]  # the settings of these sections, as a pool
    by = answer_column(task) if task == "classify" else None
    auto = config.sample_size == "auto"
    size = None if auto else config.sample_size
    # the rows every expensive candidate scored: all (auto, null) or the configured sample; an
    # expensive candidate that must sample (auto, over budget) narrows it to a nested sample
    # prompted LLMs fit on and score at most `validation_rows` validation rows (the same sample)
    validation_size = min((n for n in (size, config.validation_rows) if n is not None), default=None)
    sample = {
        "test": stratified_sample_ids(test, size, seed, by),
        "validation": stratified_sample_ids(validation, validation_size, seed + 1, by),
    }
    sampled_by: list[str] = []  # expensive candidates that scored fewer than all test rows
    scoring: dict[str, dict] = {}
    out = Path(out_dir) if out_dir is not None else None

    def write_sample() -> None:
        if out is not None:
            write_json(
                out / "sample_ids.json",
                {
                    "sample_size": config.sample_size,
                    "time_budget_s": config.time_budget_s if auto else None,
                    "seed": seed,
                    "stratified_by": by,
                    "scored_by": list(sampled_by),
                    **sample,
                    "scoring": scoring,
                },
            )

    write_sample()
    expensive = [c.name for c in candidates if c.expensive]
    if not auto and len(sample["test"]) < len(test):
        sampled_by.extend(expensive)
        write_sample()

    summaries: list[dict[str, Any]] = []
    cheap: dict[str, pd.DataFrame] = {}
    while candidates:  # popped, so a finished candidate's fitted state is freed before the next
        candidate = candidates.pop(0)
        if candidate.expensive and auto:
            console.print(
                f"baseline: {candidate.name} ({candidate.kind}): timing a probe against a "
                f"{config.time_budget_s or 0:.0f} s budget"
                if config.time_budget_s
                else f"baseline: {candidate.name} ({candidate.kind}) on every row (no time budget)"
            )
            run = run_within_budget(
                candidate,
                train,
                _rows(validation, sample["validation"]),
                _rows(test, sample["test"]),
                config.time_budget_s,
                seed=seed,
                by=by,
            )
            scoring[run.name] = run.scoring
            # a sample narrows the common rows, and later candidates draw theirs from it (nested)
            sample = (
                {"test": run.test["id"].astype(str).tolist(), "validation": run.validation["id"].astype(str).tolist()}
                if not run.scoring["whole"]
                else sample
            )
            if len(run.test) < len(test):
                sampled_by.append(run.name)
            write_sample()
        else:
            scored_test = _rows(test, sample["test"]) if candidate.expensive else test
            scored_validation = _rows(validation, sample["validation"]) if candidate.expensive else validation
            console.print(
                f"baseline: {candidate.name} ({candidate.kind}) on {len(scored_test)} test "
                f"and {len(scored_validation)} validation rows"
            )
            run = run_candidate(
                candidate,
                train,
                scored_validation,
                scored_test,
                fit_validation=scored_validation if candidate.expensive else validation,
            )
        if out is not None:
            write_parquet(out / "predictions" / f"{run.name}.parquet", run.test)
            write_parquet(out / "predictions" / f"{run.name}.validation.parquet", run.validation)
            if candidate.saves_fitted:  # later stages and serving load it instead of fitting again
                save_fitted(candidate, out / "models" / run.name, train)
        summaries.append(run.summary(task, test, sample["test"]))
        if not run.expensive:  # its metric on the sample is redone at the end, on the final sample
            cheap[run.name] = run.test[["id", "prediction"]]
        console.print(f"baseline: {run.name}: {summaries[-1]['metrics']} in {summaries[-1]['seconds']['total']:.1f}s")
        del candidate, run
    for entry in summaries:
        if entry["name"] in cheap:
            on_sample = cheap[entry["name"]]
            on_sample = on_sample[on_sample["id"].astype(str).isin(set(sample["test"]))]
            entry["metrics_on_sample"] = quick_metrics(task, on_sample, test)

    summary = {
        "task": task,
        "primary_metric": "accuracy" if task == "classify" else "chrf",
        "sizes": {
            "train": len(train),
            "validation": len(validation),
            "test": len(test),
            "sample_test": len(sample["test"]),
            "sample_validation": len(sample["validation"]),
        },
        "candidates": summaries,
        "skipped": skipped,
        "prediction_columns": list(PREDICTION_COLUMNS),
    }
    if out is not None:
        write_json(out / "summary.json", summary)
    return summary

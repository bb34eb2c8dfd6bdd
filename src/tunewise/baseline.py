"""Baselines: what the team gets without fine-tuning, measured on the same held-out rows.

For each configured candidate (tunewise.candidates): fit on train, predict the test set and the
validation set (evaluation picks its out-of-scope threshold on validation), and take a quick
look at accuracy (classify) or chrF (generate). The full evaluation, with confidence intervals,
is the evaluate stage.

Expensive candidates (LLM prompting) score a sample: a stratified sample of ``sample_size`` test
rows and as many validation rows, the same rows for every candidate, saved in
``sample_ids.json`` so that later comparisons are paired on the same ids. Cheap candidates score
everything; their summary also reports the metric on the sampled ids for a paired quick look.

Artifacts (under ``out_dir``, written as each candidate finishes):
``predictions/<candidate>.parquet`` (test), ``predictions/<candidate>.validation.parquet``,
``sample_ids.json`` and ``summary.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .artifacts import write_json, write_parquet
from .candidates import (
    CANDIDATES,
    DEFAULT_CANDIDATES,
    PREDICTION_COLUMNS,
    Candidate,
    CandidateError,
    candidate_class,
    candidate_kwargs,
    check_predictions,
    make_candidate,
)
from .config import BaselineConfig, ModelsConfig  # noqa: F401  (BaselineConfig re-exported)
from .progress import console
from .records import answer_column

__all__ = [
    "BaselineConfig",
    "CandidateRun",
    "build_candidate",
    "candidate_settings",
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
            matching = sorted(n for n, c in CANDIDATES.items() if c.task == task)
            raise CandidateError(f"baseline.candidates: {name!r} is a {cls.task} candidate but the project's task is "
                                 f"{task}; {task} candidates: {', '.join(matching)}")
    return list(config.candidates), []


def candidate_settings(config: BaselineConfig, models: ModelsConfig, *, knowledge_base: str | Path | None = None,
                       task_description: str | None = None) -> dict[str, Any]:
    """The pool of settings candidates draw their constructor arguments from."""
    return {
        "llm": models.llm,
        "encoder": models.encoder,
        "offline": models.offline,
        "trust_remote_code": models.trust_remote_code,
        "system_prompt": config.system_prompt,
        "task_description": task_description,
        "few_shot_k": config.few_shot_k,
        "max_new_tokens": config.max_new_tokens,
        "rag_top_k": config.rag_top_k,
        "label_score": config.label_score,
        "calibrate": config.calibrate,
        "batch_size": config.batch_size,
        "max_input_tokens": config.max_input_tokens,
        "knowledge_base": str(knowledge_base) if knowledge_base else None,
    }


def build_candidate(name: str, settings: dict[str, Any]) -> Candidate:
    return make_candidate(name, **candidate_kwargs(name, settings))


# ---------------------------------------------------------------------------------------------
# The paired sample


def stratified_sample_ids(frame: pd.DataFrame, size: int | None, seed: int, by: str | None = None) -> list[str]:
    """Ids of ``size`` rows (all when ``size`` is None or not smaller), in frame order.

    With ``by``, each value gets its share of the sample by largest remainder (at least one row for
    a value when the sample has room). Hand-written because scikit-learn's stratified splitters
    refuse classes with a single row and samples smaller than the number of classes.
    """
    ids = frame["id"].astype(str).to_numpy()
    if size is None or size >= len(frame):
        return ids.tolist()
    rng = np.random.default_rng(seed)
    if by is None:
        chosen = np.sort(rng.choice(len(frame), size=size, replace=False))
        return ids[chosen].tolist()
    groups = frame[by].astype(str).to_numpy()
    values, counts = np.unique(groups, return_counts=True)
    quota = counts * size / len(frame)
    take = np.floor(quota).astype(int)
    if size >= len(values):  # every class is represented when there is room for it
        take = np.maximum(take, 1)
    surplus = take.sum() - size
    if surplus > 0:  # the minimum of one row overshot: take back from the largest classes
        for i in np.argsort(-take, kind="stable")[:surplus]:
            take[i] -= 1
    else:
        for i in np.argsort(-(quota - np.floor(quota)), kind="stable")[: size - take.sum()]:
            take[i] += 1
    chosen: list[int] = []
    for value, n in zip(values, take):
        members = np.flatnonzero(groups == value)
        chosen.extend(rng.choice(members, size=min(n, len(members)), replace=False).tolist())
    return ids[np.sort(chosen)].tolist()


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

    def summary(self, task: str, test: pd.DataFrame, sample_ids: list[str]) -> dict[str, Any]:
        latency = self.test["latency_ms"].to_numpy(dtype=np.float64)
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "expensive": self.expensive,
            "n_scored": {"test": len(self.test), "validation": len(self.validation)},
            "seconds": {**{k: round(v, 3) for k, v in self.seconds.items()}, "total": round(sum(self.seconds.values()), 3)},
            "metrics": quick_metrics(task, self.test, test),
            "latency_ms": ({"mean": float(latency.mean()), "p50": float(np.percentile(latency, 50)),
                            "p95": float(np.percentile(latency, 95))} if len(latency) else {}),
        }
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


def run_candidate(candidate: Candidate, train: pd.DataFrame, validation: pd.DataFrame, test: pd.DataFrame) -> CandidateRun:
    """Fit on ``train``, predict ``test`` and ``validation`` (already sampled for expensive candidates)."""
    started = time.perf_counter()
    candidate.fit(train, validation)
    fit_seconds = time.perf_counter() - started
    test_predictions, test_seconds = _predict(candidate, test)
    validation_predictions, validation_seconds = _predict(candidate, validation)
    return CandidateRun(candidate.name, candidate.kind, candidate.expensive, test_predictions, validation_predictions,
                        {"fit": fit_seconds, "test": test_seconds, "validation": validation_seconds})


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
    candidates = [build_candidate(name, settings) for name in names]
    by = answer_column(task) if task == "classify" else None
    sample = {
        "test": stratified_sample_ids(test, config.sample_size, seed, by),
        "validation": stratified_sample_ids(validation, config.sample_size, seed + 1, by),
    }
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        write_json(out / "sample_ids.json", {
            "sample_size": config.sample_size, "seed": seed, "stratified_by": by,
            "scored_by": [c.name for c in candidates if c.expensive], **sample,
        })
    sampled = {
        split: frame[frame["id"].astype(str).isin(set(sample[split]))].reset_index(drop=True)
        for split, frame in (("test", test), ("validation", validation))
    }

    summaries = []
    while candidates:  # popped, so a finished candidate's fitted state is freed before the next
        candidate = candidates.pop(0)
        scored_test = sampled["test"] if candidate.expensive else test
        scored_validation = sampled["validation"] if candidate.expensive else validation
        console.print(f"baseline: {candidate.name} ({candidate.kind}) on {len(scored_test)} test "
                      f"and {len(scored_validation)} validation rows")
        run = run_candidate(candidate, train, scored_validation, scored_test)
        if out is not None:
            write_parquet(out / "predictions" / f"{run.name}.parquet", run.test)
            write_parquet(out / "predictions" / f"{run.name}.validation.parquet", run.validation)
        summaries.append(run.summary(task, test, sample["test"]))
        console.print(f"baseline: {candidate.name}: {summaries[-1]['metrics']} in {summaries[-1]['seconds']['total']:.1f}s")
        del candidate, run

    summary = {
        "task": task,
        "primary_metric": "accuracy" if task == "classify" else "chrf",
        "sizes": {"train": len(train), "validation": len(validation), "test": len(test),
                  "sample_test": len(sample["test"]), "sample_validation": len(sample["validation"])},
        "candidates": summaries,
        "skipped": skipped,
        "prediction_columns": list(PREDICTION_COLUMNS),
    }
    if out is not None:
        write_json(out / "summary.json", summary)
    return summary

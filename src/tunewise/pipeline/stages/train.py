"""train: fine-tune the configured candidates (LoRA on the LLM, the encoder) and predict with them.

Writes ``runs/<id>/train/<candidate>/`` (adapter/, curves.json, curves.png, train_summary.json),
``runs/<id>/train/predictions/<candidate>.parquet`` (test) and ``<candidate>.validation.parquet``
in the baseline stage's prediction format, and ``summary.json``.

Resumable checkpoints live in ``runs/<id>/_checkpoints/train/<candidate>/``, outside the stage
folder: the runner clears a stage folder that did not finish before re-running it, and a killed
training run must find its checkpoints. They are removed once the candidate has finished.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from tunewise.config.sections import ProjectConfig
from tunewise.core.artifacts import file_digest, read_json, write_json, write_parquet, write_text
from tunewise.core.layout import RunLayout
from tunewise.core.machine import measuring_cores
from tunewise.core.progress import console
from tunewise.core.records import answer_column
from tunewise.pipeline.runner import StageContext, StageError, stage
from tunewise.training import TrainError, dry_run as plan_cost


def resolve_candidates(task: str, names: list[str] | None) -> list[str]:
    """The fine-tuned candidates to train; a wrong name, kind or task is an error naming the field."""
    from tunewise.candidates.finetuned import DEFAULT_FINETUNED  # on use: loads scipy, sklearn
    from tunewise.candidates.registry import CANDIDATES, CandidateError, candidate_class  # on use: loads scipy, sklearn

    if names is None:
        return list(DEFAULT_FINETUNED[task])
    fine_tuned = sorted(n for n, c in CANDIDATES.items() if c.kind == "finetuned" and c.task == task and not c.combines)
    for name in names:
        try:
            cls = candidate_class(name)
        except CandidateError as exc:
            raise StageError(f"train.candidates: {exc}") from None
        if cls.combines:
            raise StageError(
                f"train.candidates: {name!r} combines other candidates' predictions: the evaluate stage "
                f"builds it (evaluate.ensemble); fine-tuned {task} candidates: {', '.join(fine_tuned)}"
            )
        if cls.kind != "finetuned" or cls.task != task:
            raise StageError(
                f"train.candidates: {name!r} is a {cls.kind} {cls.task} candidate; fine-tuned {task} "
                f"candidates: {', '.join(fine_tuned)}"
            )
    return list(names)


def _read_split(ctx: StageContext) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(ctx.input("split", f"{name}.parquet")) for name in ("train", "validation", "test")}


@stage("train", sections=("train", "models"), reads=("split",))
def run(ctx: StageContext) -> dict:
    """Fine-tune the configured candidates (LoRA on the LLM, the encoder) and predict validation and test."""

    cfg = ctx.config
    section = cfg.train
    names = resolve_candidates(cfg.task, section.candidates)
    frames = _read_split(ctx)
    samples = _samples(cfg, frames)
    summaries = []
    for name in names:
        finished = RunLayout(ctx.run_dir).finished(name)
        key = _finished_key(cfg, name, ctx.run_dir, samples)
        if _restore_finished(finished, key, ctx, name):
            entry = read_json(finished / "summary.json")
            console.print(f"train: {name}: finished before this run was interrupted; restored, not retrained")
        else:
            entry = _train_one(ctx, name, frames, samples)
            _save_finished(finished, key, ctx, name, entry)
        summaries.append(entry)
    shutil.rmtree(ctx.run_dir / "_checkpoints" / "train", ignore_errors=True)  # the stage is done
    write_json(
        ctx.path("summary.json"),
        {
            "task": cfg.task,
            "primary_metric": "accuracy" if cfg.task == "classify" else "chrf",
            "candidates": summaries,
            "sample_size": section.sample_size,
            "sample_ids": samples,
        },
    )
    return {
        "candidates": {
            s["name"]: {
                **s["metrics"],
                "seconds": s["seconds"]["fit"],
                "steps": s["steps"],
                "stop_reason": s.get("stop_reason"),
                "under_trained": s.get("under_trained"),
            }
            for s in summaries
        }
    }


def _train_one(
    ctx: StageContext, name: str, frames: dict[str, pd.DataFrame], samples: dict[str, list[str]]
) -> dict[str, Any]:
    """Train one candidate, predict validation and test, write them.

    Classifiers predict every row; expensive candidates (the generator: a generation per row)
    predict the paired sample. ``under_trained`` (from train_summary.json) says a cap stopped
    training while validation was still improving."""
    from tunewise.candidates.registry import check_predictions  # on use: loads scipy, sklearn
    from tunewise.evaluation.baseline import quick_metrics  # on use: loads scipy, sklearn

    cfg = ctx.config
    checkpoints = RunLayout(ctx.run_dir).checkpoints(name)
    candidate = _candidate(cfg, name, str(ctx.path(name)), checkpoints)
    console.print(f"train: {name} ({candidate.task}) on {len(frames['train'])} rows")
    started = time.perf_counter()
    candidate.fit(frames["train"], frames["validation"])
    fit_seconds = time.perf_counter() - started
    predictions, seconds = {}, {"fit": round(fit_seconds, 3)}
    for split in ("test", "validation"):
        frame = frames[split]
        if candidate.expensive:
            frame = frame[frame["id"].astype(str).isin(set(samples[split]))].reset_index(drop=True)
        t0 = time.perf_counter()
        predictions[split] = candidate.predict(frame)
        seconds[split] = round(time.perf_counter() - t0, 3)
        check_predictions(predictions[split], frame, candidate)
    write_parquet(ctx.path(f"predictions/{name}.parquet"), predictions["test"])
    write_parquet(ctx.path(f"predictions/{name}.validation.parquet"), predictions["validation"])
    train_summary = candidate.train_summary_
    entry = {
        "name": name,
        "kind": candidate.kind,
        "expensive": candidate.expensive,
        "n_scored": {split: len(p) for split, p in predictions.items()},
        "metrics": quick_metrics(cfg.task, predictions["test"], frames["test"]),
        "validation_metrics": quick_metrics(cfg.task, predictions["validation"], frames["validation"]),
        "seconds": seconds,
        "steps": train_summary["steps_done"],
        "epochs": train_summary.get("epochs_done"),
        "stop_reason": train_summary["stop_reason"],
        "stop_message": train_summary.get("stop_message"),
        "under_trained": train_summary.get("under_trained"),
        "under_trained_reason": train_summary.get("under_trained_reason"),
        "monitor": train_summary.get("monitor"),
        "validation_curve": train_summary.get("validation_curve"),
        "best_step": train_summary["best_step"],
        "tokens_per_second": train_summary["tokens_per_second"],
        "runtime": train_summary["runtime"],
        "latency_cores": measuring_cores(),  # the machine that timed the predictions: decide scales from it
    }
    console.print(
        f"train: {name}: test {entry['metrics']} on {entry['n_scored']['test']} rows "
        f"({train_summary['steps_done']} steps, {train_summary['stop_reason']}) in {fit_seconds:.1f}s"
    )
    if entry["under_trained"]:
        console.print(f"[yellow]train: {name}: {entry['under_trained_reason']}[/yellow]")
    shutil.rmtree(checkpoints, ignore_errors=True)  # finished: its outputs are what stays
    return entry


# A killed stage is re-run from a clean folder; candidates that had finished are kept aside (with
# a key of everything their training read) so the re-run restores them instead of training again.


def _samples(cfg: ProjectConfig, frames: dict[str, pd.DataFrame]) -> dict[str, list[str]]:
    """The same paired sample as the baseline stage (same function, seeds and stratification) when
    train.sample_size equals baseline.sample_size, so evaluation compares the same rows."""
    from tunewise.evaluation.baseline import stratified_sample_ids  # on use: loads scipy, sklearn

    by = answer_column(cfg.task) if cfg.task == "classify" else None
    return {
        "test": stratified_sample_ids(frames["test"], cfg.train.sample_size, cfg.seed, by),
        "validation": stratified_sample_ids(frames["validation"], cfg.train.sample_size, cfg.seed + 1, by),
    }


def _finished_key(cfg: ProjectConfig, name: str, run_dir: Path, samples: dict[str, list[str]]) -> str:
    import hashlib
    import json

    parts = {
        "train": cfg.train.for_candidate(name).model_dump(mode="json", exclude={"resume"}),
        "models": cfg.models.model_dump(mode="json"),
        "seed": cfg.seed,
        "task": cfg.task,
        "samples": samples,
        "split": {n: file_digest(RunLayout(run_dir).split(n)) for n in ("train", "validation", "test")},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _save_finished(finished: Path, key: str, ctx: StageContext, name: str, entry: dict[str, Any]) -> None:

    shutil.rmtree(finished, ignore_errors=True)
    shutil.copytree(ctx.path(name), finished / "out")
    for suffix in ("", ".validation"):
        shutil.copy2(ctx.path(f"predictions/{name}{suffix}.parquet"), finished / f"{name}{suffix}.parquet")
    write_json(finished / "summary.json", entry)
    write_text(finished / "key.txt", key)  # last: a folder without it is incomplete and ignored


def _restore_finished(finished: Path, key: str, ctx: StageContext, name: str) -> bool:
    marker = finished / "key.txt"
    if not marker.exists() or marker.read_text() != key:
        return False
    shutil.rmtree(ctx.path(name), ignore_errors=True)
    shutil.copytree(finished / "out", ctx.path(name))
    for suffix in ("", ".validation"):
        target = ctx.path(f"predictions/{name}{suffix}.parquet")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(finished / f"{name}{suffix}.parquet", target)
    return True


def _candidate(cfg: ProjectConfig, name: str, output_dir: str | None, checkpoints: Path) -> Any:
    from tunewise.candidates.factory import build_candidate  # on use: loads scipy, sklearn

    # the models and train sections (with train.overrides[name]) and the seed
    return build_candidate(name, cfg, output_dir=output_dir, checkpoint_dir=str(checkpoints))


def fit_worker(cfg: ProjectConfig, run_id: str = "default") -> None:
    """A rank > 0 of ``tunewise train --nproc N``: train every candidate in step with rank 0, write nothing.

    Rank 0 runs the stage itself (:func:`run`); the candidates, their order and the data are the
    same here, so every collective operation has its partner. Checkpoints are read (a resumed run
    resumes on every rank) but only rank 0 writes them.
    """
    run_dir = cfg.resolve(cfg.runs_dir) / run_id
    frames = {name: pd.read_parquet(RunLayout(run_dir).split(name)) for name in ("train", "validation", "test")}
    samples = _samples(cfg, frames)
    for name in resolve_candidates(cfg.task, cfg.train.candidates):
        # rank 0 restores a candidate that finished before an interruption instead of training it
        marker = RunLayout(run_dir).finished(name) / "key.txt"
        if marker.exists() and marker.read_text() == _finished_key(cfg, name, run_dir, samples):
            continue
        candidate = _candidate(cfg, name, None, RunLayout(run_dir).checkpoints(name))
        candidate.fit(frames["train"], frames["validation"])
        del candidate


def dry_run(cfg: ProjectConfig, run_id: str = "default", calibration_steps: int = 3) -> dict[str, Any]:
    """What training would take (tokens, steps, memory, time here and on reference GPUs), per candidate.

    Reads the split stage's output of ``run_id`` (run `tunewise split` first); writes nothing, so the
    train stage's cache is untouched. For ``tunewise train --dry-run``.
    """
    from tunewise.candidates.registry import candidate_class  # on use: loads scipy, sklearn

    section = cfg.train
    run_dir = cfg.resolve(cfg.runs_dir) / run_id
    paths = RunLayout(run_dir).splits(("train", "validation"))
    for path in paths.values():
        if not path.exists():
            raise StageError(f"train --dry-run needs {path}, which stage 'split' writes; run `tunewise split` first")
    train_frame, validation_frame = (pd.read_parquet(p) for p in paths.values())
    reports = {}
    for name in resolve_candidates(cfg.task, section.candidates):
        cls = candidate_class(name)
        spec = cfg.models.encoder if cls.method == "encoder" else cfg.models.llm
        try:
            reports[name] = plan_cost(
                cfg.task,
                train_frame,
                validation_frame,
                method=cls.method,
                config=section.for_candidate(name),
                model_spec=spec,
                offline=cfg.models.offline,
                trust_remote_code=cfg.models.trust_remote_code,
                seed=cfg.seed,
                calibration_steps=calibration_steps,
                source=str(paths["train"]),
            )
        except TrainError as exc:
            raise StageError(str(exc)) from None
    return reports

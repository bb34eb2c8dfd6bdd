"""evaluate: every candidate on the held-out test set, with intervals, paired tests and the gate."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from tunewise.config.sections import ProjectConfig
from tunewise.core.artifacts import json_safe, read_json, write_json, write_parquet
from tunewise.core.layout import RunLayout
from tunewise.core.progress import console, track
from tunewise.evaluation.base import EvaluationError
from tunewise.evaluation.forgetting import compare_probes, find_finetuned_models, load_finetuned, run_probe
from tunewise.evaluation.metrics_gen import knowledge_texts
from tunewise.models.loading import load_llm
from tunewise.pipeline.runner import StageContext, StageError, stage


def _with_labels(predictions: pd.DataFrame | None, truth: pd.DataFrame | None) -> pd.DataFrame | None:
    """Validation predictions with the true label beside them (the ensemble ranks cheap models by it)."""
    if predictions is None or truth is None or "label" not in truth.columns:
        return predictions
    labels = truth.assign(id=truth["id"].astype(str)).set_index("id")["label"]
    return predictions.assign(label=predictions["id"].map(labels))


def _read_split(ctx: StageContext, name: str, required: bool) -> pd.DataFrame | None:
    try:
        return pd.read_parquet(ctx.input("split", f"{name}.parquet"))
    except StageError:
        if required:
            raise
        return None


def _fitted_candidates(
    ctx: StageContext,
    names: dict[str, Any],
    train: pd.DataFrame,
    validation: pd.DataFrame | None,
    include_expensive: bool,
) -> tuple[dict, list[dict]]:
    """Fitted candidates to re-predict with: cheap ones as the baseline stage saved them (refitted
    on train.parquet when it did not),
    prompted LLMs only when asked, fine-tuned ones loaded from the train stage; a candidate that
    combines others (the ensemble) is left out: its members are measured."""
    from tunewise.candidates.factory import load_run_candidate, run_candidate  # on use: loads scipy, sklearn
    from tunewise.candidates.registry import CANDIDATES  # on use: loads scipy, sklearn

    cfg = ctx.config
    fitted: dict[str, Any] = {}
    skipped: list[dict] = []
    for name, entry in track(names.items(), "evaluate: refit for robustness", total=len(names), unit="candidates"):
        registered = CANDIDATES.get(name)
        if registered is not None and registered.combines:
            skipped.append(
                {
                    "name": name,
                    "reason": f"it combines {', '.join(entry.get('members') or [])}: "
                    "robustness and over-fitting are measured on its members",
                }
            )
            continue
        if entry["source"] == "train" or registered is None:
            try:
                fitted[name] = run_candidate(name, cfg, ctx.run_dir)  # fine-tuned: loaded, never retrained
            except Exception as exc:  # noqa: BLE001 - reported, and the other candidates go on
                skipped.append(
                    {"name": name, "reason": f"loading from the train stage failed: {type(exc).__name__}: {exc}"}
                )
            continue
        if registered.expensive and not include_expensive:
            skipped.append(
                {
                    "name": name,
                    "reason": "LLM prompting candidate: re-predicting it is slow on a CPU "
                    "(set evaluate.robustness_expensive: true to include it)",
                }
            )
            continue
        started = time.perf_counter()
        loaded = load_run_candidate(name, cfg, ctx.run_dir, train)  # as the baseline stage fitted it
        fitted[name] = loaded if loaded is not None else run_candidate(name, cfg, ctx.run_dir, train, validation)
        console.print(
            f"evaluate: {'loaded' if loaded is not None else 'refitted'} {name} in "
            f"{time.perf_counter() - started:.1f}s for robustness and over-fitting"
        )
    return fitted, skipped


@stage(
    "evaluate",
    sections=("evaluate", "data", "models"),
    reads=("split", "baseline", "train"),
    user_files=ProjectConfig.evaluate_files,
)
def run(ctx: StageContext) -> dict:
    """Compare every candidate with the baseline on the test set: intervals, slices, robustness, gate."""
    from tunewise.candidates.ensemble import EnsembleCandidate  # on use: loads scipy, sklearn
    from tunewise.evaluation.evaluate import evaluate_candidates  # on use: loads scipy, sklearn
    from tunewise.evaluation.predictions import (
        CandidatePredictions,
        ensemble_candidate,
        load_incumbent_predictions,
        load_run_predictions,
    )  # on use: loads scipy, sklearn
    from tunewise.evaluation.robustness import (  # on use: loads scipy, sklearn
        overfitting_report,
        primary_score,
        robustness_report,
    )

    cfg = ctx.config
    section = cfg.evaluate
    task = cfg.task
    test = _read_split(ctx, "test", required=True)
    validation = _read_split(ctx, "validation", required=False)
    train = _read_split(ctx, "train", required=False)
    candidates, skipped = load_run_predictions(ctx.run_dir)
    if not (ctx.run_dir / "train").is_dir():
        console.print("[dim]evaluate: no train stage in this run; evaluating the baseline stage's candidates[/dim]")
    if not candidates:
        raise StageError(
            f"no candidate predictions under {ctx.run_dir / 'baseline' / 'predictions'} or "
            f"{ctx.run_dir / 'train' / 'predictions'}; run `tunewise baseline` first"
            + (f" ({'; '.join(s['reason'] for s in skipped)})" if skipped else "")
        )
    ensemble_info = None
    # the ensemble candidate, from its members' stored predictions (its rules: tunewise.candidates.ensemble)
    if (
        task == EnsembleCandidate.task
        and section.ensemble
        and not any(c.name == EnsembleCandidate.name for c in candidates)
    ):
        labels = sorted(set(train["label"].astype(str)) if train is not None else set(test["label"].astype(str)))
        with_truth = [
            CandidatePredictions(
                c.name, c.kind, c.test, _with_labels(c.validation, validation), c.train, c.source, c.expensive
            )
            for c in candidates
        ]
        ensemble, info = ensemble_candidate(with_truth, labels)
        ensemble_info = info
        if ensemble is not None:
            candidates.append(ensemble)
            write_parquet(ctx.path(f"predictions/{ensemble.name}.parquet"), ensemble.test)
            if ensemble.validation is not None:
                write_parquet(ctx.path(f"predictions/{ensemble.name}.validation.parquet"), ensemble.validation)
            console.print(f"evaluate: {ensemble.name} of {', '.join(info['members'])} on {info['n_test']} test rows")
    incumbent_file = cfg.incumbent_predictions_file()
    incumbent_info = None
    if incumbent_file is not None:
        try:
            incumbent, incumbent_info = load_incumbent_predictions(incumbent_file, test)
        except EvaluationError as exc:
            raise StageError(str(exc)) from None
        candidates.append(incumbent)
        write_parquet(ctx.path(f"predictions/{incumbent.name}.parquet"), incumbent.test)  # decide reads its latency
        console.print(
            f"evaluate: incumbent from {incumbent_file}: {incumbent_info['matched']} of {len(test)} test rows "
            f"answered ({incumbent_info['missing_ids']} missing, {incumbent_info['extra_ids']} ids not in the "
            "test set, dropped)"
        )
    for s in skipped:
        console.print(f"[yellow]evaluate: skipped {s['name']}: {s['reason']}[/yellow]")

    kb = cfg.knowledge_base_dir()
    knowledge = knowledge_texts(kb) if task == "generate" and kb is not None else []
    encoder = cfg.models.encoder if task == "generate" and section.embedding_similarity else None
    oos_neighbours = None
    if (
        task == "classify"
        and section.oos_neighbours
        and train is not None
        and validation is not None
        # the cuts are chosen on out-of-scope validation rows: without them nothing to embed
        and (validation["label"].astype(str) == section.out_of_scope_label).any()
    ):
        from tunewise.evaluation.neighbours import NEIGHBOURS_FILE, OutOfScopeNeighbours

        oos_neighbours = OutOfScopeNeighbours.fit(
            train["input"].astype(str).tolist(),
            train["label"].astype(str).tolist(),
            section.out_of_scope_label,
            cfg.models.encoder,
        )
        if oos_neighbours is not None:  # the server applies the same cut: it reads these embeddings
            oos_neighbours.save(ctx.path(NEIGHBOURS_FILE))
    evaluation = evaluate_candidates(
        test,
        candidates,
        task=task,
        config=section,
        validation=validation,
        slice_columns=cfg.data.slice_columns,
        knowledge=knowledge,
        encoder=encoder,
        seed=cfg.seed,
        skipped=skipped,
        # the candidates' probability columns are the sorted training labels
        proba_labels=sorted(set(train["label"].astype(str))) if task == "classify" and train is not None else None,
        oos_neighbours=oos_neighbours,
    )
    summary = evaluation.summary
    if incumbent_info is not None:
        summary["incumbent"]["predictions_file"] = incumbent_info
    if ensemble_info is not None:
        summary["ensemble"] = ensemble_info
    sample_file = RunLayout(ctx.run_dir).sample_ids
    if sample_file.exists():  # which candidates scored only a sample: their comparisons run on it
        sample = read_json(sample_file)
        summary["sample"] = {
            "size": len(sample.get("test", [])),
            "scored_by": sample.get("scored_by", []),
            "stratified_by": sample.get("stratified_by"),
        }
    for s in summary["skipped"][len(skipped) :]:
        console.print(f"[yellow]evaluate: {s['name']}: {s['reason']}[/yellow]")
    by_name = {c.name: c for c in candidates}
    evaluated = {e["name"]: e for e in summary["candidates"]}

    # ---- robustness and over-fitting (train score) need fitted candidates
    fitted: dict[str, Any] = {}
    fit_skipped: list[dict] = []
    if train is not None and len(train):
        started = time.perf_counter()
        fitted, fit_skipped = _fitted_candidates(ctx, evaluated, train, validation, section.robustness_expensive)
        summary["timings_s"]["refit"] = round(time.perf_counter() - started, 3)
    else:
        fit_skipped = [{"name": n, "reason": "split/train.parquet is missing: nothing to refit on"} for n in evaluated]
    robustness: dict[str, Any] = {"enabled": section.robustness}
    if section.robustness:
        started = time.perf_counter()
        rng = np.random.default_rng(cfg.seed)
        rows = np.sort(rng.choice(len(test), size=min(section.robustness_rows, len(test)), replace=False))
        robustness.update(
            robustness_report(
                task,
                fitted,
                test.iloc[rows],
                kinds=section.perturbations,
                n_resamples=section.n_resamples,
                level=section.confidence_level,
                seed=cfg.seed,
                skipped=fit_skipped,
            )
        )
        summary["timings_s"]["robustness"] = round(time.perf_counter() - started, 3)
    write_json(ctx.path("robustness.json"), json_safe(robustness))

    started = time.perf_counter()
    overfit_rows: dict[str, dict] = {}
    train_sample = None
    if train is not None and len(train):
        rng = np.random.default_rng(cfg.seed + 1)
        train_sample = train.iloc[
            np.sort(rng.choice(len(train), size=min(section.overfit_train_rows, len(train)), replace=False))
        ]
    for name, entry in track(
        evaluated.items(), "evaluate: over-fitting scores", total=len(evaluated), unit="candidates"
    ):
        c = by_name[name]
        primary = summary["primary_metric"]
        splits: dict[str, tuple] = {
            "test": (
                entry["metrics"].get(primary, float("nan")),
                entry["n_eval"],
                tuple(entry["ci95"].get(primary, (float("nan"), float("nan")))),
            )
        }
        scored = {"n_resamples": section.n_resamples, "level": section.confidence_level, "seed": cfg.seed}
        if c.validation is not None and validation is not None:
            splits["validation"] = primary_score(task, c.validation, validation, **scored)
        if c.train is not None and train is not None:
            splits["train"] = primary_score(task, c.train, train, **scored)
        elif name in fitted and train_sample is not None:
            splits["train"] = primary_score(task, fitted[name].predict(train_sample), train_sample, **scored)
        if "train" in splits:
            overfit_rows[name] = splits
    overfitting = overfitting_report(task, overfit_rows, section.overfit_gap)
    overfitting["not_computed"] = {
        n: "no train-set predictions and not cheap to refit" for n in evaluated if n not in overfit_rows
    }
    write_json(ctx.path("overfitting.json"), json_safe(overfitting))
    summary["timings_s"]["overfitting"] = round(time.perf_counter() - started, 3)

    # ---- forgetting: the general-ability probe on the base and fine-tuned LLMs
    started = time.perf_counter()
    forgetting = _forgetting(ctx, section.forgetting)
    write_json(ctx.path("forgetting.json"), json_safe(forgetting))
    summary["timings_s"]["forgetting"] = round(time.perf_counter() - started, 3)

    # ---- the blind side-by-side sheet for people
    human = {"enabled": section.human_sheet_size > 0}
    gate = summary["gate"]
    if section.human_sheet_size > 0 and gate.get("candidate") and gate.get("baseline"):
        from tunewise.evaluation.human_sheet import write_sheet  # on use: loads scipy

        pair = (gate["candidate"], gate["baseline"])
        files = write_sheet(
            ctx.path("human"),
            test,
            {n: by_name[n].test.set_index("id")["prediction"] for n in pair},
            n=section.human_sheet_size,
            seed=cfg.seed,
            reference_column="target" if task == "generate" else None,
            title=f"Which answer is better? ({len(test)} test messages, {section.human_sheet_size} sampled)",
        )
        human.update(
            {
                "candidates": list(pair),
                "n_items": files.n_items,
                "sheet_csv": str(files.sheet_csv.name),
                "sheet_html": str(files.sheet_html.name),
                "key_csv": str(files.key_csv.name),
                "read_back": "tunewise.evaluation.human_sheet.read_sheet(filled_csv, 'human/key.csv', candidate)",
            }
        )

    summary["robustness"] = {
        name: {k: v["drop"] for k, v in r["perturbations"].items()}
        for name, r in robustness.get("candidates", {}).items()
    }
    summary["overfitting_flags"] = {n: e["flags"] for n, e in overfitting["candidates"].items() if e["flags"]}
    summary["forgetting"] = {k: forgetting.get(k) for k in ("status", "reason", "models") if k in forgetting}
    summary["human_sheet"] = human
    evaluation.write(ctx.dir)

    primary = summary["primary_metric"]
    return json_safe(
        {
            "gate_passed": gate["passed"],
            "n_candidates": len(evaluated),
            "candidates": {
                n: {primary: e["metrics"].get(primary), "n_eval": e["n_eval"]} for n, e in evaluated.items()
            },
            "relative_improvement": (summary["comparison"] or {}).get("relative_improvement"),
        }
    )


def _forgetting(ctx: StageContext, enabled: bool) -> dict[str, Any]:
    if not enabled:
        return {"status": "off", "reason": "evaluate.forgetting is false"}

    models = find_finetuned_models(ctx.run_dir / "train")
    if not models:
        return {
            "status": "skipped",
            "reason": f"no fine-tuned generative LLM saved under {ctx.run_dir / 'train'} "
            "(classifiers are not probed: they never generate)",
        }

    cfg = ctx.config
    out: dict[str, Any] = {"status": "done", "base_model": cfg.models.llm, "models": {}}
    try:
        model, tokenizer = load_llm(
            cfg.models.llm, offline=cfg.models.offline, trust_remote_code=cfg.models.trust_remote_code
        )
        base = run_probe(model, tokenizer)
        del model
        out["base"] = base.as_dict()
        for name, folder, kind in models:
            tuned_model, tuned_tokenizer = load_finetuned(
                folder, kind, cfg.models.llm, offline=cfg.models.offline, trust_remote_code=cfg.models.trust_remote_code
            )
            tuned = run_probe(tuned_model, tuned_tokenizer)
            del tuned_model
            out["models"][name] = {
                "folder": str(folder),
                "kind": kind,
                **compare_probes(base, tuned),
                "answers": tuned.as_dict()["answers"],
            }
    except Exception as exc:  # noqa: BLE001 - the probe is a side check: report it, keep the evaluation
        console.print(f"[yellow]evaluate: forgetting probe failed: {type(exc).__name__}: {exc}[/yellow]")
        out.update({"status": "error", "reason": f"{type(exc).__name__}: {exc}"})
    return out

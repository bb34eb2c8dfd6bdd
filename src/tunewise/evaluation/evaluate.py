"""Evaluation: every candidate on the held-out test set, with intervals, paired tests and a gate.

What it answers, for each candidate that the baseline and train stages scored:

- classify: accuracy, macro / micro / weighted precision, recall and F1, a per-class table, the
  confusion matrix with its largest confusions, calibration (ECE), accuracy against coverage when
  the least confident answers are deferred, and an out-of-scope threshold chosen on validation;
- generate: chrF and BLEU (sacrebleu), ROUGE-L, embedding similarity, length ratio, format
  compliance and the share of replies with unsupported facts (``tunewise.evaluation.metrics_gen``);
- a bootstrap interval for every metric and, against the baseline, a paired test (McNemar for
  correctness, a sign-flip permutation test for per-example generation scores) and the relative
  improvement with its own interval from the same resamples (``tunewise.core.stats``);
- the same per slice column, with the largest gap between slices and the slices where a
  candidate is worse than the baseline beyond noise;
- robustness under seeded perturbations, over-fitting (train / validation / test side by side);
- a gate: the chosen candidate's relative improvement over the baseline must reach the threshold
  with the lower end of its interval above zero, and it must not lose to the best cheap candidate.

Comparisons use only the ids both candidates scored: LLM candidates score a sample of the test
set (``baseline/sample_ids.json``), so a comparison with one of them runs on that sample and says
how many examples it used. A candidate whose predictions name ids outside the test set is left
out with a message, never compared on a different set.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunewise.candidates.base import best_in_scope
from tunewise.candidates.ensemble import proba_matrix
from tunewise.config.sections import EvaluateConfig  # noqa: F401  (re-exported: the evaluate section)
from tunewise.core.artifacts import atomic_path, json_safe, write_csv, write_json, write_parquet
from tunewise.core.records import answer_column
from tunewise.core.stats import (
    class_counts,
    precision_recall_f1,
)
from tunewise.evaluation.base import (
    COMPARED_METRICS,
    DEFAULT_BASELINE,
    INCUMBENT_NAME,
    LOWER_IS_BETTER,
    PREDICTIONS_PREFIX,
    PRIMARY_METRIC,
    EvaluationError,
)
from tunewise.evaluation.gate import (
    best_by_primary,
    comparison_reference,
    gate_decision,
    meaningful,
    pairwise_primary,
    pick_incumbent,
)
from tunewise.evaluation.metrics_gen import FactChecker
from tunewise.evaluation.neighbours import OutOfScopeNeighbours
from tunewise.evaluation.predictions import CandidatePredictions, check_ids
from tunewise.evaluation.scores import (
    ClassifyScores,
    Resampler,
    Scores,
    compare_scores,
    score_classification,
    score_generation_predictions,
    truth_for,
)
from tunewise.evaluation.slices import slice_report
from tunewise.evaluation.thresholds import (
    choose_oos_cuts,
    choose_oos_threshold,
    choose_threshold,
    coverage_curve,
    out_of_scope_metrics,
)

__all__ = [
    "EvaluateConfig",
    "Evaluation",
    "evaluate_candidates",
]


# ---------------------------------------------------------------------------------------------
# Loading predictions


# ---------------------------------------------------------------------------------------------
# Per-example scores of one candidate, and metrics of any subset under any resamples


# ---------------------------------------------------------------------------------------------
# Paired comparison on shared ids


# ---------------------------------------------------------------------------------------------
# Classification extras: threshold, coverage, per class, confusions


def _per_class(scores: ClassifyScores, name: str) -> pd.DataFrame:
    counts = class_counts(np.ones((1, len(scores.ids)), np.float32), scores.y_true, scores.y_pred, len(scores.labels))
    tp, fp, fn = counts.tp[0], counts.fp[0], counts.fn[0]
    precision, recall, f1 = precision_recall_f1(tp, fp, fn)
    present = (tp + fp + fn) > 0
    return pd.DataFrame(
        {
            "candidate": name,
            "label": np.asarray(scores.labels, dtype=object)[present],
            "precision": precision[present],
            "recall": recall[present],
            "f1": f1[present],
            "support": (tp + fn)[present].astype(int),
            "predicted": (tp + fp)[present].astype(int),
        }
    )


def _confusions(scores: ClassifyScores, top: int) -> dict:
    n_labels = len(scores.labels)
    matrix = np.bincount(scores.y_true * n_labels + scores.y_pred, minlength=n_labels * n_labels).reshape(
        n_labels, n_labels
    )
    present = np.flatnonzero((matrix.sum(axis=0) + matrix.sum(axis=1)) > 0)
    sub = matrix[np.ix_(present, present)]
    labels = [scores.labels[i] for i in present]
    off = sub.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:top]
    support = sub.sum(axis=1)
    largest = [
        {
            "true": labels[i],
            "predicted": labels[j],
            "count": int(off[i, j]),
            "share_of_true": float(off[i, j] / support[i]) if support[i] else 0.0,
        }
        for i, j in zip(*np.unravel_index(flat, off.shape))
        if off[i, j] > 0
    ]
    return {"labels": labels, "matrix": sub.tolist(), "top": largest}


# ---------------------------------------------------------------------------------------------
# Perturbations for the robustness check: tunewise.core.perturb, shared with training augmentation


# ---------------------------------------------------------------------------------------------
# The evaluation of all candidates


@dataclass
class Evaluation:
    """What :func:`evaluate_candidates` found; ``write`` puts it under a folder."""

    task: str
    summary: dict
    scores: dict[str, Scores]
    per_example: dict[str, pd.DataFrame]
    per_class: pd.DataFrame | None = None
    confusions: dict = field(default_factory=dict)
    thresholds: dict = field(default_factory=dict)
    coverage: dict = field(default_factory=dict)
    slices: dict = field(default_factory=dict)
    worst: dict = field(default_factory=dict)

    def write(self, out_dir: str | Path) -> list[Path]:
        out = Path(out_dir)
        paths = [write_json(out / "summary.json", json_safe(self.summary))]
        for name, frame in self.per_example.items():
            paths.append(write_parquet(out / "per_example" / f"{name}.parquet", frame))
        if self.per_class is not None:
            paths.append(write_csv(out / "per_class.csv", self.per_class))
        for artifact, payload in (
            ("confusions.json", self.confusions),
            ("thresholds.json", self.thresholds),
            ("coverage.json", self.coverage),
            ("slices.json", self.slices),
            ("worst_examples.json", self.worst),
        ):
            if payload or artifact == "slices.json":
                paths.append(write_json(out / artifact, json_safe(payload)))
        paths += write_plots(self, out / "plots")
        return paths


def _label_list(
    task_labels: Sequence[str], candidates: Sequence[CandidatePredictions], extra: Sequence[str]
) -> list[str]:
    labels = set(map(str, task_labels)) | set(map(str, extra))
    for c in candidates:
        labels |= set(c.test["prediction"])
        if c.validation is not None:
            labels |= set(c.validation["prediction"])
    return sorted(labels)


def _margin_and_forced(
    predictions: pd.DataFrame, proba_labels: Sequence[str] | None, out_of_scope_label: str, labels: list[str]
) -> tuple[np.ndarray, np.ndarray] | None:
    """(in-scope margin, best in-scope label as an index into ``labels``, -1 when absent) per row of
    ``predictions``; None when its probabilities are missing, in another order, or without the
    out-of-scope label."""
    if proba_labels is None:
        return None
    order = sorted(map(str, proba_labels))
    proba = proba_matrix(predictions, order)
    found = None if proba is None else best_in_scope(proba, order, out_of_scope_label)
    if found is None:
        return None
    best, margin = found
    index = {label: i for i, label in enumerate(labels)}
    return margin, np.array([index.get(order[b], -1) for b in best], dtype=np.int64)


def evaluate_candidates(
    test: pd.DataFrame,
    candidates: Sequence[CandidatePredictions],
    *,
    task: str,
    config: EvaluateConfig | None = None,
    validation: pd.DataFrame | None = None,
    slice_columns: Sequence[str] = (),
    knowledge: Sequence[str] = (),
    encoder: str | None = None,
    seed: int = 0,
    skipped: Sequence[dict] = (),
    proba_labels: Sequence[str] | None = None,
    oos_neighbours: OutOfScopeNeighbours | None = None,
) -> Evaluation:
    """Score every candidate on ``test`` (records with ``label`` or ``target``), compare each
    with the baseline on shared ids, report slices and apply the gate.

    ``encoder`` turns on embedding similarity (generate); ``knowledge`` (texts) feeds the
    unsupported-facts check; ``validation`` (records) is where out-of-scope thresholds are chosen.
    ``proba_labels`` (classify): the training labels, whose sorted order is the candidates'
    probability columns; with the out-of-scope label among them, thresholds cut on the in-scope
    margin (:func:`_margin_and_forced`). ``oos_neighbours`` (fitted on the training rows) adds a
    second cut on the out-of-scope neighbour margin, chosen with the first under the same budget.
    """
    config = config or EvaluateConfig()
    level = config.confidence_level
    answer = answer_column(task)
    if answer not in test.columns:
        raise EvaluationError(f"the test set has no {answer!r} column (task {task})")
    test = test.copy()
    test["id"] = test["id"].astype(str)
    test_ids = set(test["id"])
    skipped = list(skipped)
    usable: list[CandidatePredictions] = []
    always = config.baseline or DEFAULT_BASELINE[task]  # the baseline stays in even when not listed
    if always.startswith(PREDICTIONS_PREFIX):
        always = INCUMBENT_NAME
    for c in candidates:
        if config.candidates is not None and c.name not in config.candidates and c.name != always:
            continue
        reason = check_ids(c, test_ids)
        if reason:
            skipped.append({"name": c.name, "reason": reason})
        else:
            usable.append(c)
    if config.candidates is not None:
        for name in config.candidates:
            if not any(c.name == name for c in candidates):
                skipped.append(
                    {"name": name, "reason": f"evaluate.candidates lists {name!r} but no stage wrote its predictions"}
                )
    resampler = Resampler(config.n_resamples, seed)
    primary = PRIMARY_METRIC[task]
    timings: dict[str, float] = {}
    started = time.perf_counter()

    labels: list[str] = []
    if task == "classify":
        seen = [*test["label"].astype(str), config.out_of_scope_label]
        if validation is not None and "label" in validation.columns:
            seen += validation["label"].astype(str).tolist()
        labels = _label_list(seen, usable, [])
    checker = FactChecker(knowledge) if task == "generate" else None
    val_truth = None
    if validation is not None and task == "classify":
        val_truth = validation.assign(id=validation["id"].astype(str))
    # the neighbour margin of every validation and test message, by id (one embedding pass for all candidates)
    neighbour_margin: dict[str, pd.Series] = {}
    if (
        oos_neighbours is not None
        and val_truth is not None
        and "input" in val_truth.columns
        and "input" in test.columns
        and (val_truth["label"].astype(str) == config.out_of_scope_label).any()
    ):
        for split, frame in (("validation", val_truth), ("test", test)):
            neighbour_margin[split] = pd.Series(oos_neighbours.margin(frame["input"].tolist()), index=frame["id"])

    scores: dict[str, Scores] = {}
    per_example: dict[str, pd.DataFrame] = {}
    thresholds: dict[str, dict] = {}
    coverage: dict[str, list] = {}
    per_class: list[pd.DataFrame] = []
    confusions: dict[str, dict] = {}
    worst: dict[str, list] = {}
    entries: dict[str, dict] = {}
    slice_frame = test.set_index("id")
    kept_slices = [c for c in slice_columns if c in test.columns]

    for c in usable:
        if task == "classify":
            threshold = None
            if val_truth is not None and c.validation is not None:
                known = c.validation[c.validation["id"].isin(set(val_truth["id"]))]
                val_scores = score_classification(known, val_truth, labels, None, config.out_of_scope_label)
                # out-of-scope rows in validation: bound the in-scope cost; otherwise the precision target
                by_budget = None
                if val_scores.oos_index is not None:
                    margin = _margin_and_forced(known, proba_labels, config.out_of_scope_label, labels)
                    own_score = val_scores.confidence if margin is None else margin[0]
                    budget = (
                        val_scores.y_true,
                        val_scores.y_pred,
                        val_scores.oos_index,
                        config.oos_max_in_scope_drop,
                        None if margin is None else margin[1],
                        config.oos_cost_confidence,
                    )
                    if "validation" in neighbour_margin:
                        by_budget = choose_oos_cuts(
                            own_score, neighbour_margin["validation"].reindex(val_scores.ids).to_numpy(), *budget
                        )
                    by_budget = by_budget or choose_oos_threshold(own_score, *budget)
                thresholds[c.name] = by_budget or choose_threshold(
                    val_scores.confidence, val_scores.correct, config.target_precision
                )
            else:
                thresholds[c.name] = {"threshold": None, "reached": False, "reason": "no validation predictions"}
            threshold = thresholds[c.name]["threshold"]
            cut_on = in_scope_pred = None
            if threshold is not None and thresholds[c.name].get("score") == "in_scope_margin":
                test_margin = _margin_and_forced(c.test, proba_labels, config.out_of_scope_label, labels)
                if test_margin is None:
                    raise EvaluationError(
                        f"{c.name}: its validation predictions have class probabilities with "
                        f"{config.out_of_scope_label!r} but its test predictions do not"
                    )
                cut_on = test_margin[0]
                if thresholds[c.name].get("answers_class_in_scope"):
                    in_scope_pred = test_margin[1]  # a class answer above the cut: the best in-scope label
            neighbour_cut = thresholds[c.name].get("neighbour_threshold")
            if threshold is not None and neighbour_cut is not None:
                # a message nearer the out-of-scope training rows than the cut is not answered
                own = pd.to_numeric(c.test["score"], errors="coerce").to_numpy(np.float64) if cut_on is None else cut_on
                near_oos = neighbour_margin["test"].reindex(c.test["id"].astype(str)).to_numpy() < neighbour_cut
                cut_on = np.where(near_oos, -np.inf, own)
            s = score_classification(c.test, test, labels, threshold, config.out_of_scope_label, cut_on, in_scope_pred)
            coverage[c.name] = coverage_curve(s.confidence, s.correct)
            per_class.append(_per_class(s, c.name))
            confusions[c.name] = _confusions(s, config.top_confusions)
            frame = pd.DataFrame(
                {
                    "id": s.ids,
                    "label": [labels[i] for i in s.y_true],
                    "prediction": [labels[i] for i in s.y_pred],
                    "confidence": s.confidence,
                    "correct": s.correct,
                }
            )
            if s.answered is not None:
                frame["answered"] = s.answered
                frame["final_prediction"] = [labels[i] for i in s.final_pred]
            # the worst mistakes are the confident ones
            wrong = (
                frame[~frame["correct"]]
                .sort_values("confidence", ascending=False, kind="stable")
                .head(config.worst_examples)
            )
            if "input" in test.columns:
                wrong = wrong.assign(input=truth_for(wrong["id"], test, "input").tolist())
            worst[c.name] = wrong.to_dict("records")
        else:
            s = score_generation_predictions(
                c.test, test, checker=checker, format_pattern=config.format_pattern, encoder=encoder
            )
            frame = pd.concat(
                [
                    pd.DataFrame(
                        {
                            "id": s.ids,
                            "target": truth_for(s.ids, test, "target").tolist(),
                            "prediction": c.test["prediction"].tolist(),
                        }
                    ),
                    s.frame,
                ],
                axis=1,
            )
            lowest = frame.sort_values("chrf", kind="stable").head(config.worst_examples)
            with_facts = (
                frame[frame["n_unsupported"] > 0].head(config.worst_examples)
                if "n_unsupported" in frame
                else frame.head(0)
            )
            add_input = (
                (lambda f: f.assign(input=truth_for(f["id"], test, "input").tolist()))
                if "input" in test
                else (lambda f: f)
            )
            worst[c.name] = {
                "lowest_chrf": add_input(lowest).to_dict("records"),
                "unsupported_facts": add_input(with_facts).to_dict("records"),
            }
        for col in kept_slices:
            frame[col] = slice_frame[col].reindex(frame["id"]).to_numpy()
        scores[c.name] = s
        per_example[c.name] = frame
        point, ci, _ = s.metrics(resampler(len(s.ids)), level)
        entries[c.name] = {
            "name": c.name,
            "kind": c.kind,
            "source": c.source,
            "expensive": c.expensive,
            "metrics": point,
            "ci95": ci,
            "n_eval": int(len(s.ids)),
            "n_test": int(len(test)),
            "covers_full_test": len(s.ids) == len(test),
        }
        if c.members:
            entries[c.name]["members"] = list(c.members)
        if task == "classify" and thresholds[c.name].get("threshold") is not None:
            entries[c.name]["out_of_scope_threshold"] = thresholds[c.name]["threshold"]
            entries[c.name]["out_of_scope_threshold_score"] = thresholds[c.name].get("score", "confidence")
            if thresholds[c.name].get("neighbour_threshold") is not None:
                entries[c.name]["out_of_scope_neighbour_threshold"] = thresholds[c.name]["neighbour_threshold"]
        if task == "classify":
            oos_metrics = out_of_scope_metrics(s)
            if oos_metrics is not None:
                entries[c.name]["out_of_scope"] = oos_metrics
    timings["score"] = time.perf_counter() - started

    # ---- the incumbent, the reference of the minimum-improvement rule, comparisons and the gate
    started = time.perf_counter()
    incumbent, note = pick_incumbent(task, entries, config.baseline)
    notes = [note] if note else []
    checks = {name: meaningful(task, entries[name], scores[name], primary) for name in entries}
    for name, check in checks.items():
        entries[name]["meaningful"] = check["meaningful"]
        entries[name]["needs_finetuning"] = entries[name]["kind"] == "finetuned"
        entries[name]["on_sample"] = entries[name]["n_eval"] < len(test)
    baseline, reference_note = comparison_reference(task, entries, incumbent, checks, primary)
    if reference_note:
        notes.append(reference_note)
    comparisons: dict[str, dict] = {}
    if baseline is not None:
        for name in entries:
            if name != baseline:
                result = compare_scores(scores[name], scores[baseline], COMPARED_METRICS[task], resampler, level, seed)
                if result is None:
                    skipped.append(
                        {"name": name, "reason": f"shares no scored test id with the baseline {baseline}; not compared"}
                    )
                else:
                    comparisons[name] = result
    pairwise = pairwise_primary(scores, list(entries), primary, resampler, level, seed)
    others = [n for n in entries if n != baseline]
    finetuned = [n for n in others if entries[n]["kind"] == "finetuned"]
    gate_candidate = best_by_primary(entries, finetuned or others, primary)
    # the alternative the fine-tune must not lose to: the best candidate that needs no fine-tuning
    # (cheap models and prompted LLMs alike), other than the reference itself
    cheap = best_by_primary(
        entries,
        [
            n
            for n in entries
            if entries[n]["kind"] != "finetuned" and n not in (gate_candidate, baseline) and checks[n]["meaningful"]
        ],
        primary,
    )
    vs_cheap = None
    if gate_candidate is not None and cheap is not None and config.gate_beats_cheap:
        vs_cheap = compare_scores(scores[gate_candidate], scores[cheap], (primary,), resampler, level, seed)
    gate = gate_decision(
        task,
        candidate=gate_candidate,
        baseline=baseline,
        vs_baseline=comparisons.get(gate_candidate or ""),
        cheap=cheap,
        vs_cheap=vs_cheap,
        threshold=config.threshold,
        require_beats_cheap=config.gate_beats_cheap,
        notes=notes,
    )
    head = None
    if (
        gate_candidate is not None
        and gate_candidate in comparisons
        and primary in comparisons[gate_candidate]["metrics"]
    ):
        cmp = comparisons[gate_candidate]["metrics"][primary]
        head = {
            "candidate": gate_candidate,
            "baseline": baseline,
            "metric": primary,
            "relative_improvement": cmp["relative_improvement"],
            "ci95": cmp["relative_ci"],
            "p_value": cmp["p_value"],
            "test": cmp["test"],
            "threshold": config.threshold,
            "difference": cmp["difference"],
            "difference_ci95": cmp["difference_ci"],
            "n": cmp["n"],
            "candidate_score": cmp["candidate"],
            "baseline_score": cmp["baseline"],
            "on_sample": cmp["n"] < len(test),
        }
    timings["compare"] = time.perf_counter() - started

    started = time.perf_counter()
    slices = slice_report(task, scores, test, slice_columns, baseline, config, resampler)
    timings["slices"] = time.perf_counter() - started

    summary = {
        "task": task,
        "primary_metric": primary,
        "ci_level": level,
        "n_resamples": config.n_resamples,
        "n_test": int(len(test)),
        "baseline": baseline,
        "incumbent": {"name": incumbent, "configured": config.baseline, **(checks.get(incumbent or "", {}))},
        "reference_note": reference_note,
        "threshold": config.threshold,
        "candidates": list(entries.values()),
        "pairwise": pairwise,
        "comparison": head,
        "comparisons": {name: {"baseline": baseline, **c} for name, c in comparisons.items()},
        "cheap_check": ({"candidate": gate_candidate, "cheap": cheap, **vs_cheap} if vs_cheap else None),
        "gate": gate,
        "slices_worse_than_baseline": slices.get("worse_than_baseline", []),
        "skipped": skipped,
        "lower_is_better": sorted(LOWER_IS_BETTER),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    if task == "classify":
        summary["out_of_scope"] = {
            "label": config.out_of_scope_label,
            "target_precision": config.target_precision,
            "max_in_scope_drop": config.oos_max_in_scope_drop,
            "cost_confidence": config.oos_cost_confidence,
            "test_rows": int((test["label"].astype(str) == config.out_of_scope_label).sum()),
        }
    return Evaluation(
        task,
        summary,
        scores,
        per_example,
        pd.concat(per_class, ignore_index=True) if per_class else None,
        confusions,
        thresholds,
        coverage,
        slices,
        worst,
    )


# ---------------------------------------------------------------------------------------------
# Slices


# ---------------------------------------------------------------------------------------------
# Robustness and over-fitting (need fitted candidates or extra predictions)


# ---------------------------------------------------------------------------------------------
# Plots


def write_plots(evaluation: Evaluation, out_dir: str | Path) -> list[Path]:
    """Primary metric with interval bars; accuracy-coverage curves; the best candidate's confusions."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    paths: list[Path] = []
    summary = evaluation.summary
    primary = summary["primary_metric"]
    entries = [
        e
        for e in summary["candidates"]
        if e["metrics"].get(primary) is not None and math.isfinite(e["metrics"][primary])
    ]
    if not entries:
        return paths

    def save(fig: Any, name: str) -> None:
        target = out / name
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(target)

    entries = sorted(entries, key=lambda e: e["metrics"][primary])
    colours = {"baseline": "#888888", "cheap": "#4c72b0", "finetuned": "#dd8452"}
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(entries) + 1.5))
    values = [e["metrics"][primary] for e in entries]
    lows = [v - (e["ci95"].get(primary) or (v, v))[0] for v, e in zip(values, entries)]
    highs = [(e["ci95"].get(primary) or (v, v))[1] - v for v, e in zip(values, entries)]
    ax.barh(
        [f"{e['name']} (n={e['n_eval']})" for e in entries],
        values,
        xerr=[lows, highs],
        capsize=4,
        color=[colours.get(e["kind"], "#55a868") for e in entries],
    )
    ax.set_xlabel(f"{primary} ({summary['ci_level']:.0%} interval)")
    ax.set_title(f"{primary} by candidate")
    save(fig, "primary_metric.png")

    if evaluation.task == "classify" and any(evaluation.coverage.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, curve in evaluation.coverage.items():
            if curve:
                ax.plot([p["coverage"] for p in curve], [p["accuracy"] for p in curve], marker="o", label=name)
        ax.set_xlabel("coverage (share of messages answered, least confident deferred)")
        ax.set_ylabel("accuracy of answered messages")
        ax.invert_xaxis()
        ax.legend(fontsize=8)
        save(fig, "coverage.png")

    if evaluation.task == "classify" and evaluation.confusions:
        best = max(entries, key=lambda e: e["metrics"][primary])["name"]
        conf = evaluation.confusions.get(best)
        if conf and conf["labels"]:
            matrix = np.asarray(conf["matrix"], dtype=np.float64)
            rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
            size = min(14, 3 + 0.15 * len(conf["labels"]))
            fig, ax = plt.subplots(figsize=(size, size))
            ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
            if len(conf["labels"]) <= 40:
                ax.set_xticks(range(len(conf["labels"])), conf["labels"], rotation=90, fontsize=7)
                ax.set_yticks(range(len(conf["labels"])), conf["labels"], fontsize=7)
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            ax.set_title(f"confusions of {best} (share of each true label)")
            safe = re.sub(r"[^\w.-]", "_", best)
            save(fig, f"confusion_{safe}.png")
    return paths

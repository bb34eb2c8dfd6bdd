"""The report's sections, one function each: every one reads its own artifacts and says plainly
when they are missing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from tunewise.core.layout import RunLayout
from tunewise.reporting.charts import candidates_chart, curves_charts, kind_colour, payback_chart, pyplot, to_svg
from tunewise.reporting.format import finite_or_none, fmt_interval, fmt_months, fmt_num, read_artifact, shorten

EXAMPLES_PER_ISSUE = 3


# ---------------------------------------------------------------------------------------------
# Sections


def more_data_section(run_dir: Path) -> dict:
    """``tunewise curve``'s learning curves: measured points, the fitted power law, what more data gives."""
    curve = read_artifact(run_dir / "curve" / "curve.json")
    if not curve or not curve.get("candidates"):
        return {"available": False}
    from tunewise.decision.curve import CurveFit  # on use: loads scipy

    plt = pyplot()
    ax = plt.subplots(figsize=(6.0, 3.4))[1]
    rows = []
    for name, entry in curve["candidates"].items():
        ns = np.asarray(entry["n"], dtype=float)
        line = ax.plot(ns, entry["test_accuracy"], "o", markersize=4, label=f"{name} (measured)")[0]
        fit = CurveFit(entry["fit"]["a"], entry["fit"]["b"], entry["fit"]["c"])
        grid = np.geomspace(ns.min(), ns.max() * 10, 60)
        ax.plot(grid, [1 - fit.error(n) for n in grid], "-", color=line.get_color(), alpha=0.7, linewidth=1)
        expected = entry.get("expected", {})
        rows.append(
            {
                "name": name,
                "measured": list(zip(entry["n"], entry["test_accuracy"])),
                "plateau": entry["fit"]["plateau_accuracy"],
                "plateau_ci95": entry.get("plateau_ci95"),
                "expected": {k: v for k, v in expected.items() if k != "1x"},
                "target": (entry.get("target") or {}).get("message"),
                "classes": [r["label"] for r in entry.get("per_class", [])[:5]],
            }
        )
    if curve.get("target") is not None:
        ax.axhline(curve["target"], color="#999999", linestyle="--", linewidth=1, label="target")
    ax.axvline(curve["n_train"], color="#333333", linewidth=0.8, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("training rows (log scale; line: current data)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8, loc="lower right")
    ax.spines[["top", "right"]].set_visible(False)
    return {
        "available": True,
        "chart": to_svg(ax.figure),
        "rows": rows,
        "n_train": curve["n_train"],
        "notes": curve.get("notes", []),
    }


def comparison_for(evaluation: dict, candidate: str | None) -> dict | None:
    """The comparison of ``candidate`` with the baseline on the primary metric, in summary.json's
    shape; evaluate's own headline comparison when the candidate is not named or not compared."""
    primary = evaluation.get("primary_metric")
    headline = evaluation.get("comparison")
    threshold = (headline or {}).get("threshold", (evaluation.get("gate") or {}).get("threshold"))
    if candidate and headline and headline.get("candidate") != candidate:
        entry = (evaluation.get("comparisons") or {}).get(candidate) or {}
        m = (entry.get("metrics") or {}).get(primary)
        if m:
            return {
                "candidate": candidate,
                "baseline": entry.get("baseline"),
                "metric": primary,
                "relative_improvement": m.get("relative_improvement"),
                "ci95": m.get("relative_ci"),
                "p_value": m.get("p_value"),
                "threshold": threshold,
                "test": m.get("test"),
                "difference": m.get("difference"),
                "difference_ci95": m.get("difference_ci"),
                "n": m.get("n"),
                "candidate_score": m.get("candidate"),
                "baseline_score": m.get("baseline"),
            }
    return dict(headline) if headline else None


def _n_eval(run_dir: Path, entry: dict, stage_metrics: dict) -> int | None:
    if entry.get("n_eval") is not None:
        return int(entry["n_eval"])
    known = (stage_metrics.get("candidates") or {}).get(entry.get("name"), {}).get("n_eval")
    if known is not None:
        return int(known)
    rows = run_dir / "evaluate" / "per_example" / f"{entry.get('name')}.parquet"
    if rows.exists():  # evaluate scored one row per example
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(rows).metadata.num_rows)
    return None


def prompting_notes(run_dir: Path) -> list[str]:
    """One line per prompted candidate: the prompt its search chose on validation, the gain over the
    plain prompt, and its label shortlist (from the baseline stage's summary)."""
    notes = []
    for entry in (read_artifact(RunLayout(run_dir).summary("baseline")) or {}).get("candidates") or []:
        info = entry.get("info") or {}
        search, shortlist, prompt = (
            info.get("prompt_search") or {},
            info.get("shortlist") or {},
            info.get("prompt") or {},
        )
        parts = []
        if search.get("searched"):
            chosen = search.get("chosen") or {}
            tried = ", ".join(
                f"{t.get('instruction')}/{t.get('demos')} {t.get('accuracy', 0):.3f}" for t in search.get("tried") or []
            )
            parts.append(
                f"prompt chosen on {search.get('rows')} {search.get('measured_on')} rows: "
                f"{chosen.get('instruction')} instruction, {chosen.get('demos')} demonstrations "
                f"(accuracy {search.get('chosen_accuracy', 0):.3f}, plain prompt {search.get('plain_accuracy', 0):.3f}, "
                f"gain {100 * (search.get('gain_over_plain') or 0):+.1f} points; tried {tried})"
            )
        if shortlist.get("shortlisted"):
            parts.append(
                f"scores the {shortlist.get('k')} most likely of {shortlist.get('n_labels')} labels per message "
                f"(recall {shortlist.get('recall')} on {shortlist.get('measured_on')})"
            )
        if prompt.get("dtype"):
            parts.append(f"weights in {prompt['dtype']}")
        if parts:
            notes.append(f"{entry.get('name')}: " + "; ".join(parts))
    return notes


def candidates_section(run_dir: Path, evaluation: dict, comparison: dict | None) -> dict:
    primary = evaluation.get("primary_metric")
    stage_metrics = (read_artifact(RunLayout(run_dir).stage_record("evaluate")) or {}).get("metrics") or {}
    candidates = []
    for entry in evaluation.get("candidates") or []:
        candidates.append({**entry, "n_eval": _n_eval(run_dir, entry, stage_metrics)})
    chosen = (comparison or {}).get("candidate")
    baseline = (comparison or {}).get("baseline") or evaluation.get("baseline")
    # Secondary metrics worth a column: the compared ones evaluate reports for the task.
    others = [
        m
        for m in (
            "macro_f1",
            "coverage",
            # out-of-scope rows in the test set: what the team trades (evaluation.thresholds)
            "in_scope_accuracy",
            "oos_recall",
            "oos_precision",
            "ece",
            "bleu",
            "rouge_l",
            "embedding_similarity",
            "unsupported_fact_rate",
            "format_compliance",
        )
        if any(m in c.get("metrics", {}) for c in candidates)
    ]
    rows = []

    def best_first(c: dict) -> float:
        value = finite_or_none(c.get("metrics", {}).get(primary))
        return -value if value is not None else math.inf

    for c in sorted(candidates, key=best_first):
        comp = (evaluation.get("comparisons") or {}).get(c["name"], {}).get("metrics", {}).get(primary) or {}
        rows.append(
            {
                "name": c["name"],
                "kind": c.get("kind"),
                "colour": kind_colour(c.get("kind")),
                "value": c.get("metrics", {}).get(primary),
                "ci": (c.get("ci95") or {}).get(primary),
                "n_eval": c.get("n_eval"),
                "others": [c.get("metrics", {}).get(m) for m in others],
                "vs_baseline": comp.get("relative_improvement"),
                "vs_baseline_ci": comp.get("relative_ci"),
                "p_value": comp.get("p_value"),
                "chosen": c["name"] == chosen,
                "is_baseline": c["name"] == baseline,
            }
        )
    return {
        "primary": primary,
        "candidates": candidates,
        "rows": rows,
        "other_metrics": others,
        "prompting": prompting_notes(run_dir),
        "chart": candidates_chart(candidates, primary, chosen, baseline),
        "gate": evaluation.get("gate") or {},
        "cheap_check": evaluation.get("cheap_check"),
        "skipped": evaluation.get("skipped") or [],
        "sample": evaluation.get("sample"),
        "n_test": evaluation.get("n_test"),
        "baseline": baseline,
    }


def quality_section(run_dir: Path) -> dict:
    """Rows before and after curation, issue counts per kind, a few example rows per kind."""
    ingest = read_artifact(run_dir / "ingest" / "summary.json") or {}
    curate = read_artifact(RunLayout(run_dir).summary("curate"))
    split = read_artifact(RunLayout(run_dir).summary("split")) or {}
    if curate is None:
        return {"available": False, "ingest": ingest, "split": split}
    counts = curate.get("issue_counts") or {}
    actions: dict[str, dict[str, int]] = {}
    examples: dict[str, list[dict]] = {}
    issues_file = RunLayout(run_dir).curate_issues
    if issues_file.exists():
        issues = pd.read_parquet(issues_file)
        if len(issues):
            for (kind, action), n in issues.groupby(["issue", "action"]).size().items():
                actions.setdefault(str(kind), {})[str(action)] = int(n)
            # Texts come from curate's own examples (the first rows of each kind, as the check saw
            # them), else from the cleaned rows (PII redacted); the raw input files are never read
            # here, so no text that curation redacted reaches a page people pass around.
            texts = {
                (kind, e.get("id")): e.get("input")
                for kind, rows in (curate.get("examples") or {}).items()
                for e in rows
            }
            cleaned_file = RunLayout(run_dir).curate_cleaned
            cleaned = (
                pd.read_parquet(cleaned_file, columns=["id", "input"]).astype({"id": str}).set_index("id")["input"]
                if cleaned_file.exists()
                else pd.Series(dtype=str)
            )
            for kind, group in issues.groupby("issue", sort=False):
                for row in group.head(EXAMPLES_PER_ISSUE).to_dict("records"):
                    rid = str(row.get("id"))
                    text = texts.get((kind, rid))
                    if text is None and rid in cleaned.index:
                        value = cleaned.loc[rid]
                        text = value.iloc[0] if isinstance(value, pd.Series) else value
                    line = row.get("line")
                    where = (
                        f"{Path(str(row.get('source') or '')).name}:{line}"
                        if line is not None and not pd.isna(line)
                        else ""
                    )
                    examples.setdefault(str(kind), []).append(
                        {
                            "id": rid,
                            "text": shorten(text) if text is not None else None,
                            "detail": shorten(row.get("detail")),
                            "action": row.get("action"),
                            "where": where,
                            "stage": row.get("stage"),
                        }
                    )
    kinds = sorted(set(counts) | set(actions), key=lambda k: (-int(counts.get(k, sum(actions.get(k, {}).values()))), k))
    table = [
        {
            "kind": k,
            "count": int(counts.get(k, sum(actions.get(k, {}).values()))),
            "actions": ", ".join(f"{a} {n}" for a, n in sorted(actions.get(k, {}).items())),
        }
        for k in kinds
    ]
    return {
        "available": True,
        "ingest": ingest,
        "curate": curate,
        "split": split,
        "table": table,
        "examples": {k: examples.get(k, []) for k in kinds},
        "action_counts": curate.get("action_counts") or {},
        "skipped_checks": curate.get("skipped") or {},
    }


def curves_section(run_dir: Path) -> list[dict]:
    out = []
    train_dir = run_dir / "train"
    if not train_dir.is_dir():
        return out
    for folder in sorted(p for p in train_dir.iterdir() if p.is_dir() and (p / "curves.json").exists()):
        curves = read_artifact(folder / "curves.json") or {}
        summary = read_artifact(folder / "train_summary.json") or {}
        out.append(
            {
                "name": folder.name,
                "charts": curves_charts(folder.name, curves),
                "monitor": curves.get("monitor"),
                "best_step": curves.get("best_step"),
                "best": curves.get("best"),
                "steps": summary.get("steps_done"),
                "stop": summary.get("stop_message") or summary.get("stop_reason"),
                "seconds": summary.get("seconds"),
                "method": summary.get("method"),
                "base_model": summary.get("base_model"),
                "trainable": summary.get("trainable_parameters"),
                "parameters": summary.get("parameters"),
            }
        )
    return out


def errors_section(run_dir: Path, task: str, focus: list[str]) -> dict:
    """Top confusions (classify) or worst generations (generate), the focus candidates first."""
    if task == "classify":
        confusions = read_artifact(RunLayout(run_dir).evaluation("confusions.json")) or {}
        worst = read_artifact(RunLayout(run_dir).evaluation("worst_examples.json")) or {}
        names = [n for n in focus if n in confusions] + [n for n in confusions if n not in focus]
        return {
            "kind": "confusions",
            "items": [
                {
                    "name": n,
                    "open": i == 0,
                    "top": confusions[n].get("top") or [],
                    "worst": [{**w, "input": shorten(w.get("input"))} for w in (worst.get(n) or [])[:5]],
                }
                for i, n in enumerate(names)
            ],
        }
    worst = read_artifact(RunLayout(run_dir).evaluation("worst_examples.json")) or {}
    names = [n for n in focus if n in worst] + [n for n in worst if n not in focus]
    items = []
    for i, n in enumerate(names):
        groups = worst[n] if isinstance(worst[n], dict) else {"lowest_chrf": worst[n]}
        items.append(
            {
                "name": n,
                "open": i == 0,
                "groups": [
                    {
                        "title": title.replace("_", " "),
                        "rows": [
                            {
                                "id": r.get("id"),
                                "input": shorten(r.get("input")),
                                "target": shorten(r.get("target")),
                                "prediction": shorten(r.get("prediction")),
                                "chrf": r.get("chrf"),
                                "unsupported": ", ".join(map(str, r.get("unsupported_facts") or []))
                                if isinstance(r.get("unsupported_facts"), (list, tuple))
                                else shorten(r.get("unsupported_facts"), 120),
                            }
                            for r in rows[:5]
                        ],
                    }
                    for title, rows in groups.items()
                    if rows
                ],
            }
        )
    return {"kind": "generations", "items": items}


def slices_section(run_dir: Path, primary: str, focus: list[str]) -> dict:
    slices = read_artifact(RunLayout(run_dir).evaluation("slices.json"))
    if not slices:
        return {"available": False}
    columns = []
    for column, per_candidate in (slices.get("columns") or {}).items():
        names = [n for n in focus if n in per_candidate] or list(per_candidate)[:1]
        for name in names:
            report = per_candidate[name]
            rows = []
            for value, entry in (report.get("slices") or {}).items():
                vs = entry.get("vs_baseline") or {}
                rows.append(
                    {
                        "value": value,
                        "n": entry.get("n"),
                        "computable": entry.get("computable"),
                        "score": (entry.get("metrics") or {}).get(primary),
                        "ci": (entry.get("ci95") or {}).get(primary),
                        "reason": entry.get("reason"),
                        "vs": (
                            f"{fmt_num(vs.get('difference'))} ({fmt_interval(vs.get('difference_ci'))})"
                            + (" worse beyond noise" if vs.get("worse_beyond_noise") else "")
                        )
                        if vs.get("computable")
                        else (vs.get("reason") or ""),
                    }
                )
            columns.append({"column": column, "candidate": name, "rows": rows, "gap": report.get("largest_gap")})
    return {"available": True, "columns": columns, "worse": slices.get("worse_than_baseline") or []}


def robustness_section(run_dir: Path) -> dict:
    data = read_artifact(RunLayout(run_dir).evaluation("robustness.json"))
    if not data:
        return {"available": False, "reason": "evaluate/robustness.json is missing"}
    if not data.get("enabled", True) or not data.get("candidates"):
        return {
            "available": False,
            "reason": "robustness check off (evaluate.robustness: false)"
            if not data.get("enabled", True)
            else "no candidate could be re-predicted",
            "skipped": data.get("skipped") or [],
        }
    kinds = list(data.get("perturbations") or [])
    rows = []
    for name, entry in data["candidates"].items():
        cells = []
        for k in kinds:
            p = (entry.get("perturbations") or {}).get(k) or {}
            cells.append({"drop": p.get("drop"), "ci": p.get("drop_ci"), "significant": bool(p.get("significant"))})
        rows.append({"name": name, "clean": entry.get("clean"), "cells": cells})
    examples = {
        k: [{"original": shorten(e.get("original"), 160), "perturbed": shorten(e.get("perturbed"), 160)} for e in v[:2]]
        for k, v in (data.get("examples") or {}).items()
    }
    return {
        "available": True,
        "n": data.get("n"),
        "metric": data.get("metric"),
        "kinds": kinds,
        "rows": rows,
        "skipped": data.get("skipped") or [],
        "examples": examples,
    }


def forgetting_section(run_dir: Path) -> dict:
    data = read_artifact(RunLayout(run_dir).evaluation("forgetting.json"))
    if not data:
        return {"status": "missing", "reason": "evaluate/forgetting.json is missing", "models": []}
    base = data.get("base") or {}
    models = []
    for name, m in (data.get("models") or {}).items():
        models.append(
            {
                "name": name,
                "kind": m.get("kind"),
                "base_accuracy": (m.get("base") or base).get("accuracy"),
                "tuned_accuracy": (m.get("tuned") or {}).get("accuracy"),
                "base_perplexity": (m.get("base") or base).get("perplexity"),
                "tuned_perplexity": (m.get("tuned") or {}).get("perplexity"),
                "forgot": m.get("forgot"),
                "flags": m.get("flags") or [],
            }
        )
    return {
        "status": data.get("status"),
        "reason": data.get("reason"),
        "models": models,
        "base_model": data.get("base_model"),
    }


def overfitting_section(run_dir: Path) -> dict:
    data = read_artifact(RunLayout(run_dir).evaluation("overfitting.json"))
    if not data:
        return {"available": False}
    rows = [
        {
            "name": n,
            "train": e["scores"].get("train"),
            "validation": e["scores"].get("validation"),
            "test": e["scores"].get("test"),
            "flags": ", ".join(e.get("flags") or []),
        }
        for n, e in (data.get("candidates") or {}).items()
    ]
    return {"available": True, "rows": rows, "rule": data.get("rule"), "metric": data.get("metric")}


def decision_section(decision_file: dict | None, config: dict) -> dict:
    """The verdict block's words and the ROI details; what is missing for a verdict."""
    roi_config = config.get("roi") or {}
    unset = [f"roi.{k}" for k in ("monthly_volume", "value_per_outcome_usd") if roi_config.get(k) in (None, "")]
    if decision_file is None:
        return {
            "present": False,
            "verdict": None,
            "recommended": None,
            "candidate": None,
            "reasons": ["no decision yet: run `tunewise decide`"],
            "roi": {},
            "missing": unset,
            "payback_text": "n/a",
            "chart": None,
        }
    roi = decision_file.get("roi") or {}
    decision = decision_file.get("decision") or {}
    # decide names the missing settings by field; the page names them as the config file does
    missing = [m if str(m).startswith("roi.") else f"roi.{m}" for m in roi.get("missing") or []]
    sensitivity = sorted(roi.get("sensitivity") or [], key=lambda s: -(finite_or_none(s.get("swing_months")) or 0))
    payback = fmt_months(roi.get("payback_months"))
    net = finite_or_none(roi.get("monthly_net_usd"))
    if finite_or_none(roi.get("payback_months")) is None and net is not None and net <= 0:
        payback = "never"  # the monthly net does not cover the running-cost change
    return {
        "present": True,
        "verdict": decision.get("verdict"),
        "payback_text": payback,
        "recommended": decision.get("recommended"),
        "candidate": decision.get("candidate") or decision.get("recommended"),
        "reasons": decision.get("reasons") or [],
        "roi": roi,
        "missing": missing,
        "headline": decision.get("headline"),
        "reference": decision.get("reference"),
        "incumbent": decision.get("incumbent"),
        "candidate_costs": roi.get("candidates") or {},
        "sensitivity": sensitivity,
        "chart": payback_chart(roi),
        "assumptions": roi.get("assumptions") or {},
        "cost_lines": roi.get("one_time_cost_lines") or [],
    }

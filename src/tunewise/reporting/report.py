"""The run report: one self-contained HTML page and the summary outside checks read.

Command: ``tunewise report [--config tunewise.yaml] [--run-id ID]`` (the ``report`` stage, last in
``tunewise run``). ``build_report(run_dir)`` reads the artifacts earlier stages left under
``runs/<id>/`` and writes

- ``report/index.html``: one file that opens without a network (no external script, font, image
  or style sheet; charts are inline SVG drawn by matplotlib with their text as paths), readable on
  a phone (charts shrink to the screen, wide tables scroll inside their own box);
- ``report/summary.json``: the shape the design fixes for outside checks (task, primary_metric, candidates,
  comparison, roi, decision, timings_s), built from evaluate/summary.json, decide/decision.json and
  each stage's ``_stage.json``.

``tunewise report --live LOG [--since 24h]`` (``build_report(live=...)``) adds a "Live traffic"
section from a server's request log (tunewise.monitoring.monitor's numbers, without embedding drift),
``summary.json["live"]`` and ``report/live.json``.

Every section reads its own artifacts and says plainly when they are missing, so a run without a
train or decide stage still gets a page: without ``decide/decision.json`` the verdict reads "no
decision yet: run `tunewise decide`" and the page still shows the quality comparison.
All user text goes through jinja2's autoescaping; chart text is escaped by matplotlib's SVG writer.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import platform
import re
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunewise import __version__
from tunewise.config.sections import MonitorConfig
from tunewise.core.artifacts import file_digest, json_safe, write_json, write_text
from tunewise.core.errors import TunewiseError
from tunewise.core.layout import RunLayout

# Stages whose _stage.json timing goes into summary.json, in pipeline order.
PIPELINE_STAGES = ("ingest", "curate", "split", "baseline", "train", "evaluate", "decide")
# Colours per candidate kind, shared by every chart and the page's legend.
KIND_COLOURS = {"baseline": "#8c8c8c", "cheap": "#4c72b0", "finetuned": "#dd8452"}
OTHER_COLOUR = "#55a868"
# Packages whose versions decide whether a run can be reproduced.
VERSIONED_PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "sentence-transformers",
    "scikit-learn",
    "numpy",
    "pandas",
    "scipy",
    "sacrebleu",
)
EXAMPLES_PER_ISSUE = 3
TEXT_CHARS = 300  # example texts are cut to this many characters


class ReportError(TunewiseError):
    """The report cannot be built (no evaluation to report on); the message says what to run."""

    hint = "run the stages the report reads first: `tunewise run` brings them all up to date"


# ---------------------------------------------------------------------------------------------
# Reading artifacts


def _json(path: Path) -> Any | None:
    """A JSON artifact, or None when it is missing or unreadable (a section then says so)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# ---------------------------------------------------------------------------------------------
# Number formatting (jinja filters too)


def fmt_num(value: Any, digits: int = 4) -> str:
    number = _finite(value)
    if number is None:
        return "n/a"
    if abs(number) >= 1000:
        return f"{number:,.0f}"
    return f"{number:.{digits}g}"


def fmt_pct(value: Any, signed: bool = True) -> str:
    number = _finite(value)
    if number is None:
        return "n/a"
    digits = 0 if abs(number) >= 1 else 1  # +1350% reads better than +1350.0%
    return f"{number * 100:+.{digits}f}%" if signed else f"{number * 100:.{digits}f}%"


def fmt_usd(value: Any) -> str:
    number = _finite(value)
    if number is None:
        return "n/a"
    sign = "-" if number < 0 else ""
    number = abs(number)
    return f"{sign}${number:,.0f}" if number >= 100 else f"{sign}${number:,.2f}"


def fmt_months(value: Any) -> str:
    number = _finite(value)
    if number is None:
        return "n/a"
    return f"{number:.2g} months" if number < 10 else f"{number:.0f} months"


def fmt_months_number(value: Any) -> str:
    number = _finite(value)
    return "n/a" if number is None else f"{number:.2g}" if number < 10 else f"{number:.0f}"


def fmt_interval(pair: Any, fmt=fmt_num) -> str:
    if not isinstance(pair, (list, tuple)) or len(pair) != 2 or any(_finite(v) is None for v in pair):
        return "n/a"
    return f"{fmt(pair[0])} to {fmt(pair[1])}"


def _short(text: Any, limit: int = TEXT_CHARS) -> str:
    text = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------
# Charts: matplotlib to inline SVG


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


# Text as paths: the page needs no font; a fixed salt keeps the SVG ids the same from run to run.
# Applied with rc_context around the page's charts, so other plots in the process keep their style.
CHART_STYLE = {"svg.fonttype": "path", "svg.hashsalt": "tunewise-report", "font.size": 10}


_chart_count = 0  # charts drawn for the page being built: their id prefixes


def _svg(fig: Any) -> str:
    """The figure as an <svg> element to inline: no XML header, ids made unique within the page,
    fixed width and height dropped so CSS can shrink it to the screen."""
    global _chart_count
    plt = _pyplot()
    buffer = io.StringIO()
    fig.savefig(
        buffer,
        format="svg",
        bbox_inches="tight",
        metadata={"Date": None, "Creator": None, "Format": None, "Type": None},
    )
    plt.close(fig)
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    _chart_count += 1
    prefix = f"c{_chart_count}-"
    # Several SVGs share ids (figure_1, glyph paths); an id referenced from another chart would
    # draw the wrong thing, so every id and every reference to one gets this chart's prefix.
    text = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', text)
    text = re.sub(r'(url\(#|href="#)([^)"]+)', lambda m: f"{m.group(1)}{prefix}{m.group(2)}", text)
    match = re.match(r'<svg[^>]*?\swidth="([\d.]+)pt"\s+height="([\d.]+)pt"', text)
    width_px = round(float(match.group(1)) * 4 / 3) if match else 640
    text = re.sub(r'^(<svg[^>]*?)\swidth="[\d.]+pt"\s+height="[\d.]+pt"', r"\1", text, count=1)
    text = text.replace("<svg", f'<svg role="img" style="max-width:{width_px}px"', 1)
    return text


def _kind_colour(kind: str | None) -> str:
    return KIND_COLOURS.get(kind or "", OTHER_COLOUR)


def candidates_chart(candidates: list[dict], metric: str, chosen: str | None, baseline: str | None) -> str | None:
    """Horizontal bars of the primary metric with ci95 error bars, one per candidate, coloured by kind."""
    rows = [c for c in candidates if _finite(c.get("metrics", {}).get(metric)) is not None]
    if not rows:
        return None
    plt = _pyplot()
    from matplotlib.patches import Patch

    rows = sorted(rows, key=lambda c: c["metrics"][metric])
    values = [c["metrics"][metric] for c in rows]
    lows, highs = [], []
    for c, v in zip(rows, values):
        low, high = (c.get("ci95", {}).get(metric) or [None, None])[:2]
        lows.append(max(0.0, v - low) if _finite(low) is not None else 0.0)
        highs.append(max(0.0, high - v) if _finite(high) is not None else 0.0)
    # Short tick labels keep the chart wide enough to read on a phone; n goes beside the value.
    labels = [c["name"] + (" *" if c["name"] == chosen else "") for c in rows]
    fig, ax = plt.subplots(figsize=(5.2, 0.42 * len(rows) + 1.1))
    ax.barh(
        range(len(rows)),
        values,
        xerr=[lows, highs],
        capsize=3,
        color=[_kind_colour(c.get("kind")) for c in rows],
        edgecolor="#333333",
        linewidth=[1.6 if c["name"] in (chosen, baseline) else 0.4 for c in rows],
    )
    ax.set_yticks(range(len(rows)), labels)
    ax.set_xlabel(f"{metric} on the test set, 95% interval" + (f"; * compared with {baseline}" if chosen else ""))
    for i, (c, v) in enumerate(zip(rows, values)):
        ax.text(v, i + 0.32, f" {v:.3g} (n={c.get('n_eval', '?')})", va="center", fontsize=8)
    kinds = list(dict.fromkeys(c.get("kind") or "other" for c in rows))
    ax.legend(handles=[Patch(color=_kind_colour(k), label=k) for k in kinds], loc="lower right", fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig)


def curves_charts(name: str, curves: dict) -> list[str]:
    """Training loss per step with validation loss, and the monitored validation metric: two
    panels drawn apart so a phone stacks them instead of shrinking both."""
    train = [p for p in curves.get("train", []) if _finite(p.get("loss")) is not None]
    validation = curves.get("validation", []) or []
    if not train and not validation:
        return []
    plt = _pyplot()
    monitor = curves.get("monitor")
    metric_names = [monitor] if monitor and monitor != "loss" else []
    metric_names += [k for k in ("accuracy", "macro_f1", "chrf") if k != monitor]
    metric = next((m for m in metric_names if any(_finite(p.get(m)) is not None for p in validation)), None)
    best = _finite(curves.get("best_step"))
    charts = []
    ax = plt.subplots(figsize=(4.2, 2.8))[1]
    if train:
        ax.plot(
            [p["step"] for p in train],
            [p["loss"] for p in train],
            color="#4c72b0",
            linewidth=0.8,
            alpha=0.7,
            label="training loss",
        )
    val_loss = [p for p in validation if _finite(p.get("loss")) is not None]
    if val_loss:
        ax.plot(
            [p["step"] for p in val_loss],
            [p["loss"] for p in val_loss],
            "o-",
            color="#dd8452",
            markersize=3,
            label="validation loss",
        )
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.set_title(f"{name}: loss", fontsize=10)
    charts.append(ax)
    if metric:
        points = [p for p in validation if _finite(p.get(metric)) is not None]
        right = plt.subplots(figsize=(4.2, 2.8))[1]
        right.plot([p["step"] for p in points], [p[metric] for p in points], "o-", color="#55a868", markersize=3)
        right.set_ylabel(f"validation {metric}")
        right.set_title(f"{name}: validation {metric}" + (" (monitored)" if metric == monitor else ""), fontsize=10)
        charts.append(right)
    out = []
    for a in charts:
        if best is not None:
            a.axvline(best, color="#999999", linestyle=":", linewidth=1)
        a.set_xlabel("optimiser step")
        a.spines[["top", "right"]].set_visible(False)
        out.append(_svg(a.figure))
    return out


def payback_chart(roi: dict) -> str | None:
    """Cumulative net money over the months with its interval band, break-even line and horizon."""
    points = [p for p in roi.get("cumulative") or [] if _finite(p.get("net_usd")) is not None]
    if len(points) < 2:
        return None
    plt = _pyplot()
    months = [p["month"] for p in points]
    net = [p["net_usd"] for p in points]
    low = [_finite(p.get("low")) if _finite(p.get("low")) is not None else p["net_usd"] for p in points]
    high = [_finite(p.get("high")) if _finite(p.get("high")) is not None else p["net_usd"] for p in points]
    fig, ax = plt.subplots(figsize=(5.6, 3.0))
    ax.fill_between(months, low, high, color="#dd8452", alpha=0.25, linewidth=0, label="95% interval")
    ax.plot(months, net, "o-", color="#dd8452", markersize=3, label="cumulative net: benefit minus costs")
    ax.axhline(0, color="#333333", linewidth=0.8)
    payback = _finite(roi.get("payback_months"))
    if payback is not None and payback <= months[-1]:
        ax.axvline(payback, color="#55a868", linestyle="--", linewidth=1, label=f"payback {payback:.2g} months")
    from matplotlib.ticker import FuncFormatter

    ax.set_xlabel("months after go-live")
    ax.set_ylabel("cumulative net")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"-${-v:,.0f}" if v < 0 else f"${v:,.0f}"))
    ax.legend(fontsize=7, loc="upper left")
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig)


# ---------------------------------------------------------------------------------------------
# Sections


def more_data_section(run_dir: Path) -> dict:
    """``tunewise curve``'s learning curves: measured points, the fitted power law, what more data gives."""
    curve = _json(run_dir / "curve" / "curve.json")
    if not curve or not curve.get("candidates"):
        return {"available": False}
    from tunewise.decision.curve import CurveFit  # on use: loads scipy

    plt = _pyplot()
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
        "chart": _svg(ax.figure),
        "rows": rows,
        "n_train": curve["n_train"],
        "notes": curve.get("notes", []),
    }


def _comparison_for(evaluation: dict, candidate: str | None) -> dict | None:
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
    for entry in (_json(RunLayout(run_dir).summary("baseline")) or {}).get("candidates") or []:
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
    stage_metrics = (_json(RunLayout(run_dir).stage_record("evaluate")) or {}).get("metrics") or {}
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
        value = _finite(c.get("metrics", {}).get(primary))
        return -value if value is not None else math.inf

    for c in sorted(candidates, key=best_first):
        comp = (evaluation.get("comparisons") or {}).get(c["name"], {}).get("metrics", {}).get(primary) or {}
        rows.append(
            {
                "name": c["name"],
                "kind": c.get("kind"),
                "colour": _kind_colour(c.get("kind")),
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
    ingest = _json(run_dir / "ingest" / "summary.json") or {}
    curate = _json(RunLayout(run_dir).summary("curate"))
    split = _json(RunLayout(run_dir).summary("split")) or {}
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
                            "text": _short(text) if text is not None else None,
                            "detail": _short(row.get("detail")),
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
        curves = _json(folder / "curves.json") or {}
        summary = _json(folder / "train_summary.json") or {}
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
        confusions = _json(RunLayout(run_dir).evaluation("confusions.json")) or {}
        worst = _json(RunLayout(run_dir).evaluation("worst_examples.json")) or {}
        names = [n for n in focus if n in confusions] + [n for n in confusions if n not in focus]
        return {
            "kind": "confusions",
            "items": [
                {
                    "name": n,
                    "open": i == 0,
                    "top": confusions[n].get("top") or [],
                    "worst": [{**w, "input": _short(w.get("input"))} for w in (worst.get(n) or [])[:5]],
                }
                for i, n in enumerate(names)
            ],
        }
    worst = _json(RunLayout(run_dir).evaluation("worst_examples.json")) or {}
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
                                "input": _short(r.get("input")),
                                "target": _short(r.get("target")),
                                "prediction": _short(r.get("prediction")),
                                "chrf": r.get("chrf"),
                                "unsupported": ", ".join(map(str, r.get("unsupported_facts") or []))
                                if isinstance(r.get("unsupported_facts"), (list, tuple))
                                else _short(r.get("unsupported_facts"), 120),
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
    slices = _json(RunLayout(run_dir).evaluation("slices.json"))
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
    data = _json(RunLayout(run_dir).evaluation("robustness.json"))
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
        k: [{"original": _short(e.get("original"), 160), "perturbed": _short(e.get("perturbed"), 160)} for e in v[:2]]
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
    data = _json(RunLayout(run_dir).evaluation("forgetting.json"))
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
    data = _json(RunLayout(run_dir).evaluation("overfitting.json"))
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
    sensitivity = sorted(roi.get("sensitivity") or [], key=lambda s: -(_finite(s.get("swing_months")) or 0))
    payback = fmt_months(roi.get("payback_months"))
    net = _finite(roi.get("monthly_net_usd"))
    if _finite(roi.get("payback_months")) is None and net is not None and net <= 0:
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


def _data_files(run_dir: Path, config: dict, base_dir: Path | None) -> list[dict]:
    """The input data files with their sha256 now; ingest/summary.json may name them, else the config."""
    ingest = _json(run_dir / "ingest" / "summary.json") or {}
    named = ingest.get("files") or ingest.get("input_files")
    data = config.get("data") or {}
    if isinstance(named, dict):
        entries = list(named.items())
    elif isinstance(named, list):
        entries = [(str(i), p) for i, p in enumerate(named)]
    else:
        entries = [(role, data.get(role)) for role in ("train", "test") if data.get(role)]
    if base_dir is None:  # run_dir is <project>/<runs_dir>/<run-id>
        runs_dir = Path(str(config.get("runs_dir") or "runs"))
        up = len(runs_dir.parts)
        base_dir = run_dir.parent if runs_dir.is_absolute() or up >= len(run_dir.parents) else run_dir.parents[up]
    out = []
    for role, name in entries:
        path = name.get("path") if isinstance(name, dict) else name
        if not path:
            continue
        resolved = Path(path) if Path(path).is_absolute() else base_dir / path
        recorded = name.get("sha256") if isinstance(name, dict) else None
        if resolved.is_file():
            digest = file_digest(resolved)
            out.append(
                {
                    "role": role,
                    "path": str(resolved),
                    "sha256": digest,
                    "bytes": resolved.stat().st_size,
                    "note": "" if recorded in (None, digest) else f"differs from ingest's {recorded}",
                }
            )
        else:
            out.append(
                {
                    "role": role,
                    "path": str(resolved),
                    "sha256": recorded,
                    "bytes": None,
                    "note": "not found when the report was built",
                }
            )
    kb = data.get("knowledge_base")
    if kb:
        folder = Path(kb) if Path(kb).is_absolute() else base_dir / kb
        files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
        if files:  # one digest over names and contents: changes when any file does
            h = hashlib.sha256()
            for p in files:
                h.update(str(p.relative_to(folder)).encode() + b"\0" + file_digest(p).encode())
            out.append(
                {
                    "role": "knowledge_base",
                    "path": str(folder),
                    "sha256": h.hexdigest(),
                    "bytes": sum(p.stat().st_size for p in files),
                    "note": f"{len(files)} files, digest of digests",
                }
            )
    return out


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def reproducibility_section(run_dir: Path, config: dict, base_dir: Path | None) -> dict:
    stages = []
    for name in PIPELINE_STAGES + ("report",):
        marker = _json(run_dir / name / "_stage.json")
        if marker:
            stages.append(
                {
                    "name": name,
                    "key": marker.get("key"),
                    "finished": marker.get("finished"),
                    "seconds": marker.get("seconds"),
                }
            )
    versions = {"tunewise": __version__, "python": platform.python_version()}
    versions.update({p: _version(p) for p in VERSIONED_PACKAGES})
    models = config.get("models") or {}
    return {
        "config_json": json.dumps(config, indent=2, ensure_ascii=False),
        "versions": versions,
        "seed": config.get("seed"),
        "split_seed": (config.get("split") or {}).get("seed"),
        "models": {k: models.get(k) for k in ("llm", "encoder")},
        "files": _data_files(run_dir, config, base_dir),
        "stages": stages,
        "platform": f"{platform.system()} {platform.machine()}",
    }


def timings(run_dir: Path) -> dict[str, float]:
    out = {}
    for name in PIPELINE_STAGES:
        marker = _json(run_dir / name / "_stage.json")
        if marker and _finite(marker.get("seconds")) is not None:
            out[name] = float(marker["seconds"])
    return out


# ---------------------------------------------------------------------------------------------
# Live traffic: the monitor's view of a server's request log (``build_report(live=...)``)

LIVE_MAX_HISTORY = 12  # arm-weight changes shown on the page (newest last)


def _mask_url(url: str) -> str:
    """The URL with its password hidden (Store.safe_url's rule), also when SQLAlchemy cannot parse it."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparseable URL may still hold a password
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def live_store_url(live: str | Path) -> str:
    """The request log's SQLAlchemy URL: a URL as given, or a SQLite file path as ``sqlite:///<abs path>``.

    A SQLite file must exist: opening a missing one would create an empty log and report nothing.
    """
    text = str(live).strip()
    if not text:
        raise ReportError("--live: give the server's request log (a SQLite .db file or a SQLAlchemy URL)")
    if "://" not in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise ReportError(
                f"live request log {path}: no such file (the server's log is "
                "runs/<id>/serve/requests.db unless serve.store_url names another)"
            )
        return f"sqlite:///{path.resolve()}"
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(text)
    except Exception:  # noqa: BLE001
        raise ReportError(
            f"live request log {_mask_url(text)}: not a SQLAlchemy URL "
            "(e.g. sqlite:////abs/requests.db or postgresql+psycopg://user@host/db)"
        ) from None
    if (
        parsed.get_backend_name() == "sqlite"
        and parsed.database not in (None, "", ":memory:")
        and not Path(parsed.database).is_file()
    ):
        raise ReportError(f"live request log {_mask_url(text)}: no such file {parsed.database}")
    return text


def _monitor_config(config: dict) -> tuple[Any, str | None]:
    """The run's ``monitor:`` settings; the defaults (and a note) when config.json's section does not validate."""
    from pydantic import ValidationError

    try:
        return MonitorConfig.model_validate(config.get("monitor") or {}), None
    except ValidationError as exc:
        return (
            MonitorConfig(),
            f"config.json's monitor section is not valid here ({exc.error_count()} error(s)); default settings used",
        )


def _utc(ts: Any) -> str:
    number = _finite(ts)
    return "n/a" if number is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(number))


def _read_live(
    url: str, run_dir: Path, config: Any, since: str | None, task: str
) -> tuple[dict, list[dict], pd.DataFrame]:
    """The monitor report (no embedding drift), the arm-weight history and (ts, arm, candidate) per request."""
    from sqlalchemy.exc import SQLAlchemyError

    from tunewise.monitoring.monitor import monitor_run, parse_since  # on use: loads scipy
    from tunewise.monitoring.store import Store, StoreError  # on use: loads sqlalchemy

    try:
        parse_since(since if since is not None else config.since)
    except ValueError as exc:
        raise ReportError(f"live window: {exc}") from None
    safe = _mask_url(url)
    try:
        report = monitor_run(url, run_dir, config, since=since, encoder=None, task=task)
        store = Store(url)
        try:
            history = store.arm_history()
            timeline = store.requests_frame(report["window"]["since"])[["ts", "arm", "candidate"]]
        finally:
            store.close()
    except StoreError as exc:  # its message already names the URL without the password
        raise ReportError(f"cannot read the live request log: {exc}") from None
    except (SQLAlchemyError, OSError) as exc:  # a corrupt file, a refused connection, a missing table
        first_line = (str(exc).splitlines() or [""])[0]
        raise ReportError(f"cannot read the live request log {safe}: {type(exc).__name__}: {first_line}") from None
    last = report["window"].get("last")
    if last is not None:  # rows logged after the monitor's read are not in its numbers either
        timeline = timeline[timeline["ts"] <= last]
    return report, history, timeline


def live_metric_chart(rows: list[dict], metric: str, offline_metric: str | None, level: float) -> str | None:
    """Online metric per arm with its interval; the candidate's offline (evaluate) score as a hollow diamond."""
    rows = [r for r in rows if _finite(r.get("online_metric")) is not None]
    if not rows:
        return None
    plt = _pyplot()
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(5.2, 0.55 * len(rows) + 1.3))
    for i, r in enumerate(rows):
        value = r["online_metric"]
        low, high = (r.get("online_ci") or [value, value])[:2]
        ax.errorbar(
            [value],
            [i],
            xerr=[[max(0.0, value - low)], [max(0.0, high - value)]],
            fmt="o",
            capsize=4,
            color=r.get("colour") or OTHER_COLOUR,
            markersize=7,
        )
        ax.text(value, i + 0.28, f"{value:.3g} (n={r.get('feedback_n')})", ha="center", fontsize=8)
        if _finite(r.get("offline")) is not None:
            ax.plot([r["offline"]], [i], "D", mfc="none", mec="#222222", markersize=8)
    ax.set_yticks(range(len(rows)), [f"{r['arm']}\n{r.get('candidate') or '?'}" for r in rows])
    ax.set_ylim(-0.6, len(rows) - 0.3)
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel(f"online {metric.replace('_', ' ')}, {level:.0%} interval")
    handles = [Line2D([], [], marker="o", color="#555555", linestyle="none", label="online")]
    if offline_metric and any(_finite(r.get("offline")) is not None for r in rows):
        handles.append(
            Line2D(
                [],
                [],
                marker="D",
                mfc="none",
                mec="#222222",
                linestyle="none",
                label=f"offline {offline_metric} (evaluate)",
            )
        )
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig)


def live_traffic_chart(timeline: pd.DataFrame, colours: dict[str, str] | None = None) -> str | None:
    """Requests per arm over the window, binned; None when the window has no length to bin."""
    if len(timeline) < 2:
        return None
    ts = timeline["ts"].astype(float).to_numpy()
    start, span = float(ts.min()), float(ts.max() - ts.min())
    if span <= 0:
        return None
    unit, seconds = (
        ("minutes", 60.0) if span <= 3 * 3600 else ("hours", 3600.0) if span <= 4 * 86400 else ("days", 86400.0)
    )
    edges = np.linspace(0, span / seconds, min(30, max(6, int(math.sqrt(len(ts))))) + 1)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 2.6))
    for arm in sorted(timeline["arm"].astype(str).unique()):
        mine = (timeline.loc[timeline["arm"].astype(str) == arm, "ts"].astype(float).to_numpy() - start) / seconds
        counts, _ = np.histogram(mine, edges)
        ax.stairs(counts, edges, label=arm, linewidth=1.4, color=(colours or {}).get(arm))
    ax.set_xlabel(f"{unit} since {_utc(start)}")
    ax.set_ylabel("requests per bin")
    ax.legend(fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig)


def live_section(
    live: str, run_dir: Path, config: dict, evaluation: dict, task: str, since: str | None = None
) -> tuple[dict, dict]:
    """The "Live traffic" section's content and the full monitor report (report/live.json)."""
    url = live_store_url(live)
    monitor_config, config_note = _monitor_config(config)
    report, history, timeline = _read_live(url, run_dir, monitor_config, since, task)
    weights = report.get("weights") or {}
    offline_by_name = {c.get("name"): c for c in evaluation.get("candidates") or []}
    metric = report.get("online_metric")
    # the offline marker only where it is the same measure: label accuracy online vs test accuracy offline
    offline_metric = "accuracy" if metric == "accuracy" else None
    arms = report.get("arms") or {}
    rows = []
    for arm in sorted(set(arms) | set(weights), key=lambda a: (a != report.get("incumbent"), a)):
        entry = arms.get(arm) or {}
        candidate = (weights.get(arm) or {}).get("candidate")
        if candidate is None and len(timeline):
            served = timeline.loc[timeline["arm"] == arm, "candidate"].dropna()
            candidate = served.mode().iloc[0] if len(served) else None
        offline = offline_by_name.get(candidate) or {}
        verdict = (report.get("verdicts") or {}).get(arm)
        needed = None
        if verdict and verdict.get("verdict") == "keep testing":
            more = (verdict.get("more_needed") or {}).get("candidate")
            needed = {"labelled": more, "requests": verdict.get("requests_needed")}
        rows.append(
            {
                "arm": arm,
                "candidate": candidate,
                "kind": offline.get("kind"),
                "weight": (weights.get(arm) or {}).get("weight"),
                "incumbent": arm == report.get("incumbent"),
                "assigned": entry.get("requests_assigned", 0),
                "answered": entry.get("requests_answered", 0),
                "errors": entry.get("failed", 0),
                "error_rate": entry.get("error_rate"),
                "p50": entry.get("latency_p50_ms"),
                "p99": entry.get("latency_p99_ms"),
                "feedback_n": entry.get("feedback_n", 0),
                "online_metric": entry.get("online_metric"),
                "online_ci": entry.get("online_ci"),
                "offline": (offline.get("metrics") or {}).get(offline_metric) if offline_metric else None,
                "verdict": verdict,
                "needed": needed,
            }
        )
    # one colour per arm in both charts: its candidate's kind colour, unless two arms would share one
    colours = [_kind_colour(r["kind"]) if r["kind"] else None for r in rows]
    if None in colours or len(set(colours)) < len(colours):
        colours = [f"C{i % 10}" for i in range(len(rows))]
    for r, colour in zip(rows, colours):
        r["colour"] = colour
    drift_rows = []
    drift = report.get("drift") or {}
    names = {
        "predicted_labels": "predicted labels vs training labels",
        "feedback_labels": "feedback labels vs training labels",
        "reply_length": "reply length vs training replies",
    }
    for key, label in names.items():
        if key in drift:
            entry = drift[key]
            drift_rows.append(
                {
                    "what": label,
                    "psi": entry.get("psi"),
                    "level": entry.get("level"),
                    "n": entry.get("n_recent"),
                    "reason": entry.get("reason"),
                }
            )
    level = monitor_config.confidence_level
    n_requests = report["window"]["requests"]
    section = {
        "present": True,
        "store": _mask_url(url),
        "window": report["window"],
        "since_text": _utc(report["window"].get("since"))
        if report["window"].get("since") is not None
        else "the start of the log",
        "first": _utc(report["window"].get("first")),
        "last": _utc(report["window"].get("last")),
        "requests": n_requests,
        "empty": n_requests == 0,
        "metric": metric,
        "level": level,
        "incumbent": report.get("incumbent"),
        "rows": rows,
        "weights": weights,
        "history": [
            {"when": _utc(h.get("ts")), "weights": h.get("weights") or {}, "reason": h.get("reason")}
            for h in history[-LIVE_MAX_HISTORY:]
        ],
        "history_total": len(history),
        "verdict_note": report.get("verdict_note"),
        "drift_rows": drift_rows,
        "drift_note": drift.get("reason") if drift.get("status") == "not computed" else None,
        "budgets": report.get("budgets") or [],
        "actions": report.get("actions") or [],
        "needs_action": bool(report.get("needs_action")),
        "config_note": config_note,
        "offline_metric": offline_metric,
        "budget_limits": {
            "p50": monitor_config.latency_p50_budget_ms,
            "p99": monitor_config.latency_p99_budget_ms,
            "error_rate": monitor_config.error_rate_budget,
        },
        "metric_chart": None,
        "traffic_chart": None,
    }
    if n_requests:  # an empty log gets words, not empty axes
        section["metric_chart"] = live_metric_chart(rows, metric or "metric", offline_metric, level)
        section["traffic_chart"] = live_traffic_chart(timeline, {r["arm"]: r["colour"] for r in rows})
    full = {
        **report,
        "store": section["store"],
        "arm_history": history,
        "embedding_drift_note": "not computed for the report page (too slow for a page build); "
        "`tunewise monitor` computes it",
    }
    return section, json_safe(full)


def live_summary(section: dict, report: dict) -> dict:
    """summary.json's ``live`` entry: per arm requests, errors, online metric with interval, verdict; actions."""
    arms = {}
    for r in section["rows"]:
        verdict = r.get("verdict") or {}
        arms[r["arm"]] = {
            "candidate": r["candidate"],
            "weight": r["weight"],
            "requests": r["assigned"],
            "answered": r["answered"],
            "errors": r["errors"],
            "error_rate": r["error_rate"],
            "feedback_n": r["feedback_n"],
            "online_metric": r["online_metric"],
            "online_ci": r["online_ci"],
            "offline_metric": r["offline"],
            "verdict": verdict.get("verdict"),
            "reason": verdict.get("reason"),
        }
    return json_safe(
        {
            "store": section["store"],
            "window": report.get("window"),
            "metric": section["metric"],
            "incumbent": section["incumbent"],
            "arms": arms,
            "actions": section["actions"],
            "needs_action": section["needs_action"],
        }
    )


# ---------------------------------------------------------------------------------------------
# The whole report


def build_summary(
    evaluation: dict, candidates: list[dict], comparison: dict | None, decision: dict, stage_timings: dict[str, float]
) -> dict:
    roi = decision.get("roi") or {}
    return json_safe(
        {
            "task": evaluation.get("task"),
            "primary_metric": evaluation.get("primary_metric"),
            "candidates": [
                {
                    "name": c.get("name"),
                    "kind": c.get("kind"),
                    "metrics": c.get("metrics") or {},
                    "ci95": c.get("ci95") or {},
                    "n_eval": c.get("n_eval"),
                    "n_test": c.get("n_test"),
                    "source": c.get("source"),
                }
                for c in candidates
            ],
            "comparison": comparison,
            "roi": {
                "one_time_cost_usd": roi.get("one_time_cost_usd"),
                "monthly_benefit_usd": roi.get("monthly_benefit_usd"),
                "payback_months": roi.get("payback_months"),
                "monthly_benefit_ci95": roi.get("monthly_benefit_ci95"),
                "payback_months_ci95": roi.get("payback_months_ci95"),
                "monthly_net_usd": roi.get("monthly_net_usd"),
                "horizon_months": roi.get("horizon_months"),
                "missing": decision.get("missing") or [],
            },
            "decision": {
                "verdict": decision.get("verdict"),
                "recommended": decision.get("recommended"),
                "reasons": decision.get("reasons") or [],
                "candidate": decision.get("candidate"),
                "headline": decision.get("headline"),
                "reference": decision.get("reference"),
                "incumbent": decision.get("incumbent"),
                "decided": decision.get("present", False),
            },
            "gate": evaluation.get("gate"),
            "timings_s": stage_timings,
        }
    )


def build_report(
    run_dir: str | Path, base_dir: str | Path | None = None, live: str | None = None, live_since: str | None = None
) -> dict[str, Path]:
    """Write ``report/index.html`` and ``report/summary.json`` for the run in ``run_dir``.

    ``base_dir`` is the project folder the config's data paths are relative to (the stage passes
    it); by default it is inferred from ``run_dir`` (``<project>/<runs_dir>/<run-id>``).
    ``live`` (a server's request log: SQLAlchemy URL or SQLite file) adds the "Live traffic"
    section, ``summary.json["live"]`` and ``report/live.json``; ``live_since`` is its window
    (30m, 24h, 7d, an ISO date; default ``monitor.since``, else the whole log).
    Returns the paths written, by name.
    """
    global _chart_count
    started = time.perf_counter()
    _chart_count = 0  # chart ids start at c1 on every page
    run_dir = Path(run_dir)
    evaluation = _json(RunLayout(run_dir).summary("evaluate"))
    if not evaluation:
        raise ReportError(f"{run_dir / 'evaluate' / 'summary.json'} is missing; run `tunewise evaluate` first")
    config = _json(run_dir / "config.json") or {}
    decision_file = _json(run_dir / "decide" / "decision.json")
    if decision_file is None and (run_dir / "decide" / "decision.json").exists():
        raise ReportError(f"{run_dir / 'decide' / 'decision.json'} is not valid JSON; re-run `tunewise decide`")
    task = evaluation.get("task") or config.get("task") or "classify"
    primary = evaluation.get("primary_metric")
    stage_timings = timings(run_dir)
    with _pyplot().rc_context(CHART_STYLE):
        # the live log first: a bad --live fails before any chart is drawn
        live_page, live_report = (
            live_section(live, run_dir, config, evaluation, task, live_since)
            if live is not None
            else ({"present": False}, None)
        )
        decision = decision_section(decision_file, config)
        comparison = _comparison_for(evaluation, decision.get("candidate"))
        candidates = candidates_section(run_dir, evaluation, comparison)
        focus = [n for n in ((comparison or {}).get("candidate"), (comparison or {}).get("baseline")) if n]
        page = _page(run_dir, config, evaluation, decision, comparison, candidates, task, primary, focus, base_dir)
    page["timings"] = stage_timings
    page["live"] = live_page
    out = run_dir / "report"
    html = render(page)
    stage_timings = {**stage_timings, "report": round(time.perf_counter() - started, 3)}
    summary = build_summary(evaluation, candidates["candidates"], comparison, decision, stage_timings)
    written = {}
    if live_report is not None:
        summary["live"] = live_summary(live_page, live_report)
        written["live"] = write_json(out / "live.json", live_report)
    else:
        # a live.json left by an earlier `report --live` would describe a page that no longer shows it
        (out / "live.json").unlink(missing_ok=True)
    written.update(html=write_text(out / "index.html", html), summary=write_json(out / "summary.json", summary))
    return written


def _page(
    run_dir: Path,
    config: dict,
    evaluation: dict,
    decision: dict,
    comparison: dict | None,
    candidates: dict,
    task: str,
    primary: str | None,
    focus: list[str],
    base_dir: str | Path | None,
) -> dict:
    """Everything the template shows, section by section (the charts are drawn here)."""
    return {
        "run_id": run_dir.name,
        "run_dir": str(run_dir),
        "task": task,
        "primary": primary,
        "built": time.strftime("%Y-%m-%d %H:%M:%S"),
        "description": (config.get("data") or {}).get("task_description"),
        "decision": decision,
        "comparison": comparison,
        "candidates": candidates,
        "quality": quality_section(run_dir),
        "curves": curves_section(run_dir),
        "errors": errors_section(run_dir, task, focus),
        "slices": slices_section(run_dir, primary, focus),
        "robustness": robustness_section(run_dir),
        "forgetting": forgetting_section(run_dir),
        "overfitting": overfitting_section(run_dir),
        "more_data": more_data_section(run_dir),
        "reproducibility": reproducibility_section(run_dir, config, Path(base_dir) if base_dir else None),
        "kind_colours": KIND_COLOURS,
    }


def render(page: dict) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("tunewise", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        num=fmt_num,
        pct=fmt_pct,
        usd=fmt_usd,
        months=fmt_months,
        interval=fmt_interval,
        pct_interval=lambda pair: fmt_interval(pair, fmt_pct),
        usd_interval=lambda pair: fmt_interval(pair, fmt_usd),
        months_interval=lambda pair: fmt_interval(pair, fmt_months_number),
    )
    return env.get_template("report.html.j2").render(**page)

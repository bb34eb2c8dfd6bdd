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

import time
from pathlib import Path

from tunewise.core.artifacts import json_safe, write_json, write_text
from tunewise.core.layout import RunLayout
from tunewise.reporting.charts import CHART_STYLE, KIND_COLOURS, pyplot, reset_chart_ids
from tunewise.reporting.errors import ReportError
from tunewise.reporting.format import (
    fmt_interval,
    fmt_months,
    fmt_months_number,
    fmt_num,
    fmt_pct,
    fmt_usd,
    read_artifact,
)
from tunewise.reporting.live import live_section, live_summary
from tunewise.reporting.reproducibility import reproducibility_section, timings
from tunewise.reporting.sections import (
    candidates_section,
    comparison_for,
    curves_section,
    decision_section,
    errors_section,
    forgetting_section,
    more_data_section,
    overfitting_section,
    quality_section,
    robustness_section,
    slices_section,
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
    started = time.perf_counter()
    reset_chart_ids()  # chart ids start at c1 on every page
    run_dir = Path(run_dir)
    evaluation = read_artifact(RunLayout(run_dir).summary("evaluate"))
    if not evaluation:
        raise ReportError(f"{run_dir / 'evaluate' / 'summary.json'} is missing; run `tunewise evaluate` first")
    config = read_artifact(run_dir / "config.json") or {}
    decision_file = read_artifact(run_dir / "decide" / "decision.json")
    if decision_file is None and (run_dir / "decide" / "decision.json").exists():
        raise ReportError(f"{run_dir / 'decide' / 'decision.json'} is not valid JSON; re-run `tunewise decide`")
    task = evaluation.get("task") or config.get("task") or "classify"
    primary = evaluation.get("primary_metric")
    stage_timings = timings(run_dir)
    with pyplot().rc_context(CHART_STYLE):
        # the live log first: a bad --live fails before any chart is drawn
        live_page, live_report = (
            live_section(live, run_dir, config, evaluation, task, live_since)
            if live is not None
            else ({"present": False}, None)
        )
        decision = decision_section(decision_file, config)
        comparison = comparison_for(evaluation, decision.get("candidate"))
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

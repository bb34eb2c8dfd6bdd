"""report: one self-contained HTML page (report/index.html) and report/summary.json for the run.

The work is in :func:`tunewise.reporting.report.build_report`; this stage only points it at the run folder
and the project folder the data paths are relative to (for the data files' sha256).
"""

from __future__ import annotations

from tunewise.core.artifacts import read_json
from tunewise.pipeline.runner import StageContext, StageError, stage
from tunewise.reporting.report import ReportError, build_report


# "roi" is in the key although decide turns it into money: without a decide stage the page says
# which roi numbers are unset, and that text must follow an edit of the section.
@stage("report", sections=("roi",), reads=("evaluate", "decide"))
def run(ctx: StageContext) -> dict:
    """Write the run's report: verdict, data quality, candidates, curves, errors, slices, cost, reproducibility."""

    try:
        written = build_report(ctx.run_dir, base_dir=ctx.config.base_dir)
    except ReportError as exc:
        raise StageError(str(exc)) from None

    summary = read_json(written["summary"])
    decision = summary.get("decision") or {}
    return {
        "verdict": decision.get("verdict"),
        "recommended": decision.get("recommended"),
        "page": str(written["html"]),
        "page_bytes": written["html"].stat().st_size,
    }

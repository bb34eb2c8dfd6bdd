"""curate: find and fix what makes fine-tuning fail; every change lands in the issues table."""

from __future__ import annotations

import pandas as pd

from tunewise.core.artifacts import write_csv, write_json, write_parquet
from tunewise.data.curate import curate_frame, make_engine
from tunewise.data.issues import IssueTable
from tunewise.pipeline.runner import StageContext, stage


@stage("curate", sections=("curate", "models"), reads=("ingest",))
def run(ctx: StageContext) -> dict:
    """Find and fix duplicates, conflicts, label errors, off-topic rows, PII and thin classes."""

    records = pd.read_parquet(ctx.input("ingest", "records.parquet"))
    prior = IssueTable("ingest")
    prior.extend(
        pd.read_parquet(ctx.input("ingest", "issues.parquet"))
        .astype(object)
        .where(lambda f: f.notna(), None)
        .to_dict("records")
    )
    engine = make_engine(ctx.options.get("engine", "local"), ctx.options.get("ray_address"))
    try:
        result = curate_frame(records, ctx.config, engine=engine, prior_issues=prior)
    finally:
        engine.shutdown()
    write_parquet(ctx.path("cleaned.parquet"), result.frame)
    frame = result.issues.frame()
    write_parquet(ctx.path("issues.parquet"), frame)
    write_csv(ctx.path("issues.csv"), frame)
    write_json(ctx.path("summary.json"), result.summary)
    return {
        "rows_in": result.summary["rows_in"],
        "rows_out": result.summary["rows_out"],
        "issue_counts": result.summary["issue_counts"],
    }

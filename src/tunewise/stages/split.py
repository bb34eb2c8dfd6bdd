"""split: train / validation / test without leakage (near-duplicate groups stay on one side)."""

from __future__ import annotations

import pandas as pd

from ..artifacts import write_csv, write_json, write_parquet
from ..runner import StageContext, stage


@stage("split", sections=("split", "data"), reads=("ingest", "curate"))
def run(ctx: StageContext) -> dict:
    """Stratified train/validation/test split with near-duplicate groups kept on one side."""
    from ..split import split_frame

    cfg = ctx.config
    cleaned = pd.read_parquet(ctx.input("curate", "cleaned.parquet"))
    test_frame = pd.read_parquet(ctx.input("ingest", "test_records.parquet")) if cfg.data.test else None
    result = split_frame(
        cleaned, task=cfg.task, validation_fraction=cfg.split.validation_fraction,
        test_fraction=cfg.split.test_fraction, seed=cfg.split.seed, test_frame=test_frame,
        leakage_threshold=cfg.split.leakage_threshold,
    )
    for name in ("train", "validation", "test"):
        write_parquet(ctx.path(f"{name}.parquet"), getattr(result, name))
    issues = result.issues.frame()
    write_parquet(ctx.path("issues.parquet"), issues)
    write_csv(ctx.path("issues.csv"), issues)
    write_json(ctx.path("summary.json"), result.summary)
    return {**result.summary["sizes"], "leakage_rows": result.summary["leakage_rows"]}

"""split: train / validation / test without leakage (near-duplicate groups stay on one side)."""

from __future__ import annotations

import pandas as pd

from ..artifacts import read_json, write_csv, write_json, write_parquet
from ..runner import StageContext, stage
from ..split import FROZEN_TEST_FILE


def _frozen_test(cfg) -> list:
    # frozen by `tunewise add-labels`; with data.test set the test file is the frozen test already
    path = cfg.resolve(FROZEN_TEST_FILE)
    return [path] if cfg.data.test is None and path.exists() else []


@stage("split", sections=("split", "data"), reads=("ingest", "curate"), user_files=_frozen_test)
def run(ctx: StageContext) -> dict:
    """Stratified train/validation/test split with near-duplicate groups kept on one side."""
    from ..split import split_frame

    cfg = ctx.config
    cleaned = pd.read_parquet(ctx.input("curate", "cleaned.parquet"))
    test_frame = pd.read_parquet(ctx.input("ingest", "test_records.parquet")) if cfg.data.test else None
    frozen = _frozen_test(cfg)
    test_ids = read_json(frozen[0])["ids"] if frozen else None
    result = split_frame(
        cleaned, task=cfg.task, validation_fraction=cfg.split.validation_fraction,
        test_fraction=cfg.split.test_fraction, seed=cfg.split.seed, test_frame=test_frame,
        leakage_threshold=cfg.split.leakage_threshold, test_ids=test_ids,
    )
    for name in ("train", "validation", "test"):
        write_parquet(ctx.path(f"{name}.parquet"), getattr(result, name))
    issues = result.issues.frame()
    write_parquet(ctx.path("issues.parquet"), issues)
    write_csv(ctx.path("issues.csv"), issues)
    write_json(ctx.path("summary.json"), result.summary)
    return {**result.summary["sizes"], "leakage_rows": result.summary["leakage_rows"]}

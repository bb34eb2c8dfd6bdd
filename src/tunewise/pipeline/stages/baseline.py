"""baseline: what prompting an LLM or a cheap classic model gives, without fine-tuning."""

from __future__ import annotations

import pandas as pd

from tunewise.config.sections import ProjectConfig
from tunewise.pipeline.runner import StageContext, stage


@stage(
    "baseline", sections=("baseline", "models", "data"), reads=("split",), user_files=ProjectConfig.knowledge_base_files
)
def run(ctx: StageContext) -> dict:
    """Fit and score the baseline candidates (LLM prompting, classic models) on the split."""
    from tunewise.evaluation.baseline import run_baseline  # on use: loads scipy, sklearn

    cfg = ctx.config
    section = cfg.baseline
    frames = {name: pd.read_parquet(ctx.input("split", f"{name}.parquet")) for name in ("train", "validation", "test")}
    summary = run_baseline(
        frames["train"],
        frames["validation"],
        frames["test"],
        task=cfg.task,
        config=section,
        models=cfg.models,
        knowledge_base=cfg.knowledge_base_dir(),
        task_description=cfg.data.task_description,
        seed=cfg.seed,
        out_dir=ctx.dir,
    )
    return {
        "sample_test": summary["sizes"]["sample_test"],
        "candidates": {
            c["name"]: {**c["metrics"], "seconds": c["seconds"]["total"], "n_scored": c["n_scored"]["test"]}
            for c in summary["candidates"]
        },
    }

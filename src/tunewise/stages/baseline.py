"""baseline: what prompting an LLM or a cheap classic model gives, without fine-tuning."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..config import ProjectConfig
from ..runner import StageContext, stage

def _knowledge_base(cfg: ProjectConfig) -> Path | None:
    return cfg.resolve(cfg.data.knowledge_base) if cfg.data.knowledge_base else None


def _knowledge_base_files(cfg: ProjectConfig) -> list[Path]:
    # In the cache key: editing a knowledge-base file re-runs the RAG baseline.
    folder = _knowledge_base(cfg)
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".md", ".txt"))


@stage("baseline", sections=("baseline", "models", "data"), reads=("split",),
       user_files=_knowledge_base_files)
def run(ctx: StageContext) -> dict:
    """Fit and score the baseline candidates (LLM prompting, classic models) on the split."""
    from ..baseline import run_baseline

    cfg = ctx.config
    section = cfg.baseline
    frames = {name: pd.read_parquet(ctx.input("split", f"{name}.parquet")) for name in ("train", "validation", "test")}
    summary = run_baseline(
        frames["train"], frames["validation"], frames["test"],
        task=cfg.task, config=section, models=cfg.models, knowledge_base=_knowledge_base(cfg),
        task_description=cfg.data.task_description, seed=cfg.seed, out_dir=ctx.dir,
    )
    return {
        "sample_test": summary["sizes"]["sample_test"],
        "candidates": {c["name"]: {**c["metrics"], "seconds": c["seconds"]["total"], "n_scored": c["n_scored"]["test"]}
                       for c in summary["candidates"]},
    }

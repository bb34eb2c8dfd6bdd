"""split: train / validation / test without leakage (near-duplicate groups stay on one side)."""

from __future__ import annotations

import pandas as pd
from rich.markup import escape

from tunewise.core.artifacts import read_json, write_csv, write_json, write_parquet
from tunewise.core.progress import console
from tunewise.data.split import FROZEN_TEST_FILE, split_frame
from tunewise.pipeline.runner import StageContext, StageError, stage


def _frozen_test(cfg) -> list:
    # frozen by `tunewise add-labels`; with data.test set the test file is the frozen test already
    path = cfg.resolve(FROZEN_TEST_FILE)
    return [path] if cfg.data.test is None and path.exists() else []


@stage("split", sections=("split", "data"), reads=("ingest", "curate"), user_files=_frozen_test)
def run(ctx: StageContext) -> dict:
    """Stratified train/validation/test split with near-duplicate groups kept on one side."""

    cfg = ctx.config
    cleaned = pd.read_parquet(ctx.input("curate", "cleaned.parquet"))
    test_frame = pd.read_parquet(ctx.input("ingest", "test_records.parquet")) if cfg.data.test else None
    frozen = _frozen_test(cfg)
    test_ids = read_json(frozen[0])["ids"] if frozen else None
    result = split_frame(
        cleaned,
        task=cfg.task,
        validation_fraction=cfg.split.validation_fraction,
        test_fraction=cfg.split.test_fraction,
        seed=cfg.split.seed,
        test_frame=test_frame,
        leakage_threshold=cfg.split.leakage_threshold,
        test_ids=test_ids,
    )
    for name in ("train", "validation", "test"):
        write_parquet(ctx.path(f"{name}.parquet"), getattr(result, name))
    if cfg.task == "classify":
        _flag_unseen_labels(result)
    issues = result.issues.frame()
    write_parquet(ctx.path("issues.parquet"), issues)
    write_csv(ctx.path("issues.csv"), issues)
    write_json(ctx.path("summary.json"), result.summary)
    if cfg.task == "classify":
        _refuse_single_label(ctx, result.train, len(cleaned))
    metrics = {**result.summary["sizes"], "leakage_rows": result.summary["leakage_rows"]}
    for part, unseen in result.summary.get("unseen_labels", {}).items():
        if not unseen:
            continue
        metrics[f"unseen_label_{part}_rows"] = sum(unseen.values())
        shown = escape(
            ", ".join(f"'{label}' ({n} row{'s' if n != 1 else ''})" for label, n in list(unseen.items())[:10])
        )
        more = f" and {len(unseen) - 10} more" if len(unseen) > 10 else ""
        console.print(
            f"[yellow]split: {len(unseen)} {part} label(s) never seen in training: {shown}{more}; those "
            f"rows count as wrong for every model, unless it is evaluate.out_of_scope_label (unseen_labels in "
            f"{ctx.path('summary.json')}; every row in {ctx.path('issues.csv')} as unseen_label)[/yellow]",
            highlight=False,
        )
    return metrics


def _flag_unseen_labels(result) -> None:
    """One issue row per validation or test row whose label training lacks: the summary counts them,
    the issues table names every row (flagged, not dropped: dropping would flatter the score)."""
    known = set(result.train["label"].astype(str))
    for part in ("validation", "test"):
        frame = getattr(result, part)
        labels = frame["label"].astype(str)
        for i in labels.index[~labels.isin(known)]:
            row = frame.loc[i]
            line = row.get("source_line")
            result.issues.add(
                str(row["id"]),
                "unseen_label",
                f"{part} row's label '{labels[i]}' never occurs in the training split: every trained model scores "
                "it wrong (unless it is evaluate.out_of_scope_label, which a confidence threshold may answer)",
                "flagged",
                source=row.get("source_file"),
                line=None if line is None or pd.isna(line) else int(line),
            )


def _refuse_single_label(ctx: StageContext, train: pd.DataFrame, rows_curated: int) -> None:
    """Classification needs two labels in the training split; one would only fail in the baseline
    stage, with a scikit-learn traceback. Ingest refuses a one-label file; this catches curation
    (or the split) leaving one label."""
    labels = train["label"].astype(str).unique() if len(train) else []
    if len(labels) >= 2:
        return
    held = f"holds a single label ('{labels[0]}')" if len(labels) else "is empty"
    raise StageError(
        f"split: the training split {held} after curation ({rows_curated:,} curated rows, "
        f"{len(train):,} in train); classification needs at least two labels: see what curation "
        f"dropped in {ctx.run_dir / 'curate' / 'issues.csv'} and the class counts in "
        f"{ctx.path('summary.json')}"
    )

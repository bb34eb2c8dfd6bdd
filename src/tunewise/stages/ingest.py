"""ingest: read the user's files into normalised records; bad rows go to the issues table."""

from __future__ import annotations

from pathlib import Path

from ..artifacts import write_csv, write_json, write_parquet
from ..config import ProjectConfig
from ..ingest import ingest
from ..issues import IssueTable
from ..runner import StageContext, stage


def _user_files(cfg: ProjectConfig) -> list[Path]:
    files = [cfg.resolve(cfg.data.train)]
    if cfg.data.test:
        files.append(cfg.resolve(cfg.data.test))
    return files


def read_split_file(cfg: ProjectConfig, path: Path):
    return ingest(
        path,
        task=cfg.task,
        file_format=cfg.data.format,
        record_format=cfg.data.record_format,
        columns=cfg.data.columns.model_dump(),
        keep_columns=cfg.data.slice_columns,
        max_chars=cfg.data.max_chars,
    )


@stage("ingest", sections=("data",), user_files=_user_files)
def run(ctx: StageContext) -> dict:
    """Read the training (and test) files into normalised records; reject bad rows with reasons."""
    cfg = ctx.config
    issues = IssueTable("ingest")
    metrics: dict = {}
    train = read_split_file(cfg, cfg.resolve(cfg.data.train))
    issues.extend(train.issues)
    write_parquet(ctx.path("records.parquet"), train.frame)
    metrics.update(rows_read=train.rows_read, rows_kept=len(train.frame), rows_rejected=len(train.issues),
                   file_format=train.file_format, record_format=train.record_format)
    if cfg.data.test:
        test = read_split_file(cfg, cfg.resolve(cfg.data.test))
        issues.extend(test.issues)
        write_parquet(ctx.path("test_records.parquet"), test.frame)
        metrics.update(test_rows_read=test.rows_read, test_rows_kept=len(test.frame),
                       test_rows_rejected=len(test.issues))
    frame = issues.frame()
    write_parquet(ctx.path("issues.parquet"), frame)
    write_csv(ctx.path("issues.csv"), frame)
    write_json(ctx.path("summary.json"), {**metrics, "columns_used": train.columns_used,
                                          "issue_counts": issues.counts()})
    return metrics

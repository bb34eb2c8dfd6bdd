"""ingest: read the user's files into normalised records; bad rows go to the issues table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..artifacts import write_csv, write_json, write_parquet
from ..config import ProjectConfig
from ..ingest import ingest
from ..issues import IssueTable
from ..runner import StageContext, stage


def _user_files(cfg: ProjectConfig) -> list[Path]:
    files = [cfg.resolve(cfg.data.train)]
    if cfg.data.test:
        files.append(cfg.resolve(cfg.data.test))
    added = cfg.resolve(cfg.data.added)
    if added.exists():  # rows from `tunewise add-labels`: a change re-runs the stages that read them
        files.append(added)
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


def read_added_file(cfg: ProjectConfig, path: Path, taken_ids: set[str]):
    """The rows ``tunewise add-labels`` wrote (id, text, label or reply), through the same record checks."""
    answer = "label" if cfg.task == "classify" else "target"
    result = ingest(path, task=cfg.task, file_format="auto", record_format="text_label",
                    columns={"id": "id", "input": "text", answer: "label" if answer == "label" else "reply"},
                    max_chars=cfg.data.max_chars)
    clash = result.frame["id"].astype(str).isin(taken_ids)
    for row in result.frame[clash].itertuples(index=False):  # an id the training file uses already
        result.issues.add(id=row.id, issue="malformed", detail=f"duplicate id {row.id!r}: the training data has it",
                          action="dropped", source=str(path), line=int(row.source_line))
    result.frame = result.frame[~clash].reset_index(drop=True)
    return result


@stage("ingest", sections=("data",), user_files=_user_files)
def run(ctx: StageContext) -> dict:
    """Read the training (and test) files into normalised records; reject bad rows with reasons."""
    cfg = ctx.config
    issues = IssueTable("ingest")
    metrics: dict = {}
    train = read_split_file(cfg, cfg.resolve(cfg.data.train))
    issues.extend(train.issues)
    records = train.frame
    added_path = cfg.resolve(cfg.data.added)
    if added_path.exists():
        added = read_added_file(cfg, added_path, set(records["id"].astype(str)))
        issues.extend(added.issues)
        records = pd.concat([records, added.frame], ignore_index=True)
        for column in records.columns.difference(added.frame.columns):  # slice columns the added rows lack
            records[column] = records[column].astype(object).where(records[column].notna(), None)
        metrics.update(added_rows_read=added.rows_read, added_rows_kept=len(added.frame),
                       added_rows_rejected=len(added.issues))
    write_parquet(ctx.path("records.parquet"), records)
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

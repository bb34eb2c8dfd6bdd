"""ingest: read the user's files into normalised records; bad rows go to the issues table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tunewise.config.sections import ProjectConfig
from tunewise.core.artifacts import write_csv, write_json, write_parquet
from tunewise.core.progress import console
from tunewise.data.ingest import IngestError, ingest, known_extension
from tunewise.data.issues import IssueTable
from tunewise.pipeline.runner import StageContext, stage


def _user_files(cfg: ProjectConfig) -> list[Path]:
    files = [cfg.resolve(cfg.data.train)]
    if cfg.data.test:
        files.append(cfg.resolve(cfg.data.test))
    added = cfg.resolve(cfg.data.added)
    if added.exists():  # rows from `tunewise add-labels`: a change re-runs the stages that read them
        files.append(added)
    return files


def file_settings(cfg: ProjectConfig, path: Path) -> tuple[str, str]:
    """(file format, text encoding) of one data file: the test file has its own (data.test_format,
    data.test_encoding), so a CSV train file and a JSONL test file each read as what they are."""
    data = cfg.data
    if data.test and Path(path).resolve() == cfg.resolve(data.test).resolve():
        fmt = data.test_format
        if fmt == "auto" and data.format != "auto" and not known_extension(path):
            fmt = data.format  # an extension that says nothing: the format set for the data
        return fmt, data.test_encoding or data.encoding
    return data.format, data.encoding


def read_split_file(cfg: ProjectConfig, path: Path):
    file_format, encoding = file_settings(cfg, path)
    return ingest(
        path,
        task=cfg.task,
        file_format=file_format,
        record_format=cfg.data.record_format,
        columns=cfg.data.columns.model_dump(),
        keep_columns=cfg.data.slice_columns,
        max_chars=cfg.data.max_chars,
        encoding=encoding,
    )


def _undecodable_hint(cfg: ProjectConfig, result, path: Path) -> str | None:
    """A line for the console when rows were rejected for bytes the encoding cannot read."""
    if not len(result.issues):
        return None
    details = result.issues.frame()["detail"].astype(str)
    n = int(details.str.startswith("undecodable bytes").sum())
    if not n:
        return None
    encoding = file_settings(cfg, path)[1]
    return (
        f"ingest: {n:,} row(s) of {path} were rejected for bytes that are not {encoding}: if the file is "
        "in another encoding, set data.encoding"
        + (" (data.test_encoding for the test file)" if cfg.data.test and path == cfg.resolve(cfg.data.test) else "")
        + ", e.g. latin-1 or cp1252 (`tunewise init` detects it)"
    )


def refuse_single_label(cfg: ProjectConfig, records: pd.DataFrame, train, path: Path, issues_csv: Path) -> None:
    """Classification needs two labels; one label would only fail later, in the baseline stage,
    with a scikit-learn traceback. Named here with the file and the label column."""
    if cfg.task != "classify" or "label" not in records.columns:
        return
    labels = records["label"].astype(str).unique()
    if len(labels) >= 2:
        return
    column = train.columns_used.get("label", "label")
    rejected = len(train.issues)
    more = f", {rejected:,} rejected with their reasons in {issues_csv}" if rejected else ""
    raise IngestError(
        f"{path}: column {column!r} holds a single label ({str(labels[0])!r}); classification "
        f"needs at least two ({len(records):,} rows kept{more})"
    )


def read_added_file(cfg: ProjectConfig, path: Path, taken_ids: set[str]):
    """The rows ``tunewise add-labels`` wrote (id, text, label or reply), through the same record checks."""
    answer = "label" if cfg.task == "classify" else "target"
    result = ingest(
        path,
        task=cfg.task,
        file_format="auto",
        record_format="text_label",
        columns={"id": "id", "input": "text", answer: "label" if answer == "label" else "reply"},
        max_chars=cfg.data.max_chars,
    )
    clash = result.frame["id"].astype(str).isin(taken_ids)
    for row in result.frame[clash].itertuples(index=False):  # an id the training file uses already
        result.issues.add(
            id=row.id,
            issue="malformed",
            detail=f"duplicate id {row.id!r}: the training data has it",
            action="dropped",
            source=str(path),
            line=int(row.source_line),
        )
    result.frame = result.frame[~clash].reset_index(drop=True)
    return result


@stage("ingest", sections=("data",), user_files=_user_files)
def run(ctx: StageContext) -> dict:
    """Read the training (and test) files into normalised records; reject bad rows with reasons."""
    cfg = ctx.config
    issues = IssueTable("ingest")
    metrics: dict = {}
    train_path = cfg.resolve(cfg.data.train)
    train = read_split_file(cfg, train_path)
    issues.extend(train.issues)
    hints = [_undecodable_hint(cfg, train, train_path)]
    records = train.frame
    added_path = cfg.resolve(cfg.data.added)
    if added_path.exists():
        added = read_added_file(cfg, added_path, set(records["id"].astype(str)))
        issues.extend(added.issues)
        records = pd.concat([records, added.frame], ignore_index=True)
        for column in records.columns.difference(added.frame.columns):  # slice columns the added rows lack
            records[column] = records[column].astype(object).where(records[column].notna(), None)
        metrics.update(
            added_rows_read=added.rows_read, added_rows_kept=len(added.frame), added_rows_rejected=len(added.issues)
        )
    write_parquet(ctx.path("records.parquet"), records)
    metrics.update(
        rows_read=train.rows_read,
        rows_kept=len(train.frame),
        rows_rejected=len(train.issues),
        file_format=train.file_format,
        record_format=train.record_format,
    )
    if cfg.data.test:
        test_path = cfg.resolve(cfg.data.test)
        test = read_split_file(cfg, test_path)
        issues.extend(test.issues)
        hints.append(_undecodable_hint(cfg, test, test_path))
        write_parquet(ctx.path("test_records.parquet"), test.frame)
        metrics.update(
            test_rows_read=test.rows_read,
            test_rows_kept=len(test.frame),
            test_rows_rejected=len(test.issues),
            test_file_format=test.file_format,
        )
    for hint in filter(None, hints):
        console.print(f"[yellow]{hint}[/yellow]", highlight=False)
    frame = issues.frame()
    write_parquet(ctx.path("issues.parquet"), frame)
    write_csv(ctx.path("issues.csv"), frame)
    refuse_single_label(cfg, records, train, train_path, ctx.path("issues.csv"))
    write_json(
        ctx.path("summary.json"),
        {
            **metrics,
            "columns_used": train.columns_used,
            "issue_counts": issues.counts(),
            "notes": list(filter(None, hints)),
        },
    )
    return metrics

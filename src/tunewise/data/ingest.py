"""Ingest: read the user's data file into the normalised record DataFrame (see ``records.py``).

Reading streams, so a file larger than memory works: CSV/TSV through the ``csv`` module over
lines we decode ourselves, JSON Lines line by line, a JSON array element by element, Parquet batch
by batch. The result frame is built chunk by chunk, so memory follows the output, not every raw
field of every row.

A bad row never stops the run: it lands in the ``ingest`` issues table as ``malformed`` with the
file, the physical line where it starts and the reason, and the rest loads. Only a file that
cannot give a single usable row raises :class:`IngestError`.

Layers, bottom up, one module each:

1. :mod:`tunewise.data.readers` (``iter_raw_rows``): one ``RawRow`` per record in the file (its
   line and its fields, or why it could not be read). Knows file formats, nothing about record shapes.
2. :mod:`tunewise.data.record_shapes` (``make_plan``): which column plays which role (input, label,
   target, ...) for a record format; turns one raw row into one normalised record or says why it cannot.
3. here, ``ingest`` / ``sniff``: open, plan, stream, count, collect issues.
"""

from __future__ import annotations

import codecs
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tunewise.core.progress import progress
from tunewise.core.records import answer_column
from tunewise.data.file_formats import (
    FILE_FORMATS,
    IngestError,
    check_file,
    check_text,
    known_extension,
    resolve_file_format,
)
from tunewise.data.issues import IssueTable
from tunewise.data.readers import RawRow, iter_raw_rows, open_rows
from tunewise.data.record_shapes import (
    RECORD_FORMATS,
    SAMPLE_ROWS,
    RowProblem,
    Sample,
    candidate_roles,
    configured_columns,
    detect_record_format,
    is_missing,
    is_nested,
    make_plan,
    meta_name,
    meta_value,
    row_chars,
    sample_file,
)


@dataclass
class IngestResult:
    frame: pd.DataFrame
    issues: IssueTable
    record_format: str
    file_format: str
    columns_used: dict[str, str]
    rows_read: int


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def ingest(
    path: str | Path,
    *,
    task: str,
    file_format: str = "auto",
    record_format: str = "auto",
    columns: dict[str, str | None] | None = None,
    keep_columns: list[str] | None = None,
    max_chars: int = 20000,
    chunk_rows: int = 50_000,
    encoding: str = "utf-8",
) -> IngestResult:
    """Read ``path`` into normalised records; bad rows go to the issues table, not the frame.

    ``encoding`` is the text encoding of csv, tsv, jsonl and json files (``data.encoding``)."""
    answer = answer_column(task)
    source = str(path)
    file_path = Path(path)
    fmt = resolve_file_format(file_path, file_format, encoding)
    header, rows = open_rows(file_path, fmt, encoding)
    try:
        if header is not None:
            found = header
        else:  # JSON has no header: learn the columns from the first rows, then read from the top
            sample = sample_file(file_path, fmt, SAMPLE_ROWS, encoding)
            sample.raise_if_unusable(source, fmt)
            found = sample.columns
        configured = configured_columns(columns, found, source)
        plan = make_plan(
            found,
            task=task,
            record_format=record_format,
            configured=configured,
            keep_columns=list(keep_columns or []),
            source=source,
        )
    except BaseException:
        rows.close()  # type: ignore[attr-defined]  # the file is open before the first row is read
        raise
    not_meta = set(plan.roles.values()) | set(plan.keep_columns)
    has_id_column = "id" in plan.roles

    issues = IssueTable("ingest")
    chunks: list[pd.DataFrame] = []
    pending: list[dict[str, Any]] = []
    seen_ids: dict[str, int] = {}  # kept id -> line where it was first seen
    nested_meta: set[str] = set()  # extra columns that turned out to hold lists/objects: not kept
    first_reasons: list[str] = []
    position = 0

    def reject(row_id: str | None, line: int, detail: str) -> None:
        issues.add(id=row_id, issue="malformed", detail=detail, action="dropped", source=source, line=line)
        if len(first_reasons) < 3:
            first_reasons.append(f"line {line}: {detail}")

    with progress(f"reading {file_path.name}", None) as advance:
        for raw in rows:
            position += 1
            row_position = position - 1  # 0-based, counting bad rows too
            if raw.fields is None:
                reject(plan.row_id(None, row_position), raw.line, raw.error or "unreadable row")
                continue
            fields = raw.fields
            row_id = plan.row_id(fields, row_position)
            chars = raw.chars if raw.chars is not None else row_chars(fields)
            if chars > max_chars:
                reject(row_id, raw.line, f"row is {chars:,} characters, over data.max_chars={max_chars}")
                continue
            try:
                record = plan.convert(fields, row_position)
            except RowProblem as problem:
                reject(row_id, raw.line, str(problem))
                continue
            if has_id_column:  # positional ids are unique by construction
                first_line = seen_ids.get(record["id"])
                if first_line is not None:
                    reject(
                        record["id"],
                        raw.line,
                        f"duplicate id {record['id']!r} in column {plan.roles['id']!r} (first on line {first_line})",
                    )
                    continue
                seen_ids[record["id"]] = raw.line
            record["source_file"] = source
            record["source_line"] = raw.line
            record["synthetic"] = False
            for column in plan.keep_columns:
                record[meta_name(column)] = meta_value(fields.get(column))
            for column, value in fields.items():
                if column in not_meta:
                    continue
                if isinstance(value, str):
                    record[meta_name(column)] = value
                elif is_nested(value):
                    nested_meta.add(meta_name(column))
                else:
                    record[meta_name(column)] = meta_value(value)
            pending.append(record)
            if len(pending) >= chunk_rows:
                chunks.append(pd.DataFrame.from_records(pending))
                advance(len(pending))
                pending = []
        if pending:  # the last chunk is counted too (a file under one chunk showed "done 0 rows")
            chunks.append(pd.DataFrame.from_records(pending))
            advance(len(pending))

    if not chunks:
        Sample(found, [], position, first_reasons).raise_if_unusable(source, fmt)
    frame = pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]
    core = ["id", "input", "context", answer, "source_file", "source_line", "synthetic"]
    kept = [meta_name(c) for c in plan.keep_columns]
    extra = [c for c in frame.columns if c not in core and c not in kept and c not in nested_meta]
    frame = frame[core + kept + extra]
    for column in kept + extra:  # a column absent from some chunks comes back as NaN
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    frame["source_line"] = frame["source_line"].astype("int64")
    frame["synthetic"] = frame["synthetic"].astype(bool)

    columns_used = {
        role: plan.roles[role]
        for role in ("id", "instruction", "messages", "input", "label", "target")
        if role in plan.roles
    }
    return IngestResult(
        frame=frame,
        issues=issues,
        record_format=plan.record_format,
        file_format=fmt,
        columns_used=columns_used,
        rows_read=position,
    )


_ENCODING_PROBE = 64 << 20  # bytes read to tell UTF-8 from a legacy 8-bit encoding


def detect_encoding(path: str | Path, limit: int = _ENCODING_PROBE) -> str:
    """``utf-8`` when the file (its first ``limit`` bytes) decodes as UTF-8; else ``cp1252`` when it
    holds bytes 0x80-0x9F that cp1252 reads as text (curly quotes, the euro sign: Windows files),
    else ``latin-1`` (every byte is a character). Binary files are not told apart here."""
    path = Path(path)

    def chunks() -> Iterator[bytes]:
        read = 0
        with open(path, "rb") as f:
            while read < limit:
                chunk = f.read(min(1 << 20, limit - read))
                if not chunk:
                    return
                read += len(chunk)
                yield chunk

    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for chunk in chunks():
            decoder.decode(chunk, final=False)
        return "utf-8"  # a character cut by the probe's end is no evidence against UTF-8
    except UnicodeDecodeError:
        pass
    c1 = re.compile(rb"[\x80-\x9f]")
    high_c1 = False
    for chunk in chunks():
        if c1.search(chunk):
            high_c1 = True
            try:
                chunk.decode("cp1252")
            except UnicodeDecodeError:
                return "latin-1"  # bytes cp1252 leaves undefined: not a Windows file
    return "cp1252" if high_c1 else "latin-1"


def sniff(
    path: str | Path, *, task: str | None = None, sample_rows: int = 5000, encoding: str | None = None
) -> dict[str, Any]:
    """Look at the first rows of a file and guess how to read it (used by ``tunewise init``).

    ``columns_used`` follows ``task`` when given, else the suggested task. ``encoding`` None: the
    text encoding is detected (:func:`detect_encoding`) and returned under ``encoding``.

    Never raises for a missing role (the user will be asked); raises :class:`IngestError` only
    when the file itself cannot be read.
    """
    file_path = Path(path)
    source = str(path)
    check_file(file_path)
    if file_path.suffix.lower() not in (".parquet", ".pq"):
        check_text(file_path)  # before guessing an encoding for bytes that are no text
    if encoding is None:
        encoding = "utf-8" if file_path.suffix.lower() in (".parquet", ".pq") else detect_encoding(file_path)
    fmt = resolve_file_format(file_path, "auto", encoding)
    if fmt == "parquet":
        encoding = "utf-8"
    found = sample_file(file_path, fmt, sample_rows, encoding)
    found.raise_if_unusable(source, fmt)
    columns, sample = found.columns, found.rows
    record_format = detect_record_format(columns, {})
    roles = candidate_roles(columns, record_format, {})

    label_column = roles.get("label")
    label_counts: Counter[str] = Counter()
    if label_column:
        for fields in sample:
            value = fields.get(label_column)
            if not is_missing(value) and not is_nested(value) and str(value).strip():
                label_counts[str(value)] += 1
    has_target = record_format == "messages" or bool(roles.get("target"))
    # Labels look like classes when there are few distinct values for the rows seen.
    labels_look_like_classes = bool(label_counts) and len(label_counts) <= max(2, min(1000, len(sample) // 2))
    if labels_look_like_classes or not has_target:
        suggested = "classify"
    else:
        suggested = "generate"

    role_order = ["id", "messages", "instruction", "input", "label", "target"]
    chosen = task or suggested
    answer_column(chosen)  # refuses an unknown task
    wanted = {"id", "messages", "instruction", "input"} | ({"label"} if chosen == "classify" else {"target"})
    columns_used = {role: roles[role] for role in role_order if role in wanted and roles.get(role)}
    used = set(columns_used.values()) | ({label_column} if label_column else set())

    slice_candidates = []
    for column in columns:
        if column in used:
            continue
        values = [fields.get(column) for fields in sample]
        if any(is_nested(v) for v in values):
            continue
        texts = [v for v in values if isinstance(v, str)]
        if not texts or len(texts) < len([v for v in values if not is_missing(v)]):
            continue  # numbers and mixed columns are not slices
        distinct = len(set(texts))
        if 2 <= distinct <= 50 and distinct <= len(texts) // 2:
            slice_candidates.append(column)

    return {
        "file_format": fmt,
        "encoding": encoding,
        "record_format": record_format,
        "columns": columns,
        "columns_used": columns_used,
        "n_sample_rows": len(sample),
        "label_counts": dict(label_counts.most_common(20)),
        "suggested_task": suggested,
        "slice_candidates": slice_candidates,
    }


__all__ = [
    "IngestError",
    "IngestResult",
    "RawRow",
    "FILE_FORMATS",
    "RECORD_FORMATS",
    "detect_encoding",
    "ingest",
    "iter_raw_rows",
    "known_extension",
    "resolve_file_format",
    "sniff",
]

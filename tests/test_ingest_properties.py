"""Property tests (hypothesis) for ingest over generated files in every format it reads.

Records with random text (unicode, quotes, commas, tabs, newlines inside fields, empty and
whitespace strings, strings over data.max_chars), None and missing fields, numbers, booleans,
lists and objects where text is expected, duplicate ids, random column orders and extra columns
are written as real files (csv, tsv, jsonl, json, parquet), clean and corrupted (a UTF-8 BOM, a
truncated last record, a line of random bytes, a wrong-typed field), and read through the
function the ingest stage uses (``stages.ingest.read_split_file``, which calls
``tunewise.data.ingest.ingest`` with the data settings).

The promise under test (docs/user-guide.md, Data): never a traceback; a whole-file problem is an
``IngestError`` naming the file; otherwise rows read = rows kept + rows reported in the issues
table, every reported row with its file, line and reason.

Hypothesis runs derandomized (a fixed seed per test) and without an example database, so CI
sees the same examples every run.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, assume, event, given, note, settings, strategies as st

from tunewise.config.sections import DataConfig, ProjectConfig
from tunewise.core.records import answer_column
from tunewise.data.ingest import IngestError, iter_raw_rows
from tunewise.pipeline.stages.ingest import read_split_file

FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")
TEXT_FORMATS = ("csv", "tsv", "jsonl", "json")
MAX_CHARS = 2000  # data.max_chars for every example; a generated row is either far below or above it

PROPERTY = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)

# --------------------------------------------------------------------------------------------
# Generated records
# --------------------------------------------------------------------------------------------

MISSING = object()  # the field is absent from the record (JSON); an empty cell (CSV); null (Parquet)

# Characters that trip parsers: delimiters, quotes, escapes, line breaks of every kind, a BOM.
SPECIAL_CHARS = [
    ",",
    '"',
    "'",
    "\t",
    "\n",
    "\r",
    "\r\n",
    "\\",
    "\ufeff",
    "\u2028",
    "\x85",
    "\x0c",
    " ",
    "[",
    "]",
    "{",
    "}",
    ":",
    "\u00e9",
    "\U0001f600",
    "\u4e2d",
]
CHARS = st.one_of(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), st.sampled_from(SPECIAL_CHARS))
TEXT = st.lists(CHARS, max_size=12).map("".join)
SHORT = st.lists(CHARS, max_size=5).map("".join)
# Over data.max_chars, built by repeating a short piece (cheap to generate and to shrink).
LONG = st.lists(CHARS, min_size=1, max_size=4).map("".join).map(lambda s: s * (MAX_CHARS // len(s) + 1))

VALUE_KINDS: dict[str, st.SearchStrategy] = {
    "text": TEXT,
    "empty": st.sampled_from(["", " ", "\t", "\n", " \r\n ", "\u2028", "\ufeff"]),
    "long": LONG,
    "int": st.integers(-(10**6), 10**6),
    "float": st.floats(allow_nan=False, allow_infinity=False),
    "bool": st.booleans(),
    "none": st.none(),
    "missing": st.just(MISSING),
    "list": st.lists(SHORT, max_size=3),
    "object": st.dictionaries(st.sampled_from(["a", "b", "c"]), SHORT, min_size=1, max_size=2),
}
# Mostly text, so that most examples keep some rows; every other kind now and then.
MIXED_KINDS = ["text"] * 30 + [k for k in VALUE_KINDS if k != "text"]
ID_POOL = ["a", "b", "A", "a ", "1", "\u00e9"]  # few values: duplicates are common ("1" and 1 clash)

INPUT_NAMES = ["text", "Text", "query", "utterance", "QUESTION"]
ANSWER_NAMES = {
    "classify": ["label", "Label", "intent", "category"],
    "generate": ["reply", "Response", "answer", "output"],
}
NAME_CHARS = st.sampled_from(list("ab_ Z\u00e9\u4e2d,;\"'\t\n\r|") + ["\U0001f600"])


@dataclass
class Dataset:
    task: str
    columns: list[str]  # header / schema order
    input_name: str
    answer_name: str
    id_name: str | None
    extras: list[str]
    records: list[dict[str, Any]]  # in each record's own key order; MISSING fields absent


@st.composite
def column_values(draw, role: str):
    """A strategy for one column's values: mixed kinds (mostly text), or one kind throughout
    (so a Parquet column can be typed: all numbers, all booleans, all lists...)."""
    if draw(st.integers(0, 7)) == 0:
        kinds = [draw(st.sampled_from(sorted(VALUE_KINDS)))]
    else:
        kinds = MIXED_KINDS
    if role == "id":
        text = st.one_of(st.sampled_from(ID_POOL), st.integers(0, 2))
    else:
        text = TEXT

    @st.composite
    def value(draw2):
        kind = draw2(st.sampled_from(kinds))
        return draw2(text if kind == "text" else VALUE_KINDS[kind])

    return value()


@st.composite
def datasets(draw, fmt: str, min_records: int = 1):
    task = draw(st.sampled_from(["classify", "generate"]))
    input_name = draw(st.sampled_from(INPUT_NAMES))
    answer_name = draw(st.sampled_from(ANSWER_NAMES[task]))
    id_name = draw(st.sampled_from([None, "id", "ID"]))
    n_extra = draw(st.integers(0, 2))
    # Extra columns with awkward names; "x<i>" keeps them apart from every role name, and the
    # trailing "_" keeps them as they are after the header's strip().
    extras = [f"x{i}" + "".join(draw(st.lists(NAME_CHARS, max_size=5))) + "_" for i in range(n_extra)]
    names = [input_name, answer_name] + ([id_name] if id_name else []) + extras
    columns = list(draw(st.permutations(names)))
    strategies = {name: draw(column_values("id" if name == id_name else "other")) for name in names}
    n = draw(st.integers(min_records, 8))
    records = []
    for _ in range(n):
        order = draw(st.permutations(names)) if fmt in ("jsonl", "json") else columns
        record = {}
        for name in order:
            value = draw(strategies[name])
            if value is not MISSING:
                record[name] = value
        records.append(record)
    return Dataset(task, columns, input_name, answer_name, id_name, extras, records)


# --------------------------------------------------------------------------------------------
# Writing real files
# --------------------------------------------------------------------------------------------


@dataclass
class Layout:
    """A written text file as pieces: ``prefix`` (header, '['), one chunk of bytes per record
    (with its line end or separator), ``suffix``; ``starts`` is each record's first line and
    ``seen`` each record as a reader of the format sees it (CSV: text cells; JSON: decoded)."""

    fmt: str
    prefix: bytes
    chunks: list[bytes]
    suffix: bytes
    starts: list[int]
    seen: list[dict[str, Any]]
    columns: list[str]  # the columns a reader finds (header, schema or keys of the records)

    def content(self) -> bytes:
        return self.prefix + b"".join(self.chunks) + self.suffix


def _cell(value: Any) -> str:
    """What a CSV cell holds for a value: how pandas/csv write it."""
    if value is MISSING or value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _starts(prefix: str, chunks: list[str]) -> list[int]:
    line = 1 + prefix.count("\n")
    starts = []
    for chunk in chunks:  # every chunk begins with its record (no blank line before it)
        starts.append(line)
        line += chunk.count("\n")
    return starts


def write_text_layout(data: Dataset, fmt: str, draw) -> Layout:
    if fmt in ("csv", "tsv"):
        delimiter = "," if fmt == "csv" else "\t"
        crlf = draw(st.booleans())

        def row(values: list[str]) -> str:
            buf = io.StringIO()
            # "\r\n" as the writer's line end makes it quote fields holding a lone "\r" (with "\n" it
            # would not, and the file would not be valid CSV); the line end is then chosen.
            csv.writer(buf, delimiter=delimiter, lineterminator="\r\n").writerow(values)
            text = buf.getvalue()
            return text if crlf else text[:-2] + "\n"

        seen = [{c: _cell(r.get(c, MISSING)) for c in data.columns} for r in data.records]
        prefix = row(data.columns)
        chunks = [row([s[c] for c in data.columns]) for s in seen]
        return Layout(
            fmt, prefix.encode(), [c.encode() for c in chunks], b"", _starts(prefix, chunks), seen, list(data.columns)
        )
    ensure_ascii = draw(st.booleans())
    seen = [json.loads(json.dumps(r)) for r in data.records]
    found = list(dict.fromkeys(k for r in data.records for k in r))
    if fmt == "jsonl":
        end = "\r\n" if draw(st.booleans()) else "\n"
        chunks = [json.dumps(r, ensure_ascii=ensure_ascii) + end for r in data.records]
        return Layout(fmt, b"", [c.encode() for c in chunks], b"", _starts("", chunks), seen, found)
    indent = draw(st.sampled_from([None, 1]))
    prefix = "[\n"
    chunks = [
        json.dumps(r, ensure_ascii=ensure_ascii, indent=indent) + (",\n" if i < len(data.records) - 1 else "\n")
        for i, r in enumerate(data.records)
    ]
    return Layout(fmt, prefix.encode(), [c.encode() for c in chunks], b"]\n", _starts(prefix, chunks), seen, found)


def _as_strings(values: list[Any]) -> list[str | None]:
    return [None if v is MISSING or v is None else _cell(v) for v in values]


def parquet_table(data: Dataset) -> pa.Table:
    """One typed Parquet column per column: its own type when the values share one (numbers,
    booleans, lists, objects), else the values as text, as a user's pandas frame would be saved."""
    arrays = []
    for name in data.columns:
        values = [r.get(name) for r in data.records]
        try:
            array = pa.array(values)
            if pa.types.is_struct(array.type) and array.type.num_fields == 0:
                raise pa.ArrowInvalid("empty struct")
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            array = pa.array(_as_strings(values), type=pa.string())
        arrays.append(array)
    return pa.Table.from_arrays(arrays, names=data.columns)


def write_parquet(data: Dataset, path: Path) -> Layout:
    pq.write_table(parquet_table(data), path)
    seen = pq.read_table(path).to_pylist()  # what the file holds, read by pyarrow itself
    return Layout("parquet", b"", [], b"", list(range(1, len(seen) + 1)), seen, list(data.columns))


_counter = itertools.count()


def write_dataset(tmp_path: Path, data: Dataset, fmt: str, draw) -> tuple[Path, Layout]:
    folder = tmp_path / f"example{next(_counter)}"
    folder.mkdir()
    path = folder / f"data.{fmt}"
    if fmt == "parquet":
        return path, write_parquet(data, path)
    layout = write_text_layout(data, fmt, draw)
    path.write_bytes(layout.content())
    return path, layout


# --------------------------------------------------------------------------------------------
# Reading, as the ingest stage does, and the promise every outcome keeps
# --------------------------------------------------------------------------------------------


def read(path: Path, task: str):
    """The ingest stage's own reader with the data settings of a config; an IngestError is returned."""
    cfg = ProjectConfig(task=task, data=DataConfig(train=str(path), max_chars=MAX_CHARS))
    try:
        return read_split_file(cfg, path)
    except IngestError as err:
        return err


def assert_promise_kept(path: Path, outcome, rows_written: int | None = None) -> None:
    """An IngestError naming the file, or every row read is kept or reported with file, line and reason."""
    if isinstance(outcome, IngestError):
        assert str(path) in str(outcome), f"IngestError does not name the file: {outcome}"
        return
    frame, issues = outcome.frame, outcome.issues
    note(f"rows_read={outcome.rows_read} kept={len(frame)} issues={issues.rows}")
    assert outcome.rows_read == len(frame) + len(issues)
    if rows_written is not None:
        assert outcome.rows_read == rows_written
    for issue in issues.rows:
        assert issue["issue"] == "malformed" and issue["action"] == "dropped" and issue["stage"] == "ingest"
        assert issue["source"] == str(path)
        assert isinstance(issue["detail"], str) and issue["detail"].strip(), issue
        assert isinstance(issue["line"], int) and issue["line"] >= 1, issue
    assert frame["id"].is_unique
    assert set(frame["source_file"]) <= {str(path)}
    assert (frame["source_line"] >= 1).all()


# --------------------------------------------------------------------------------------------
# An independent model of what ingest must do with each row
# --------------------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "text"


def _text(fields: dict[str, Any], column: str, *, required: bool) -> str:
    """The field as text, or ValueError(reason) as the issues table words it."""
    if column not in fields:
        raise ValueError(f"missing field {column!r}")
    value = fields[column]
    if value is None and not required:
        return ""  # classify: an empty input is curation's business, not malformed
    kind = _kind(value)
    if kind != "text":
        raise ValueError(f"field {column!r} is {kind}, expected text")
    text = value if isinstance(value, str) else str(value)
    if required and not text.strip():
        raise ValueError(f"empty field {column!r}")
    return text


LONG_DETAIL = re.compile(rf"row is [\d,]+ characters, over data\.max_chars={MAX_CHARS}")


def expected_outcome(data: Dataset, layout: Layout) -> dict | None:
    """Kept records and reported rows as the docs promise them, or None for an IngestError."""
    found = layout.columns
    if data.input_name not in found or data.answer_name not in found or len(layout.seen) == 0:
        return None  # JSON: no record has the role's key
    id_col = data.id_name if data.id_name in found else None
    answer = answer_column(data.task)
    kept, reported, seen_ids = [], [], {}
    for position, (fields, line) in enumerate(zip(layout.seen, layout.starts)):
        if id_col is None:
            row_id = str(position)
        else:
            value = fields.get(id_col)
            row_id = None if value is None or isinstance(value, (list, dict)) or not str(value).strip() else str(value)
        if any(isinstance(v, str) and len(v) > MAX_CHARS for v in fields.values()):
            reported.append((line, row_id, LONG_DETAIL))
            continue
        try:
            record_id = _text(fields, id_col, required=True) if id_col else str(position)
            user_text = _text(fields, data.input_name, required=data.task == "generate")
            answer_text = _text(fields, data.answer_name, required=True)
        except ValueError as problem:
            reported.append((line, row_id, str(problem)))
            continue
        if id_col is not None:
            if record_id in seen_ids:
                reported.append(
                    (
                        line,
                        record_id,
                        f"duplicate id {record_id!r} in column {id_col!r} (first on line {seen_ids[record_id]})",
                    )
                )
                continue
            seen_ids[record_id] = line
        meta = {
            c: (
                None
                if fields.get(c) is None
                else fields[c]
                if isinstance(fields[c], (str, list, dict))
                else str(fields[c])
            )
            for c in data.extras
            if c in fields
        }
        kept.append({"id": record_id, "input": user_text, answer: answer_text, "source_line": line, "meta": meta})
    if not kept:
        return None
    return {"kept": kept, "reported": reported}


def fates(outcome) -> dict[int, tuple] | None:
    """line -> what became of the row there: ('kept', id, input, answer) or ('reported', id, reason)."""
    if isinstance(outcome, IngestError):
        return None
    answer = [c for c in ("label", "target") if c in outcome.frame.columns][0]
    result: dict[int, tuple] = {}
    for row in outcome.frame.to_dict("records"):
        result[int(row["source_line"])] = ("kept", row["id"], row["input"], row[answer])
    for issue in outcome.issues.rows:
        result[issue["line"]] = ("reported", issue["id"], issue["detail"])
    return result


# --------------------------------------------------------------------------------------------
# Corruptions
# --------------------------------------------------------------------------------------------

BOM = b"\xef\xbb\xbf"
# Random bytes, and byte strings that mean something to one of the parsers.
_TOKENS = [
    b"]",
    b"}",
    b"[",
    b"{",
    b'"',
    b",",
    b",,",
    b"\xff\xfe",
    b"\xe9t\xe9",
    b'"open',
    b"]junk",
    b"x}",
    b"1, 2",
    b"null",
    b"\t\t",
    b"{}",
    b'{"a": 1}',
    b"\x00",
    b"\x1b[31m",
    b"\r",
]
JUNK = st.one_of(
    st.binary(min_size=1, max_size=40),
    st.sampled_from(_TOKENS),
    st.lists(st.sampled_from(_TOKENS + [b" ", b"a", b"\xc3"]), min_size=1, max_size=4).map(b"".join),
).map(lambda b: b.replace(b"\n", b" "))


def _truncate(layout: Layout, cut: int) -> bytes:
    """The file cut inside its last record, before that record's line end."""
    last = layout.chunks[-1]
    body = last.rstrip(b"\r\n,")
    return layout.prefix + b"".join(layout.chunks[:-1]) + body[: 1 + cut % max(len(body) - 1, 1)]


def _insert_line(layout: Layout, index: int, junk: bytes) -> bytes:
    """A line of junk before record ``index`` (after the last one when index == len)."""
    chunks = list(layout.chunks)
    chunks.insert(index, junk + b"\n")
    return layout.prefix + b"".join(chunks) + layout.suffix


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


CORRUPTIONS = ("none", "bom", "truncated_last_line", "random_bytes_line", "wrong_typed_field")


def corrupt(data: Dataset, fmt: str, path: Path, layout: Layout, corruption: str, draw) -> None:
    """Rewrite ``path`` with one corruption applied."""
    if fmt == "parquet":
        raw = path.read_bytes()
        if corruption == "bom":
            path.write_bytes(BOM + raw)
        elif corruption == "truncated_last_line":  # the footer goes first
            path.write_bytes(raw[: draw(st.integers(1, len(raw) - 1))])
        elif corruption == "random_bytes_line":  # bytes overwritten inside the data pages
            junk = draw(st.binary(min_size=1, max_size=20))
            at = draw(st.integers(4, max(4, len(raw) - 9)))
            path.write_bytes(raw[:at] + junk + raw[at + len(junk) :])
        elif corruption == "wrong_typed_field":  # the answer column as lists
            table = parquet_table(data)
            lists = pa.array([[_cell(r.get(data.answer_name))] for r in data.records], type=pa.list_(pa.string()))
            table = table.set_column(table.column_names.index(data.answer_name), data.answer_name, lists)
            pq.write_table(table, path)
        return
    if corruption == "bom":
        path.write_bytes(BOM + layout.content())
    elif corruption == "truncated_last_line":
        path.write_bytes(_truncate(layout, draw(st.integers(0, 10**6))))
    elif corruption == "random_bytes_line":
        path.write_bytes(_insert_line(layout, draw(st.integers(0, len(layout.chunks))), draw(JUNK)))
    elif corruption == "wrong_typed_field":
        index = draw(st.integers(0, len(layout.chunks) - 1))
        path.write_bytes(_wrong_typed(data, layout, index, draw))


def _wrong_typed(data: Dataset, layout: Layout, index: int, draw) -> bytes:
    """Record ``index`` with a field of the wrong shape: the answer as a list, object or boolean
    (JSON); one field too many (CSV/TSV, where every field is text)."""
    chunks = list(layout.chunks)
    chunk = chunks[index]
    if layout.fmt in ("csv", "tsv"):
        body = chunk.rstrip(b"\r\n")
        sep = b"," if layout.fmt == "csv" else b"\t"
        chunks[index] = body + sep + b"surplus" + chunk[len(body) :]
    else:
        record = dict(data.records[index])
        record[data.answer_name] = draw(st.sampled_from([["a", "b"], {"a": "b"}, True, False]))
        text = json.dumps(record).encode()
        chunks[index] = text + chunk[len(chunk.rstrip(b"\r\n,")) :] if layout.fmt == "json" else text + b"\n"
    return layout.prefix + b"".join(chunks) + layout.suffix


@pytest.mark.parametrize("fmt", FORMATS)
@PROPERTY
@given(data=st.data())
def test_rows_read_equal_rows_kept_plus_rows_reported_in_every_format(tmp_path, fmt, data):
    """Clean or corrupted, a file gives an IngestError naming it, or rows read = rows kept + rows
    in the issues table, each with file, line (Parquet: row number) and a reason."""
    dataset = data.draw(datasets(fmt))
    corruption = data.draw(st.sampled_from(CORRUPTIONS), label="corruption")
    path, layout = write_dataset(tmp_path, dataset, fmt, data.draw)
    corrupt(dataset, fmt, path, layout, corruption, data.draw)
    outcome = read(path, dataset.task)
    clean = corruption == "none" or (corruption == "bom" and fmt != "parquet")
    assert_promise_kept(path, outcome, len(dataset.records) if clean else None)


@pytest.mark.parametrize("fmt", FORMATS)
@PROPERTY
@given(data=st.data())
def test_every_row_is_kept_as_written_or_reported_at_its_line_with_its_reason(tmp_path, fmt, data):
    """Against an independent model of the documented rules: a row is kept iff it has no problem
    (over data.max_chars; a missing, null, empty or wrong-typed field; a duplicate id), with the
    text, id, line and extra columns as written; a problem row is reported at its line with its
    reason; all rows bad (or no column for a role) is an IngestError naming the file."""
    dataset = data.draw(datasets(fmt))
    path, layout = write_dataset(tmp_path, dataset, fmt, data.draw)
    outcome = read(path, dataset.task)
    assert_promise_kept(path, outcome, len(dataset.records))
    expected = expected_outcome(dataset, layout)
    event(
        "IngestError"
        if expected is None
        else f"{'some' if expected['kept'] else 'no'} kept, {'some' if expected['reported'] else 'no'} reported"
    )
    if expected is None:
        assert isinstance(outcome, IngestError), "expected an IngestError: no usable row"
        return
    assert not isinstance(outcome, IngestError), str(outcome)
    answer = answer_column(dataset.task)
    frame = outcome.frame
    kept = expected["kept"]
    assert list(frame["id"]) == [k["id"] for k in kept]
    assert list(frame["input"]) == [k["input"] for k in kept]
    assert list(frame[answer]) == [k[answer] for k in kept]
    assert list(frame["source_line"]) == [k["source_line"] for k in kept]
    # Extra columns ride along as text; one that holds a list or object in a kept row is left out.
    nested = {c for k in kept for c, v in k["meta"].items() if isinstance(v, (list, dict))}
    present = {c for k in kept for c in k["meta"]}
    assert (
        set(frame.columns) - {"id", "input", "context", answer, "source_file", "source_line", "synthetic"}
        == present - nested
    )
    for column in present - nested:
        assert list(frame[column]) == [k["meta"].get(column) for k in kept], column
    got = [(i["line"], i["id"], i["detail"]) for i in outcome.issues.rows]
    assert len(got) == len(expected["reported"]), (got, expected["reported"])
    for (line, row_id, detail), (want_line, want_id, want_detail) in zip(got, expected["reported"]):
        assert (line, row_id) == (want_line, want_id), (got, expected["reported"])
        if isinstance(want_detail, re.Pattern):
            assert want_detail.fullmatch(detail), detail
        else:
            assert detail == want_detail
    # Every written record is accounted for exactly once, at its own line.
    assert sorted([k["source_line"] for k in kept] + [i["line"] for i in outcome.issues.rows]) == layout.starts


def _same_before(clean: dict, corrupted: dict, line: int) -> None:
    before = {k: v for k, v in clean.items() if k < line}
    assert {k: v for k, v in corrupted.items() if k < line} == before


_FIRST_ON_LINE = re.compile(r"first on line \d+")


@pytest.mark.parametrize("corruption", ["bom", "truncated_last_line", "random_bytes_line", "wrong_typed_field"])
@pytest.mark.parametrize("fmt", TEXT_FORMATS)
@settings(PROPERTY, max_examples=50)
@given(data=st.data())
def test_a_corruption_loses_only_the_rows_it_touches(tmp_path, fmt, corruption, data):
    """A BOM changes nothing; a truncated last record, a line of random bytes or a wrong-typed
    field leaves every row before it as it was, and no row after it vanishes without an issue at
    or before its line (JSON Lines: rows after it are as they were, one line down)."""
    dataset = data.draw(datasets(fmt, min_records=1))
    path, layout = write_dataset(tmp_path, dataset, fmt, data.draw)
    clean = fates(read(path, dataset.task))
    assume(clean is not None)
    index = None
    if corruption == "random_bytes_line":
        index = data.draw(st.integers(0, len(layout.chunks)), label="junk before record")
        junk = data.draw(JUNK, label="junk")
        path.write_bytes(_insert_line(layout, index, junk))
    elif corruption == "wrong_typed_field":
        index = data.draw(st.integers(0, len(layout.chunks) - 1), label="record")
        path.write_bytes(_wrong_typed(dataset, layout, index, data.draw))
    else:
        corrupt(dataset, fmt, path, layout, corruption, data.draw)
    outcome = read(path, dataset.task)
    assert_promise_kept(path, outcome)
    got = fates(outcome)

    if corruption == "bom":
        assert got == clean
        return
    if got is None:  # an IngestError naming the file (checked above): allowed when the damage
        # leaves no usable row, or makes the file look like no text (NUL or control bytes)
        return
    if corruption == "truncated_last_line":
        _same_before(clean, got, layout.starts[-1])
        assert outcome.rows_read == len(layout.chunks)
        assert layout.starts[-1] in got  # the cut record is kept (cut short) or reported at its line
        return
    if corruption == "wrong_typed_field":
        line = layout.starts[index]
        _same_before(clean, got, line)
        assert got[line][0] == "reported", got[line]
        if clean[line][0] == "kept":  # nothing else was wrong with the row: the reason is the shape
            field = dataset.answer_name
            assert re.fullmatch(
                rf"field {re.escape(repr(field))} is (a list|an object|a boolean), expected text"
                r"|expected \d+ fields, got \d+( \(the record runs over lines \d+-\d+: .*\))?",
                got[line][2],
            ), got[line]
        return
    # a line of random bytes before record ``index``
    junk_line = (
        layout.starts[index]
        if index < len(layout.starts)
        else 1 + (layout.prefix + b"".join(layout.chunks)).count(b"\n")
    )
    _same_before(clean, got, junk_line)
    shift = {k + 1 if k >= junk_line else k: v for k, v in clean.items()}
    if fmt == "jsonl":  # one line, one record: the others are untouched
        positional = "id" not in outcome.columns_used  # row positions count the junk row too

        def plain(fate_map):
            return {
                k: tuple(
                    _FIRST_ON_LINE.sub("first on line N", x) if isinstance(x, str) else x
                    for i, x in enumerate(v)
                    if not (positional and i == 1)
                )
                for k, v in fate_map.items()
                if k != junk_line
            }

        assert plain(got) == plain(shift)
    for line in shift:
        if line < junk_line or line in got:
            continue  # as before, or read and kept or reported at its own line
        # Swallowed into a neighbour (an open quote or string in the junk): the row that took it in
        # starts at the junk line or later and at or before this one, and is kept or reported.
        assert any(junk_line <= r <= line for r in got), (
            f"row written at line {line} vanished without an issue (junk on line {junk_line})"
        )


# --------------------------------------------------------------------------------------------
# The bugs these properties found, pinned as plain examples
# --------------------------------------------------------------------------------------------


def test_a_stray_closing_brace_in_a_json_array_is_reported_once_and_the_rows_after_it_load(tmp_path):
    # Was an endless loop: the same issue row for the '}' forever, memory growing until killed.
    path = tmp_path / "d.json"
    path.write_text('[\n{"text": "a", "label": "x"}},\n{"text": "b", "label": "y"}\n]\n', encoding="utf-8")
    rows = list(itertools.islice(iter_raw_rows(path, "json"), 10))  # bounded: a regression fails, not hangs
    assert [(r.line, r.fields is None) for r in rows] == [(2, False), (2, True), (3, False)]
    result = read(path, "classify")
    assert list(result.frame["input"]) == ["a", "b"]
    assert [(i["line"], i["detail"]) for i in result.issues.rows] == [(2, "malformed JSON: Expecting value (col 28)")]


def test_text_after_a_json_arrays_closing_bracket_is_reported_not_ignored(tmp_path):
    # Was silently ignored: a stray ']' closed the array and the rows after it vanished unreported.
    path = tmp_path / "d.json"
    path.write_text('[\n{"text": "a", "label": "x"},\n]\n{"text": "b", "label": "y"}\n]\n', encoding="utf-8")
    result = read(path, "classify")
    assert result.rows_read == 2 and list(result.frame["input"]) == ["a"]
    assert [(i["line"], i["detail"]) for i in result.issues.rows] == [
        (4, "malformed JSON: text after the array's closing ']' on line 3; the rest of the file could not be read")
    ]


@pytest.mark.parametrize("damage", ["bom", "bytes"])
def test_a_damaged_parquet_file_is_an_ingest_error_naming_it(tmp_path, damage):
    # Was a traceback from pyarrow (OSError, ArrowInvalid, UnicodeDecodeError) while reading rows.
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["hello", "there"], "label": ["a", "b"]}), path)
    raw = path.read_bytes()
    if damage == "bom":
        path.write_bytes(BOM + raw)
    else:  # the first data page's header overwritten (the footer still reads)
        path.write_bytes(raw[:4] + b"\xff" * 12 + raw[16:])
    with pytest.raises(IngestError, match="is not a readable Parquet file") as info:
        read_split_file(ProjectConfig(task="classify", data=DataConfig(train=str(path))), path)
    assert str(path) in str(info.value)

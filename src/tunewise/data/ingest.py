"""Ingest: read the user's data file into the normalised record DataFrame (see ``records.py``).

Reading streams, so a file larger than memory works: CSV/TSV through the ``csv`` module over
lines we decode ourselves, JSON Lines line by line, a JSON array element by element, Parquet batch
by batch. The result frame is built chunk by chunk, so memory follows the output, not every raw
field of every row.

A bad row never stops the run: it lands in the ``ingest`` issues table as ``malformed`` with the
file, the physical line where it starts and the reason, and the rest loads. Only a file that
cannot give a single usable row raises :class:`IngestError`.

Layers, bottom up:

1. ``iter_raw_rows``: one :class:`RawRow` per record in the file (its line and its fields, or why
   it could not be read). Knows file formats, nothing about record shapes.
2. ``_Plan``: which column plays which role (input, label, target, ...) for a record format;
   turns one raw row into one normalised record or says why it cannot.
3. ``ingest`` / ``sniff``: open, plan, stream, count, collect issues.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import functools
import io
import json
import math
import os
import re
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

import pandas as pd

from tunewise.core.errors import TunewiseError
from tunewise.core.progress import progress
from tunewise.core.records import CORE_COLUMNS, answer_column
from tunewise.data.issues import IssueTable

FILE_FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")
RECORD_FORMATS = ("text_label", "instruction", "prompt_completion", "messages")
COLUMN_ROLES = ("id", "input", "label", "target", "instruction", "messages")

_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}

# Common column names per role, in order of preference; matched case-insensitively.
INPUT_NAMES = ("text", "sentence", "query", "utterance", "message", "input", "prompt", "question")
LABEL_NAMES = ("label", "intent", "category", "class")
TARGET_NAMES = ("reply", "response", "answer", "output", "completion", "target")

# Names the frame owns; a user column with one of these names is kept as ``meta_<name>``.
_RESERVED = set(CORE_COLUMNS) | {"label", "target"}

_SAMPLE_ROWS = 1000  # rows read to learn the columns of a JSON file before the full pass
_READ_CHUNK = 1 << 20  # characters read at a time from a JSON array


class IngestError(TunewiseError):
    """The data file as a whole cannot be used; the message names the file and says why."""

    hint = "check the data file (csv, tsv, jsonl, json or parquet) and the column names in the config's data section"


class RawRow(NamedTuple):
    """One record as read from the file, before any record shape is applied.

    ``line`` is the 1-based physical line where the record starts (Parquet: 1-based row number).
    Exactly one of ``fields`` (column -> value) and ``error`` (why it could not be read) is set.
    ``chars`` is the record's size in characters as it stands in the file (JSON: the object's
    text; CSV/TSV: its field values), what ``data.max_chars`` limits; None where unknown.
    """

    line: int
    fields: dict[str, Any] | None
    error: str | None = None
    chars: int | None = None


@dataclass
class IngestResult:
    frame: pd.DataFrame
    issues: IssueTable
    record_format: str
    file_format: str
    columns_used: dict[str, str]
    rows_read: int


# --------------------------------------------------------------------------------------------
# Files and formats
# --------------------------------------------------------------------------------------------


def _check_file(path: Path) -> None:
    if not path.exists():
        raise IngestError(f"data file not found: {path}")
    if path.is_dir():
        raise IngestError(f"{path} is a directory; expected a data file (csv, tsv, jsonl, json, parquet)")
    if not os.access(path, os.R_OK):
        raise IngestError(f"cannot read {path}: permission denied")
    if path.stat().st_size == 0:
        raise IngestError(f"{path} is empty (0 bytes)")


def _codec(encoding: str) -> str:
    """The codec's canonical name (``utf-8``, ``iso8859-1``, ``cp1252``); an unknown one is an error."""
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise IngestError(f"unknown text encoding {encoding!r} (data.encoding); e.g. utf-8, latin-1, cp1252") from None


def _is_utf8(encoding: str) -> bool:
    return _codec(encoding) in ("utf-8", "utf-8-sig")


_TEXT_HEAD = 8192  # bytes looked at to tell a text file from a binary one
# Control bytes no text data file holds (tab, newlines, form feed and escape are allowed).
_CONTROL_BYTES = bytes(b for b in range(32) if b not in (9, 10, 11, 12, 13, 27)) + b"\x7f"
_MAGIC = (
    (b"PAR1", "it looks like a Parquet file: name it .parquet or set data.format: parquet"),
    (b"\x1f\x8b", "it looks like a gzip file: decompress it first"),
    (b"PK\x03\x04", "it looks like a zip archive (or an Excel .xlsx file): extract it, or save the sheet as CSV"),
    (b"\xd0\xcf\x11\xe0", "it looks like an old Excel or Word file: save it as CSV"),
    (b"\xff\xfe", "it looks like UTF-16 text: save it as UTF-8"),
    (b"\xfe\xff", "it looks like UTF-16 text: save it as UTF-8"),
)


def _check_text(path: Path) -> None:
    """Refuse a file that is not text (binary data, a compressed or Parquet file under a text
    name, UTF-16) with one clear message, before a CSV or JSON parser trips over its bytes."""
    with open(path, "rb") as f:
        head = f.read(_TEXT_HEAD)
    why = None
    for magic, said in _MAGIC:
        if head.startswith(magic):
            why = said
            break
    if why is None and b"\x00" in head:
        zeros_odd = head[1::2].count(0) > 0.4 * len(head[1::2])
        zeros_even = head[0::2].count(0) > 0.4 * len(head[0::2])
        why = (
            "it looks like UTF-16 text: save it as UTF-8"
            if zeros_odd != zeros_even
            else "it holds NUL bytes, as binary files do"
        )
    if why is None and head:
        control = sum(head.count(bytes([b])) for b in _CONTROL_BYTES)
        if control > 0.05 * len(head):
            why = f"{control} of its first {len(head):,} bytes are control characters"
    if why is not None:
        raise IngestError(
            f"{path} does not look like a text data file ({why}); expected csv, tsv, jsonl, json or parquet"
        )


def _first_char(path: Path, encoding: str = "utf-8") -> str:
    """First non-whitespace character of a text file (after any BOM), '' if none in 64 KiB."""
    with open(path, "rb") as f:
        head = f.read(65536)
    return head.decode("utf-8-sig" if _is_utf8(encoding) else encoding, errors="replace").lstrip()[:1]


def known_extension(path: str | Path) -> bool:
    """Whether the file's extension names a format (``.csv``, ``.jsonl``, ...)."""
    return Path(path).suffix.lower() in _EXTENSIONS


def resolve_file_format(path: str | Path, file_format: str = "auto", encoding: str = "utf-8") -> str:
    """The concrete file format: the one given, or inferred from the extension and content."""
    path = Path(path)
    if file_format != "auto":
        if file_format not in FILE_FORMATS:
            raise IngestError(
                f"unknown file format {file_format!r} for {path}; expected one of {', '.join(FILE_FORMATS)}"
            )
        return file_format
    _check_file(path)
    fmt = _EXTENSIONS.get(path.suffix.lower())
    if fmt == "json" or fmt is None:
        _check_text(path)
        first = _first_char(path, encoding)
        if first == "[":
            return "json"
        if first == "{":
            return "jsonl"
        if fmt == "json":
            raise IngestError(f"{path} does not start with '[' or '{{'; expected a JSON array of records or JSON Lines")
        # Unknown extension and not JSON: a delimited text file; tabs in the header mean TSV.
        with open(path, "rb") as f:
            header = f.readline()
        return "tsv" if b"\t" in header else "csv"
    return fmt


def iter_raw_rows(path: str | Path, file_format: str, encoding: str = "utf-8") -> Iterator[RawRow]:
    """Stream the records of a file as :class:`RawRow`, one per record, bad ones included.

    Blank lines are not records. Raises :class:`IngestError` for problems of the whole file
    (missing, a directory, empty, unreadable, not Parquet).
    """
    return _open_rows(Path(path), resolve_file_format(path, file_format, encoding), encoding)[1]


class _Rows:
    """A raw-row iterator over a file opened before the first row is asked for (to read its header
    or schema): ``close()`` releases the file even if iteration never started, which closing a
    bare generator would not do."""

    def __init__(self, rows: Iterator[RawRow], release: Callable[[], None]) -> None:
        self._rows = rows
        self._release = release

    def __iter__(self) -> _Rows:
        return self

    def __next__(self) -> RawRow:
        return next(self._rows)

    def close(self) -> None:
        close = getattr(self._rows, "close", None)
        if close:
            close()
        self._release()


def _open_rows(path: Path, fmt: str, encoding: str = "utf-8") -> tuple[list[str] | None, Iterator[RawRow]]:
    """(header columns when the format has a header or schema, raw row iterator).

    The iterator has a ``close()``; call it (``contextlib.closing``) if you stop early.
    """
    _check_file(path)
    if fmt in ("csv", "tsv", "jsonl", "json"):
        _check_text(path)
        encoding = _codec(encoding)
    if fmt in ("csv", "tsv"):
        return _delimited_rows(path, "\t" if fmt == "tsv" else ",", encoding)
    if fmt == "jsonl":
        _refuse_json_object(path, encoding)
        return None, _jsonl_rows(path, encoding)
    if fmt == "json":
        return None, _json_array_rows(path, encoding)
    if fmt == "parquet":
        return _parquet_rows(path)
    raise IngestError(f"unknown file format {fmt!r} for {path}; expected one of {', '.join(FILE_FORMATS)}")


def _undecodable(offset: int, encoding: str = "utf-8") -> str:
    name = "UTF-8" if _is_utf8(encoding) else encoding
    return f"undecodable bytes (not {name}) at byte offset {offset}"


_JSON_OBJECT_LIMIT = 64 << 20  # bytes of a file parsed whole to tell one JSON object from JSON Lines


def _refuse_json_object(path: Path, encoding: str) -> None:
    """A file that is one JSON object pretty-printed over many lines is not JSON Lines: reading it
    line by line would reject every line as malformed. Say so instead. (A one-line object is a
    JSON Lines file of one record.)"""
    codec = "utf-8-sig" if _is_utf8(encoding) else encoding
    first = second = None
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                if first is None:
                    first = raw.decode(codec, errors="replace").strip()
                else:
                    second = raw
                    break
    if first is None or not first.startswith("{"):
        return
    try:
        value = json.loads(first)
    except json.JSONDecodeError:
        value = None
    if value is not None or second is None:
        return  # a whole object on the first line: JSON Lines (one line is one record)
    if path.stat().st_size > _JSON_OBJECT_LIMIT:
        if first != "{":
            return
        whole: dict = {}
    else:
        try:
            whole = json.loads(path.read_bytes().decode(codec))
        except (ValueError, UnicodeDecodeError):
            return  # not one JSON value: JSON Lines with bad lines, reported line by line
        if not isinstance(whole, dict):
            return
    under = [k for k, v in whole.items() if _records_list(v)]
    hint = (
        (
            f" (the records look like the list under key {under[0]!r}: save that list as the file, or one "
            "record per line)"
        )
        if under
        else ""
    )
    raise IngestError(f"{path} holds a JSON object; expected a list of records or JSON Lines{hint}")


def _records_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value[:100])


class _LineDecoder:
    """Decode a binary file line by line, strictly, so one bad line does not spoil the file.

    An undecodable line is passed on decoded with U+FFFD (so a CSV parser stays in step) and its
    line number and byte offset are remembered in ``bad`` for the caller to turn into a bad row.
    """

    def __init__(self, binary: IO[bytes], encoding: str = "utf-8") -> None:
        self.binary = binary
        self.encoding = _codec(encoding)
        self.bad: deque[tuple[int, int]] = deque()  # (line number, byte offset), in order
        self.line_no = 0

    def __iter__(self) -> Iterator[str]:
        offset = 0
        for raw in self.binary:
            self.line_no += 1
            start = offset
            offset += len(raw)
            if self.line_no == 1 and raw.startswith(codecs.BOM_UTF8) and _is_utf8(self.encoding):
                raw = raw[len(codecs.BOM_UTF8) :]
                start += len(codecs.BOM_UTF8)
            try:
                yield raw.decode(self.encoding)
            except UnicodeDecodeError as err:
                self.bad.append((self.line_no, start + err.start))
                yield raw.decode(self.encoding, errors="replace")

    def bad_offset_between(self, first: int, last: int) -> int | None:
        """Byte offset of the first undecodable line in [first, last]; forgets lines <= last."""
        found = None
        while self.bad and self.bad[0][0] <= last:
            line, offset = self.bad.popleft()
            if line >= first and found is None:
                found = offset
        return found


def _csv_error(err: csv.Error) -> str:
    """csv's message, minus its advice to open the file in universal-newline mode (we do)."""
    text = str(err)
    if "new-line character seen in unquoted field" in text:
        return "a carriage return (\\r) inside an unquoted field"
    return text


def _delimited_rows(path: Path, delimiter: str, encoding: str = "utf-8") -> tuple[list[str], Iterator[RawRow]]:
    # The default 128 KiB field limit would abort the whole file on one huge field; such rows
    # are parsed here and rejected later with a clear "over data.max_chars" reason.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    binary = open(path, "rb")
    lines = _LineDecoder(binary, encoding)
    reader = csv.reader(iter(lines), delimiter=delimiter)

    header: list[str] | None = None
    last_end = 0
    try:
        for fields in reader:
            last_end = reader.line_num
            if fields:
                header = fields
                break
    except csv.Error as err:
        binary.close()
        if "new-line character seen in unquoted field" in str(err):
            raise IngestError(
                f"cannot read the header of {path}: it has a carriage return (\\r) that ends no "
                "line (old Mac line ends?); save it with LF or CRLF line ends"
            ) from err
        raise IngestError(f"cannot read the header of {path}: {err}") from err
    if header is None:
        binary.close()
        raise IngestError(f"{path} has no header line (only blank lines)")
    bad_header = lines.bad_offset_between(1, last_end)
    if bad_header is not None:
        binary.close()
        raise IngestError(
            f"the header of {path} has {_undecodable(bad_header, encoding)}; save the file as UTF-8"
            + ("" if not _is_utf8(encoding) else " or set data.encoding (e.g. latin-1)")
        )

    columns = _header_names(header, path)

    def rows() -> Iterator[RawRow]:
        end = last_end
        with binary:  # closes the file when the rows run out
            while True:
                start = end + 1
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as err:
                    end = reader.line_num
                    lines.bad_offset_between(start, end)
                    yield RawRow(start, None, f"CSV parse error: {_csv_error(err)}")
                    continue
                end = reader.line_num
                bad_offset = lines.bad_offset_between(start, end)
                if not fields:  # a blank line is no record
                    continue
                if bad_offset is not None:
                    yield RawRow(start, None, _undecodable(bad_offset, encoding))
                elif len(fields) != len(columns):
                    detail = f"expected {len(columns)} fields, got {len(fields)}"
                    if end - start >= 2:
                        detail += f" (the record runs over lines {start}-{end}: an unbalanced quote?)"
                    yield RawRow(start, None, detail)
                else:
                    yield RawRow(start, dict(zip(columns, fields)), None, sum(map(len, fields)))

    return columns, _Rows(rows(), binary.close)


def _header_names(header: list[str], path: Path) -> list[str]:
    names = []
    for position, name in enumerate(header):
        name = name.strip() or f"unnamed_{position}"
        if name in names:
            raise IngestError(f"column {name!r} appears twice in the header of {path}; rename one of them")
        names.append(name)
    return names


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _json_error(err: json.JSONDecodeError, column: int) -> str:
    return f"malformed JSON: {err.msg} (col {column})"


def _jsonl_rows(path: Path, encoding: str = "utf-8") -> Iterator[RawRow]:
    decoder = json.JSONDecoder()
    with open(path, "rb") as binary:
        lines = _LineDecoder(binary, encoding)
        for text in lines:
            line_no = lines.line_no
            if lines.bad and lines.bad[-1][0] == line_no:
                yield RawRow(line_no, None, _undecodable(lines.bad.pop()[1], encoding))
                continue
            text = text.rstrip("\r\n")  # so an error at the end of the line has a column on it
            if not text.strip():
                continue
            begin = len(text) - len(text.lstrip())
            try:
                value, end = decoder.raw_decode(text, begin)
                if text[end:].strip():
                    # Two values on one line, or trailing junk: as json.loads would say.
                    raise json.JSONDecodeError("Extra data", text, end)
            except json.JSONDecodeError as err:
                yield RawRow(line_no, None, _json_error(err, err.colno))
                continue
            if isinstance(value, dict):
                yield RawRow(line_no, value, None, end - begin)
            else:
                yield RawRow(line_no, None, f"line holds {_json_kind(value)}, expected a JSON object")


# One JSON string (escapes included), a lone quote (an unterminated string), or a bracket/comma.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|"|[{}\[\],]')
_WHITESPACE = re.compile(r"[ \t\r\n]*")
_SURROGATE = re.compile("[\udc80-\udcff]")


def _element_end(buf: str, start: int) -> int | None:
    """Index of the ',' or ']' that ends the array element starting at ``start``, or None.

    Used only when json cannot decode the element: brackets and strings are followed (not
    validated) so a malformed element can be skipped and the elements after it still load.
    None means the buffer ends first (read more, or the element runs to the end of the file).
    """
    depth = 0
    for match in _JSON_TOKEN.finditer(buf, start):
        token = match.group()
        if token == '"':
            return None
        if token in "{[":
            depth += 1
        elif token in "}]":
            if depth == 0:
                return match.start()
            depth -= 1
        elif token == "," and depth == 0:
            return match.start()
    return None


def _json_array_rows(path: Path, encoding: str = "utf-8") -> Iterator[RawRow]:
    """Elements of a top-level JSON array, one at a time.

    Hand-written because the standard library has no incremental JSON parser (and ``ijson`` is
    not a dependency): ``json.JSONDecoder.raw_decode`` decodes one element from a buffer that is
    refilled in chunks and trimmed behind us, so memory holds about one chunk, not the file.
    Undecodable bytes are let through as surrogates (``surrogateescape``) and reported per element.
    """
    utf8 = _is_utf8(encoding)
    byte_codec = "utf-8" if utf8 else encoding
    with open(path, "rb") as probe:
        bom = len(codecs.BOM_UTF8) if probe.read(3) == codecs.BOM_UTF8 and utf8 else 0
    decoder = json.JSONDecoder()
    with open(path, "rb") as binary:
        text = io.TextIOWrapper(
            binary, encoding="utf-8-sig" if utf8 else encoding, errors="surrogateescape", newline=""
        )
        buf = ""
        eof = False
        buf_line = 1  # line number at buf[0]
        buf_col = 0  # characters on buf[0]'s line before buf[0] (after a trim mid-line)
        buf_bytes = bom  # byte offset of buf[0] in the file
        counted_pos, counted_line = 0, 1  # line bookkeeping: line number at buf[counted_pos]

        def fill() -> bool:
            nonlocal buf, eof
            chunk = text.read(_READ_CHUNK)
            if not chunk:
                eof = True
                return False
            buf += chunk
            return True

        def line_at(pos: int) -> int:
            nonlocal counted_pos, counted_line
            if pos >= counted_pos:
                counted_line += buf.count("\n", counted_pos, pos)
            else:
                counted_line -= buf.count("\n", pos, counted_pos)
            counted_pos = pos
            return counted_line

        def column_at(pos: int) -> int:
            newline = buf.rfind("\n", 0, pos)
            return pos - newline if newline >= 0 else buf_col + pos + 1

        def skip_ws(pos: int) -> int:
            while True:
                pos = _WHITESPACE.match(buf, pos).end()
                if pos < len(buf) or eof or not fill():
                    return pos

        def trim(pos: int) -> int:
            """Drop buf[:pos], keeping the line/column/byte bookkeeping; returns the new pos 0."""
            nonlocal buf, buf_line, buf_col, buf_bytes, counted_pos, counted_line
            dropped = buf[:pos]
            newline = dropped.rfind("\n")
            buf_col = len(dropped) - newline - 1 if newline >= 0 else buf_col + len(dropped)
            buf_line = line_at(pos)
            buf_bytes += len(dropped.encode(byte_codec, "surrogateescape"))
            buf = buf[pos:]
            counted_pos, counted_line = 0, buf_line
            return 0

        def byte_offset(pos: int) -> int:
            return buf_bytes + len(buf[:pos].encode(byte_codec, "surrogateescape"))

        def after_close(pos: int) -> Iterator[RawRow]:
            # ``pos`` is at the array's closing ']'. Text after it (a stray ']' among the elements
            # closes the array early) was ignored, its rows lost without an issue: report it.
            close_line = line_at(pos)
            pos = skip_ws(pos + 1)
            if pos < len(buf):
                yield RawRow(
                    line_at(pos),
                    None,
                    f"malformed JSON: text after the array's closing ']' on line "
                    f"{close_line}; the rest of the file could not be read",
                )

        pos = skip_ws(0)
        if pos < len(buf) and buf[pos] == "{":
            raise IngestError(
                f"{path} holds a JSON object; expected a list of records or JSON Lines "
                "(data.format json reads a list [{...}, {...}]; for one object per line set "
                "data.format: jsonl)"
            )
        if pos >= len(buf) or buf[pos] != "[":
            raise IngestError(f"{path} is not a JSON array of records (it should start with '[')")
        pos = skip_ws(pos + 1)
        if pos < len(buf) and buf[pos] == "]":
            yield from after_close(pos)
            return
        while True:
            if pos > _READ_CHUNK:
                pos = trim(pos)
            if pos >= len(buf):
                yield RawRow(
                    line_at(len(buf)), None, "malformed JSON: the array is not closed with ']' at the end of the file"
                )
                return
            start = pos
            try:
                value, end = decoder.raw_decode(buf, start)
                if end >= len(buf) and not eof:
                    raise json.JSONDecodeError("value may continue", buf, end)  # a number cut by the chunk
                error = None
            except json.JSONDecodeError as err:
                end = _element_end(buf, start)
                if end is None and not eof:
                    fill()
                    continue  # the element is cut by the chunk end: retry with more text
                error = _json_error(err, column_at(err.pos))
                if line_at(err.pos) != line_at(start):
                    error = f"malformed JSON: {err.msg} (line {line_at(err.pos)}, col {column_at(err.pos)})"
                if end is None:  # runs to the end of the file: nothing after it can be read
                    yield RawRow(line_at(start), None, error + "; the rest of the file could not be read")
                    return
                if end == start and buf[start] == "}":
                    end += 1  # a stray '}' (one too many): report it and move past it, or this loops forever
            surrogate = _SURROGATE.search(buf, start, end)
            line = line_at(start)
            if surrogate:
                yield RawRow(line, None, _undecodable(byte_offset(surrogate.start()), encoding))
            elif error:
                yield RawRow(line, None, error)
            elif isinstance(value, dict):
                yield RawRow(line, value, None, end - start)
            else:
                yield RawRow(line, None, f"array element is {_json_kind(value)}, expected a JSON object")
            pos = skip_ws(end)
            if pos >= len(buf):
                yield RawRow(
                    line_at(pos), None, "malformed JSON: the array is not closed with ']' at the end of the file"
                )
                return
            if buf[pos] == "]":
                yield from after_close(pos)
                return
            if buf[pos] == ",":
                pos = skip_ws(pos + 1)
                if pos < len(buf) and buf[pos] == "]":
                    yield from after_close(pos)
                    return  # a trailing comma: not valid JSON, but nothing is lost by accepting it
            # Anything else (a missing comma, junk between elements) is taken as the start of the
            # next element, which then decodes or is reported on its own line.


def _parquet_rows(path: Path) -> tuple[list[str], Iterator[RawRow]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ... for a non-Parquet file
        raise IngestError(f"{path} is not a readable Parquet file: {err}") from err
    columns = list(parquet.schema_arrow.names)

    def rows() -> Iterator[RawRow]:
        row_number = 0
        with parquet:  # closes the file when the rows run out
            try:
                for batch in parquet.iter_batches(batch_size=10_000):
                    for fields in batch.to_pylist():
                        row_number += 1
                        yield RawRow(row_number, fields)
            except Exception as err:
                # A file whose footer reads but whose data pages do not (damaged bytes, a prefix
                # such as a BOM) failed here with pyarrow's OSError, ArrowInvalid or
                # UnicodeDecodeError and a traceback: the whole file is unusable, say so.
                raise IngestError(
                    f"{path} is not a readable Parquet file (damaged after row {row_number:,}): "
                    f"{' '.join(str(err).split())}"
                ) from err

    return columns, _Rows(rows(), parquet.close)


# --------------------------------------------------------------------------------------------
# Record shapes: which column plays which role
# --------------------------------------------------------------------------------------------


class _RowProblem(Exception):
    """One row cannot become a record; the message is the issue detail."""


def _is_nested(value: Any) -> bool:
    return isinstance(value, (list, dict, tuple))


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_text(value: Any, name: str) -> str:
    """A field value as text: strings as they are, numbers converted, anything else refused."""
    if isinstance(value, str):
        return value
    if _is_missing(value):
        raise _RowProblem(f"field {name!r} is null, expected text")
    if isinstance(value, bool):
        raise _RowProblem(f"field {name!r} is a boolean, expected text")
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        raise _RowProblem(f"field {name!r} is a list, expected text")
    if isinstance(value, dict):
        raise _RowProblem(f"field {name!r} is an object, expected text")
    if isinstance(value, (bytes, bytearray)):
        raise _RowProblem(f"field {name!r} is binary, expected text")
    return str(value)  # dates, decimals from Parquet: their usual text form


def _meta_value(value: Any) -> str | None:
    if _is_missing(value):
        return None
    if _is_nested(value):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _row_chars(fields: dict[str, Any]) -> int:
    total = 0
    for value in fields.values():
        if isinstance(value, str):
            total += len(value)
        elif value is not None:
            total += len(json.dumps(value, ensure_ascii=False, default=str)) if _is_nested(value) else len(str(value))
    return total


@functools.lru_cache(maxsize=4096)
def _meta_name(column: str) -> str:
    return f"meta_{column}" if column.lower() in _RESERVED else column


def _find(columns: list[str], names: tuple[str, ...]) -> str | None:
    by_lower = {c.lower(): c for c in reversed(columns)}
    for name in names:
        if name in by_lower:
            return by_lower[name]
    return None


def _message_text(content: Any, index: int, name: str) -> str:
    if isinstance(content, str):
        return content
    if content is None:  # e.g. an assistant turn that only calls a tool
        return ""
    if isinstance(content, list):  # OpenAI content parts: keep the text parts
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if all(isinstance(p, str) for p in parts) and parts:
            return "\n".join(parts)
    raise _RowProblem(f"field {name!r}: message {index} content is {_json_kind(content)}, expected text")


def _parse_messages(value: Any, name: str) -> list[dict[str, str]]:
    if isinstance(value, str):  # CSV and friends hold the list as a JSON string
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise _RowProblem(f"field {name!r} is not valid JSON: {err.msg} (col {err.colno})") from None
    if _is_missing(value):
        raise _RowProblem(f"field {name!r} is null, expected a list of messages")
    if not isinstance(value, (list, tuple)):
        raise _RowProblem(f"field {name!r} is {_json_kind(value)}, expected a list of messages")
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or "content" not in message:
            raise _RowProblem(f"field {name!r}: message {index} is not an object with 'role' and 'content'")
        messages.append({"role": message["role"], "content": _message_text(message["content"], index, name)})
    if not messages:
        raise _RowProblem(f"empty field {name!r}")
    return messages


@dataclass
class _Plan:
    """Which column plays which role; ``convert`` turns one raw row into one record."""

    task: str
    record_format: str
    roles: dict[str, str]  # role -> column name in the file
    keep_columns: list[str]
    answer: str = field(init=False)

    def __post_init__(self) -> None:
        self.answer = answer_column(self.task)

    def _get(self, fields: dict[str, Any], role: str) -> Any:
        column = self.roles[role]
        if column not in fields:
            raise _RowProblem(f"missing field {column!r}")
        return fields[column]

    def _required_text(self, fields: dict[str, Any], role: str) -> str:
        column = self.roles[role]
        text = _as_text(self._get(fields, role), column)
        if not text.strip():
            raise _RowProblem(f"empty field {column!r}")
        return text

    def _input_text(self, fields: dict[str, Any], role: str) -> str:
        # For classify an empty input is not malformed: curation reports it as `empty`.
        if self.task == "classify":
            value = self._get(fields, role)
            return "" if _is_missing(value) else _as_text(value, self.roles[role])
        return self._required_text(fields, role)

    def row_id(self, fields: dict[str, Any] | None, position: int) -> str | None:
        if "id" not in self.roles:
            return str(position)
        if fields is None:
            return None
        value = fields.get(self.roles["id"])
        if _is_missing(value) or _is_nested(value) or not str(value).strip():
            return None
        return str(value)

    def convert(self, fields: dict[str, Any], position: int) -> dict[str, Any]:
        record: dict[str, Any] = {}
        if "id" in self.roles:
            record["id"] = self._required_text(fields, "id")
        else:
            record["id"] = str(position)
        context = "[]"
        answer: str | None = None
        if self.record_format == "messages":
            user_text, context, answer = self._from_messages(fields)
        elif self.record_format == "instruction":
            user_text = self._input_text(fields, "instruction")
            extra_column = self.roles.get("input")
            extra = fields.get(extra_column) if extra_column else None
            if not _is_missing(extra):
                extra = _as_text(extra, extra_column)
                if extra.strip():
                    user_text = f"{user_text}\n\n{extra}"
        else:
            user_text = self._input_text(fields, "input")
        if answer is None:
            answer = self._required_text(fields, self.answer)
        record["input"] = user_text
        record["context"] = context
        record[self.answer] = answer
        return record

    def _from_messages(self, fields: dict[str, Any]) -> tuple[str, str, str | None]:
        name = self.roles["messages"]
        messages = _parse_messages(self._get(fields, "messages"), name)
        answer = None
        if self.task == "generate":
            if messages[-1]["role"] != "assistant":
                raise _RowProblem(
                    f"field {name!r} ends with a {messages[-1]['role']!r} message, expected the final 'assistant' reply"
                )
            answer = messages[-1]["content"]
            if not answer.strip():
                raise _RowProblem(f"field {name!r}: the final assistant reply is empty")
            messages = messages[:-1]
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if not users:
            raise _RowProblem(f"field {name!r} has no 'user' message" + (" before the final reply" if answer else ""))
        last_user = users[-1]
        user_text = messages[last_user]["content"]
        if self.task == "generate" and not user_text.strip():
            raise _RowProblem(f"field {name!r}: the last user message is empty")
        context = json.dumps(messages[:last_user], ensure_ascii=False)
        return user_text, context, answer


def _resolve_column(columns: list[str], wanted: str, key: str, source: str) -> str:
    if wanted in columns:
        return wanted
    for column in columns:
        if column.lower() == wanted.lower():
            return column
    raise IngestError(
        f"data.columns.{key} is {wanted!r} but {source} has no such column; columns found: {', '.join(columns)}"
    )


def _detect_record_format(columns: list[str], configured: dict[str, str]) -> str:
    if "messages" in configured or _find(columns, ("messages",)):
        return "messages"
    if "instruction" in configured or _find(columns, ("instruction",)):
        return "instruction"
    if _find(columns, ("prompt",)) and _find(columns, ("completion",)):
        return "prompt_completion"
    return "text_label"


def _candidate_roles(columns: list[str], record_format: str, configured: dict[str, str]) -> dict[str, str | None]:
    """Role -> column for every role the record format can use (None where nothing matched)."""
    names: dict[str, tuple[str, ...]] = {"label": LABEL_NAMES, "id": ("id",)}
    if record_format == "text_label":
        names |= {"input": INPUT_NAMES, "target": TARGET_NAMES}
    elif record_format == "instruction":
        names |= {"instruction": ("instruction",), "input": ("input",), "target": ("output", *TARGET_NAMES)}
    elif record_format == "prompt_completion":
        names |= {"input": ("prompt",), "target": ("completion",)}
    elif record_format == "messages":
        names |= {"messages": ("messages",)}
    roles: dict[str, str | None] = {}
    for role, candidates in names.items():
        roles[role] = configured.get(role) or _find(columns, candidates)
    return roles


def _plan(
    columns: list[str],
    *,
    task: str,
    record_format: str,
    configured: dict[str, str],
    keep_columns: list[str],
    source: str,
) -> _Plan:
    if record_format == "auto":
        record_format = _detect_record_format(columns, configured)
    elif record_format not in RECORD_FORMATS:
        raise IngestError(
            f"unknown record format {record_format!r}; expected auto or one of {', '.join(RECORD_FORMATS)}"
        )
    candidates = _candidate_roles(columns, record_format, configured)
    answer = answer_column(task)
    needed = {
        "text_label": ["input"],
        "instruction": ["instruction"],
        "prompt_completion": ["input"],
        "messages": ["messages"],
    }[record_format]
    if not (record_format == "messages" and task == "generate"):
        needed.append(answer)
    roles: dict[str, str] = {}
    for role in needed:
        if candidates.get(role) is None:
            what = {
                "input": "the input text",
                "label": "the label",
                "target": "the target reply",
                "instruction": "the instruction",
                "messages": "the chat messages",
            }[role]
            raise IngestError(
                f"{source} has no column for {what} ({record_format} records, task {task}); "
                f"columns found: {', '.join(columns) or '(none)'}; "
                f"set data.columns.{role} in tunewise.yaml to the column that holds it"
            )
        roles[role] = candidates[role]  # type: ignore[assignment]
    optional = ["id"] + (["input"] if record_format == "instruction" else [])
    for role in optional:
        if candidates.get(role):
            roles[role] = candidates[role]  # type: ignore[assignment]
    keep = [_resolve_column(columns, name, "slice_columns", source) for name in keep_columns]
    return _Plan(task=task, record_format=record_format, roles=roles, keep_columns=keep)


def _configured_columns(columns: dict[str, str | None] | None, found: list[str], source: str) -> dict[str, str]:
    configured: dict[str, str] = {}
    for role, name in (columns or {}).items():
        if role not in COLUMN_ROLES:
            raise IngestError(f"unknown data.columns key {role!r}; known: {', '.join(COLUMN_ROLES)}")
        if name:
            configured[role] = _resolve_column(found, name, role, source)
    return configured


@dataclass
class _Sample:
    columns: list[str]  # header, or keys of the sampled rows in first-seen order
    rows: list[dict[str, Any]]  # fields of up to the limit of good rows
    read: int  # raw rows read, bad ones included
    first_errors: list[str]  # "line N: reason" for the first bad rows

    def raise_if_unusable(self, source: str, fmt: str) -> None:
        if self.read == 0:
            raise IngestError(f"{source} has no data rows" + (" (only a header)" if fmt in ("csv", "tsv") else ""))
        if not self.rows:
            raise IngestError(
                f"no usable rows in {source}: all {self.read:,} rows were rejected; "
                f"first reasons: {'; '.join(self.first_errors)}"
            )


def _sample(rows: Iterator[RawRow], limit: int) -> tuple[list[str], list[dict[str, Any]], int, list[str]]:
    seen: dict[str, None] = {}
    good: list[dict[str, Any]] = []
    first_errors: list[str] = []
    read = 0
    for raw in rows:
        read += 1
        if raw.fields is None and len(first_errors) < 3:
            first_errors.append(f"line {raw.line}: {raw.error}")
        if raw.fields is not None:
            good.append(raw.fields)
            seen.update(dict.fromkeys(raw.fields))
            if len(good) >= limit:
                break
    return list(seen), good, read, first_errors


def _sample_file(path: Path, fmt: str, sample_rows: int, encoding: str = "utf-8") -> _Sample:
    header, rows = _open_rows(path, fmt, encoding)
    with contextlib.closing(rows):  # type: ignore[type-var]
        found, good, read, first_errors = _sample(rows, sample_rows)
    return _Sample(header if header is not None else found, good, read, first_errors)


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
    header, rows = _open_rows(file_path, fmt, encoding)
    try:
        if header is not None:
            found = header
        else:  # JSON has no header: learn the columns from the first rows, then read from the top
            sample = _sample_file(file_path, fmt, _SAMPLE_ROWS, encoding)
            sample.raise_if_unusable(source, fmt)
            found = sample.columns
        configured = _configured_columns(columns, found, source)
        plan = _plan(
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
            chars = raw.chars if raw.chars is not None else _row_chars(fields)
            if chars > max_chars:
                reject(row_id, raw.line, f"row is {chars:,} characters, over data.max_chars={max_chars}")
                continue
            try:
                record = plan.convert(fields, row_position)
            except _RowProblem as problem:
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
                record[_meta_name(column)] = _meta_value(fields.get(column))
            for column, value in fields.items():
                if column in not_meta:
                    continue
                if isinstance(value, str):
                    record[_meta_name(column)] = value
                elif _is_nested(value):
                    nested_meta.add(_meta_name(column))
                else:
                    record[_meta_name(column)] = _meta_value(value)
            pending.append(record)
            if len(pending) >= chunk_rows:
                chunks.append(pd.DataFrame.from_records(pending))
                advance(len(pending))
                pending = []
        if pending:  # the last chunk is counted too (a file under one chunk showed "done 0 rows")
            chunks.append(pd.DataFrame.from_records(pending))
            advance(len(pending))

    if not chunks:
        _Sample(found, [], position, first_reasons).raise_if_unusable(source, fmt)
    frame = pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]
    core = ["id", "input", "context", answer, "source_file", "source_line", "synthetic"]
    kept = [_meta_name(c) for c in plan.keep_columns]
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
    _check_file(file_path)
    if file_path.suffix.lower() not in (".parquet", ".pq"):
        _check_text(file_path)  # before guessing an encoding for bytes that are no text
    if encoding is None:
        encoding = "utf-8" if file_path.suffix.lower() in (".parquet", ".pq") else detect_encoding(file_path)
    fmt = resolve_file_format(file_path, "auto", encoding)
    if fmt == "parquet":
        encoding = "utf-8"
    found = _sample_file(file_path, fmt, sample_rows, encoding)
    found.raise_if_unusable(source, fmt)
    columns, sample = found.columns, found.rows
    record_format = _detect_record_format(columns, {})
    roles = _candidate_roles(columns, record_format, {})

    label_column = roles.get("label")
    label_counts: Counter[str] = Counter()
    if label_column:
        for fields in sample:
            value = fields.get(label_column)
            if not _is_missing(value) and not _is_nested(value) and str(value).strip():
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
        if any(_is_nested(v) for v in values):
            continue
        texts = [v for v in values if isinstance(v, str)]
        if not texts or len(texts) < len([v for v in values if not _is_missing(v)]):
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

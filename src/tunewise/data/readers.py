"""Readers: one :class:`RawRow` per record of a data file (CSV, TSV, JSON Lines, a JSON array,
Parquet), with the physical line where it starts, or why it could not be read.

Reading streams, so a file larger than memory works: CSV/TSV through the ``csv`` module over lines
we decode ourselves, JSON Lines line by line, a JSON array element by element, Parquet batch by
batch. Knows file formats, nothing about record shapes (:mod:`tunewise.data.record_shapes`); which
format a file is, and whether it is a readable text file: :mod:`tunewise.data.file_formats`.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

from tunewise.data.file_formats import (
    FILE_FORMATS,
    IngestError,
    check_file,
    check_text,
    codec,
    is_utf8,
    resolve_file_format,
)

_READ_CHUNK = 1 << 20  # characters read at a time from a JSON array


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


def iter_raw_rows(path: str | Path, file_format: str, encoding: str = "utf-8") -> Iterator[RawRow]:
    """Stream the records of a file as :class:`RawRow`, one per record, bad ones included.

    Blank lines are not records. Raises :class:`IngestError` for problems of the whole file
    (missing, a directory, empty, unreadable, not Parquet).
    """
    return open_rows(Path(path), resolve_file_format(path, file_format, encoding), encoding)[1]


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


def open_rows(path: Path, fmt: str, encoding: str = "utf-8") -> tuple[list[str] | None, Iterator[RawRow]]:
    """(header columns when the format has a header or schema, raw row iterator).

    The iterator has a ``close()``; call it (``contextlib.closing``) if you stop early.
    """
    check_file(path)
    if fmt in ("csv", "tsv", "jsonl", "json"):
        check_text(path)
        encoding = codec(encoding)
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
    name = "UTF-8" if is_utf8(encoding) else encoding
    return f"undecodable bytes (not {name}) at byte offset {offset}"


_JSON_OBJECT_LIMIT = 64 << 20  # bytes of a file parsed whole to tell one JSON object from JSON Lines


def _refuse_json_object(path: Path, encoding: str) -> None:
    """A file that is one JSON object pretty-printed over many lines is not JSON Lines: reading it
    line by line would reject every line as malformed. Say so instead. (A one-line object is a
    JSON Lines file of one record.)"""
    text_codec = "utf-8-sig" if is_utf8(encoding) else encoding
    first = second = None
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                if first is None:
                    first = raw.decode(text_codec, errors="replace").strip()
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
            whole = json.loads(path.read_bytes().decode(text_codec))
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
        self.encoding = codec(encoding)
        self.bad: deque[tuple[int, int]] = deque()  # (line number, byte offset), in order
        self.line_no = 0

    def __iter__(self) -> Iterator[str]:
        offset = 0
        for raw in self.binary:
            self.line_no += 1
            start = offset
            offset += len(raw)
            if self.line_no == 1 and raw.startswith(codecs.BOM_UTF8) and is_utf8(self.encoding):
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
            + ("" if not is_utf8(encoding) else " or set data.encoding (e.g. latin-1)")
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


def json_kind(value: Any) -> str:
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
                yield RawRow(line_no, None, f"line holds {json_kind(value)}, expected a JSON object")


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
    utf8 = is_utf8(encoding)
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
                yield RawRow(line, None, f"array element is {json_kind(value)}, expected a JSON object")
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

"""Data files and their formats: whether a file can be read as data at all (present, not empty, text
not binary), its text encoding, and its format (csv, tsv, jsonl, json, parquet) from the extension
and content. The :class:`IngestError` for a file that cannot be used as a whole.
"""

from __future__ import annotations

import codecs
import os
from pathlib import Path

from tunewise.core.errors import TunewiseError

FILE_FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")

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


class IngestError(TunewiseError):
    """The data file as a whole cannot be used; the message names the file and says why."""

    hint = "check the data file (csv, tsv, jsonl, json or parquet) and the column names in the config's data section"


# --------------------------------------------------------------------------------------------
# Files and formats
# --------------------------------------------------------------------------------------------


def check_file(path: Path) -> None:
    if not path.exists():
        raise IngestError(f"data file not found: {path}")
    if path.is_dir():
        raise IngestError(f"{path} is a directory; expected a data file (csv, tsv, jsonl, json, parquet)")
    if not os.access(path, os.R_OK):
        raise IngestError(f"cannot read {path}: permission denied")
    if path.stat().st_size == 0:
        raise IngestError(f"{path} is empty (0 bytes)")


def codec(encoding: str) -> str:
    """The codec's canonical name (``utf-8``, ``iso8859-1``, ``cp1252``); an unknown one is an error."""
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise IngestError(f"unknown text encoding {encoding!r} (data.encoding); e.g. utf-8, latin-1, cp1252") from None


def is_utf8(encoding: str) -> bool:
    return codec(encoding) in ("utf-8", "utf-8-sig")


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


def check_text(path: Path) -> None:
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
    return head.decode("utf-8-sig" if is_utf8(encoding) else encoding, errors="replace").lstrip()[:1]


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
    check_file(path)
    fmt = _EXTENSIONS.get(path.suffix.lower())
    if fmt == "json" or fmt is None:
        check_text(path)
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

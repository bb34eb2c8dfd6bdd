"""Atomic artifact writing and stage paths.

Every artifact is written to a temporary name in the same folder and then renamed, so a killed
stage never leaves a half-written file that a later stage would trust (rename is atomic on POSIX
within one file system). A write that fails (disk full, read-only folder, a folder that is a
file) raises :class:`ArtifactWriteError` naming the artifact, and the file that was there before
is left as it was.

Files that hold user rows (Parquet, JSONL, CSV, TSV) are created owner-only (0600) whatever the
umask, and so are folders this module creates for them (0700): customer messages must not become
readable by every account on a shared machine. Other files get the mode a plain ``open()`` gives.

CSV files are for spreadsheets, and user text in them must not run as a formula (CSV injection):
:func:`write_csv` gives a text cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return a leading single quote (:func:`csv_safe`); :func:`read_csv` (or :func:`csv_unescape` on a
cell) takes it off again, so text read back is the text written.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from tunewise.core.errors import TunewiseError


def _current_umask() -> int:
    """The process's umask, read when a file is written (importing tunewise leaves it alone)."""
    try:  # Linux reports it without changing it
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)  # elsewhere the only portable way to read it is to set it (to a strict value)
    os.umask(mask)
    return mask


PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
# Formats the pipeline writes user rows in (records, splits, predictions, issues tables, sheets).
USER_DATA_SUFFIXES = frozenset({".parquet", ".jsonl", ".csv", ".tsv"})


class ArtifactWriteError(TunewiseError, OSError):
    """An artifact could not be written; the message names it and says what to check. The
    previous version of the file, if there was one, is unchanged. ``errno`` and ``filename`` (the
    artifact) are set as on any ``OSError``."""

    hint = "check the free disk space and the write permission of the run folder (runs_dir in the config)"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else super().__str__()


_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space and run again",
    errno.EDQUOT: "the disk quota is used up: free some space and run again",
    errno.EFBIG: "the file is larger than this system or process allows",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied: the folder is read-only or belongs to another user",
    errno.EPERM: "operation not permitted: the folder is read-only or belongs to another user",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "a folder of that name is in the way",
}


def _write_error(final: Path, exc: OSError) -> ArtifactWriteError:
    code = exc.errno
    if code is None:  # pyarrow and others raise OSError("... No space left on device ...") without errno
        text = str(exc).lower()
        code = next(
            (
                c
                for c, words in (
                    (errno.ENOSPC, "no space left"),
                    (errno.EROFS, "read-only file system"),
                    (errno.EACCES, "permission denied"),
                )
                if words in text
            ),
            None,
        )
    cause = str(exc) or type(exc).__name__
    reason = f"{_ADVICE[code]} ({cause})" if code in _ADVICE else cause
    error = ArtifactWriteError(
        f"could not write {final}: {reason}. The previous version of the file, if any, is unchanged"
    )
    error.errno, error.filename = code, str(final)
    return error


def is_private(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a file format that holds user rows (created 0600)."""
    return Path(path).suffix.lower() in USER_DATA_SUFFIXES


def make_private_dirs(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` and its missing parents owner-only (0700, whatever the umask). Folders
    that exist keep their mode."""
    folder = Path(folder)
    missing = []
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for new in reversed(missing):
        try:
            new.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # created meanwhile by another process
        os.chmod(new, PRIVATE_DIR_MODE)  # mkdir's mode is filtered by the umask
    return Path(missing[0]) if missing else folder


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, private: bool | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    ``private`` (default: whether the suffix is a user-data format, :data:`USER_DATA_SUFFIXES`)
    makes the file 0600 from the moment it is created, and folders created for it 0700. An
    ``OSError`` on the way (creating the folder or the temporary file, writing, renaming) becomes
    an :class:`ArtifactWriteError` naming ``path``; ``path`` itself is untouched until the rename.
    """
    final = Path(path)
    private = is_private(final) if private is None else private
    tmp: Path | None = None
    try:
        if private:
            make_private_dirs(final.parent)
        else:
            final.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp creates the file 0600 (O_EXCL): user rows are never readable by others, even for
        # the moment between creation and the rename
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        tmp = Path(tmp_name)
    except OSError as exc:
        raise _write_error(final, exc) from exc
    try:
        try:
            yield tmp
            if tmp.exists():
                # a writer that replaced the file instead of writing into it (unlink + create) gets
                # the umask's mode: set the intended mode explicitly either way
                os.chmod(tmp, PRIVATE_FILE_MODE if private else 0o666 & ~_current_umask())
            os.replace(tmp, final)
        except ArtifactWriteError:
            raise
        except OSError as exc:
            raise _write_error(final, exc) from exc
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def write_text(path: str | os.PathLike[str], text: str, *, private: bool | None = None) -> Path:
    with atomic_path(path, private=private) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, paths and sets show up in metrics dicts all the time.
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (Path, set, frozenset)):
        return str(obj) if isinstance(obj, Path) else sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def json_safe(obj: Any) -> Any:
    """``obj`` as strict JSON values: non-finite floats become None (JSON has no NaN), dict keys
    strings, tuples and arrays lists, numpy scalars plain Python. The one definition: evaluation
    and the report write their summaries through it."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist") and getattr(obj, "ndim", 0) > 0:  # numpy arrays
        return [json_safe(v) for v in obj.tolist()]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy scalars
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default, allow_nan=False)


def write_json(path: str | os.PathLike[str], obj: Any, *, private: bool | None = None) -> Path:
    return write_text(path, to_json(obj) + "\n", private=private)


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_jsonl(path: str | os.PathLike[str], rows: list[dict[str, Any]], *, private: bool | None = None) -> Path:
    lines = [json.dumps(r, ensure_ascii=False, default=_json_default) for r in rows]
    return write_text(path, "\n".join(lines) + ("\n" if lines else ""), private=private)


def write_parquet(path: str | os.PathLike[str], frame: pd.DataFrame, *, private: bool | None = None) -> Path:
    with atomic_path(path, private=private) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(path)


# what spreadsheets read as the start of a formula (OWASP's CSV injection list)
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# a formula start behind any number of quotes: "'=x" is escaped too ("''=x"), so that reading back
# can always take exactly one quote off (text that really starts with "'=" survives the round trip)
_NEEDS_QUOTE = re.compile(r"'*[=+\-@\t\r]")


def csv_safe(value: Any) -> Any:
    """``value`` as a CSV cell no spreadsheet runs as a formula: text starting with = + - @ tab or CR
    (after any leading quotes) gets a leading single quote (shown as text; the quote is visible in a
    text editor). Other values are returned as they are; :func:`csv_unescape` undoes it."""
    if isinstance(value, str) and _NEEDS_QUOTE.match(value):
        return "'" + value
    return value


def csv_unescape(value: Any) -> Any:
    """The cell :func:`csv_safe` was given: one leading quote off a cell it escaped; others as they are."""
    if isinstance(value, str) and value.startswith("'") and _NEEDS_QUOTE.match(value, 1):
        return value[1:]
    return value


def _map_text(frame: pd.DataFrame, fn: Callable[[Any], Any]) -> pd.DataFrame:
    out = frame.copy()
    for name in out.columns:
        if pd.api.types.is_object_dtype(out[name]) or pd.api.types.is_string_dtype(out[name]):
            out[name] = out[name].map(fn)
    return out


def csv_safe_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` with :func:`csv_safe` applied to every text cell."""
    return _map_text(frame, csv_safe)


def csv_unescape_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` with :func:`csv_unescape` applied to every text cell."""
    return _map_text(frame, csv_unescape)


def write_csv(
    path: str | os.PathLike[str], frame: pd.DataFrame, *, private: bool | None = None, escape: bool = True
) -> Path:
    """Write ``frame`` as CSV, text cells escaped with :func:`csv_safe` unless ``escape=False`` (for
    a file read back verbatim by a reader that does not un-escape, such as tunewise's own ingest)."""
    with atomic_path(path, private=private) as tmp:
        (csv_safe_frame(frame) if escape else frame).to_csv(tmp, index=False)
    return Path(path)


def read_csv(path: str | os.PathLike[str], **kwargs: Any) -> pd.DataFrame:
    """A CSV :func:`write_csv` wrote, as text cells (no NaN for blanks unless asked), escaping undone."""
    kwargs.setdefault("dtype", str)
    kwargs.setdefault("keep_default_na", False)
    return csv_unescape_frame(pd.read_csv(path, **kwargs))


def file_digest(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, streamed so large data files do not load into memory."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()

"""Run folders (``runs/<run-id>/``): their ids, and one writer at a time.

Every command that writes into a run folder (the stage runner, add-labels, suggest, curve,
export, retrain, distill) takes :func:`run_lock`; :func:`existing_run_lock` is the same for a
folder that must already exist. Here, below every layer that writes runs, so the learning curve and
the workflows lock a run without importing the stage runner.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunewise.core.artifacts import make_private_dirs
from tunewise.core.errors import TunewiseError
from tunewise.core.progress import console

__all__ = ["LOCK_NAME", "RunLockedError", "StageError", "check_run_id", "existing_run_lock", "run_lock"]


class StageError(TunewiseError):
    """A stage cannot run (missing inputs, bad data); the message says what to do."""

    hint = "fix what the message names and run the command again: stages already done are reused"


class RunLockedError(StageError):
    """Another live process is running stages in the same run folder."""

    hint = None  # the message says what to do: wait, or stop the other process

    def __init__(self, message: str, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.holder = holder


RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_run_id(run_id: str) -> str:
    """A run id is one folder name under runs/: never a path (``../..`` or ``/tmp`` would make the
    runner clear stage-named folders outside the project)."""
    if not RUN_ID_PATTERN.fullmatch(run_id or "") or ".." in run_id:
        raise StageError(
            f"run id {run_id!r}: use a plain folder name (letters, digits, '.', '_', '-'; "
            "no '/' or '..'), e.g. --run-id baseline-2"
        )
    return run_id


# =============================================================================================
# One writer per run folder

LOCK_NAME = ".lock"
# Run folders this process holds (resolved path -> [fd, depth]): run_stages may be called again
# from inside a stage of the same process, which must not refuse itself.
_HELD: dict[str, list[int]] = {}
_HELD_GUARD = threading.Lock()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        holder = json.loads(raw) if raw else {}
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, Any]) -> str:
    parts = [f"pid {holder.get('pid', '?')}"]
    if holder.get("host") and holder.get("host") != socket.gethostname():
        parts.append(f"on host {holder['host']}")
    if holder.get("started"):
        parts.append(f"started {holder['started']}")
    if holder.get("command"):
        parts.append(f"command: {holder['command']}")
    return ", ".join(parts)


@contextmanager
def run_lock(run_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Hold ``run_dir/.lock`` exclusively for the block; yields what is recorded in it.

    Refused with :class:`RunLockedError` (naming the holder's pid, start time and command) when
    another process holds it. The lock is ``fcntl.flock`` on the open file, so it goes away with
    its holder however that process ends; the pid left in the file by a holder that crashed is
    replaced (and reported as stale). Re-entrant within one process.
    """
    import fcntl

    folder = Path(run_dir)
    make_private_dirs(folder)
    key = str(folder.resolve())
    with _HELD_GUARD:
        if key in _HELD:
            _HELD[key][1] += 1
            held = True
        else:
            held = False
    if held:
        try:
            yield _read_holder(_HELD[key][0])
        finally:
            with _HELD_GUARD:
                _HELD[key][1] -= 1
        return

    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # O_CLOEXEC by default: children do not inherit it
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = _read_holder(fd)
                if not holder:  # it took the lock a moment ago and is writing its pid
                    time.sleep(0.2)
                    holder = _read_holder(fd)
                raise RunLockedError(
                    f"run folder {folder} is in use by another tunewise process ({_describe(holder)}). Two "
                    f"processes writing one run folder would mix their artifacts: wait for it to finish, stop it "
                    f"(kill {holder.get('pid', '<pid>')}), or use another --run-id",
                    holder,
                ) from None
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            # a file system without flock: fall back to the recorded pid
            holder = _read_holder(fd)
            pid = holder.get("pid")
            if (
                isinstance(pid, int)
                and pid != os.getpid()
                and holder.get("host") == socket.gethostname()
                and _pid_alive(pid)
            ):
                raise RunLockedError(
                    f"run folder {folder} is in use by another tunewise process "
                    f"({_describe(holder)}); wait for it to finish or stop it (kill {pid})",
                    holder,
                ) from None
        stale = _read_holder(fd)
        if stale.get("pid") not in (None, os.getpid()):
            console.print(
                f"[yellow]{path}: cleared a stale lock left by pid {stale.get('pid')} "
                f"(started {stale.get('started', '?')}), which is no longer running[/yellow]"
            )
        mine = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv)[:500],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(mine) + "\n").encode(), 0)
        with _HELD_GUARD:
            _HELD[key] = [fd, 1]
        try:
            yield mine
        finally:
            with _HELD_GUARD:
                _HELD.pop(key, None)
            try:
                os.ftruncate(fd, 0)  # an empty lock file: nobody holds the folder
            except OSError:
                pass
    finally:
        os.close(fd)  # releases the flock


@contextmanager
def existing_run_lock(run_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """:func:`run_lock` for commands that work in a run folder outside :func:`run_stages` (add-labels,
    suggest, curve, export, retrain, evaluate --human-ratings, report --live), taken only when the
    folder exists: a command pointed at a run that is not there fails with its own message and
    leaves no empty folder behind. Yields the lock record ({} when there was no folder to lock)."""
    if not Path(run_dir).is_dir():
        yield {}
        return
    with run_lock(run_dir) as held:
        yield held

"""Progress display for long work: rows or steps, rate and ETA.

One helper so every stage shows the same numbers. It writes to stderr so that stdout stays clean
for ``--json`` output. ``TUNEWISE_PROGRESS`` picks the form:

- ``auto`` (default): a Rich bar on a terminal; plain log lines when stderr is a file or a pipe;
- ``on``: always the Rich bar; ``log``: always plain lines; ``off``: nothing at all (CI).

Plain lines come from a background thread, so a line appears every
``TUNEWISE_PROGRESS_INTERVAL`` seconds (default 30) even while one slow step is running::

    learning curve: 3/8 (38%) 0.412 fits/s, elapsed 0:00:07, ETA 0:00:12 | curve tfidf_lr at 0.5
    learning curve: done 8/8 (100%) in 0:00:19, mean 0.421 fits/s

The first line comes after ``min(1 s, interval)`` (a loop that ends sooner prints only its final
line), then one per interval, and a final line when the block ends (``stopped`` if it raised).
``advance(n)`` only adds to a counter under a lock: no formatting, no clock read, so it can be
called per row in a hot loop and from several threads.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["console", "progress", "track", "progress_mode", "progress_interval"]

console = Console(stderr=True)

MODE_ENV = "TUNEWISE_PROGRESS"
INTERVAL_ENV = "TUNEWISE_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0
FIRST_LINE_AFTER = 1.0  # seconds; a loop that ends sooner prints only its final line
MIN_INTERVAL = 0.01
RATE_WINDOW_LINES = 10  # the rate (and ETA) of a line: over this many intervals
MIN_UNITS_FOR_WINDOW = 5  # fewer units than this in the window: the mean rate since the start instead

T = TypeVar("T")
Advance = Callable[..., None]


def progress_mode() -> str:
    """``"rich"``, ``"log"`` or ``"off"``, from ``TUNEWISE_PROGRESS`` and whether stderr is a terminal."""
    value = os.environ.get(MODE_ENV, "auto").strip().lower()
    if value in ("off", "0", "false", "no", "none"):
        return "off"
    stream = sys.stderr
    if stream is None:
        return "off"
    if value in ("on", "rich", "1", "true", "yes"):
        return "rich"
    if value in ("log", "plain", "lines"):
        return "log"
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream
        tty = False
    return "rich" if tty or console.is_jupyter else "log"


def progress_interval() -> float:
    """Seconds between plain progress lines (``TUNEWISE_PROGRESS_INTERVAL``, default 30)."""
    raw = os.environ.get(INTERVAL_ENV)
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_INTERVAL
    if not 0 < value < float("inf"):  # also NaN
        return DEFAULT_INTERVAL
    return max(MIN_INTERVAL, value)


@contextmanager
def progress(description: str, total: int | None, unit: str = "rows") -> Iterator[Advance]:
    """``with progress("hashing", n) as advance: advance(k)``.

    ``advance(n=1, description=..., total=...)``: add ``n`` units done; a new ``description``
    shows what is being worked on now (log lines keep the first one as their label and append
    it), ``total`` corrects the total.
    """
    mode = progress_mode()
    if mode == "off":
        yield _noop
    elif mode == "rich":
        with _rich_task(description, total, unit) as advance:
            yield advance
    else:
        task = _LogTask(description, total, unit, progress_interval(), sys.stderr)
        task.start()
        failed: BaseException | None = None
        try:
            yield task.advance
        except GeneratorExit:  # a generator holding the block was closed early (a loop's break)
            raise
        except BaseException as exc:
            failed = exc
            raise
        finally:
            task.finish(failed)


def track(items: Iterable[T], description: str, total: int | None = None, unit: str = "items") -> Iterator[T]:
    """Iterate ``items`` with progress, one unit per item: ``for x in track(xs, "scoring"): ...``."""
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with progress(description, total, unit) as advance:
        for item in items:
            yield item
            advance(1)


def _noop(n: int = 1, **fields: Any) -> None:
    return None


# ---------------------------------------------------------------------------------------------
# plain lines (a file, a pipe)

_write_lock = threading.Lock()  # whole lines from concurrent progress blocks, never interleaved


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


class _LogTask:
    """Counts under a lock; a daemon thread formats and writes a line every interval."""

    def __init__(self, description: str, total: int | None, unit: str, interval: float, stream: Any) -> None:
        self.label = description
        self.total = total
        self.unit = unit
        self.interval = interval
        self.stream = stream
        self.done = 0
        self.now: str | None = None  # the latest description given to advance()
        self.extra: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.samples: deque[tuple[float, int]] = deque([(self.started, 0)], maxlen=RATE_WINDOW_LINES + 1)
        self.thread = threading.Thread(target=self._run, name=f"progress: {description}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def advance(self, n: int = 1, **fields: Any) -> None:
        with self.lock:
            self.done += n
            if fields:
                self._fields(fields)

    def _fields(self, fields: dict[str, Any]) -> None:
        for key, value in fields.items():
            if key == "description":
                self.now = None if value == self.label else value
            elif key == "total":
                self.total = value
            elif key == "completed":
                self.done = value
            elif key not in ("refresh", "visible", "advance"):
                self.extra[key] = value

    def _snapshot(self) -> tuple[int, int | None, str | None, dict[str, Any]]:
        with self.lock:
            return self.done, self.total, self.now, dict(self.extra) if self.extra else {}

    def _run(self) -> None:
        wait = min(FIRST_LINE_AFTER, self.interval)
        while not self.stop.wait(wait):
            self._line()
            wait = self.interval

    def _count(self, done: int, total: int | None) -> str:
        if total is None:
            return f"{done:,} {self.unit}"
        pct = 100.0 * done / total if total else 100.0
        return f"{done:,}/{total:,} ({pct:.0f}%)"

    def _suffix(self, now: str | None, extra: dict[str, Any]) -> str:
        parts = [now] if now else []
        parts += [f"{k}={v}" for k, v in extra.items()]
        return (" | " + ", ".join(parts)) if parts else ""

    def _line(self) -> None:
        done, total, now, extra = self._snapshot()
        t = time.monotonic()
        elapsed = t - self.started
        # the rate over the last ten intervals, so a slow start (loading a model) does not weigh
        # on it forever; the mean rate since the start when fewer than MIN_UNITS_FOR_WINDOW units
        # were done in that window (coarse units: one fit or one check per several lines)
        t0, done0 = self.samples[0]
        if done - done0 >= MIN_UNITS_FOR_WINDOW and t > t0:
            rate = (done - done0) / (t - t0)
        else:
            rate = done / elapsed if elapsed > 0 else 0.0
        self.samples.append((t, done))
        text = f"{self.label}: {self._count(done, total)}{' ' if total is not None else ', '}"
        text += f"{_rate(rate)} {self.unit}/s" if rate > 0 else f"- {self.unit}/s"
        text += f", elapsed {_clock(elapsed)}"
        if total is not None:
            if done >= total:
                text += ", ETA 0:00:00"
            else:
                text += f", ETA {_clock((total - done) / rate)}" if rate > 0 else ", ETA ?"
        self._write(text + self._suffix(now, extra))

    def finish(self, failed: BaseException | None) -> None:
        self.stop.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join()
        done, total, now, extra = self._snapshot()
        elapsed = time.monotonic() - self.started
        mean = done / elapsed if elapsed > 0 else 0.0
        word, prep = ("done", "in") if failed is None else ("stopped at", "after")
        text = f"{self.label}: {word} {self._count(done, total)} {prep} {_clock(elapsed)}, mean {_rate(mean)} {self.unit}/s"
        if failed is not None:
            text += f" ({type(failed).__name__})"
        self._write(text + self._suffix(now if failed is not None else None, extra))

    def _write(self, text: str) -> None:
        try:
            with _write_lock:
                self.stream.write(text + "\n")
                self.stream.flush()
        except (OSError, ValueError):  # stderr closed under us: progress is never worth a crash
            pass


# ---------------------------------------------------------------------------------------------
# Rich bar (a terminal)


class _Rate(TextColumn):
    def __init__(self) -> None:
        super().__init__("")

    def render(self, task):  # type: ignore[override]
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "rows")
        return Text(f"{_rate(speed)} {unit}/s" if speed else f"- {unit}/s", style="cyan")


# One live bar at a time (Rich refuses two): a block inside another adds a line to the open bar.
_rich_lock = threading.Lock()
_rich_bar: Progress | None = None
_rich_users = 0


@contextmanager
def _rich_task(description: str, total: int | None, unit: str) -> Iterator[Advance]:
    global _rich_bar, _rich_users
    with _rich_lock:
        if _rich_bar is None:
            _rich_bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                _Rate(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            _rich_bar.start()
        _rich_users += 1
        bar = _rich_bar
    task = bar.add_task(description, total=total, unit=unit)
    started = time.monotonic()
    failed: BaseException | None = None

    def advance(n: int = 1, **fields: Any) -> None:
        if fields:
            bar.update(task, advance=n, **fields)
        else:
            bar.advance(task, n)

    try:
        yield advance
    except GeneratorExit:
        raise
    except BaseException as exc:
        failed = exc
        raise
    finally:
        with _rich_lock:
            _rich_users -= 1
            last = _rich_users == 0
            if not last:
                # a nested block: its line leaves the live bar, a summary stays above it
                state = next(t for t in bar.tasks if t.id == task)
                done, total = int(state.completed), state.total
                bar.remove_task(task)
                elapsed = time.monotonic() - started
                word, prep = ("done", "in") if failed is None else ("stopped at", "after")
                count = f"{done:,}/{int(total):,}" if total is not None else f"{done:,} {unit}"
                bar.console.print(
                    Text(
                        f"{description}: {word} {count} {prep} {_clock(elapsed)}, "
                        f"mean {_rate(done / elapsed if elapsed > 0 else 0.0)} {unit}/s"
                    )
                )
            else:
                bar.stop()
                _rich_bar = None

"""The request log of ``tunewise serve``: every request, response, latency, arm and feedback.

SQLAlchemy Core over SQLite (WAL) by default, or a PostgreSQL URL so several replicas share one
log and one set of arm weights. Three tables:

- ``requests``: one row per answered (or failed) request: id, time, endpoint, user, the arm
  assigned, the arm that answered (the incumbent when a candidate arm failed), the candidate,
  input, output, score, latency, status (``ok``, ``fallback``, ``error``);
- ``feedback``: a correct label, a thumbs up/down or a rating for a request; one row per
  (request_id, kind). A thumbs or rating posted twice is stored once (the first); the same label
  posted twice is stored once, and a *different* label replaces the earlier one (the latest label
  wins: monitor and retrain read this table), the earlier one staying in ``feedback_history``;
- ``feedback_history``: every feedback value stored or replaced, with its time;
- ``arms``: the traffic weight of each arm; ``promote`` / ``rollback`` change it and every
  replica reads it back, so no restart is needed.

The log holds raw inputs and user ids: a SQLite file is created readable by its owner only
(0600, and its -wal / -shm files follow its mode), and a folder made for it 0700.

Writes go through one background writer thread (:class:`StoreWriter`). A handler hands it a row
and awaits a future: concurrent rows are committed in one transaction (throughput), and the
response leaves only after its row is committed, so a response that reached a client is in the
log even if the server is killed right after (the kill -9 test). SQLite's WAL with
``synchronous=NORMAL`` keeps committed transactions across a process crash (only a power loss
can drop the last ones), which is what a crashed server needs.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine

from tunewise.core.errors import TunewiseError

__all__ = ["FEEDBACK_KINDS", "Store", "StoreError", "StoreWriter", "default_store_url", "open_store"]

log = logging.getLogger("tunewise.monitoring.store")

FEEDBACK_KINDS = ("label", "thumbs", "rating")

metadata = MetaData()

requests_table = Table(
    "requests",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("ts", Float, nullable=False, index=True),  # unix seconds
    Column("endpoint", String(32), nullable=False),
    Column("user", String(256)),
    Column("arm", String(64), nullable=False, index=True),  # the arm assigned
    Column("served_by", String(64), nullable=False),  # the arm that answered
    Column("candidate", String(64)),
    Column("input", Text),
    Column("output", Text),
    Column("score", Float),
    Column("out_of_scope", Integer),  # 1 when the threshold turned the answer into out-of-scope
    Column("latency_ms", Float),
    Column("batch_size", Integer),
    Column("status", String(16), nullable=False),  # ok | fallback | error
    Column("error", Text),
)

feedback_table = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False, index=True),
    Column("kind", String(16), nullable=False),  # label | thumbs | rating
    Column("value", Text, nullable=False),
    Column("ts", Float, nullable=False),
    UniqueConstraint("request_id", "kind", name="uq_feedback_request_kind"),
)

feedback_history_table = Table(
    "feedback_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("value", Text, nullable=False),
    Column("ts", Float, nullable=False),
    Column("outcome", String(16), nullable=False),  # new | replaced
)

arms_table = Table(
    "arms",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("candidate", String(64), nullable=False),
    Column("weight", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

arm_history_table = Table(
    "arm_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("weights", Text, nullable=False),  # JSON {arm: weight}
    Column("reason", Text),
)


class StoreError(TunewiseError, RuntimeError):
    """The log cannot be opened or written; the message names the URL (without its password)."""

    hint = "check the request log's URL (serve.store_url or --store) and that its database is reachable"


def default_store_url(run_dir: str | Path) -> str:
    """SQLite file beside the run's other outputs: ``runs/<id>/serve/requests.db`` (the folder 0700)."""
    folder = Path(run_dir) / "serve"
    _private_folder(folder, tighten=True)  # tunewise's own folder: tightened even when it exists
    return f"sqlite:///{(folder / 'requests.db').resolve()}"


def _is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _private_folder(folder: Path, tighten: bool = False) -> None:
    """Create ``folder`` (and missing parents) with mode 0700; ``tighten`` also chmods an existing
    one (only for folders tunewise owns: never a folder the user named, such as /tmp)."""
    missing = []
    current = folder
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(path, 0o700)  # mkdir's mode is masked by the umask
    if tighten and not missing and folder.is_dir():
        try:
            os.chmod(folder, 0o700)
        except PermissionError:
            log.warning("cannot make %s private (0700): not its owner", folder)


def _private_sqlite_file(url: str) -> None:
    """The SQLite file of ``url`` exists with mode 0600 before SQLite opens it (SQLite creates its
    -wal and -shm files with the database's mode). An existing file is tightened when we own it."""
    from sqlalchemy.engine import make_url

    try:
        database = make_url(url).database
    except Exception:  # noqa: BLE001 - create_engine reports a bad URL
        return
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    _private_folder(path.parent)
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)  # 0600 whatever the umask, when new
        os.close(fd)
    except OSError as exc:
        raise StoreError(f"cannot create the request log {path}: {exc}") from None
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        try:
            if file.exists() and file.stat().st_mode & 0o077:
                os.chmod(file, 0o600)
        except PermissionError:
            log.warning("cannot make %s private (0600): not its owner", file)


def _insert(dialect: str, table: Table) -> Any:
    # ON CONFLICT DO NOTHING: a duplicate feedback (or a replayed request row) is not an error.
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


@dataclass
class _Job:
    kind: str  # "request" | "feedback"
    row: dict[str, Any]
    future: concurrent.futures.Future


class Store:
    """The log: tables, reads for the monitor and the arm weights. Writes from a server go through
    :meth:`writer`; direct writes (:meth:`insert_requests`) are for tests and tools."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"future": True}
        if _is_sqlite(url):
            _private_sqlite_file(url)
            # check_same_thread off: the writer thread and the request threads share the pool
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs.update(pool_pre_ping=True, pool_size=5, max_overflow=10)
        try:
            self.engine: Engine = create_engine(url, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a bad URL is a user error; say which
            raise StoreError(f"cannot open the request log {self.safe_url}: {exc}") from None
        if _is_sqlite(url):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.dialect = self.engine.dialect.name
        try:
            metadata.create_all(self.engine)
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"cannot create the log tables in {self.safe_url}: {type(exc).__name__}: {exc}") from None
        self._writer: StoreWriter | None = None

    @property
    def safe_url(self) -> str:
        from sqlalchemy.engine import make_url

        try:
            return make_url(self.url).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001
            return "<unparseable url>"

    # ---- writing
    def writer(self, max_batch: int = 256) -> StoreWriter:
        if self._writer is None or not self._writer.alive:
            self._writer = StoreWriter(self, max_batch=max_batch)
        return self._writer

    def insert_requests(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        if rows:
            with self.engine.begin() as conn:
                conn.execute(_insert(self.dialect, requests_table).on_conflict_do_nothing(), rows)

    def insert_feedback(self, rows: Iterable[dict[str, Any]]) -> list[bool]:
        """Insert feedback rows; True for each row that was stored (new, or a label replacing a
        different one), False for a duplicate."""
        stored = []
        with self.engine.begin() as conn:
            for row in rows:
                stored.append(_insert_feedback(conn, self.dialect, row) != "duplicate")
        return stored

    # ---- reading
    def request_exists(self, request_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(requests_table.c.id, requests_table.c.served_by, requests_table.c.endpoint).where(
                    requests_table.c.id == request_id
                )
            ).first()
        return dict(row._mapping) if row else None

    def count_requests(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(requests_table)).scalar_one())

    def request_ids(self) -> set[str]:
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(select(requests_table.c.id))}

    def requests_frame(self, since: float | None = None) -> pd.DataFrame:
        query = select(requests_table)
        if since is not None:
            query = query.where(requests_table.c.ts >= since)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query.order_by(requests_table.c.ts))]
        return pd.DataFrame(rows, columns=[c.name for c in requests_table.columns])

    def feedback_history(self, request_id: str | None = None) -> pd.DataFrame:
        """Every feedback value stored or replaced (outcome new | replaced), oldest first."""
        query = select(feedback_history_table).order_by(feedback_history_table.c.id)
        if request_id is not None:
            query = query.where(feedback_history_table.c.request_id == request_id)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        return pd.DataFrame(rows, columns=[c.name for c in feedback_history_table.columns])

    def feedback_frame(self, since: float | None = None) -> pd.DataFrame:
        query = select(feedback_table)
        if since is not None:
            query = query.where(feedback_table.c.ts >= since)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        return pd.DataFrame(rows, columns=[c.name for c in feedback_table.columns])

    # ---- arm weights (shared by replicas)
    def arm_weights(self) -> dict[str, tuple[str, float]]:
        """{arm: (candidate, weight)} as stored."""
        with self.engine.connect() as conn:
            return {r.name: (r.candidate, float(r.weight)) for r in conn.execute(select(arms_table))}

    def init_arms(self, arms: dict[str, tuple[str, float]], reset: bool = False) -> None:
        """Store the configured arms; weights already stored win unless ``reset`` (a restarted or
        second replica keeps what promote/rollback set)."""
        now = time.time()
        with self.engine.begin() as conn:
            for name, (candidate, weight) in arms.items():
                row = {"name": name, "candidate": candidate, "weight": float(weight), "updated_at": now}
                stmt = _insert(self.dialect, arms_table)
                if reset:
                    stmt = stmt.on_conflict_do_update(
                        index_elements=["name"],
                        set_={"candidate": candidate, "weight": float(weight), "updated_at": now},
                    )
                else:
                    stmt = stmt.on_conflict_do_nothing(index_elements=["name"])
                conn.execute(stmt, row)
            if reset:
                conn.execute(
                    arm_history_table.insert(),
                    {
                        "ts": now,
                        "weights": json.dumps({n: w for n, (_, w) in arms.items()}),
                        "reason": "reset at start",
                    },
                )

    def set_weights(self, weights: dict[str, float], reason: str | None = None) -> None:
        """Store arm weights: finite, >= 0, at least one above 0 (ValueError otherwise: a log whose
        weights no server can serve with would disagree with every running server)."""
        bad = {n: w for n, w in weights.items() if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0)}
        if bad or not any(w > 0 for w in weights.values()):
            raise ValueError(
                f"arm weights {weights} cannot be stored: each must be a finite number >= 0 and one above 0"
            )
        now = time.time()
        with self.engine.begin() as conn:
            for name, weight in weights.items():
                conn.execute(
                    arms_table.update().where(arms_table.c.name == name).values(weight=float(weight), updated_at=now)
                )
            conn.execute(arm_history_table.insert(), {"ts": now, "weights": json.dumps(weights), "reason": reason})

    def arm_history(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(arm_history_table).order_by(arm_history_table.c.id))
            return [{"ts": r.ts, "weights": json.loads(r.weights), "reason": r.reason} for r in rows]

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.engine.dispose()


def _insert_feedback(conn: Any, dialect: str, row: dict[str, Any]) -> str:
    """Store one feedback row: "new", "replaced" (a label different from the stored one: the latest
    label wins) or "duplicate" (the same label again, or a second thumbs or rating: the first is kept).
    RETURNING, not rowcount: psycopg reports no rowcount here."""
    stmt = _insert(dialect, feedback_table).values(**row)
    if row["kind"] == "label":
        previous = conn.execute(
            select(feedback_table.c.value).where(
                (feedback_table.c.request_id == row["request_id"]) & (feedback_table.c.kind == "label")
            )
        ).scalar()
        # the WHERE keeps a replica's older correction from overwriting a newer one
        stmt = stmt.on_conflict_do_update(
            index_elements=["request_id", "kind"],
            set_={"value": stmt.excluded.value, "ts": stmt.excluded.ts},
            where=(feedback_table.c.value != stmt.excluded.value) & (feedback_table.c.ts <= stmt.excluded.ts),
        )
    else:
        previous = None
        stmt = stmt.on_conflict_do_nothing(index_elements=["request_id", "kind"])
    if conn.execute(stmt.returning(feedback_table.c.id)).first() is None:
        return "duplicate"
    outcome = "new" if previous is None else "replaced"
    conn.execute(
        feedback_history_table.insert(),
        {**{k: row[k] for k in ("request_id", "kind", "value", "ts")}, "outcome": outcome},
    )
    return outcome


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers (monitor, feedback lookups) never block the writer; NORMAL: a commit survives a
    # process crash (kill -9) without an fsync per transaction.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class StoreWriter:
    """One thread that commits queued rows in batches; callers get a future per row.

    The queue decouples the event loop from the database: a handler awaits its future without
    holding a thread, and while one transaction commits the next rows gather for the following one.
    """

    def __init__(self, store: Store, max_batch: int = 256) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="tunewise-store-writer", daemon=True)
        self.committed = 0
        self.failed = 0
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def submit(self, kind: str, row: dict[str, Any]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        if not self.alive:
            future.set_exception(StoreError("the log writer has stopped"))
            return future
        self._queue.put(_Job(kind, row, future))
        return future

    def close(self, timeout: float = 30.0) -> None:
        """Drain what is queued, then stop."""
        if self.alive:
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            job = self._queue.get()
            if job is None:
                break
            jobs = [job]
            while len(jobs) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                jobs.append(nxt)
            self._commit(jobs)

    def _commit(self, jobs: list[_Job]) -> None:
        requests = [j for j in jobs if j.kind == "request"]
        feedback = [j for j in jobs if j.kind == "feedback"]
        try:
            self._write(requests, feedback)
        except Exception as batch_error:  # noqa: BLE001 - retry one by one so one bad row fails alone
            log.warning("batch of %d log rows failed (%s); retrying one by one", len(jobs), batch_error)
            for job in jobs:
                try:
                    self._write([job] if job.kind == "request" else [], [job] if job.kind == "feedback" else [])
                except Exception as exc:  # noqa: BLE001
                    self.failed += 1
                    log.error("log row failed: %s", exc)
                    if not job.future.done():
                        job.future.set_exception(StoreError(f"{type(exc).__name__}: {exc}"))

    def _write(self, requests: list[_Job], feedback: list[_Job]) -> None:
        dialect = self.store.dialect
        with self.store.engine.begin() as conn:
            if requests:
                conn.execute(_insert(dialect, requests_table).on_conflict_do_nothing(), [j.row for j in requests])
            stored = []
            for job in feedback:
                stored.append(_insert_feedback(conn, dialect, job.row))
        # only after the commit: the caller may now answer its client
        self.committed += len(requests) + len(feedback)
        for job in requests:
            if not job.future.done():
                job.future.set_result(True)
        for job, new in zip(feedback, stored):
            if not job.future.done():
                job.future.set_result(new)


def open_store(url: str) -> Store:
    return Store(url)

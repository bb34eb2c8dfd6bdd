"""Helpers of the serving tests: a minimal classify run (runs/<id>/split and evaluate/summary.json,
majority as the incumbent, tfidf_lr as the candidate, enough for the server to fit and serve), and
waiting for a server process to answer /healthz."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pandas as pd
import pytest


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 120.0, log: Path | None = None) -> None:
    """Poll ``url``/healthz until it answers 200; fail (with the server's log when given) if the
    process exits first or ``timeout`` seconds pass."""

    def tail() -> str:
        return log.read_text()[-3000:] if log is not None and log.exists() else ""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}:\n{tail()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the server did not come up:\n{tail()}")


def _records(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.dropna(subset=["text", "intent"])
    return pd.DataFrame(
        {
            "id": frame["id"].astype(str),
            "input": frame["text"].astype(str),
            "context": "[]",
            "label": frame["intent"].astype(str),
        }
    )


def make_classify_run(folder: Path, n_rows: int):
    """(runs/r1 under ``folder``, the demo files it was built from)."""
    from tunewise.demo.data import generate_demo

    files = generate_demo(folder / "data", task="classify", n_rows=n_rows)
    run = folder / "runs" / "r1"
    (run / "split").mkdir(parents=True)
    (run / "evaluate").mkdir()
    data, test = pd.read_csv(files.data), pd.read_csv(files.test)
    _records(data).to_parquet(run / "split" / "train.parquet")
    _records(test.iloc[:60]).to_parquet(run / "split" / "validation.parquet")
    _records(test.iloc[60:]).to_parquet(run / "split" / "test.parquet")
    summary = {
        "gate": {"passed": True, "candidate": "tfidf_lr", "baseline": "majority"},
        "candidates": [
            {"name": "majority", "out_of_scope_threshold": None},
            {"name": "tfidf_lr", "out_of_scope_threshold": 0.05},
        ],
    }
    (run / "evaluate" / "summary.json").write_text(json.dumps(summary))
    return run, files


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a loopback port (Debian's binaries; as user postgres when
    running as root, since initdb refuses root); yields its SQLAlchemy URL, stops and removes it after."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    import pwd
    import tempfile

    # not under pytest's tmp folder: that is private to root, and the server runs as postgres
    folder = Path(tempfile.mkdtemp(prefix="tunewise-pg-"))
    data, sockets = folder / "data", folder / "sock"
    sockets.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run initdb as")
        as_user = ["runuser", "-u", "postgres", "--"]
        for p in (folder, sockets):
            shutil.chown(p, "postgres")
    port = free_port()
    subprocess.run(
        [
            *as_user,
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "tunewise",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *as_user,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(folder / "pg.log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://tunewise@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)

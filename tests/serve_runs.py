"""Helpers of the serving tests: a minimal classify run (runs/<id>/split and evaluate/summary.json,
majority as the incumbent, tfidf_lr as the candidate, enough for the server to fit and serve), and
waiting for a server process to answer /healthz."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pandas as pd


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

"""A minimal classify run for the serving tests: runs/<id>/split and evaluate/summary.json (majority as
the incumbent, tfidf_lr as the candidate), enough for the server to refit and serve."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


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

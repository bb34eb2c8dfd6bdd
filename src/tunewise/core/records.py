"""The normalised record every stage reads and writes.

In memory a data set is a pandas DataFrame with these columns:

- ``id``: str, stable: the input's own id column if it has one, else the 0-based row position in
  the input file as a string;
- ``input``: str, the text to classify or respond to (for chat data, the last user turn);
- ``context``: str, JSON list of earlier chat messages (``[]`` for single-turn data);
- ``label`` (task ``classify``) or ``target`` (task ``generate``): str;
- ``source_file``: str and ``source_line``: int (1-based physical line where the row starts;
  for Parquet, the 1-based row number);
- ``synthetic``: bool, True for rows tunewise generated (never placed in validation or test);
- any slice/meta columns named in the config, kept as they are (str).

``meta`` in the design sketch is every column beyond the core ones.
"""

from __future__ import annotations

import hashlib

import pandas as pd

TASKS = ("classify", "generate")
CORE_COLUMNS = ("id", "input", "context", "source_file", "source_line", "synthetic")


def answer_column(task: str) -> str:
    """Name of the column that holds the expected answer for a task."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return "label" if task == "classify" else "target"


def meta_columns(frame: pd.DataFrame) -> list[str]:
    core = set(CORE_COLUMNS) | {"label", "target"}
    return [c for c in frame.columns if c not in core]


def empty_frame(task: str, extra: list[str] | None = None) -> pd.DataFrame:
    cols = ["id", "input", "context", answer_column(task), "source_file", "source_line", "synthetic"]
    return pd.DataFrame({c: pd.Series(dtype="object") for c in cols + list(extra or [])})


def records_from_texts(texts: list[str], labels: list[str], source_file: str = "train.csv") -> pd.DataFrame:
    """A classify record frame from parallel lists (ids r0, r1, ...; lines from 2, after a header)."""
    return pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(len(texts))],
            "input": texts,
            "context": ["[]"] * len(texts),
            "label": labels,
            "source_file": [source_file] * len(texts),
            "source_line": list(range(2, len(texts) + 2)),
            "synthetic": [False] * len(texts),
        }
    )


def rows_fingerprint(frame: pd.DataFrame, task: str) -> str:
    """16 hex digits that change when any row's id, input, context or answer changes, or a row
    comes or goes: what a model was fitted on (training checkpoints, saved cheap models)."""
    cols = [c for c in ("id", "input", "context", answer_column(task)) if c in frame.columns]
    hashed = pd.util.hash_pandas_object(frame[cols].astype(str), index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]

"""What the request log's feedback says, for monitor, retrain and serve: the arm roles, time windows, training rows.

- :data:`INCUMBENT` and :data:`CANDIDATE`: the two arm roles of an A/B test (tunewise.serving.app names
  its default arms after them; tunewise.monitoring.monitor compares every arm against the incumbent);
- :func:`parse_since`: ``--since`` and ``monitor.since`` (a duration ago or an ISO date) as unix
  seconds;
- :func:`feedback_training_rows`: labelled rows from the log's feedback (a corrected label, or a
  thumbs-up on the served answer), with the count of skipped feedback by reason; tunewise.serving.retrain
  trains on them and tunewise.monitoring.monitor counts them in its retrain advice.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections import Counter
from typing import Any

import pandas as pd

__all__ = ["CANDIDATE", "INCUMBENT", "feedback_training_rows", "parse_since"]

INCUMBENT, CANDIDATE = "incumbent", "candidate"


def parse_since(text: str | None, now: float | None = None) -> float | None:
    """``30m``, ``24h``, ``7d``, ``2w`` (ago) or an ISO date/time -> unix seconds; None -> None."""
    if text is None or text == "":
        return None
    now = time.time() if now is None else now
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if match:
        seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
        return now - float(match.group(1)) * seconds
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r}: give a duration (30m, 24h, 7d) or an ISO date (2026-01-31)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def feedback_training_rows(
    requests: pd.DataFrame,
    feedback: pd.DataFrame,
    *,
    task: str,
    labels: set[str] | None = None,
    thumbs_up: bool = True,
    out_of_scope_label: str = "out_of_scope",
) -> tuple[pd.DataFrame, Counter]:
    """Labelled rows from the log: (request_id, text, label or reply, source); and skip counts by reason.

    A corrected label wins over a thumbs-up on the same request; a thumbs-down without a label
    says the answer was wrong but not what is right, so it gives no row."""
    answer = "label" if task == "classify" else "reply"
    skipped: Counter = Counter()
    if requests.empty or feedback.empty:
        return pd.DataFrame(columns=["request_id", "text", answer, "source"]), skipped
    by_request = requests.set_index("id")
    wanted = feedback["kind"].isin(["label", "thumbs"] if thumbs_up else ["label"])
    rows: dict[str, dict[str, Any]] = {}
    for fb in feedback[wanted].sort_values("kind").itertuples(index=False):  # "label" sorts before "thumbs"
        if fb.request_id in rows:
            continue
        if fb.request_id not in by_request.index:
            skipped["request not in the window"] += 1
            continue
        request = by_request.loc[fb.request_id]
        if fb.kind == "thumbs" and fb.value != "up":
            skipped["thumbs down without a label"] += 1
            continue
        text = request["input"]
        if text is None or (isinstance(text, float) and pd.isna(text)) or not str(text).strip():
            skipped["input not logged (serve.store_inputs off)"] += 1
            continue
        if fb.kind == "label":
            value, source = str(fb.value), "feedback label"
        else:
            if request["status"] == "error" or request["output"] is None:
                skipped["thumbs up on a failed request"] += 1
                continue
            if task == "classify" and (request["out_of_scope"] == 1 or request["output"] == out_of_scope_label):
                skipped["thumbs up on an out-of-scope answer"] += 1
                continue
            value, source = str(request["output"]), "thumbs up"
        if task == "classify" and labels is not None and value not in labels:
            skipped["label outside the run's label set"] += 1
            continue
        rows[fb.request_id] = {"request_id": fb.request_id, "text": str(text), answer: value, "source": source}
    return pd.DataFrame(list(rows.values()), columns=["request_id", "text", answer, "source"]), skipped

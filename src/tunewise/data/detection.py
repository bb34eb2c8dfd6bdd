"""Score curation findings against known injected defects (the demo's ``demo_truth.jsonl``, or a
benchmark's noisy copy of a real data set): recall and precision per defect kind.

Duplicates and conflicts are scored as pairs: which of two copies is "the original" is a matter of
order, so a truth pair (row, of) counts as found when either row is reported with that issue, and
a reported row counts as correct when it is either side of a truth pair of its kind.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

# truth defect kind -> issue kinds that count as detecting it
DEFECT_TO_ISSUES: dict[str, tuple[str, ...]] = {
    "exact_duplicate": ("exact_duplicate",),
    "near_duplicate": ("near_duplicate",),
    "label_conflict": ("label_conflict",),
    "wrong_label": ("suspected_label_error",),
    "label_variant": ("label_variant",),
    "off_topic": ("off_topic", "spam"),
    "spam": ("spam", "off_topic"),
    "empty": ("empty", "garbage", "too_short"),
    "garbage": ("garbage", "empty", "too_short"),
    "pii": ("pii",),
    "empty_reply": ("empty_reply", "empty"),
    "truncated_reply": ("truncated_reply",),
    "template_slot": ("template_slot",),
    "copied_reply": ("copied_reply",),
}
PAIRED = {"exact_duplicate", "near_duplicate", "label_conflict"}


def read_truth(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def score_detection(issues: pd.DataFrame, truth: Iterable[dict], kinds: Iterable[str] | None = None) -> dict[str, dict]:
    """Recall and precision per defect kind. ``issues`` is an issues table (id, issue, ...)."""
    truth = list(truth)
    kinds = list(kinds) if kinds is not None else sorted({t["defect"] for t in truth})
    reported: dict[str, set[str]] = {}
    for row in issues[["id", "issue"]].itertuples(index=False):
        reported.setdefault(row.issue, set()).add(str(row.id))
    out: dict[str, dict] = {}
    for kind in kinds:
        issue_kinds = DEFECT_TO_ISSUES.get(kind, (kind,))
        rows = [t for t in truth if t["defect"] == kind]
        flagged = set().union(*(reported.get(k, set()) for k in issue_kinds))
        # for precision only the kind's own (first) issue name counts as a claim of this kind
        claimed = reported.get(issue_kinds[0], set())
        partners = {str(t["of"]) for t in rows if t.get("of") is not None} if kind in PAIRED else set()
        truth_ids = {str(t["id"]) for t in rows}
        # a pair counts as found when either side is reported (which copy is "the original" is order)
        found = sum(1 for t in rows if str(t["id"]) in flagged or (kind in PAIRED and str(t.get("of")) in flagged))
        correct = len(claimed & (truth_ids | partners | _aliases(kind, truth)))
        out[kind] = {
            "truth": len(rows),
            "found": found,
            "reported": len(claimed),
            "recall": found / len(rows) if rows else None,
            "precision": correct / len(claimed) if claimed else None,
        }
    return out


def _aliases(kind: str, truth: list[dict]) -> set[str]:
    """Rows of a sibling kind that a check may fairly report under this kind's issue name."""
    siblings = {"off_topic": ("spam",), "spam": ("off_topic",), "empty": ("garbage",), "garbage": ("empty",)}
    return {str(t["id"]) for t in truth if t["defect"] in siblings.get(kind, ())}

"""The issues table: every row a stage drops, changes or doubts, with why and what was done.

One vocabulary for every stage (cleanlab Datalab's habit): a check names its issue kind, and its
findings join one table and one summary without special code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd

# Fixed vocabulary. Adding a kind is fine; renaming one breaks outside checks.
ISSUE_KINDS: tuple[str, ...] = (
    "malformed",  # ingestion: unparsable row, missing or wrong-typed field, undecodable bytes
    "empty",
    "garbage",
    "too_short",
    "too_long",
    "label_variant",
    "exact_duplicate",
    "near_duplicate",
    "semantic_duplicate",
    "label_conflict",
    "suspected_label_error",
    "off_topic",
    "spam",
    "pii",
    "thin_class",
    "synthetic",
    "empty_reply",
    "truncated_reply",
    "template_slot",
    "copied_reply",
    "reply_conflict",
    "leakage",
    # split: a validation or test row whose label no training row has; kept (the score must count it)
    # but flagged, since every trained model gets it wrong
    "unseen_label",
)
ACTIONS: tuple[str, ...] = ("dropped", "redacted", "relabeled", "flagged", "normalized", "added")
ISSUE_COLUMNS: tuple[str, ...] = ("id", "issue", "detail", "action", "stage", "source", "line")


@dataclass
class IssueTable:
    """Append-only collector; ``frame()`` gives the table in the fixed column order."""

    stage: str
    rows: list[dict] = field(default_factory=list)

    def add(
        self,
        id: str | None,
        issue: str,
        detail: str,
        action: str,
        source: str | None = None,
        line: int | None = None,
    ) -> None:
        if issue not in ISSUE_KINDS:
            raise ValueError(f"unknown issue kind {issue!r}; known: {', '.join(ISSUE_KINDS)}")
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; known: {', '.join(ACTIONS)}")
        self.rows.append(
            {
                "id": id,
                "issue": issue,
                "detail": detail,
                "action": action,
                "stage": self.stage,
                "source": source,
                "line": line,
            }
        )

    def extend(self, other: IssueTable | Iterable[dict]) -> None:
        self.rows.extend(other.rows if isinstance(other, IssueTable) else other)

    def __len__(self) -> int:
        return len(self.rows)

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows, columns=list(ISSUE_COLUMNS))
        frame["line"] = frame["line"].astype("Int64")
        return frame

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            out[row["issue"]] = out.get(row["issue"], 0) + 1
        return dict(sorted(out.items()))

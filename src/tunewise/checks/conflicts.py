"""Label conflicts: the same request (or a near-identical one) carrying different labels.

Config, ``curate.label_conflicts`` (task classify only; for generate the generation check
reports ``reply_conflict``):

``threshold`` (default 0.9)
    Jaccard of word shingles above which two inputs count as the same request, beside inputs
    equal after ``normalise_for_dedup``. Words holding a digit are masked first, so "where is
    order 48213" and "where is order 99120" are the same request whatever the Jaccard of the raw
    words. 0.9 is far above ``near_duplicates``' 0.7 on purpose: two texts that differ by one
    word in 30 (J about 0.8) can already ask different things ("cancel my card" / "cancel my
    transfer"), and a wrong merge here rewrites labels. Groups are connected components of
    those links, as in the near-duplicate check.

``action``
    ``relabel`` (default): rows out-voted by a clear majority of their group take the majority
    label; groups without a clear majority are flagged (nothing certain to apply).
    ``flag``: every finding is flagged. ``drop``: the reported rows are dropped.

The rule, for a group holding more than one label:

* clear majority: the top label holds more than half of the group's rows AND at least
  ``MIN_MARGIN`` (2) rows more than the runner-up. Two votes against one is not clear: with
  one extra vote either side could be the annotator's slip. Each minority row is reported with
  ``change={"label": majority}`` and ``of`` = the earliest row carrying the majority label.
* no clear majority (e.g. a pair with two labels): every member except the earliest row is
  reported with no change and ``of`` = the earliest row. A conflicting copy is reported once
  and the original is not double counted; a reviewer reading the finding sees the whole group.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from ..curate import Check, CurateContext, Finding, SkipCheck, register
from ..neardup import find_near_duplicates
from .dedup import example_texts, mask_numbers

MIN_MARGIN = 2


def _counts_text(counts: Counter, exclude: str | None = None) -> str:
    return ", ".join(f"'{label}' x{n}" for label, n in counts.most_common() if label != exclude)


@register
class LabelConflicts(Check):
    name = "label_conflicts"
    issues = ("label_conflict",)
    actions = ("relabel", "flag", "drop")
    tasks = ("classify",)
    default_threshold = 0.9

    def find(self, frame: pd.DataFrame, ctx: CurateContext) -> list[Finding]:
        if "label" not in frame.columns:
            raise SkipCheck("no label column")
        if len(frame) < 2:
            return []
        threshold = self.threshold if self.threshold is not None else self.default_threshold
        texts = [mask_numbers(t) for t in example_texts(frame)]
        result = find_near_duplicates(texts, threshold=threshold, num_perm=self.project.curate.num_perm,
                                      shingle=self.project.curate.shingle, progress=True)
        group = np.asarray(result.cluster, dtype=np.int64)
        exact_group = np.asarray(result.exact_group, dtype=np.int64)
        labels = ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in frame["label"]]
        ids = [str(v) for v in frame["id"]]

        findings: list[Finding] = []
        members_by_group = pd.Series(np.arange(len(frame))).groupby(group).agg(list)
        for members in members_by_group:
            if len(members) < 2 or len({labels[m] for m in members}) < 2:
                continue
            members = sorted(members)
            counts = Counter(labels[m] for m in members)
            # ties broken by first appearance, so the wording is stable
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], min(m for m in members if labels[m] == kv[0])))
            (top, top_n), (_, second_n) = ranked[0], ranked[1]
            same_text = len({exact_group[m] for m in members}) == 1
            where = "on the same text" if same_text else "on a near-identical text"
            if top_n * 2 > len(members) and top_n - second_n >= MIN_MARGIN:
                majority_row = next(m for m in members if labels[m] == top)
                for m in members:
                    if labels[m] != top:
                        findings.append(Finding(
                            index=m, issue="label_conflict", change={"label": top}, of=ids[majority_row],
                            detail=f"label '{labels[m]}' conflicts with '{top}' x{top_n} {where}; majority -> '{top}'",
                        ))
            else:
                first = members[0]
                for m in members[1:]:
                    others = Counter({k: v for k, v in counts.items() if k != labels[m]})
                    findings.append(Finding(
                        index=m, issue="label_conflict", change=None, of=ids[first],
                        detail=(f"label '{labels[m]}' conflicts with {_counts_text(others)} {where}; "
                                f"no clear majority ({_counts_text(counts)})"),
                    ))
        return findings

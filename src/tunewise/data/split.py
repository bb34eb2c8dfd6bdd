"""Split without leakage: stratified train / validation / test with near-duplicate clusters kept
on one side, synthetic rows only in train, and a leakage check of test against train.

Random row splits leak: two phrasings of the same request that differ by an order number land on
both sides and the test score measures memory, not skill. So rows are grouped by near-duplicate
cluster (MinHash at a lower threshold than curation's de-duplication, to catch looser copies too)
and whole groups are assigned, stratified by label with scikit-learn's StratifiedGroupKFold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

from tunewise.data.issues import IssueTable
from tunewise.data.neardup import find_near_duplicates

# Beside the config: the test ids `tunewise add-labels` froze, so added rows never move the test split.
FROZEN_TEST_FILE = "tunewise_frozen_test_ids.json"


@dataclass
class SplitResult:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    issues: IssueTable
    summary: dict


def leakage_groups(texts: list[str], threshold: float, seed: int) -> np.ndarray:
    """Cluster id per row: rows joined by a near-duplicate chain share a cluster."""
    if not texts:
        return np.zeros(0, dtype=np.int64)
    return find_near_duplicates(texts, threshold=threshold, seed=seed + 1).cluster


def _holdout(frame: pd.DataFrame, fraction: float, groups: np.ndarray, label: str | None, seed: int) -> np.ndarray:
    """Boolean mask of rows held out: about ``fraction`` of rows, whole groups, stratified."""
    n = len(frame)
    mask = np.zeros(n, dtype=bool)
    eligible = ~frame["synthetic"].astype(bool).to_numpy()  # synthetic rows never leave train
    idx = np.flatnonzero(eligible)
    if len(idx) < 2:
        return mask
    n_splits = max(2, int(round(1.0 / fraction)))
    if label is not None:
        y = frame[label].to_numpy()[idx]
        counts = pd.Series(y).value_counts()
        if counts.min() >= 2 and len(counts) > 1:
            splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            # smallest classes may have fewer rows than folds: sklearn warns, the split stays valid
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                _, held = next(splitter.split(idx, y, groups[idx]))
            mask[idx[held]] = True
            return mask
    splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    _, held = next(splitter.split(idx, groups=groups[idx]))
    mask[idx[held]] = True
    return mask


def split_frame(
    frame: pd.DataFrame,
    *,
    task: str,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
    test_frame: pd.DataFrame | None = None,
    leakage_threshold: float = 0.5,
    test_ids: Sequence[str] | None = None,
) -> SplitResult:
    """Split curated records. With ``test_frame`` (a frozen test file) only validation is split; with
    ``test_ids`` (frozen by add-labels) exactly those rows are the test and the rest is split."""
    label = "label" if task == "classify" else None
    frame = frame.reset_index(drop=True)
    issues = IssueTable("split")
    texts = frame["input"].astype(str).tolist()
    groups = leakage_groups(texts, leakage_threshold, seed)

    if test_frame is None and test_ids is not None:
        test_mask = frame["id"].astype(str).isin(set(map(str, test_ids))).to_numpy()
        test = frame[test_mask]
        rest, rest_groups = frame[~test_mask].reset_index(drop=True), groups[~test_mask]
    elif test_frame is None:
        test_mask = _holdout(frame, test_fraction, groups, label, seed)
        test = frame[test_mask]
        rest, rest_groups = frame[~test_mask].reset_index(drop=True), groups[~test_mask]
    else:
        test = test_frame.reset_index(drop=True)
        rest, rest_groups = frame, groups
    val_mask = _holdout(rest, validation_fraction, rest_groups, label, seed + 1)
    validation = rest[val_mask].reset_index(drop=True)
    train = rest[~val_mask].reset_index(drop=True)
    test = test.reset_index(drop=True)

    leaks = find_leakage(train, test, leakage_threshold, seed)
    for test_id, train_id, jac in leaks:
        issues.add(
            test_id, "leakage", f"test row has a near-duplicate in train: {train_id} (Jaccard {jac:.2f})", "flagged"
        )

    summary = {
        "sizes": {"train": len(train), "validation": len(validation), "test": len(test)},
        "test_source": "file" if test_frame is not None else ("frozen" if test_ids is not None else "split"),
        "synthetic_in_train": int(train["synthetic"].astype(bool).sum()),
        "leakage_rows": len(leaks),
        "groups": int(len(np.unique(groups))) if len(groups) else 0,
    }
    if test_frame is None and test_ids is not None:
        summary["frozen_test_ids_missing"] = len(set(map(str, test_ids))) - len(test)  # dropped by curation
    if label is not None:
        # labels of validation and test rows no training row has: those rows are always scored wrong
        summary["unseen_labels"], summary["unseen_label_examples"] = unseen_labels(
            train, {"validation": validation, "test": test}, label
        )
        summary["class_counts"] = {
            name: part[label].value_counts().sort_index().to_dict()
            for name, part in (("train", train), ("validation", validation), ("test", test))
        }
    return SplitResult(train, validation, test, issues, summary)


def unseen_labels(
    train: pd.DataFrame, parts: dict[str, pd.DataFrame], label: str, examples: int = 20
) -> tuple[dict[str, dict[str, int]], dict[str, list[dict]]]:
    """Rows of ``parts`` whose label the training split lacks: ({part: {label: rows}} largest
    first, {part: the first ``examples`` rows as id, label, source, line}).

    A model trained on ``train`` cannot answer such a label, so these rows count as wrong for every
    candidate (unless the label is the out-of-scope one, which a confidence threshold may answer).
    That is legitimate for an out-of-scope class, but it must be said."""
    known = set(train[label].astype(str))
    counts_out: dict[str, dict[str, int]] = {}
    rows_out: dict[str, list[dict]] = {}
    for name, part in parts.items():
        labels = part[label].astype(str)
        unseen = ~labels.isin(known)
        counts = labels[unseen].value_counts()
        counts = counts.sort_index().sort_values(ascending=False, kind="stable")
        counts_out[name] = {str(k): int(v) for k, v in counts.items()}
        rows_out[name] = []
        for i in np.flatnonzero(unseen.to_numpy())[:examples]:
            row = part.iloc[i]
            line = row.get("source_line")
            rows_out[name].append(
                {
                    "id": str(row["id"]),
                    "label": str(row[label]),
                    "source": row.get("source_file"),
                    "line": None if line is None or pd.isna(line) else int(line),
                }
            )
    return counts_out, rows_out


def find_leakage(train: pd.DataFrame, test: pd.DataFrame, threshold: float, seed: int) -> list[tuple[str, str, float]]:
    """Test rows with a near-duplicate in train: (test id, train id, Jaccard).

    The engine links each exact-duplicate group through its first row only, so a test row is
    matched through its group: it leaks when its group holds a train row (Jaccard 1.0 after
    normalisation) or when its group's first row is linked to a group that holds one.
    """
    if len(train) == 0 or len(test) == 0:
        return []
    texts = test["input"].astype(str).tolist() + train["input"].astype(str).tolist()
    result = find_near_duplicates(texts, threshold=threshold, seed=seed + 1)
    n_test = len(test)
    group = result.exact_group
    # first train row of every exact group that has one
    train_in_group: dict[int, int] = {}
    for j in range(n_test, len(texts)):
        train_in_group.setdefault(int(group[j]), j)
    best: dict[int, tuple[int, float]] = {}  # group first row -> (train row, jaccard)
    for g, j in train_in_group.items():
        best[g] = (j, 1.0)
    for (a, b), jac in zip(result.pairs.tolist(), result.jaccard.tolist()):
        for here, there in ((a, b), (b, a)):
            j = train_in_group.get(int(group[there]))
            if j is not None and (int(group[here]) not in best or best[int(group[here])][1] < jac):
                best[int(group[here])] = (j, float(jac))
    out = []
    for i in range(n_test):
        hit = best.get(int(group[i]))
        if hit is not None:
            out.append((str(test["id"].iloc[i]), str(train["id"].iloc[hit[0] - n_test]), hit[1]))
    return out

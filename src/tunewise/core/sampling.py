"""The stratified sampler: a seeded sample of a record frame's ids, each class with its share.

Used by the baseline stage (the paired sample expensive candidates score), training (a stratified
head of the training rows) and the benchmarks.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["stratified_sample_ids"]


def stratified_sample_ids(frame: pd.DataFrame, size: int | None, seed: int, by: str | None = None) -> list[str]:
    """Ids of ``size`` rows (all when ``size`` is None or not smaller), in frame order.

    With ``by``, each value gets its share of the sample by largest remainder (at least one row for
    a value when the sample has room). Hand-written because scikit-learn's stratified splitters
    refuse classes with a single row and samples smaller than the number of classes.
    """
    ids = frame["id"].astype(str).to_numpy()
    if size is None or size >= len(frame):
        return ids.tolist()
    rng = np.random.default_rng(seed)
    if by is None:
        chosen = np.sort(rng.choice(len(frame), size=size, replace=False))
        return ids[chosen].tolist()
    groups = frame[by].astype(str).to_numpy()
    values, counts = np.unique(groups, return_counts=True)
    quota = counts * size / len(frame)
    take = np.floor(quota).astype(int)
    if size >= len(values):  # every class is represented when there is room for it
        take = np.maximum(take, 1)
    surplus = take.sum() - size
    if surplus > 0:  # the minimum of one row overshot: take back from the largest classes
        for i in np.argsort(-take, kind="stable")[:surplus]:
            take[i] -= 1
    else:
        for i in np.argsort(-(quota - np.floor(quota)), kind="stable")[: size - take.sum()]:
            take[i] += 1
    chosen: list[int] = []
    for value, n in zip(values, take):
        members = np.flatnonzero(groups == value)
        chosen.extend(rng.choice(members, size=min(n, len(members)), replace=False).tolist())
    return ids[np.sort(chosen)].tolist()

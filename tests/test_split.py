"""Split without leakage, on real BANKING77 rows with planted near-duplicate copies."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tunewise.data.neardup import find_near_duplicates
from tunewise.data.split import find_leakage, split_frame


def _records(frame: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(len(frame))],
            "input": frame["text"].tolist(),
            "label": frame["category"].tolist(),
        }
    )
    out["context"], out["source_file"], out["source_line"], out["synthetic"] = "[]", "t.csv", range(len(out)), False
    return out


def _sample(banking77, n_classes=8, per_class=30, seed=0):
    base = pd.read_csv(banking77 / "train.csv")
    classes = sorted(base["category"].unique())[:n_classes]
    return base[base["category"].isin(classes)].groupby("category").head(per_class).reset_index(drop=True)


def test_near_duplicate_groups_stay_on_one_side(banking77):
    sample = _sample(banking77)
    recs = _records(sample)
    # plant copies that differ by a word or a number: they must land on the same side as the original
    copies = recs.iloc[:60].copy()
    copies["id"] = [f"c{i}" for i in range(len(copies))]
    copies["input"] = "hello, " + copies["input"] + " 12345"
    frame = pd.concat([recs, copies], ignore_index=True)
    result = split_frame(frame, task="classify", validation_fraction=0.15, test_fraction=0.2, seed=3)
    side = {i: name for name in ("train", "validation", "test") for i in getattr(result, name)["id"]}
    assert len(side) == len(frame), "every row lands in exactly one split"
    clusters = find_near_duplicates(frame["input"].tolist(), threshold=0.5, seed=4).cluster
    for c in np.unique(clusters):
        members = frame["id"][clusters == c].tolist()
        assert len({side[m] for m in members}) == 1, f"near-duplicate group {members} split across sides"
    assert result.summary["leakage_rows"] == 0
    # stratified: every class appears in train and test
    assert set(result.train["label"]) == set(frame["label"])
    assert set(result.test["label"]) == set(frame["label"])
    assert 0.12 < len(result.test) / len(frame) < 0.3


def test_synthetic_rows_only_in_train(banking77):
    recs = _records(_sample(banking77))
    recs.loc[recs.index % 4 == 0, "synthetic"] = True
    result = split_frame(recs, task="classify", validation_fraction=0.2, test_fraction=0.2, seed=0)
    assert not result.validation["synthetic"].any() and not result.test["synthetic"].any()
    assert result.train["synthetic"].sum() == recs["synthetic"].sum()


def test_frozen_test_file_is_kept_and_leakage_reported(banking77):
    recs = _records(_sample(banking77))
    test = recs.iloc[:20].copy()
    test["id"] = [f"t{i}" for i in range(20)]
    test.loc[0, "input"] = "Something entirely unrelated to banking about the weather today"
    test.loc[1, "input"] = test.loc[1, "input"] + " order 98765"  # a near copy of train row r1
    result = split_frame(recs, task="classify", validation_fraction=0.1, test_fraction=0.2, seed=0, test_frame=test)
    assert result.test["id"].tolist() == test["id"].tolist(), "a frozen test set is used as it is"
    assert len(result.train) + len(result.validation) == len(recs)
    leaked = {row["id"] for row in result.issues.rows}
    assert "t1" in leaked and "t0" not in leaked
    assert all(r["issue"] == "leakage" and r["action"] == "flagged" for r in result.issues.rows)


def test_find_leakage_through_exact_copies():
    train = pd.DataFrame({"id": ["a", "b"], "input": ["where is my card it has not arrived yet", "how do I top up"]})
    test = pd.DataFrame(
        {
            "id": ["x", "y", "z"],
            "input": [
                "Where is my card, it has not arrived yet?",
                "where is my card it has not arrived yet",
                "what is the exchange rate for euros today",
            ],
        }
    )
    leaks = {t: (tr, j) for t, tr, j in find_leakage(train, test, 0.5, 0)}
    assert leaks.keys() == {"x", "y"} and leaks["x"][0] == "a" and leaks["y"][1] == 1.0


def test_generate_task_split_without_labels(banking77):
    recs = _records(_sample(banking77)).rename(columns={"label": "target"})
    result = split_frame(recs, task="generate", validation_fraction=0.1, test_fraction=0.2, seed=0)
    assert len(result.train) + len(result.validation) + len(result.test) == len(recs)
    assert "class_counts" not in result.summary

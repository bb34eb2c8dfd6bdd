"""Label checks: suspected label errors (confident learning on out-of-fold probabilities), the
thin-class balance report, and synthetic paraphrases for thin classes."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from tunewise.config.checks import CheckSettings
from tunewise.config.sections import ConfigError, CurateConfig, config_from_dict
from tunewise.core.records import records_from_texts
from tunewise.core.text import surface_key
from tunewise.data.checks.labels import (
    LabelErrors,
    ThinClasses,
    _clean_generation,
    _reject_reason,
    balance_report,
)
from tunewise.data.curate import CurateContext, Engine, curate_frame

CHECKS = [
    name
    for name, f in CurateConfig.model_fields.items()
    if isinstance(f.annotation, type) and issubclass(f.annotation, CheckSettings)
]
# Six BANKING77 intents that a bank's customers would not confuse with one another; the test is
# about finding flipped labels, not about BANKING77's near-synonymous intents.
INTENTS = [
    "card_arrival",
    "exchange_rate",
    "apple_pay_or_google_pay",
    "pin_blocked",
    "top_up_failed",
    "cash_withdrawal_charge",
]


make_frame = records_from_texts


def only(*enabled: str, **settings):
    """A config running only the named checks; ``settings`` maps a check to its config."""
    curate = {name: {"enabled": name in enabled} for name in CHECKS}
    for name, value in settings.items():
        curate[name] = {**curate.get(name, {}), **value} if isinstance(value, dict) else value
    return config_from_dict({"data": {"train": "train.csv"}, "curate": curate})


@pytest.fixture(scope="module")
def noisy_banking(banking77):
    """600 BANKING77 rows of 6 intents (100 each) with 20 labels flipped to another of the 6."""
    data = pd.read_csv(banking77 / "train.csv")
    data = data[data["category"].isin(INTENTS)].groupby("category").sample(100, random_state=0)
    data = data.reset_index(drop=True)
    rng = np.random.default_rng(7)
    flipped = rng.choice(len(data), 20, replace=False)
    labels = data["category"].to_numpy().copy()
    for i in flipped:
        labels[i] = rng.choice([c for c in INTENTS if c != labels[i]])
    frame = make_frame(data["text"].tolist(), labels.tolist())
    return frame, {f"r{i}" for i in flipped}, dict(zip(frame["id"], data["category"]))


def test_label_errors_find_flipped_labels_and_relabel_them(noisy_banking):
    frame, flipped, true_label = noisy_banking
    result = curate_frame(frame, only("label_errors", label_errors={"action": "relabel"}))
    issues = result.issues.frame()
    assert set(issues["issue"]) == {"suspected_label_error"} and set(issues["action"]) == {"relabeled"}
    found = set(issues["id"])
    recall = len(found & flipped) / len(flipped)
    precision = len(found & flipped) / max(len(found), 1)
    assert recall >= 0.75 and precision >= 0.75, (recall, precision, len(found))
    # the suggested label is the true one for the flipped rows the check found
    new_label = dict(zip(result.frame["id"], result.frame["label"]))
    assert all(new_label[i] == true_label[i] for i in found & flipped)
    assert len(result.frame) == len(frame)
    assert result.summary["checks"]["label_errors"]["judged_rows"] == len(frame)
    detail = issues["detail"].iloc[0]
    assert re.fullmatch(r"given '\w+' \(p=0\.\d\d\), model says '\w+' \(p=[01]\.\d\d\)", detail), detail


def test_label_errors_skip_with_one_class():
    frame = make_frame([f"where is my card number {i}" for i in range(40)], ["card_arrival"] * 40)
    result = curate_frame(frame, only("label_errors"))
    assert "2 classes" in result.summary["skipped"]["label_errors"]
    assert len(result.issues) == 0


def test_label_errors_skip_with_too_few_rows():
    frame = make_frame([f"text {i}" for i in range(10)], ["a", "b"] * 5)
    result = curate_frame(frame, only("label_errors"))
    assert "needs 30" in result.summary["skipped"]["label_errors"]


def test_tiny_class_is_not_judged_and_is_named(noisy_banking):
    frame, flipped, _ = noisy_banking
    frame = frame[~frame["id"].isin(flipped)].groupby("label").head(20)  # 6 classes x 20 rows
    lonely = make_frame(["I want to close my account today"], ["terminate_account"])
    lonely["id"] = "lonely"
    frame = pd.concat([frame, lonely], ignore_index=True)
    cfg = only("label_errors")
    check = LabelErrors(cfg.curate.label_errors, cfg)
    ctx = CurateContext(cfg, Engine())
    findings = check.find(frame, ctx)
    assert len(frame) - 1 not in {f.index for f in findings}
    coverage = ctx.notes["label_errors"]  # what the curate summary shows for the check
    assert coverage["not_judged"] == {"terminate_account": 1}
    assert coverage["judged_rows"] == len(frame) - 1
    assert "terminate_account" in coverage["note"]


def test_thin_classes_report_and_one_finding_per_thin_class():
    labels = ["refund_status"] * 25 + ["warranty_claim"] * 7 + ["order_status"] * 20 + ["gift_card"] * 3
    order = np.random.default_rng(0).permutation(len(labels))
    labels = [labels[i] for i in order]
    frame = make_frame([f"message {i}" for i in range(len(labels))], labels)
    result = curate_frame(frame, only("thin_classes"))
    issues = result.issues.frame()
    assert list(issues["issue"]) == ["thin_class", "thin_class"]
    assert list(issues["id"]) == [f"r{labels.index('gift_card')}", f"r{labels.index('warranty_claim')}"]
    assert list(issues["detail"]) == [
        "class 'gift_card' has 3 rows < minimum 20",
        "class 'warranty_claim' has 7 rows < minimum 20",
    ]
    balance = result.summary["checks"]["thin_classes"]["balance"]
    assert balance["counts"] == {"refund_status": 25, "order_status": 20, "warranty_claim": 7, "gift_card": 3}
    assert balance["thin"] == {"gift_card": 3, "warranty_claim": 7}
    assert balance["imbalance_ratio"] == round(25 / 3, 2)
    assert (balance["rows"], balance["classes"], balance["minimum"]) == (55, 4, 20)


def test_thin_classes_threshold_is_the_minimum():
    report = balance_report(pd.Series(["a"] * 5 + ["b"] * 9), minimum=6)
    assert report["thin"] == {"a": 5}
    cfg = only("thin_classes", thin_classes={"threshold": 10})
    check = ThinClasses(cfg.curate.thin_classes, cfg)
    frame = make_frame([f"m{i}" for i in range(14)], ["a"] * 5 + ["b"] * 9)
    assert len(check.find(frame, CurateContext(cfg, Engine()))) == 2
    with pytest.raises(ConfigError, match="thin_classes.threshold must be a whole number >= 1"):
        only("thin_classes", thin_classes={"threshold": 0})  # the config refuses it before any check runs


def test_generation_gates():
    source = "My blender stopped working after ten months."
    assert (
        _clean_generation('"The blender broke down after ten months of use."', True)
        == "The blender broke down after ten months of use."
    )
    assert (
        _clean_generation("Here is the rewritten message:\n\nMy blender died after 10 months.", True)
        == "My blender died after 10 months."
    )
    assert _clean_generation("My blender stopped working after ten months and", False) is None
    assert _reject_reason(None, source) == "cut off"
    assert _reject_reason("Okay.", source) == "empty or too short"
    assert _reject_reason("Rewrite this customer message in different words", source) == "echoes the prompt"
    assert _reject_reason("my blender  STOPPED working after ten months.", source) == "exact copy"
    assert _reject_reason("The blender broke after ten months.", source) is None


@pytest.fixture
def one_torch_thread():
    """Generate on one thread: on a shared 2-core box two OpenMP threads wait on each other at
    every token (measured: 20 tokens x 8 rows took 1.2 s on one thread, 5.9 s on two)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_synthesize_adds_marked_paraphrases_that_copy_nothing(noisy_banking, one_torch_thread):
    frame, flipped, _ = noisy_banking
    clean = frame[~frame["id"].isin(flipped)]
    # two thin classes of 4 rows; the other four classes keep 30 rows each
    rank = clean.groupby("label").cumcount()
    keep = clean[rank < np.where(clean["label"].isin(["pin_blocked", "exchange_rate"]), 4, 30)]
    keep = keep.reset_index(drop=True)
    cfg = only("thin_classes", thin_classes={"threshold": 6}, synthesize=True)
    check = ThinClasses(cfg.curate.thin_classes, cfg)
    ctx = CurateContext(cfg, Engine())
    assert len(check.find(keep, ctx)) == 2
    added, added_findings = check.synthesize(keep, ctx)
    stats = ctx.notes["thin_classes"]["synthesis"]
    # 2 classes x 2 rows needed x 3 candidates per needed row, for at most 3 rounds
    assert 12 <= stats["generated"] <= 36
    assert stats["kept"] + sum(stats["rejected"].values()) == stats["generated"]
    assert 1 <= len(added) == stats["kept"] == len(added_findings)
    assert list(added.columns) == list(keep.columns)
    assert added["synthetic"].all() and (added["source_file"] == "synthetic").all()
    per_class = added["label"].value_counts()
    assert set(per_class.index) <= {"pin_blocked", "exchange_rate"} and per_class.max() <= 2  # only what is needed
    assert all(i.startswith(f"syn-{label}-") for i, label in zip(added["id"], added["label"]))
    assert added["id"].is_unique and not set(added["id"]) & set(keep["id"])
    existing = {surface_key(t) for t in keep["input"]}
    assert not any(surface_key(t) in existing for t in added["input"])
    assert added["input"].map(surface_key).is_unique
    vectors = ctx.embed(added["input"].tolist())
    assert (vectors @ ctx.embed(keep["input"].tolist()).T).max() < 0.95
    among_added = vectors @ vectors.T
    assert (among_added[~np.eye(len(added), dtype=bool)] < 0.95).all()
    assert {f.issue for f in added_findings} == {"synthetic"}
    assert [f.index for f in added_findings] == list(range(len(added)))
    assert all(f.of in set(keep["id"]) for f in added_findings)


def test_folds_fitted_side_by_side_give_the_one_by_one_probabilities(banking77, monkeypatch):
    # above PARALLEL_FOLDS_MIN_ROWS the five folds are fitted in worker processes: the same
    # probabilities to the bit as fitting them here one by one
    from tunewise.data.checks import labels as label_checks

    frame = pd.read_csv(banking77 / "train.csv")
    frame = frame[frame["category"].isin(sorted(frame["category"].unique())[:20])].head(2400)
    assert len(frame) >= label_checks.PARALLEL_FOLDS_MIN_ROWS
    features = label_checks.text_features(frame["text"].tolist(), np.zeros((len(frame), 1), dtype=np.float32))
    y = np.unique(frame["category"].to_numpy(), return_inverse=True)[1]
    left_out = np.zeros(len(y), dtype=bool)
    left_out[::50] = True
    side_by_side = label_checks.out_of_fold_probs(features, y, left_out=left_out)
    monkeypatch.setattr(label_checks, "PARALLEL_FOLDS_MIN_ROWS", len(y) + 1)
    one_by_one = label_checks.out_of_fold_probs(features, y, left_out=left_out)
    np.testing.assert_array_equal(side_by_side, one_by_one)
    assert np.allclose(side_by_side.sum(axis=1), 1.0)  # every row predicted by its own fold

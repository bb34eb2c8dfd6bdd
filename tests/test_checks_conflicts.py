"""Label conflicts: the same (or a near-identical) request with different labels, resolved by a
clear majority or flagged when there is none."""

from __future__ import annotations

import pandas as pd
import pytest

from tunewise.config.sections import ConfigError, config_from_dict
from tunewise.data.checks.conflicts import LabelConflicts
from tunewise.data.curate import CurateContext, Engine, build_checks, curate_frame

REFUND = "Where is my refund for order {}? It has been two weeks since you got the parcel back."


def make_frame(rows: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(len(rows))],
            "input": [text for text, _ in rows],
            "context": ["[]"] * len(rows),
            "label": [label for _, label in rows],
            "source_file": ["train.csv"] * len(rows),
            "source_line": list(range(2, len(rows) + 2)),
            "synthetic": [False] * len(rows),
        }
    )


def make_config(task: str = "classify", **curate):
    return config_from_dict({"task": task, "data": {"train": "train.csv"}, "curate": curate})


def find(frame: pd.DataFrame, **curate):
    cfg = make_config(**curate)
    return LabelConflicts(cfg.curate.label_conflicts, cfg).find(frame, CurateContext(cfg, Engine()))


def only_conflicts(action: str | None = None, task: str = "classify"):
    """Config running label_conflicts alone (with the given action)."""
    curate = {
        name: {"enabled": False}
        for name in (
            "standardise",
            "empty_garbage",
            "too_short",
            "too_long",
            "pii",
            "off_topic",
            "exact_duplicates",
            "near_duplicates",
            "semantic_duplicates",
            "label_errors",
            "thin_classes",
            "generation",
        )
    }
    if action:
        curate["label_conflicts"] = {"action": action}
    return make_config(task, **curate)


def test_clear_majority_relabels_the_minority():
    frame = make_frame(
        [
            (REFUND.format(1001), "return_item"),
            ("How do I reset my password?", "account"),
            (REFUND.format(1002), "refund_status"),
            (REFUND.format(1003), "refund_status"),
            (REFUND.format(1004), "refund_status"),
        ]
    )
    findings = find(frame)
    assert len(findings) == 1
    f = findings[0]
    assert (f.index, f.issue, f.change, f.of) == (0, "label_conflict", {"label": "refund_status"}, "r2")
    assert f.detail == (
        "label 'return_item' conflicts with 'refund_status' x3 on a near-identical text; majority -> 'refund_status'"
    )


def test_same_text_up_to_case_and_spacing_says_so():
    frame = make_frame(
        [
            ("Where is my refund?", "refund_status"),
            ("where is  my refund?", "refund_status"),
            ("Where is my refund?", "return_item"),
        ]
    )
    (f,) = find(frame)
    assert f.index == 2 and f.change == {"label": "refund_status"} and f.of == "r0"
    assert "on the same text" in f.detail


def test_a_pair_with_two_labels_has_no_majority_and_reports_the_later_row():
    frame = make_frame([(REFUND.format(1001), "refund_status"), (REFUND.format(2002), "return_item")])
    (f,) = find(frame)
    assert (f.index, f.change, f.of) == (1, None, "r0")
    assert f.detail == (
        "label 'return_item' conflicts with 'refund_status' x1 on a near-identical text; "
        "no clear majority ('refund_status' x1, 'return_item' x1)"
    )


def test_a_tie_reports_every_member_but_the_earliest_and_skips_exact_copies():
    frame = make_frame(
        [
            (REFUND.format(1), "refund_status"),
            (REFUND.format(2), "return_item"),
            (REFUND.format(2).upper(), "return_item"),  # exact copy of r1: exact_duplicates' finding
            (REFUND.format(3), "refund_status"),
        ]
    )
    findings = find(frame)
    assert {(f.index, f.of) for f in findings} == {(1, "r0"), (3, "r0")}
    assert all(f.change is None for f in findings)


def test_the_earliest_row_need_not_hold_the_majority():
    frame = make_frame(
        [(REFUND.format(i), label) for i, label in enumerate(["return_item", "refund_status", "refund_status"])]
    )
    (f,) = find(frame)
    assert (f.index, f.change, f.of) == (0, {"label": "refund_status"}, "r1")


def test_different_requests_with_different_labels_are_not_conflicts():
    frame = make_frame(
        [
            ("Hi, I have a question about my account: how do I change the email address on it?", "change_email"),
            ("Hi, I have a question about my account: why was I charged a monthly fee this time?", "fees"),
            ("I want to cancel my order", "cancel_order"),
            ("I want to track my order", "order_status"),
        ]
    )
    assert find(frame) == []


def test_near_threshold_comes_from_the_config():
    a = "Can I return the blue jacket I bought last week? It is too small for me."
    b = "Can I return the red jacket I bought last week? It is too small for me."
    frame = make_frame([(a, "return_item"), (b, "exchange_item")])
    assert find(frame) == []  # one word in 16: Jaccard 0.65, below 0.9
    assert len(find(frame, label_conflicts={"threshold": 0.5})) == 1


def test_runner_relabels_with_a_majority_and_flags_a_tie():
    frame = make_frame(
        [
            (REFUND.format(1), "refund_status"),
            (REFUND.format(2), "refund_status"),
            (REFUND.format(3), "return_item"),
            ("Can I pay with PayPal?", "payment"),
            ("can I pay with paypal", "shipping"),
        ]
    )
    result = curate_frame(frame, only_conflicts())
    issues = result.issues.frame().set_index("id")
    assert issues.loc["r2", "action"] == "relabeled" and issues.loc["r4", "action"] == "flagged"
    assert issues.loc["r4", "detail"].endswith("(of r3)")
    assert result.frame.set_index("id").loc["r2", "label"] == "refund_status"
    assert result.frame.set_index("id").loc["r4", "label"] == "shipping"  # a tie changes nothing


def test_drop_action_drops_the_reported_rows():
    frame = make_frame([(REFUND.format(1), "refund_status"), (REFUND.format(2), "return_item")])
    result = curate_frame(frame, only_conflicts("drop"))
    assert list(result.frame.id) == ["r0"]


def test_only_for_classify_and_only_sensible_actions():
    frame = make_frame([(REFUND.format(1), "a"), (REFUND.format(2), "b")])
    result = curate_frame(frame.rename(columns={"label": "target"}), only_conflicts(task="generate"))
    assert result.summary["skipped"] == {"label_conflicts": "not used for task generate"}
    with pytest.raises(ConfigError, match="curate.label_conflicts.action: 'redact' is not valid"):
        build_checks(make_config(label_conflicts={"action": "redact"}))

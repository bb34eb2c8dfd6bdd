"""The generation check on hand-made reply sets (real MiniLM embeddings through the curation
context) and on the demo data set's recorded reply defects."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tunewise.config.sections import config_from_dict
from tunewise.data.checks.generation import is_empty_reply, template_slots, truncation_reason
from tunewise.data.curate import CHECK_ORDER, curate_frame
from tunewise.demo.data import generate_demo


def make_config(task: str = "generate", empty_garbage: bool = False, **settings):
    curate = {name: {"enabled": False} for name in CHECK_ORDER}
    curate["generation"] = {"enabled": True, **settings}
    curate["empty_garbage"] = {"enabled": empty_garbage}
    return config_from_dict({"task": task, "data": {"train": "x.csv"}, "curate": curate})


def make_frame(pairs: list[tuple[str, str]], task: str = "generate") -> pd.DataFrame:
    n = len(pairs)
    return pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "input": [p[0] for p in pairs],
            "context": ["[]"] * n,
            "target" if task == "generate" else "label": [p[1] for p in pairs],
            "source_file": "x.csv",
            "source_line": list(range(2, n + 2)),
            "synthetic": False,
        }
    )


def found(result, issue: str) -> list[str]:
    issues = result.issues.frame()
    return issues.loc[issues["issue"] == issue, "id"].tolist()


@pytest.mark.parametrize("reply", ["", "  ", "-", "N/A", "n/a", "None", "TBD", "..."])
def test_stand_in_replies_are_empty(reply):
    assert is_empty_reply(reply)


@pytest.mark.parametrize("reply", ["No.", "OK", "Yes, it ships today."])
def test_short_real_replies_are_not_empty(reply):
    assert not is_empty_reply(reply)


def test_truncation():
    vocabulary = sorted({"business", "days", "refund", "processed", "within", "will", "be", "your"})
    known = set(vocabulary)
    assert (
        truncation_reason("Your refund will be processed within 5 busin", vocabulary, known)
        == "last word 'busin' looks cut off"
    )
    assert truncation_reason("Please check your inbox and", vocabulary, known) == "ends with dangling 'and'"
    assert truncation_reason("Let me look into this for you...", vocabulary, known) == "ends with an ellipsis"
    assert truncation_reason("Here are the steps:", vocabulary, known) == "ends with ':'"
    for fine in (
        "Your refund will be processed within 5 business days.",
        "Thanks, Sam",
        "Done 👍",
        "Your refund will be processed within 5 business days",
        "Track it at https://example.com/track",
    ):
        assert truncation_reason(fine, vocabulary, known) is None, fine


def test_template_slots():
    reply = "Hi {{name}}, order {order_id} for [CUSTOMER NAME] ships to <first_name> (%(city)s, ${zip}); [Agent Name]"
    assert template_slots(reply) == [
        "{{name}}",
        "{order_id}",
        "[CUSTOMER NAME]",
        "<first_name>",
        "%(city)s",
        "${zip}",
        "[Agent Name]",
    ]
    not_slots = 'We wrote to <EMAIL> and <PHONE> about <IBAN>.<br>See [1] and [the guide](https://x.y). {"a": 1}'
    assert template_slots(not_slots) == []


def test_row_level_findings_through_curate_frame():
    frame = make_frame(
        [
            ("where is my order?", "N/A"),
            ("can I return this?", ""),
            ("refund please", "Hi {customer_name}, your refund is on its way."),
            ("how long is shipping", "Standard shipping takes 3-5 business days and"),
            ("thanks", "You're welcome!"),
        ]
    )
    result = curate_frame(frame, make_config())
    assert found(result, "empty_reply") == ["r0", "r1"]
    assert found(result, "template_slot") == ["r2"]
    assert found(result, "truncated_reply") == ["r3"]
    assert set(result.issues.frame()["action"]) == {"flagged"}
    assert len(result.frame) == 5


def test_blank_reply_reported_once_when_empty_garbage_runs():
    frame = make_frame([("where is my order?", " "), ("hello there", "-")])
    result = curate_frame(frame, make_config(empty_garbage=True, action="flag"))
    issues = result.issues.frame()
    assert issues[["id", "issue"]].values.tolist() == [["r0", "empty_reply"], ["r1", "empty_reply"]]


CANNED = "Thank you for contacting us! We have received your message and will get back to you soon."
TRACK = "You can track your parcel under Account > Orders."


def test_copied_reply_for_unrelated_inputs_but_not_for_paraphrases():
    frame = make_frame(
        [
            ("My blender arrived broken, I want a replacement.", CANNED),
            ("How do I reset my password?", CANNED),
            ("Do you ship to Canada and how much does it cost?", CANNED),
            ("Can I use two discount codes on one order?", CANNED),
            ("Where is my order?", TRACK),
            ("where's my order??", TRACK),
            ("Where is my package right now?", TRACK),
        ]
    )
    result = curate_frame(frame, make_config())
    issues = result.issues.frame()
    copied = issues[issues["issue"] == "copied_reply"]
    assert copied["id"].tolist() == ["r0", "r1", "r2", "r3"]
    assert copied["detail"].iloc[0].startswith("same reply for 4 unrelated inputs (mean input similarity")
    assert copied["detail"].iloc[1].endswith("(of r0)")


def test_reply_conflict_for_different_answers_to_one_input():
    frame = make_frame(
        [
            ("Can I return a used item?", "Yes, items can be returned within 30 days if unused."),
            ("How long does shipping take?", "Shipping takes 3-5 business days."),
            ("can I return a used item", "Your password reset link has been sent to your email."),
            ("How long does shipping take?", "Standard shipping takes 3 to 5 business days."),
        ]
    )
    result = curate_frame(frame, make_config(action="drop"))
    issues = result.issues.frame()
    assert issues["id"].tolist() == ["r2"] and issues["issue"].tolist() == ["reply_conflict"]
    assert issues["detail"][0].endswith("(of r0)")
    assert result.frame["id"].tolist() == ["r0", "r1", "r3"]


def test_generation_is_skipped_for_classify():
    frame = make_frame([("where is my order?", "order_status")], task="classify")
    result = curate_frame(frame, make_config("classify"))
    assert "generation" in result.summary["skipped"] and len(result.issues) == 0


def test_demo_reply_defects(tmp_path):
    files = generate_demo(tmp_path, task="generate", seed=0)
    raw = pd.read_csv(files.data, dtype=str, keep_default_na=False)
    frame = pd.DataFrame(
        {
            "id": raw["id"],
            "input": raw["text"],
            "context": "[]",
            "target": raw["reply"],
            "source_file": files.data.name,
            "source_line": range(2, len(raw) + 2),
            "synthetic": False,
        }
    )
    truth = [json.loads(line) for line in files.truth.read_text().splitlines()]
    # empty_garbage drops junk inputs first (as in a default run) and reports blank replies.
    result = curate_frame(frame, make_config(empty_garbage=True))
    issues = result.issues.frame()
    # Off-topic and spam rows get canned replies too, but the off_topic check removes them
    # before this one in a full run; they are not this check's to score.
    other_checks = {t["id"] for t in truth if t["defect"] in ("off_topic", "spam")}
    for kind in ("empty_reply", "template_slot", "copied_reply"):
        true = {t["id"] for t in truth if t["defect"] == kind}
        reported = set(issues.loc[issues["issue"] == kind, "id"]) - other_checks
        hits = len(reported & true)
        assert len(true) >= 5, kind
        assert hits / len(true) >= 0.95, (kind, hits, len(true))
        # one canned reply shared by unrelated inputs also surfaces rows whose label (and so reply)
        # was swapped: a flag on a row with another injected defect is a real problem found
        defective = {t["id"] for t in truth}
        right = len(reported & (true if kind != "copied_reply" else defective))
        assert right / max(1, len(reported)) >= (0.85 if kind == "copied_reply" else 0.90), (kind, right, len(reported))
    assert "truncated_reply" not in set(issues["issue"])  # the demo's clean replies all end properly

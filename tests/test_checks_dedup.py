"""Exact, near and semantic duplicate checks on small hand-made data with known answers, and the
duplicate and conflict detection rates on the demo data against its truth file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from tunewise.config.sections import config_from_dict
from tunewise.core.text import dedup_key
from tunewise.data.checks.conflicts import LabelConflicts
from tunewise.data.checks.dedup import (
    ExactDuplicates,
    NearDuplicates,
    SemanticDuplicates,
    mask_numbers,
    one_word_edit,
    semantic_pairs,
)
from tunewise.data.curate import CurateContext, Engine, SkipCheck, curate_frame
from tunewise.data.neardup import shingle_set


def make_frame(rows: list[tuple[str, str]], answer: str = "label") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(len(rows))],
            "input": [text for text, _ in rows],
            "context": ["[]"] * len(rows),
            answer: [value for _, value in rows],
            "source_file": ["train.csv"] * len(rows),
            "source_line": list(range(2, len(rows) + 2)),
            "synthetic": [False] * len(rows),
        }
    )


def make_config(task: str = "classify", **curate):
    return config_from_dict({"task": task, "data": {"train": "train.csv"}, "curate": curate})


def run(check_cls, frame: pd.DataFrame, task: str = "classify", **curate):
    cfg = make_config(task, **curate)
    check = check_cls(getattr(cfg.curate, check_cls.name), cfg)
    return check.find(frame, CurateContext(cfg, Engine()))


def reported(findings) -> dict[str, str | None]:
    """row index -> of, for assertions that read like the answer."""
    return {f"r{f.index}": f.of for f in findings}


def jaccard(a: str, b: str) -> float:
    sa = shingle_set(dedup_key(mask_numbers(a)))
    sb = shingle_set(dedup_key(mask_numbers(b)))
    return len(sa & sb) / len(sa | sb)


# ---------------------------------------------------------------------------------------------
# exact duplicates


def test_exact_duplicates_ignore_case_and_whitespace_and_keep_the_first():
    frame = make_frame(
        [
            ("Where is my order?", "order_status"),
            ("where  is my ORDER?", "order_status"),
            ("I want a refund", "refund"),
            ("Where is my order?\n", "order_status"),
            ("Where is my order?!", "order_status"),  # punctuation differs: an edited copy, not exact
            ("where is my order?", "refund"),  # same text, other label: label_conflicts' job
        ]
    )
    findings = run(ExactDuplicates, frame)
    assert reported(findings) == {"r1": "r0", "r3": "r0"}
    assert all(f.issue == "exact_duplicate" for f in findings)
    assert findings[0].detail == "same input and label as r0"


def test_exact_duplicates_for_generate_compare_the_reply():
    frame = make_frame(
        [
            ("Where is my order?", "It ships tomorrow."),
            ("where is my order?", "It  ships tomorrow."),  # same reply up to spacing
            ("Where is my order?", "It was delivered yesterday."),
        ],
        answer="target",
    )
    findings = run(ExactDuplicates, frame, task="generate")
    assert reported(findings) == {"r1": "r0"}
    assert "reply" in findings[0].detail


def test_exact_duplicates_need_the_same_chat_context():
    frame = make_frame([("yes please", "confirm"), ("yes please", "confirm"), ("yes please", "confirm")])
    frame["context"] = [
        '[{"role": "user", "content": "Can you cancel order 1?"}]',
        '[{"role": "user", "content": "Can you cancel order 1?"}]',
        '[{"role": "user", "content": "Do you want the receipt by email?"}]',
    ]
    assert reported(run(ExactDuplicates, frame)) == {"r1": "r0"}


# ---------------------------------------------------------------------------------------------
# near duplicates

ORDER_A = "My order 48213 has not arrived yet, can you check where it is?"
ORDER_B = "My order 99120 has not arrived yet, can you check where it is?"


def test_copies_differing_only_in_an_order_number_are_near_duplicates():
    frame = make_frame(
        [
            (ORDER_A, "order_status"),
            ("How do I change my password?", "account"),
            (ORDER_B, "order_status"),
            ("My order ORD-7F3K2 has not arrived yet, can you check where it is?", "order_status"),
        ]
    )
    findings = run(NearDuplicates, frame)
    assert reported(findings) == {"r2": "r0", "r3": "r0"}
    assert all("differs only in punctuation or numbers" in f.detail for f in findings)
    assert findings[0].detail.startswith("Jaccard 1.00 with r0")


def test_the_order_number_alone_is_enough_even_in_a_short_message():
    # 4 words: one changed number would leave no shingle in common without masking
    frame = make_frame([("Track order 48213 please", "order_status"), ("Track order 99120 please", "order_status")])
    assert reported(run(NearDuplicates, frame)) == {"r1": "r0"}
    assert reported(run(ExactDuplicates, frame)) == {}


def test_edited_copies_are_near_duplicates():
    original = "Hello, I returned the blue jacket two weeks ago and I still have not received my refund."
    filler = "Hello, I returned the blue jacket two weeks ago and I still really have not received my refund."
    typo = "Your warehouse got my return on Monday, so where is my refund now?"
    typo_copy = "Your wareohuse got my return on Monday, so where is my refund now?"
    assert jaccard(typo, typo_copy) < 0.7  # below the threshold: found by the one-word rule
    frame = make_frame([(original, "refund"), (typo, "refund"), (filler, "refund"), (typo_copy, "refund")])
    findings = run(NearDuplicates, frame)
    assert reported(findings) == {"r2": "r0", "r3": "r1"}
    detail = {f"r{f.index}": f.detail for f in findings}
    assert "one word apart: 'wareohuse' / 'warehouse'" in detail["r3"]


def test_different_questions_sharing_a_template_prefix_are_not_near_duplicates():
    a = "Hi, I have a question about my account: how do I change the email address on it?"
    b = "Hi, I have a question about my account: why was I charged a monthly fee this time?"
    assert jaccard(a, b) < 0.5
    frame = make_frame([(a, "account"), (b, "account")])
    assert run(NearDuplicates, frame) == []


def test_near_copy_with_another_label_is_left_to_label_conflicts():
    frame = make_frame([(ORDER_A, "order_status"), (ORDER_B, "delivery_delay")])
    assert run(NearDuplicates, frame) == []
    assert reported(run(LabelConflicts, frame)) == {"r1": "r0"}


def test_near_duplicates_do_not_repeat_exact_copies():
    frame = make_frame([(ORDER_A, "order_status"), (ORDER_A.upper(), "order_status"), (ORDER_B, "order_status")])
    assert reported(run(NearDuplicates, frame)) == {"r2": "r0"}
    # with the exact check off, the exact copy is a near duplicate too
    off = {"exact_duplicates": {"enabled": False}}
    assert reported(run(NearDuplicates, frame, **off)) == {"r1": "r0", "r2": "r0"}


def test_near_duplicates_group_transitively_under_the_earliest_row():
    base = "Please cancel my order {}, I bought the wrong size of the running shoes by mistake."
    frame = make_frame([(base.format(1111), "cancel"), (base.format(2222), "cancel"), (base.format(3333), "cancel")])
    assert reported(run(NearDuplicates, frame)) == {"r1": "r0", "r2": "r0"}


def test_near_duplicate_threshold_comes_from_the_config():
    a = "I would like to return the kettle I bought last week because it leaks water everywhere."
    b = "I would like to return the toaster I bought last week because it burns the bread badly."
    score = jaccard(a, b)
    assert 0.2 < score < 0.7
    frame = make_frame([(a, "return"), (b, "return")])
    assert run(NearDuplicates, frame) == []
    found = run(NearDuplicates, frame, near_duplicates={"threshold": round(score - 0.05, 2)})
    assert reported(found) == {"r1": "r0"}


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("where is my order it is late", "where is my order it is really late", "one word apart: 'really'"),
        (
            "the parcel came damaged and broken today",
            "the parcel came damged and broken today",
            "one word apart: 'damaged' / 'damged'",
        ),
        ("i can pay with my card today", "i cant pay with my card today", None),  # negation
        ("i want to cancel my order today", "i want to track my order today", None),  # another word
        ("short text", "short text here", None),  # too short
        ("a b c d e f g", "a b x y e f g", None),  # two words
    ],
)
def test_one_word_edit(a, b, expected):
    assert one_word_edit(a.split(), b.split()) == expected


# ---------------------------------------------------------------------------------------------
# semantic duplicates


def test_semantic_pairs_blocked_product_matches_the_full_matrix():
    import numpy as np

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    vectors[7] = vectors[3] + 0.01
    vectors[40] = vectors[3] - 0.01
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pairs, scores = semantic_pairs(vectors, 0.95, block=16)  # blocks cut through the pairs
    full = vectors @ vectors.T
    expected = {(i, j) for i in range(50) for j in range(i + 1, 50) if full[i, j] >= 0.95}
    assert {tuple(p) for p in pairs.tolist()} == expected == {(3, 7), (3, 40), (7, 40)}
    assert np.allclose(scores, [full[i, j] for i, j in pairs.tolist()])


def test_semantic_duplicates_find_rewordings_with_the_same_label():
    frame = make_frame(
        [
            ("How do I reset my password?", "account"),
            ("I want to cancel my order", "cancel"),
            ("How can I reset my password?", "account"),  # cosine 0.99 with r0
            ("I want to cancel my subscription", "cancel"),  # cosine ~0.7: a different request
            ("Can I change the delivery address for my order?", "address"),
            ("Is it possible to change the delivery address of my order?", "address"),  # ~0.98
            ("how can i reset my password", "login"),  # another label: not reported
        ]
    )
    findings = run(SemanticDuplicates, frame, semantic_duplicates={"enabled": True})
    assert reported(findings) == {"r2": "r0", "r5": "r4"}
    assert all(re.fullmatch(r"cosine 0\.9\d\d with r[04]", f.detail) for f in findings)


def test_semantic_duplicates_skip_above_the_row_limit():
    frame = make_frame([(f"message {i}", "x") for i in range(4)])
    with pytest.raises(SkipCheck, match="4 rows > 3"):
        run(SemanticDuplicates, frame, semantic_duplicates={"enabled": True}, semantic_max_rows=3)


# ---------------------------------------------------------------------------------------------
# through the runner: conflicts resolved first, so a relabelled copy becomes a plain duplicate


def test_relabelled_copy_becomes_an_exact_duplicate_in_the_pipeline():
    frame = make_frame(
        [
            ("Where is my refund for the blue jacket?", "refund_status"),
            ("where is my refund for the blue jacket?", "refund_status"),
            ("Where is my refund for the blue jacket?", "return_item"),
            ("Where is my refund for the blue jacket", "refund_status"),
            ("Can I pay with PayPal?", "payment"),
        ]
    )
    only = {
        name: {"enabled": False}
        for name in (
            "standardise",
            "empty_garbage",
            "too_short",
            "too_long",
            "pii",
            "off_topic",
            "label_errors",
            "thin_classes",
            "generation",
        )
    }
    result = curate_frame(frame, make_config(**only))
    issues = result.issues.frame()
    conflict = issues[issues.issue == "label_conflict"].iloc[0]
    assert (conflict.id, conflict.action) == ("r2", "relabeled")
    assert "majority -> 'refund_status'" in conflict.detail
    exact = issues[issues.issue == "exact_duplicate"]
    assert sorted(exact.id) == ["r1", "r2"]  # r2 only after its label was fixed
    near = issues[issues.issue == "near_duplicate"]
    assert list(near.id) == ["r3"]  # the missing "?" makes it an edited copy
    assert sorted(result.frame.id) == ["r0", "r4"]


# ---------------------------------------------------------------------------------------------
# detection rates on the demo data


def demo_records(out_dir: Path, seed: int = 0) -> tuple[pd.DataFrame, list[dict]]:
    from tunewise.demo.data import generate_demo

    files = generate_demo(out_dir, task="classify", seed=seed)
    raw = pd.read_csv(files.data, dtype=str, keep_default_na=False)
    frame = pd.DataFrame(
        {
            "id": raw["id"],
            "input": raw["text"],
            "context": "[]",
            "label": raw["intent"],
            "source_file": files.data.name,
            "source_line": range(2, len(raw) + 2),
            "synthetic": False,
            "channel": raw["channel"],
            "customer_tier": raw["customer_tier"],
        }
    )
    truth = [json.loads(line) for line in files.truth.read_text().splitlines()]
    return frame, truth


def pair_scores(
    issues: pd.DataFrame, truth: list[dict], kind: str, also_right: frozenset[str] = frozenset()
) -> tuple[float, float]:
    """(recall, precision), pair-aware: a truth (id, of) pair is found when the two rows end up in
    one reported group (rows joined by reported id -> of links); a reported row is right when
    it belongs to a truth pair of that kind whose other row is in its group, or is in
    ``also_right``."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    rows = issues[issues.issue == kind]
    links = []
    for row_id, detail in zip(rows.id, rows.detail):
        match = re.search(r"\(of ([^)]+)\)$", detail)
        assert match, f"{kind} finding without 'of': {detail}"
        links.append(row_id)
        parent[root(row_id)] = root(match.group(1))
    pairs = [(t["id"], t["of"]) for t in truth if t["defect"] == kind]
    partners: dict[str, set[str]] = {}
    for a, b in pairs:
        partners.setdefault(a, set()).add(b)
        partners.setdefault(b, set()).add(a)
    found = sum(1 for a, b in pairs if a in parent and b in parent and root(a) == root(b))
    right = sum(
        1 for r in links if r in also_right or any(p in parent and root(p) == root(r) for p in partners.get(r, ()))
    )
    return found / len(pairs), right / max(len(links), 1)


def as_after_row_checks(frame: pd.DataFrame, truth: list[dict]) -> pd.DataFrame:
    """The demo rows as the earlier checks leave them: empty and garbage rows removed, label
    spelling variants merged. Done here from the truth file, so that these tests measure only
    the checks under test, whatever the state of the others."""
    kinds = {t["id"]: t for t in truth}
    junk = {i for i, t in kinds.items() if t["defect"] in ("empty", "garbage")}
    canon = {i: t["detail"] for i, t in kinds.items() if t["defect"] == "label_variant"}
    frame = frame[~frame["id"].isin(junk)].reset_index(drop=True)
    frame["label"] = [canon.get(i, label) for i, label in zip(frame["id"], frame["label"])]
    return frame


ONLY_DEDUP = {
    name: {"enabled": False}
    for name in (
        "standardise",
        "empty_garbage",
        "too_short",
        "too_long",
        "pii",
        "off_topic",
        "label_errors",
        "thin_classes",
        "generation",
        "semantic_duplicates",
    )
}


@pytest.fixture(scope="module")
def demo_issues(tmp_path_factory) -> tuple[pd.DataFrame, list[dict]]:
    frame, truth = demo_records(tmp_path_factory.mktemp("demo"))
    result = curate_frame(as_after_row_checks(frame, truth), make_config(**ONLY_DEDUP))
    return result.issues.frame(), truth


def test_demo_exact_duplicates(demo_issues):
    recall, precision = pair_scores(*demo_issues, "exact_duplicate")
    assert recall >= 0.95 and precision >= 0.90, (recall, precision)


def test_demo_label_conflicts(demo_issues):
    issues, truth = demo_issues
    # An injected wrong label on a message that has near-identical copies with the right label
    # (the generator draws such copies on its own) is a label conflict as well: finding it there
    # is right, and the majority relabel repairs it. Seed 0: 26 truth pairs, all found; of 29
    # reported rows 26 are conflict copies and 3 such wrong labels.
    wrong_labels = frozenset(t["id"] for t in truth if t["defect"] == "wrong_label")
    recall, precision = pair_scores(issues, truth, "label_conflict", also_right=wrong_labels)
    assert recall >= 0.90 and precision >= 0.90, (recall, precision)


def test_demo_near_duplicates_recall(demo_issues):
    recall, _ = pair_scores(*demo_issues, "near_duplicate")
    assert recall >= 0.90, recall


def test_demo_near_duplicates_precision(demo_issues):
    _, precision = pair_scores(*demo_issues, "near_duplicate")
    assert precision >= 0.90, precision

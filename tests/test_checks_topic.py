"""Spam patterns and off-topic outliers, on hand-written messages, real BANKING77 rows with
injected off-topic sentences, and the demo data against its truth file.

Measured during development (MiniLM, threshold 0.45; demo rows after removing empty and
garbage rows, as the earlier checks do; BANKING77 figures from ``typicality`` directly, with
random labels on the injected rows):

================================================  ==========  =========
data                                              recall      precision
================================================  ==========  =========
demo seeds 0 / 1 / 2 (1,500 rows), off_topic      0.97-1.00   0.93-1.00
demo seeds 0 / 1 / 2, spam                        1.00        1.00
demo seed 0, task generate (no labels), off_topic 1.00        0.94
BANKING77 300 rows + 10 sentences                 1.00        0.91
BANKING77 3,000 rows + 90 templated sentences     1.00        0.95
BANKING77 10,003 rows + 169 sentences             1.00        0.89
================================================  ==========  =========
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tunewise.config.sections import config_from_dict
from tunewise.core.records import records_from_texts
from tunewise.data.checks.topic import MIN_ROWS, OffTopic, spam_cues, typicality
from tunewise.data.curate import CurateContext, Engine, curate_frame

SPAM = [
    "WIN A FREE IPHONE 15!!! Click http://free-prize-now.biz/x7k2 now",
    "Congratulations, you have won a $1,000 gift card. Claim your prize at www.luckyday.win",
    "Make $5,000 a week from home! Sign up at https://cash-fast.online/join",
    "Bitcoin is going to the moon!! Buy now before it's too late https://coinpump.io",
    "Cheap watches - best prices - visit www.replica-deals.shop today",
    "Your account has been selected for a crypto airdrop! Connect your wallet at https://drop.xyz",
    "We offer SEO services, guaranteed first page on Google for $499/month. Reply YES.",
    "Best online casino bonus, 200 free spins for new players",
    "Text WIN to 80080 for your chance at a cruise",
]
NOT_SPAM = [
    "Do you offer free shipping on orders over $50?",
    "Is it free of charge to return the shoes?",
    "I thought you offered crypto top up?? It won't let me do it and my money is gone.",
    "The app won't allow me to cancel this transaction. I need it cancelled ASAP!!",
    "https://northwindgoods.com/orders/48213 shows an error when I click pay",
    "I was charged $1,250.00 twice for the same sofa, please refund one",
    "Your website said limited offer on the headphones, is the discount still valid?",
    "If I buy now, will the jacket arrive before Friday?",
    "WHAT IS THE STATUS OF MY ORDER",
]
# Unrelated to banking: the kind of row a real support inbox collects by mistake.
OFF_TOPIC = [
    "Will it rain in Lisbon tomorrow afternoon?",
    "Is it going to snow in the mountains this weekend?",
    "Who scored the winning goal in last night's football match?",
    "How long should I boil an egg for a soft yolk?",
    "What is the tallest mountain in Africa?",
    "Can you recommend a good science fiction novel?",
    "My tomato plants have yellow leaves, what am I doing wrong?",
    "Any tips for training a puppy to sit?",
    "Good morning! How was your weekend?",
    "Who painted the Mona Lisa?",
]


make_frame = records_from_texts


# Embeddings by text, shared by every context in this module: the BANKING77 rows are embedded
# once rather than once per test (CurateContext's own cache lives as long as one curate run).
EMBEDDINGS: dict[str, np.ndarray] = {}


def find(frame: pd.DataFrame, task: str = "classify", threshold: float | None = None):
    curate = {"off_topic": {"threshold": threshold}} if threshold is not None else {}
    cfg = config_from_dict({"task": task, "data": {"train": "train.csv"}, "curate": curate})
    ctx = CurateContext(cfg, Engine(), _embeddings=EMBEDDINGS)
    return OffTopic(cfg.curate.off_topic, cfg).find(frame, ctx)


@pytest.mark.parametrize("text", SPAM)
def test_spam_is_found(text):
    assert spam_cues(text), text


@pytest.mark.parametrize("text", NOT_SPAM)
def test_support_messages_are_not_spam(text):
    assert spam_cues(text) == [], text


def test_no_banking77_message_is_spam(banking77):
    texts = pd.read_csv(banking77 / "train.csv")["text"].tolist()
    flagged = [t for t in texts if spam_cues(t)]
    assert flagged == []


def test_spam_detail_names_the_cue():
    frame = make_frame(["hello", SPAM[0]], ["greet", "greet"])
    (finding,) = find(frame)  # too few rows for the off-topic part: spam only
    assert finding.issue == "spam" and finding.index == 1
    assert finding.detail.startswith("spam: 'WIN A FREE'")
    assert "link" in finding.detail


@pytest.fixture(scope="module")
def banking_with_off_topic(banking77) -> tuple[pd.DataFrame, set[str]]:
    base = pd.read_csv(banking77 / "train.csv").sample(300, random_state=0)
    rng = np.random.default_rng(0)
    texts = base["text"].tolist() + OFF_TOPIC
    labels = base["category"].tolist() + rng.choice(base["category"].unique(), len(OFF_TOPIC)).tolist()
    order = rng.permutation(len(texts))
    frame = make_frame([texts[i] for i in order], [labels[i] for i in order])
    off_ids = {f"r{p}" for p, i in enumerate(order) if i >= len(base)}
    return frame, off_ids


def test_off_topic_sentences_in_banking77_are_found(banking_with_off_topic):
    frame, off_ids = banking_with_off_topic
    # 300 rows over many small classes make the nearest-class view noisy: at the default 0.5
    # (chosen on the demo data) precision here is 0.83; 0.45 is the right setting for such data
    findings = [f for f in find(frame, threshold=0.45) if f.issue == "off_topic"]
    found = {f"r{f.index}" for f in findings}
    recall = len(found & off_ids) / len(off_ids)
    precision = len(found & off_ids) / max(len(found), 1)
    assert recall >= 0.9 and precision >= 0.9, (recall, precision, sorted(found - off_ids))
    assert all(f.detail.startswith("typicality 0.") and "nearest class" in f.detail for f in findings)


def test_copies_of_an_off_topic_row_do_not_vouch_for_each_other(banking_with_off_topic):
    frame, off_ids = banking_with_off_topic
    extra = "Who won the tennis final at Wimbledon this year?"
    copies = make_frame([extra, extra.lower(), extra + "  "], ["card_arrival"] * 3)
    both = pd.concat([frame, copies.assign(id=["c0", "c1", "c2"])], ignore_index=True)
    found = {both["id"].iat[f.index] for f in find(both) if f.issue == "off_topic"}
    assert {"c0", "c1", "c2"} <= found


def test_without_labels_the_knn_view_alone_still_finds_them(banking_with_off_topic):
    frame, off_ids = banking_with_off_topic
    generate = frame.rename(columns={"label": "target"})
    found = {f"r{f.index}" for f in find(generate, task="generate", threshold=0.45) if f.issue == "off_topic"}
    assert len(found & off_ids) / len(off_ids) >= 0.8
    assert len(found - off_ids) <= 3


def test_typicality_of_a_typical_row_is_about_one():
    rng = np.random.default_rng(0)
    centre = rng.normal(size=16)
    vectors = centre + 0.3 * rng.normal(size=(200, 16))
    vectors[-1] = -centre  # the opposite direction: nothing like the rest
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    result = typicality(vectors.astype(np.float32), labels=None)
    assert 0.9 < np.median(result.score) < 1.1
    assert result.score.argmin() == 199 and result.score[-1] < 0


def test_small_data_reports_spam_only():
    texts = [f"Where is my order number {i}?" for i in range(MIN_ROWS - 2)] + [OFF_TOPIC[0], SPAM[2]]
    findings = find(make_frame(texts, ["order_status"] * len(texts)))
    assert [(f.index, f.issue) for f in findings] == [(len(texts) - 1, "spam")]


# ---------------------------------------------------------------------------------------------
# detection rates on the demo data


@pytest.mark.slow
def test_demo_off_topic_and_spam(tmp_path):
    from tunewise.demo.data import generate_demo

    files = generate_demo(tmp_path, task="classify", seed=0)
    raw = pd.read_csv(files.data, dtype=str, keep_default_na=False)
    truth = [json.loads(line) for line in files.truth.read_text().splitlines()]
    # empty and garbage rows are removed by the checks that run before this one
    junk = {t["id"] for t in truth if t["defect"] in ("empty", "garbage")}
    raw = raw[~raw["id"].isin(junk)].reset_index(drop=True)
    frame = make_frame(raw["text"].tolist(), raw["intent"].tolist()).assign(id=raw["id"])
    curate = {
        name: {"enabled": False}
        for name in (
            "standardise",
            "empty_garbage",
            "too_short",
            "too_long",
            "pii",
            "label_conflicts",
            "exact_duplicates",
            "near_duplicates",
            "semantic_duplicates",
            "label_errors",
            "thin_classes",
            "generation",
        )
    }
    cfg = config_from_dict({"task": "classify", "data": {"train": "train.csv"}, "curate": curate})
    issues = curate_frame(frame, cfg).issues.frame()
    for kind in ("off_topic", "spam"):
        expected = {t["id"] for t in truth if t["defect"] == kind}
        found = set(issues.loc[issues.issue == kind, "id"])
        recall = len(found & expected) / len(expected)
        precision = len(found & expected) / max(len(found), 1)
        assert recall >= 0.90 and precision >= 0.90, (kind, recall, precision)

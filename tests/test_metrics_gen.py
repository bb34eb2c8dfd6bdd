"""Generation metrics against sacrebleu, ROUGE-L against a plain LCS, and the unsupported-facts check."""

from __future__ import annotations

import random

import numpy as np
import pytest
import sacrebleu

from tunewise.core.stats import resample_weights
from tunewise.evaluation.metrics_gen import (
    FactChecker,
    bleu_from_statistics,
    bleu_statistics,
    chrf_from_statistics,
    chrf_statistics,
    extract_facts,
    format_compliance,
    lcs_length,
    rouge_l,
    score_generation,
)

REFERENCES = [
    "Your order has shipped and should arrive within 3-5 business days.",
    "You can return the item within 30 days of delivery for a full refund.",
    "Sorry about that! We'll send a replacement straight away.",
    "The reset link is valid for 60 minutes; check your spam folder.",
    "Express shipping costs $12.99 and takes 1-2 business days.",
    "Ja, das geht – wir schicken Ihnen eine neue Rechnung.",
    "Yes.",
    "Plus members get free return shipping.",
]
HYPOTHESES = [
    "Your order shipped and will arrive in 3-5 business days.",
    "Items can be returned within 30 days for a refund.",
    "",
    "The reset link is valid for 60 minutes.",
    "Express shipping is $12.99 and takes one or two days.",
    "Ja, wir schicken Ihnen eine neue Rechnung.",
    "No, sorry.",
    "shipping",
]


def test_corpus_chrf_and_bleu_equal_sacrebleu():
    chrf_stats = chrf_statistics(HYPOTHESES, REFERENCES)
    bleu_stats = bleu_statistics(HYPOTHESES, REFERENCES)
    assert chrf_from_statistics(chrf_stats.sum(axis=0)) == pytest.approx(
        sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES]).score, abs=1e-9
    )
    assert bleu_from_statistics(bleu_stats.sum(axis=0)) == pytest.approx(
        sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score, abs=1e-9
    )


def test_sentence_chrf_equals_sacrebleu():
    sentence = chrf_from_statistics(chrf_statistics(HYPOTHESES, REFERENCES))
    expected = [sacrebleu.sentence_chrf(h, [r]).score for h, r in zip(HYPOTHESES, REFERENCES)]
    np.testing.assert_allclose(sentence, expected, atol=1e-9)


def test_vectorised_bootstrap_scores_equal_sacrebleu_on_each_resample():
    chrf_stats = chrf_statistics(HYPOTHESES, REFERENCES)
    bleu_stats = bleu_statistics(HYPOTHESES, REFERENCES)
    weights = resample_weights(len(HYPOTHESES), 25, seed=4).astype(np.float64)
    chrf_all, bleu_all = chrf_from_statistics(weights @ chrf_stats), bleu_from_statistics(weights @ bleu_stats)
    for b in range(25):
        rows = np.repeat(np.arange(len(HYPOTHESES)), weights[b].astype(int))
        hyps, refs = [HYPOTHESES[i] for i in rows], [REFERENCES[i] for i in rows]
        assert chrf_all[b] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-9)
        assert bleu_all[b] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)


def test_bleu_edge_cases_equal_sacrebleu():
    cases = [
        (["", ""], ["a b c", "d e"]),
        (["x y z"], ["a b c"]),
        (["a b"], ["a b c d e f"]),
        (["a b c d e"], ["a b c d e"]),
    ]
    for hyps, refs in cases:
        ours = bleu_from_statistics(bleu_statistics(hyps, refs).sum(axis=0))
        assert ours == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9), hyps


def test_lcs_equals_dynamic_programming():
    def plain_lcs(a, b):
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
        return table[-1][-1]

    rng = random.Random(0)
    for _ in range(500):
        a = [rng.choice("abcdef") for _ in range(rng.randint(0, 40))]
        b = [rng.choice("abcdef") for _ in range(rng.randint(0, 40))]
        assert lcs_length(a, b) == plain_lcs(a, b)


def test_rouge_l_by_hand():
    # tokens: [the cat sat on the mat] vs [the cat lay on a mat]: LCS "the cat on mat" = 4
    score = rouge_l(["The cat sat on the mat."], ["the cat lay on a mat"])[0]
    p, r = 4 / 6, 4 / 6
    assert score == pytest.approx(2 * p * r / (p + r))
    assert rouge_l([""], ["anything"])[0] == 0.0


def test_format_compliance():
    replies = [
        "Hello Ana, ... Best wishes, the support team",
        "hi",
        "Hello Bo,\nline two\nBest wishes, the support team",
    ]
    ok = format_compliance(replies, r"^Hello .*Best wishes, the support team$")
    assert ok.tolist() == [True, False, True]


def test_facts_are_extracted_and_normalised():
    facts = extract_facts(
        "Order #A12345 ships March 3, 2024 for $12.99 (10% off). Call +1 (555) 123-4567, "
        "mail help@northwind.example or see https://northwind.example/returns."
    )
    kinds = [f.kind for f in facts]
    assert kinds == ["order_number", "date", "amount", "amount", "phone", "email", "url"]
    assert extract_facts("refund 12.99 USD")[0].key == extract_facts("refund $12.99")[0].key
    assert extract_facts("due 2024-03-03")[0].kind == "date"
    # digits inside an e-mail address or URL are not read again as an order number
    assert [f.kind for f in extract_facts("write to order123456@shop.example")] == ["email"]


def test_unsupported_facts_on_hand_written_replies():
    knowledge = ["Standard shipping costs $4.99 and takes 3-5 business days.", "Call us on 0800 123 4567."]
    checker = FactChecker(knowledge)
    message = "Where is order 83929800? It was due on 4/13."
    reference = "Order 83929800 is on its way; we'll email support@northwind.example updates."

    # every detail is backed by the message, the reference or the knowledge base
    grounded = (
        "Order #83929800 was due April 13 and ships for $4.99; call 0800 123 4567 "
        "or write to support@northwind.example."
    )
    assert checker.unsupported(grounded, message, reference) == []

    invented = (
        "Your order 83929801 will arrive on April 20 and we refunded $15.00. "
        "See https://track.example/83929801 or call 555-201-7788."
    )
    found = checker.unsupported(invented, message, reference)
    assert sorted(f.kind for f in found) == ["amount", "date", "order_number", "phone", "url"]
    assert {f.text for f in found} >= {"order 83929801", "April 20", "$15.00", "555-201-7788"}

    # no facts at all: nothing is unsupported
    assert checker.unsupported("Thanks for reaching out, we are on it.", message, reference) == []


def test_score_generation_assembles_per_example_scores():
    knowledge = ["Standard shipping costs $4.99."]
    scored = score_generation(
        ["Shipping is $4.99.", "Shipping is $9.99."],
        ["Shipping costs $4.99.", "It costs $4.99."],
        ["how much is shipping?", "shipping price?"],
        checker=FactChecker(knowledge),
        format_pattern=r"\.$",
    )
    frame = scored.per_example
    assert frame["n_unsupported"].tolist() == [0, 1]
    assert frame["unsupported_facts"].iloc[1] == "amount: $9.99"
    assert frame["format_ok"].tolist() == [True, True]
    assert frame["length_ratio"].tolist() == [pytest.approx(3 / 3), pytest.approx(3 / 3)]
    assert scored.chrf_stats.shape == (2, 18) and scored.bleu_stats.shape == (2, 10)

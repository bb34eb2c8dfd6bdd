"""Near-duplicate engine: found what it should, nothing it shouldn't, checked against plain sets,
a brute-force oracle and datasketch's MinHashLSH on real BANKING77 texts."""

from __future__ import annotations

import functools
import itertools
import random

import numpy as np
import pandas as pd
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.stats import binom

from tunewise.core.text import dedup_key
from tunewise.data.neardup import (
    datasketch_reference,
    exact_duplicate_groups,
    find_near_duplicates,
    lsh_params,
)


@functools.cache
def word_ngrams(text: str, n: int = 3) -> frozenset[tuple[str, ...]]:
    """Independent of the engine: tuples of words, fewer than n words -> the whole text."""
    words = dedup_key(text).split()
    if not words:
        return frozenset()
    if len(words) < n:
        return frozenset({tuple(words)})
    return frozenset(tuple(words[k : k + n]) for k in range(len(words) - n + 1))


def jaccard(a: str, b: str, n: int = 3) -> float:
    sa, sb = word_ngrams(a, n), word_ngrams(b, n)
    return len(sa & sb) / len(sa | sb) if sa | sb else 0.0


def same_cluster(result, i: int, j: int) -> bool:
    return bool(result.cluster[i] == result.cluster[j])


def edit(text: str, rng: random.Random) -> str:
    words = text.split()
    kind = rng.choice(["append", "insert", "delete", "case", "punct"])
    if kind == "append":
        words.append(rng.choice(["please", "thanks", "asap", "today"]))
    elif kind == "insert":
        words.insert(rng.randrange(len(words) + 1), rng.choice(["really", "still", "just", "now"]))
    elif kind == "delete" and len(words) > 3:
        del words[rng.randrange(len(words))]
    elif kind == "case":
        words = [w.upper() for w in words]
    else:
        words[-1] = words[-1].rstrip("?.!") + "!!"
    return " ".join(words)


@pytest.fixture(scope="module")
def banking_with_copies(banking77):
    """400 real texts, 60 of them replaced by edited copies of others; known pairs are the
    copies whose Jaccard with their source clears 0.7."""
    frame = pd.read_csv(banking77 / "train.csv")
    texts = frame["text"].sample(n=400, random_state=3).tolist()
    rng = random.Random(5)
    copies = rng.sample(range(400), 60)
    originals = [k for k in range(400) if k not in set(copies)]
    injected = []
    for row in copies:
        source = rng.choice(originals)
        texts[row] = edit(texts[source], rng)
        injected.append((min(row, source), max(row, source)))
    known = [(i, j) for i, j in injected if jaccard(texts[i], texts[j]) >= 0.7]
    assert len(known) >= 30  # the fixture itself must give the recall checks something to find
    return texts, known


def test_order_number_variants_are_found():
    texts = [
        "Where is my order #12345678? It was supposed to arrive Monday.",
        "Where is my order #98765432? It was supposed to arrive Monday.",
        "How do I change the PIN of my new card?",
    ]
    result = find_near_duplicates(texts)
    assert result.pairs.tolist() == [[0, 1]]
    assert result.jaccard.tolist() == [1.0]
    assert result.cluster.tolist() == [0, 0, 2]
    assert result.representative.tolist() == [True, False, True]


def test_unrelated_texts_are_not_paired():
    texts = [
        "My card was declined at the supermarket this morning",
        "How long does a transfer to Germany usually take?",
        "I would like to close my savings account please",
        "Can I get a refund for the duplicate charge on my statement",
        "The app crashes every time I try to log in",
    ]
    result = find_near_duplicates(texts)
    assert len(result.pairs) == 0
    assert result.cluster.tolist() == list(range(5))
    assert result.representative.all()


def test_every_pair_clears_threshold_and_all_true_pairs_are_found(banking_with_copies):
    texts, _ = banking_with_copies
    result = find_near_duplicates(texts, threshold=0.7)
    assert len(result.pairs) > 0
    assert (result.pairs[:, 0] < result.pairs[:, 1]).all()
    for (i, j), reported in zip(result.pairs.tolist(), result.jaccard.tolist()):
        true = jaccard(texts[i], texts[j])
        assert true >= 0.7, (i, j, true)
        assert reported == pytest.approx(true, abs=1e-6)
    # brute force over all 79,800 pairs is the oracle for recall
    truth = [(i, j) for i, j in itertools.combinations(range(len(texts)), 2) if jaccard(texts[i], texts[j]) >= 0.7]
    found = sum(same_cluster(result, i, j) for i, j in truth)
    assert found / len(truth) >= 0.95, (found, len(truth))


def test_agrees_with_datasketch_on_banking77(banking_with_copies):
    texts, known = banking_with_copies
    ours = find_near_duplicates(texts, threshold=0.7, num_perm=128, shingle=3)
    bands, rows, _ = lsh_params(0.7, 128)
    theirs = datasketch_reference(texts, threshold=0.7, num_perm=128, shingle=3, params=(bands, rows))
    our_recall = np.mean([same_cluster(ours, i, j) for i, j in known])
    their_recall = np.mean([(i, j) in theirs for i, j in known])
    assert our_recall >= 0.95 and their_recall >= 0.95, (our_recall, their_recall)
    # every pair datasketch confirms lies inside one of our clusters, and vice versa
    assert np.mean([same_cluster(ours, i, j) for i, j in theirs]) >= 0.95
    edges = np.array(sorted(theirs)).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(len(texts),) * 2)
    _, their_cluster = connected_components(graph, directed=False)
    assert np.mean([their_cluster[i] == their_cluster[j] for i, j in ours.pairs.tolist()]) >= 0.95


def test_transitive_chain_forms_one_cluster_with_one_representative():
    a = "please tell me how i can reset the pin on my blue card"
    b = "please tell me how i can reset the pin on my blue account"  # last word changed
    c = "kindly tell me how i can reset the pin on my blue account"  # then the first word
    unrelated = "what is the exchange rate for dollars today"
    assert jaccard(a, b) >= 0.7 and jaccard(b, c) >= 0.7 and jaccard(a, c) < 0.7
    result = find_near_duplicates([a, unrelated, b, c])
    pairs = {tuple(p) for p in result.pairs.tolist()}
    assert (0, 2) in pairs and (2, 3) in pairs and (0, 3) not in pairs
    assert result.cluster.tolist() == [0, 1, 0, 0]
    assert result.representative.tolist() == [True, True, False, False]


def test_exact_duplicates_are_grouped():
    texts = ["Hello, World!", "other text entirely", "hello   world", "HELLO world?!", "other text entirely."]
    assert exact_duplicate_groups(texts).tolist() == [0, 1, 0, 0, 1]
    result = find_near_duplicates(texts)
    assert result.exact_group.tolist() == [0, 1, 0, 0, 1]
    assert result.cluster.tolist() == [0, 1, 0, 0, 1]
    assert {tuple(p) for p in result.pairs.tolist()} == {(0, 2), (0, 3), (1, 4)}
    assert result.jaccard.tolist() == [1.0, 1.0, 1.0]
    assert result.stats["exact_duplicate_rows"] == 3


def test_deterministic_for_a_seed(banking_with_copies):
    texts, _ = banking_with_copies
    first = find_near_duplicates(texts, seed=11)
    second = find_near_duplicates(texts, seed=11)
    assert np.array_equal(first.pairs, second.pairs)
    assert np.array_equal(first.jaccard, second.jaccard)
    assert np.array_equal(first.cluster, second.cluster)
    assert first.stats["candidates"] == second.stats["candidates"]


def test_empty_and_one_word_texts():
    texts = ["", "   ", "!!!", "hello", "Hello!", "world", None, "hi there", "Hi, there."]
    result = find_near_duplicates(texts)
    pairs = {tuple(p) for p in result.pairs.tolist()}
    assert pairs == {(3, 4), (7, 8)}
    assert result.cluster.tolist() == [0, 1, 2, 3, 3, 5, 6, 7, 7]
    assert result.stats["texts_without_shingles"] == 4
    empty = find_near_duplicates([])
    assert empty.pairs.shape == (0, 2) and len(empty.cluster) == 0 and len(empty.representative) == 0


def test_large_buckets_are_capped_but_stay_connected():
    words = ["".join(letters) for letters in itertools.product("abcdefgh", repeat=3)][
        :150
    ]  # no digits: they normalise to 0
    texts = [f"i want to reset the pin on my card please {w}" for w in words]
    assert len(set(texts)) == 150
    assert jaccard(texts[0], texts[1]) >= 0.7
    result = find_near_duplicates(texts, max_bucket=8)
    assert result.stats["capped_buckets"] > 0
    assert (result.cluster == 0).all()
    assert result.representative.sum() == 1


def test_dedup_key():
    assert dedup_key("  Where's   my ORDER #12,345.67?!\n") == "wheres my order 0"
    assert dedup_key("ＦＵＬＬ width – dash") == "full width dash"
    assert dedup_key("Café 10:30 on 2024-01-05") == "café 0 on 0"
    assert dedup_key("...") == ""


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
def test_lsh_params_catch_a_pair_at_the_threshold(threshold):
    bands, rows, min_matches = lsh_params(threshold, 128)
    assert bands * rows <= 128
    assert binom.sf(min_matches - 1, bands, threshold**rows) >= 0.99


def test_rejects_non_text_rows_with_their_position():
    with pytest.raises(TypeError, match="row 1: expected str, got int"):
        find_near_duplicates(["fine", 3, "also fine"])
    with pytest.raises(ValueError, match="threshold"):
        find_near_duplicates(["a"], threshold=0)


@pytest.mark.parametrize("shingle", [1, 2, 5])
def test_other_shingle_sizes_match_a_brute_force_oracle(banking_with_copies, shingle):
    texts = banking_with_copies[0][:200]
    result = find_near_duplicates(texts, threshold=0.6, shingle=shingle)
    for (i, j), reported in zip(result.pairs.tolist(), result.jaccard.tolist()):
        assert reported == pytest.approx(jaccard(texts[i], texts[j], shingle), abs=1e-6) and reported >= 0.6
    truth = [
        (i, j) for i, j in itertools.combinations(range(len(texts)), 2) if jaccard(texts[i], texts[j], shingle) >= 0.6
    ]
    assert truth, "the sample should hold some similar pairs"
    assert np.mean([same_cluster(result, i, j) for i, j in truth]) >= 0.95

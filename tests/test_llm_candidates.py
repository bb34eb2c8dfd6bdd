"""LLM label scoring, retrieval and generation against the real embedded models (tiny sizes)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tunewise.candidates import make_candidate
from tunewise.llm_candidates import (
    _build_trie,
    _cached_llm,
    _render,
    generate_replies,
    label_display_name,
    load_passages,
    nearest_neighbours,
    score_continuations,
    score_continuations_naive,
)
from tunewise.models import DEFAULT_LLM


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def banking(banking77):
    frame = pd.read_csv(banking77 / "train.csv")
    classes = sorted(frame["category"].unique())[:6]
    frame = frame[frame["category"].isin(classes)].groupby("category").head(6).reset_index(drop=True)
    return pd.DataFrame({"id": [f"r{i}" for i in range(len(frame))], "input": frame["text"], "context": "[]",
                         "label": frame["category"]})


@pytest.fixture(scope="module")
def llm():
    return _cached_llm(DEFAULT_LLM, True, False)


def test_shared_prompt_scoring_equals_naive_per_label_scoring(banking):
    zero_shot = make_candidate("zero_shot_llm", calibrate=False, batch_size=2, max_input_tokens=48).fit(banking)
    rows = banking.iloc[[0, 7, 20]]  # different lengths: left padding and the shared-prefix cache both in play
    prompts = zero_shot.tokenizer_(_render(zero_shot.tokenizer_, zero_shot._conversations(rows)),
                                   add_special_tokens=False)["input_ids"]
    assert len({len(p) for p in prompts}) > 1
    fast = score_continuations(zero_shot.model_, prompts, zero_shot.continuations_, batch_size=2)
    naive = score_continuations_naive(zero_shot.model_, prompts, zero_shot.continuations_)
    np.testing.assert_allclose(fast.logprob_sum, naive, atol=1e-3)
    assert (naive < 0).all()


def test_trie_scoring_without_shared_prefix_and_nested_continuations(llm):
    model, _ = llm
    prompts = [[504, 3243, 314], [1140, 28, 46, 2365, 17]]  # nothing in common: no prefix cache
    continuations = [[906, 314], [906, 314, 4226], [2], [906]]  # nested and shared prefixes
    trie = _build_trie(continuations)
    assert len(trie.token) == 4 and len(trie.fed) == 2  # 906 and 906-314 feed their children
    fast = score_continuations(model, prompts, continuations, batch_size=2)
    naive = score_continuations_naive(model, prompts, continuations)
    np.testing.assert_allclose(fast.logprob_sum, naive, atol=1e-3)
    np.testing.assert_array_equal(fast.n_tokens, [2, 3, 1, 1])


def test_label_continuations_are_the_label_names_then_end_of_turn(banking):
    zero_shot = make_candidate("zero_shot_llm", calibrate=False).fit(banking)
    tokenizer = zero_shot.tokenizer_
    for label, tokens in zip(zero_shot.labels_, zero_shot.continuations_):
        assert tokens[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(tokens[:-1]) == label_display_name(label)
    assert "_" not in zero_shot.system_prompt_ and "- apple pay or google pay\n" in zero_shot.system_prompt_


def test_zero_shot_predicts_only_valid_labels_and_calibration_moves_scores(banking):
    test = banking.iloc[::4]
    raw = make_candidate("zero_shot_llm", calibrate=False, max_input_tokens=48).fit(banking)
    calibrated = make_candidate("zero_shot_llm", calibrate=True, max_input_tokens=48).fit(banking)
    for candidate in (raw, calibrated):
        predictions = candidate.predict(test)
        assert predictions["prediction"].isin(banking["label"].unique()).all()
        assert np.allclose([sum(p) for p in predictions["proba"]], 1.0)
    assert calibrated.content_free_.logprob_sum.shape == (3, len(calibrated.labels_))
    assert not np.allclose(calibrated._label_prior(), 0.0)


def test_few_shot_places_the_nearest_example_last(banking):
    few_shot = make_candidate("few_shot_llm", few_shot_k=3, max_input_tokens=48).fit(banking)
    query = banking.iloc[[5]]
    conversation = few_shot._conversations(query)[0]
    assert [m["role"] for m in conversation] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    # the query is itself a training row: its own (text, label) is the closest shot
    assert conversation[-3]["content"] == query["input"].iloc[0]
    assert conversation[-2]["content"] == label_display_name(query["label"].iloc[0])
    assert few_shot.predict(query)["prediction"].iloc[0] in few_shot.labels_


def test_nn_reply_returns_the_reply_of_an_exact_match(banking):
    train = banking.drop(columns="label").assign(target=[f"reply number {i}" for i in range(len(banking))])
    candidate = make_candidate("nn_reply").fit(train)
    picked = train.iloc[[3, 17, 30]].assign(id=["q1", "q2", "q3"])
    predictions = candidate.predict(picked)
    assert predictions["prediction"].tolist() == ["reply number 3", "reply number 17", "reply number 30"]


def test_nearest_neighbours_orders_by_similarity():
    pool = np.eye(4, dtype=np.float32)
    queries = np.array([[0.1, 0.9, 0.3, 0.0], [0.0, 0.0, 0.2, 0.8]], dtype=np.float32)
    np.testing.assert_array_equal(nearest_neighbours(queries, pool, 2, chunk=1), [[1, 2], [3, 2]])


def test_rag_retrieves_the_passage_with_a_planted_fact(tmp_path):
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "shipping.md").write_text(
        "# Shipping\n\nOrders ship from our warehouse in Leeds within two days.\n\n"
        "International orders may pay customs duties on arrival.\n"
    )
    (kb / "returns.txt").write_text(
        "Most items can be returned within 30 days of delivery.\n\n"
        "## Umbrellas\n\nZebra-striped umbrellas have a special return window of 97 days.\n\n"
        "Refunds reach the original payment method in five working days.\n"
    )
    (kb / "notes.csv").write_text("ignored,because,not md or txt\n")
    passages = load_passages(kb)
    assert len(passages) == 5 and all(p.source in ("shipping.md", "returns.txt") for p in passages)
    umbrella = next(p for p in passages if "97 days" in p.text)
    assert umbrella.text.startswith("## Umbrellas") and umbrella.line == 3 and umbrella.source == "returns.txt"

    rag = make_candidate("rag_llm_gen", knowledge_base=str(kb), rag_top_k=2, max_new_tokens=4).fit(pd.DataFrame(
        {"id": ["t0"], "input": ["hello"], "context": ["[]"], "target": ["hi"]}))
    query = pd.DataFrame({"id": ["q"], "input": ["How long do I have to return a zebra striped umbrella?"],
                          "context": ["[]"]})
    assert "97 days" in rag.retrieve(query)[0][0].text
    assert "97 days" in rag._conversations(query)[0][0]["content"]


def test_rag_without_knowledge_base_says_how_to_fix():
    frame = pd.DataFrame({"id": ["a"], "input": ["x"], "context": ["[]"], "target": ["y"]})
    with pytest.raises(ValueError, match="data.knowledge_base"):
        make_candidate("rag_llm_gen").fit(frame)


def test_batched_left_padded_generation_matches_one_by_one(llm):
    model, tokenizer = llm
    conversations = [[{"role": "user", "content": text}] for text in
                     ("What is the capital of France?", "Say hello.", "Name three colours of the rainbow, please.")]
    batched, latency = generate_replies(model, tokenizer, conversations, max_new_tokens=6, batch_size=3)
    single, _ = generate_replies(model, tokenizer, conversations, max_new_tokens=6, batch_size=1)
    assert batched == single and all(batched)
    assert latency.shape == (3,) and (latency > 0).all()

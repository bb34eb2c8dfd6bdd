"""LLM label scoring, retrieval and generation against the real embedded models (tiny sizes)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tunewise.candidates.base import input_texts
from tunewise.candidates.label_scoring import LabelScoringClassifier
from tunewise.candidates.llm_base import cached_llm
from tunewise.candidates.prompting import (
    PROMPT_ACCURACY_TOLERANCE,
    PROMPT_MIN_SAVING,
    PROMPT_VARIANTS,
    _render,
    _worse_beyond_noise,
    choose_prompt,
    generate_replies,
    label_display_name,
    nearest_neighbours,
)
from tunewise.candidates.rag import load_passages
from tunewise.candidates.registry import make_candidate
from tunewise.llm.scoring import _build_trie, score_continuations, score_continuations_naive
from tunewise.models.loading import DEFAULT_LLM

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def banking(banking77):
    frame = pd.read_csv(banking77 / "train.csv")
    classes = sorted(frame["category"].unique())[:6]
    frame = frame[frame["category"].isin(classes)].groupby("category").head(6).reset_index(drop=True)
    return pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(len(frame))],
            "input": frame["text"],
            "context": "[]",
            "label": frame["category"],
        }
    )


@pytest.fixture(scope="module")
def llm():
    return cached_llm(DEFAULT_LLM, True, False)


def test_shared_prompt_scoring_equals_naive_per_label_scoring(banking):
    # fp32: bf16 rounding (1e-2) would hide a masking error
    zero_shot = make_candidate(
        "zero_shot_llm", calibrate=False, batch_size=2, max_input_tokens=48, precision="fp32"
    ).fit(banking)
    rows = banking.iloc[[0, 7, 20]]  # different lengths: left padding and the shared-prefix cache both in play
    prompts = zero_shot.tokenizer_(
        _render(zero_shot.tokenizer_, zero_shot._conversations(rows)), add_special_tokens=False
    )["input_ids"]
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

    rag = make_candidate("rag_llm_gen", knowledge_base=str(kb), rag_top_k=2, max_new_tokens=4).fit(
        pd.DataFrame({"id": ["t0"], "input": ["hello"], "context": ["[]"], "target": ["hi"]})
    )
    query = pd.DataFrame(
        {"id": ["q"], "input": ["How long do I have to return a zebra striped umbrella?"], "context": ["[]"]}
    )
    assert "97 days" in rag.retrieve(query)[0][0].text
    assert "97 days" in rag._conversations(query)[0][0]["content"]


def test_rag_without_knowledge_base_says_how_to_fix():
    frame = pd.DataFrame({"id": ["a"], "input": ["x"], "context": ["[]"], "target": ["y"]})
    with pytest.raises(ValueError, match="data.knowledge_base"):
        make_candidate("rag_llm_gen").fit(frame)


def test_batched_left_padded_generation_matches_one_by_one(llm):
    model, tokenizer = llm
    conversations = [
        [{"role": "user", "content": text}]
        for text in ("What is the capital of France?", "Say hello.", "Name three colours of the rainbow, please.")
    ]
    batched, latency = generate_replies(model, tokenizer, conversations, max_new_tokens=6, batch_size=3)
    single, _ = generate_replies(model, tokenizer, conversations, max_new_tokens=6, batch_size=1)
    assert batched == single and all(batched)
    assert latency.shape == (3,) and (latency > 0).all()


# ---------------------------------------------------------------------------------------------
# Label shortlist and the baseline stage's whole-test-set default (issue 15)


@pytest.fixture(scope="module")
def banking8(banking77):
    """8 BANKING77 labels: 40 training rows (5 a label), 16 validation rows from other training
    rows, 16 test rows from the official test split (2 a label)."""

    def records(frame: pd.DataFrame, prefix: str) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "id": [f"{prefix}{i}" for i in range(len(frame))],
                "input": frame["text"].tolist(),
                "context": "[]",
                "label": frame["category"].tolist(),
            }
        )

    train_csv = pd.read_csv(banking77 / "train.csv")
    classes = sorted(train_csv["category"].unique())[10:18]
    pool = train_csv[train_csv["category"].isin(classes)].sample(frac=1.0, random_state=0)
    train = pool.groupby("category").head(5)
    validation = pool.drop(train.index).groupby("category").head(2)
    test_csv = pd.read_csv(banking77 / "test.csv")
    test = test_csv[test_csv["category"].isin(classes)].groupby("category").head(2)
    return records(train, "tr"), records(validation, "va"), records(test, "te")


def test_shortlist_covering_every_label_equals_full_scoring(banking8):
    train, validation, test = banking8
    n_labels = train["label"].nunique()
    assert n_labels == 8
    few_shot = make_candidate(
        "few_shot_llm", few_shot_k=2, max_input_tokens=48, batch_size=4, precision="fp32", shortlist=n_labels
    ).fit(train, validation)
    assert few_shot.shortlist_k_ == n_labels and few_shot.shortlist_rows(test) is None
    full = few_shot.predict(test, shortlist=False)
    shortlisted = few_shot.predict(test)
    assert shortlisted["prediction"].tolist() == full["prediction"].tolist()
    np.testing.assert_allclose(np.stack(shortlisted["proba"]), np.stack(full["proba"]), atol=1e-6)

    # the shortlisted scorer itself (one trie per row, padded in the batch), given every label in a
    # different order per row, returns the full scorer's log-likelihoods and labels
    prompts = few_shot.tokenizer_(
        _render(few_shot.tokenizer_, few_shot._conversations(test)), add_special_tokens=False
    )["input_ids"]
    rng = np.random.default_rng(0)
    every = np.stack([rng.permutation(n_labels) for _ in prompts])
    reference = score_continuations(few_shot.model_, prompts, few_shot.continuations_, batch_size=4)
    via_shortlist = score_continuations(
        few_shot.model_, prompts, few_shot.continuations_, shortlist=every, batch_size=4
    )
    np.testing.assert_allclose(via_shortlist.logprob_sum, reference.logprob_sum, atol=1e-3)
    np.testing.assert_array_equal(via_shortlist.logprob_sum.argmax(1), reference.logprob_sum.argmax(1))


def test_two_scoring_workers_return_the_one_worker_scores_on_one_thread_each(banking8):
    # two batches at once (baseline.scoring_workers), each in its own thread on half of torch's
    # threads: the same batches, so the same scores (fp32), and torch's thread count restored after
    import threading

    import torch

    train, validation, test = banking8
    few_shot = make_candidate(
        "few_shot_llm", few_shot_k=2, max_input_tokens=48, batch_size=4, precision="fp32", prompt_search=False
    ).fit(train, validation)
    prompts = few_shot.tokenizer_(
        _render(few_shot.tokenizer_, few_shot._conversations(test)), add_special_tokens=False
    )["input_ids"]
    seen: list[tuple[str, int]] = []
    hook = few_shot.model_.register_forward_pre_hook(
        lambda *_: seen.append((threading.current_thread().name, torch.get_num_threads()))
    )
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        one = score_continuations(few_shot.model_, prompts, few_shot.continuations_, batch_size=2)
        seen.clear()
        two = score_continuations(few_shot.model_, prompts, few_shot.continuations_, batch_size=2, workers=2)
        assert torch.get_num_threads() == 2
        batches = list(seen[1:])  # the first pass is the shared prefix
        # too few batches for the workers asked: fewer workers, the same scores
        seen.clear()
        few = score_continuations(few_shot.model_, prompts[:8], few_shot.continuations_, batch_size=2, workers=8)
        assert len({name for name, _ in seen[1:]}) == 1  # 4 batches: one worker
        one_small = score_continuations(few_shot.model_, prompts[:8], few_shot.continuations_, batch_size=2)
        np.testing.assert_allclose(few.logprob_sum, one_small.logprob_sum, atol=1e-4)
    finally:
        hook.remove()
        torch.set_num_threads(before)
    assert len(batches) == len(test) // 2  # 8 batches: 4 a worker
    assert {name.split("_")[0] for name, _ in batches} == {"score"}
    assert len({name for name, _ in batches}) == 2 and {threads for _, threads in batches} == {1}
    np.testing.assert_allclose(two.logprob_sum, one.logprob_sum, atol=1e-4)
    np.testing.assert_array_equal(two.logprob_sum.argmax(1), one.logprob_sum.argmax(1))


def test_scoring_workers_setting():
    import torch

    from tunewise.config.baseline_section import BaselineConfig
    from tunewise.llm.scoring import scoring_workers

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert scoring_workers("auto") == 1  # one core: nothing to share
        torch.set_num_threads(2)
        assert scoring_workers("auto") == 2
    finally:
        torch.set_num_threads(before)
    assert scoring_workers(3) == 3
    for bad in (0, -1, True, "two"):
        with pytest.raises(ValueError):
            scoring_workers(bad)
    assert BaselineConfig().scoring_workers == "auto"
    with pytest.raises(ValueError, match="scoring_workers"):
        BaselineConfig(scoring_workers=0)


def test_short_shortlists_score_exactly_their_labels(banking8):
    train, validation, test = banking8
    zero_shot = make_candidate("zero_shot_llm", max_input_tokens=48, batch_size=4, shortlist=3, precision="fp32").fit(
        train, validation
    )
    rows = zero_shot.shortlist_rows(test)
    assert rows.shape == (len(test), 3) and len({tuple(sorted(r)) for r in rows}) > 1  # shortlists differ by row
    short = zero_shot.label_log_likelihoods(test)
    full = zero_shot.label_log_likelihoods(test, shortlist=False)
    on_list = np.zeros_like(full.logprob_sum, dtype=bool)
    on_list[np.arange(len(test))[:, None], rows] = True
    np.testing.assert_allclose(short.logprob_sum[on_list], full.logprob_sum[on_list], atol=1e-3)
    assert np.isneginf(short.logprob_sum[~on_list]).all()
    predictions = zero_shot.predict(test)
    proba = np.stack(predictions["proba"])
    assert (proba[~on_list] == 0).all() and np.allclose(proba.sum(1), 1.0)
    restricted = np.where(on_list, full.scores("sum") - zero_shot._label_prior()[None, :], -np.inf)
    assert predictions["prediction"].tolist() == [zero_shot.labels_[j] for j in restricted.argmax(1)]


def test_shortlist_size_is_chosen_on_validation_and_recorded(banking8):
    train, validation, test = banking8
    lenient = make_candidate(
        "few_shot_llm", few_shot_k=2, max_input_tokens=48, shortlist="auto", shortlist_recall=0.5
    ).fit(train, validation)
    info = lenient.info()["shortlist"]
    assert info["measured_on"] == f"validation ({len(validation)} rows)"
    assert list(info["recall_by_k"]) == ["5"]  # the grid below 8 labels
    assert lenient.shortlist_k_ == info["k"] == 5 and info["shortlisted"]
    assert lenient.shortlist_recall_ == pytest.approx(info["recall_by_k"]["5"]) and lenient.shortlist_recall_ >= 0.5
    # recall measured by hand: the true label among the 5 labels nearest by embedding
    rows = lenient.shortlist_rows(validation)
    truth = validation["label"].map({label: i for i, label in enumerate(lenient.labels_)}).to_numpy()
    assert lenient.shortlist_recall_ == pytest.approx((rows == truth[:, None]).any(1).mean())

    impossible = make_candidate(
        "few_shot_llm", few_shot_k=2, max_input_tokens=48, shortlist=True, shortlist_recall=1.0
    ).fit(train, validation.assign(input="zzz qqq"))
    assert impossible.shortlist_k_ == 8 and not impossible.info()["shortlist"]["shortlisted"]

    no_validation = make_candidate("zero_shot_llm", calibrate=False, max_input_tokens=48, shortlist_recall=0.5).fit(
        train
    )
    assert no_validation.info()["shortlist"]["measured_on"] == f"leave-one-out on {len(train)} training rows"
    assert make_candidate("zero_shot_llm", calibrate=False, shortlist=False).fit(train).shortlist_k_ == 8


def test_plan_expensive_rows_scores_everything_within_budget():
    from tunewise.evaluation.baseline import MIN_BUDGET_SAMPLE, plan_expensive_rows

    assert plan_expensive_rows(0.1, 3000, 1000, 900.0) == (3000, 1000)  # 400 s estimated
    assert plan_expensive_rows(0.1, 3000, 1000, None) == (3000, 1000)
    assert plan_expensive_rows(1.0, 3000, 1000, 900.0) == (450, 450)  # the budget split evenly
    assert plan_expensive_rows(1.0, 3000, 200, 900.0) == (700, 200)  # a small validation set leaves more for test
    assert plan_expensive_rows(60.0, 3000, 1000, 900.0) == (MIN_BUDGET_SAMPLE, MIN_BUDGET_SAMPLE)


def test_baseline_scores_the_whole_test_set_by_default_and_samples_over_budget(banking8, tmp_path, monkeypatch):
    import tunewise.evaluation.baseline as baseline
    from tunewise.config.sections import BaselineConfig, ModelsConfig
    from tunewise.core.artifacts import read_json

    train, validation, test = banking8
    monkeypatch.setattr(
        baseline, "PROBE_ROWS", 4
    )  # a warm-up batch (4 rows), a timed probe of 2 batches (8), the other 4
    config = BaselineConfig(candidates=["tfidf_lr", "zero_shot_llm"], max_input_tokens=48, batch_size=4)
    assert config.sample_size == "auto" and config.time_budget_s and config.shortlist == "auto"
    summary = baseline.run_baseline(
        train,
        validation,
        test,
        task="classify",
        config=config,
        models=ModelsConfig(),
        seed=0,
        out_dir=tmp_path / "whole",
    )
    sample = read_json(tmp_path / "whole" / "sample_ids.json")
    assert sample["test"] == test["id"].tolist() and sample["validation"] == validation["id"].tolist()
    assert sample["scored_by"] == [] and sample["stratified_by"] == "label"
    assert sample["scoring"]["zero_shot_llm"]["whole"] and sample["scoring"]["zero_shot_llm"]["probe_rows"] == 8
    assert sample["scoring"]["zero_shot_llm"]["warmup_rows"] == 4
    assert sample["scoring"]["zero_shot_llm"]["seconds_per_row"] > 0
    predictions = pd.read_parquet(tmp_path / "whole" / "predictions" / "zero_shot_llm.parquet")
    assert predictions["id"].tolist() == test["id"].tolist()  # the probe's rows reused, in test order
    entry = {c["name"]: c for c in summary["candidates"]}["zero_shot_llm"]
    assert entry["n_scored"] == {"test": len(test), "validation": len(validation)}
    assert entry["info"]["shortlist"]["measured_on"] == f"validation ({len(validation)} rows)"

    # a budget too small for everything: a stratified sample (the floor lowered to fit this slice)
    monkeypatch.setattr(baseline, "MIN_BUDGET_SAMPLE", 8)
    tight = config.model_copy(update={"time_budget_s": 1e-3})
    summary = baseline.run_baseline(
        train,
        validation,
        test,
        task="classify",
        config=tight,
        models=ModelsConfig(),
        seed=0,
        out_dir=tmp_path / "tight",
    )
    sample = read_json(tmp_path / "tight" / "sample_ids.json")
    assert len(sample["test"]) == 8 and set(sample["test"]) < set(test["id"])
    assert test.set_index("id").loc[sample["test"], "label"].nunique() == 8  # stratified: one row a label
    assert sample["scored_by"] == ["zero_shot_llm"] and not sample["scoring"]["zero_shot_llm"]["whole"]
    predictions = pd.read_parquet(tmp_path / "tight" / "predictions" / "zero_shot_llm.parquet")
    assert predictions["id"].tolist() == sample["test"]
    cheap = {c["name"]: c for c in summary["candidates"]}["tfidf_lr"]
    assert cheap["n_scored"]["test"] == len(test) and "metrics_on_sample" in cheap

    # an explicit sample_size still draws that sample up front, without a probe
    fixed = config.model_copy(update={"sample_size": 6})
    baseline.run_baseline(
        train,
        validation,
        test,
        task="classify",
        config=fixed,
        models=ModelsConfig(),
        seed=0,
        out_dir=tmp_path / "fixed",
    )
    sample = read_json(tmp_path / "fixed" / "sample_ids.json")
    assert len(sample["test"]) == 6 and sample["scored_by"] == ["zero_shot_llm"] and sample["scoring"] == {}


def test_prompt_search_keeps_the_most_accurate_prompt_on_validation(banking8):
    train, validation, test = banking8
    few_shot = make_candidate("few_shot_llm", few_shot_k=2, max_input_tokens=48, batch_size=8).fit(train, validation)
    search = few_shot.info()["prompt_search"]
    assert search["searched"] and search["rows"] == len(validation) and search["measured_on"] == "validation"
    tried = search["tried"]
    assert [(t["instruction"], t["demos"]) for t in tried] == [tuple(v) for v in PROMPT_VARIANTS]
    best = max(t["accuracy"] for t in tried)
    chosen = search["chosen"]
    picked = next(t for t in tried if (t["instruction"], t["demos"]) == (chosen["instruction"], chosen["demos"]))
    # the rule of choose_prompt (tested on its own below): the search's entries give the same pick
    assert picked is tried[choose_prompt(tried)] and picked["within_noise_of_best"]
    assert picked["accuracy"] >= best - PROMPT_ACCURACY_TOLERANCE - 1e-9
    assert tried[0]["prompt_tokens"] > next(t for t in tried if t["instruction"] == "brief")["prompt_tokens"]
    assert search["chosen_accuracy"] == picked["accuracy"] and search["plain_accuracy"] == tried[0]["accuracy"]
    assert search["gain_over_plain"] == pytest.approx(picked["accuracy"] - tried[0]["accuracy"])
    assert (few_shot.instruction_, few_shot.demos_) == (chosen["instruction"], chosen["demos"])
    # the chosen prompt is the one predict uses: the brief instruction does not list the labels
    system = few_shot._conversations(test.head(1))[0][0]["content"]
    assert (label_display_name(train["label"].iloc[0]) in system) == (chosen["instruction"] == "listed")
    # rescoring the validation rows with the chosen prompt gives the accuracy the search recorded
    again = few_shot.predict(validation)
    assert (again["prediction"] == validation["label"]).mean() == pytest.approx(search["chosen_accuracy"], abs=1e-9)

    plain = make_candidate("few_shot_llm", few_shot_k=2, max_input_tokens=48, prompt_search=False).fit(
        train, validation
    )
    assert plain.info()["prompt_search"] == {"searched": False}
    assert (plain.instruction_, plain.demos_) == PROMPT_VARIANTS[0]


def test_prompt_search_scores_the_prompts_within_noise_again_on_more_rows(banking8):
    """Round one: every prompt on 8 validation rows; round two: those within noise of the best on
    all 16, and the choice is made on the 16 (two rounds, as MIPRO's minibatches then full scores)."""
    train, validation, _ = banking8
    few_shot = make_candidate(
        "few_shot_llm", few_shot_k=2, max_input_tokens=48, prompt_search_rows=8, prompt_search_final_rows=16
    ).fit(train, validation)
    search = few_shot.info()["prompt_search"]
    tried = search["tried"]
    assert search["rows"] == 8 and {t["rows"] for t in tried} <= {8, 16}
    finalists = [t for t in tried if t["rows"] == 16]
    if len(finalists) == 0:  # a single prompt within noise after round one: nothing to score again
        assert sum(t["within_noise_of_best"] for t in tried) == 1 and search["final_rows"] == 8
        return
    assert len(finalists) >= 2 and search["final_rows"] == 16
    assert all(t["within_noise_of_best"] for t in finalists)
    chosen = search["chosen"]
    picked = next(t for t in tried if (t["instruction"], t["demos"]) == (chosen["instruction"], chosen["demos"]))
    assert picked in finalists and picked is finalists[choose_prompt(finalists)]
    again = few_shot.predict(validation)  # the 16 rows are the whole validation set
    assert (again["prediction"] == validation["label"]).mean() == pytest.approx(picked["accuracy"], abs=1e-9)


def test_few_shot_reuses_the_prompt_searchs_answers_and_they_equal_fresh_scoring(banking8):
    """The validation rows the search scored with the chosen prompt are not scored again: predict
    takes them from the search's record (its latencies, to the bit), and they are what scoring them
    afresh gives; a row the search never saw is scored."""
    train, validation, test = banking8
    few_shot = make_candidate(
        "few_shot_llm", few_shot_k=2, max_input_tokens=48, prompt_search_rows=8, prompt_search_final_rows=16
    ).fit(train, validation)
    answered = few_shot.search_answers_
    assert answered is not None and len(answered) == few_shot.info()["prompt_search"]["final_rows"]
    mixed = pd.concat([test.head(3), validation, test.iloc[3:5]], ignore_index=True)
    reused = few_shot.predict(mixed)
    fresh = LabelScoringClassifier.predict(few_shot, mixed)  # every row scored by the LLM
    assert reused["id"].tolist() == mixed["id"].astype(str).tolist()
    assert reused["prediction"].tolist() == fresh["prediction"].tolist()
    # bf16 scores move a little with the batch a row shares (padding, kernels): a row taken from the
    # wrong place would differ far more than this
    np.testing.assert_allclose(np.stack(reused["proba"]), np.stack(fresh["proba"]), atol=0.1)
    texts = pd.Series(input_texts(mixed))
    searched = texts.isin(set(answered.index)).to_numpy()
    assert searched.sum() == len(answered) and not searched[:3].any()
    by_text = answered["latency_ms"].to_dict()
    np.testing.assert_array_equal(reused.loc[searched, "latency_ms"], texts[searched].map(by_text))


def test_choose_prompt_keeps_the_most_accurate_unless_a_much_shorter_one_is_within_a_point():
    def entry(accuracy: float, tokens: float) -> dict:
        return {"accuracy": accuracy, "prompt_tokens": tokens}

    # BANKING77's search: listing the labels led by 1 point at 3.3x the tokens: the brief prompts win,
    # and of the two brief ones at the same accuracy the shorter
    banking = [entry(0.895, 604.1), entry(0.885, 184.1), entry(0.885, 167.0), entry(0.61, 183.2)]
    assert choose_prompt(banking) == 2
    # 7 points worse is not a saving worth having (the 154-label case)
    assert choose_prompt([entry(0.80, 600.0), entry(0.73, 180.0)]) == 0
    # within a point but barely shorter: the most accurate stays
    assert choose_prompt([entry(0.90, 200.0), entry(0.895, 190.0)]) == 0
    # a tie in accuracy goes to the shorter, then to the earlier (plain) prompt
    assert choose_prompt([entry(0.9, 300.0), entry(0.9, 290.0)]) == 1
    assert choose_prompt([entry(0.9, 300.0), entry(0.9, 300.0)]) == 0
    assert 0 < PROMPT_ACCURACY_TOLERANCE <= 0.01 and 0 < PROMPT_MIN_SAVING < 1


def test_worse_beyond_noise_is_a_paired_sign_test():
    best = np.array([True] * 30 + [False] * 10)
    assert not _worse_beyond_noise(best, best)
    one_worse = best.copy()
    one_worse[0] = False  # 1 row lost, 0 won: noise
    assert not _worse_beyond_noise(one_worse, best)
    much_worse = best.copy()
    much_worse[:12] = False  # 12 lost, 0 won: 12 > 1.96 * sqrt(12)
    assert _worse_beyond_noise(much_worse, best)
    swapped = much_worse.copy()
    swapped[30:40] = True  # 12 lost, 10 won: noise again
    assert not _worse_beyond_noise(swapped, best)


def test_per_label_demonstrations_show_distinct_labels(banking8):
    train, _, test = banking8
    few_shot = make_candidate("few_shot_llm", few_shot_k=3, max_input_tokens=48, prompt_search=False).fit(train)
    few_shot.demos_ = "per_label"
    shots = few_shot._demonstrations(few_shot.shot_vectors_[:5])
    for row in shots:
        assert len(set(few_shot.shot_labels_[row])) == 3  # one example each of three labels
    few_shot.demos_ = "nearest"
    nearest = few_shot._demonstrations(few_shot.shot_vectors_[:5])
    assert (nearest[:, 0] == np.arange(5)).all()  # a training row is its own nearest example


def test_inline_demonstrations_sit_in_the_system_message(banking8):
    train, _, test = banking8
    few_shot = make_candidate("few_shot_llm", few_shot_k=3, max_input_tokens=48, prompt_search=False).fit(train)
    chat = few_shot._conversations(test.head(1))[0]
    few_shot.demos_ = "inline"
    inline = few_shot._conversations(test.head(1))[0]
    assert [m["role"] for m in chat] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert [m["role"] for m in inline] == ["system", "user"] and inline[1] == chat[-1]
    assert inline[0]["content"].count("Category: ") == 3
    for shot, answer in zip(chat[1:-1:2], chat[2:-1:2]):  # the same examples, in the same order
        assert f"Message: {shot['content']}\nCategory: {answer['content']}" in inline[0]["content"]

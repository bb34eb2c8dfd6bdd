"""The predict contract: one conformance test over every registered candidate, on real BANKING77 rows.

LLM candidates run the real embedded SmolLM2-135M-Instruct and MiniLM encoder at tiny sizes
(8 classes, short prompts, a few generated tokens).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from tunewise.artifacts import read_json
from tunewise.baseline import BaselineConfig, quick_metrics, run_baseline, stratified_sample_ids
from tunewise.candidates import (
    CANDIDATES,
    KINDS,
    PREDICTION_COLUMNS,
    CandidateError,
    NotFittedError,
    candidate_kwargs,
    check_predictions,
    make_candidate,
)
from tunewise.config import ModelsConfig

CLASSES = 8
TRAIN_PER_CLASS = 15
TEST_PER_CLASS = 5


def _records(frame: pd.DataFrame, prefix: str, answer: str) -> pd.DataFrame:
    return pd.DataFrame({
        "id": [f"{prefix}{i}" for i in range(len(frame))],
        "input": frame["text"].tolist(),
        "context": "[]",
        answer: frame[answer].tolist(),
        "source_file": "banking77.csv",
        "source_line": np.arange(2, len(frame) + 2),
        "synthetic": False,
    })


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def classify_data(banking77):
    train = pd.read_csv(banking77 / "train.csv").rename(columns={"category": "label"})
    test = pd.read_csv(banking77 / "test.csv").rename(columns={"category": "label"})
    classes = sorted(train["label"].unique())[:CLASSES]
    train = train[train["label"].isin(classes)].groupby("label").head(TRAIN_PER_CLASS)
    test = test[test["label"].isin(classes)].groupby("label").head(TEST_PER_CLASS)
    return _records(train, "tr", "label"), _records(test, "te", "label")


@pytest.fixture(scope="module")
def generate_data(classify_data):
    train, test = classify_data

    def replies(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame.drop(columns="label").copy()
        out["target"] = [f"Thanks for writing about {label.replace('_', ' ')}; we are on it." for label in frame["label"]]
        return out

    return replies(train.groupby("label").head(3)), replies(test.groupby("label").head(1).head(4))


@pytest.fixture(scope="module")
def tiny_settings(tmp_path_factory, openai_stub):
    kb = tmp_path_factory.mktemp("kb")
    (kb / "cards.md").write_text("# Cards\n\nA new card arrives within 5 working days.\n\nLost cards can be frozen in the app.\n")
    from tunewise.config import TrainConfig

    # fine-tuned candidates: a few real optimiser steps (the recipe itself is tested in test_train.py)
    quick_training = TrainConfig(max_steps=3, batch_size=4, num_threads=1, generate_sample=0, max_new_tokens=4,
                                 max_length=48)
    return {"batch_size": 8, "few_shot_k": 2, "max_new_tokens": 4, "max_input_tokens": 48, "rag_top_k": 1,
            "knowledge_base": str(kb), "max_iter": 300, "train_config": quick_training,
            # api_* candidates: a local OpenAI-compatible server (conftest.openai_stub), no key, no cache
            "base_url": openai_stub.url, "model": "stub", "api_key_env": None, "no_cache": True}


@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_candidate_conformance(name, classify_data, generate_data, tiny_settings):
    cls = CANDIDATES[name]
    assert cls.name == name and cls.kind in KINDS and cls.task in ("classify", "generate")
    train, test = classify_data if cls.task == "classify" else generate_data
    if cls.expensive:
        test = test.iloc[::3]  # every third row keeps all classes at a third of the cost

    kwargs = candidate_kwargs(name, tiny_settings)
    candidate = make_candidate(name, **kwargs)
    # the constructor only stores its arguments: get_params gives them back, clone rebuilds it
    assert {k: candidate.get_params()[k] for k in kwargs} == kwargs
    assert clone(candidate).get_params() == candidate.get_params()
    with pytest.raises(NotFittedError, match=name):
        candidate.predict(test)

    before = set(vars(candidate))
    assert candidate.fit(train) is candidate
    learned = set(vars(candidate)) - before
    assert learned and all(a.endswith("_") for a in learned), f"fit set non-'_' attributes: {learned}"

    predictions = candidate.predict(test)
    check_predictions(predictions, test, candidate)
    assert list(predictions.columns) == list(PREDICTION_COLUMNS)
    assert predictions["id"].tolist() == test["id"].tolist()
    if cls.task == "classify":
        assert set(candidate.labels_) == set(train["label"])
        assert predictions["prediction"].isin(candidate.labels_).all()
    else:
        assert predictions["score"].isna().all()
    assert (predictions["latency_ms"] >= 0).all()

    empty = candidate.predict(test.iloc[:0])
    assert list(empty.columns) == list(PREDICTION_COLUMNS) and len(empty) == 0


def test_check_predictions_rejects_broken_output(classify_data):
    train, test = classify_data
    candidate = make_candidate("majority").fit(train)
    good = candidate.predict(test)
    check_predictions(good, test, candidate)

    reordered = good.iloc[::-1].reset_index(drop=True)
    with pytest.raises(ValueError, match="ids differ"):
        check_predictions(reordered, test, candidate)
    unknown_label = good.copy()
    unknown_label.loc[0, "prediction"] = "not_a_label"
    with pytest.raises(ValueError, match="not one of its 8 labels"):
        check_predictions(unknown_label, test, candidate)
    wrong_score = good.copy()
    wrong_score.loc[1, "score"] = 0.99
    with pytest.raises(ValueError, match="score"):
        check_predictions(wrong_score, test, candidate)


def test_tfidf_beats_majority(classify_data):
    train, test = classify_data
    accuracy = {name: quick_metrics("classify", make_candidate(name).fit(train).predict(test), test)["accuracy"]
                for name in ("majority", "tfidf_lr")}
    assert accuracy["majority"] <= 1 / CLASSES + 1e-9  # every class has the same share of the test slice
    assert accuracy["tfidf_lr"] >= accuracy["majority"] + 0.4, accuracy


def test_majority_predicts_the_most_frequent_label(classify_data):
    train, test = classify_data
    skewed = pd.concat([train, train[train["label"] == train["label"].iloc[-1]]])
    predictions = make_candidate("majority").fit(skewed).predict(test)
    assert set(predictions["prediction"]) == {train["label"].iloc[-1]}


def test_unknown_candidate_names_the_closest():
    with pytest.raises(CandidateError, match="did you mean 'tfidf_lr'"):
        make_candidate("tfidf_rl")
    with pytest.raises(CandidateError, match="parameters are: C, max_iter, char_min_df"):
        make_candidate("tfidf_lr", learning_rate=0.1)


def test_stratified_sample_is_exact_balanced_and_repeatable(classify_data):
    _, test = classify_data
    ids = stratified_sample_ids(test, 16, seed=3, by="label")
    assert len(ids) == len(set(ids)) == 16
    counts = test.set_index("id").loc[ids, "label"].value_counts()
    assert len(counts) == CLASSES and counts.max() - counts.min() <= 1
    assert ids == stratified_sample_ids(test, 16, seed=3, by="label")
    assert ids != stratified_sample_ids(test, 16, seed=4, by="label")
    assert stratified_sample_ids(test, 4, seed=0, by="label").__len__() == 4  # fewer rows than classes
    assert stratified_sample_ids(test, None, seed=0, by="label") == test["id"].tolist()


def test_run_baseline_writes_paired_predictions(classify_data, tmp_path):
    train, test = classify_data
    validation = test.iloc[1::2].assign(id=lambda f: "va" + f["id"])
    config = BaselineConfig(candidates=["majority", "tfidf_lr", "zero_shot_llm"], sample_size=8, max_input_tokens=48)
    summary = run_baseline(train, validation, test, task="classify", config=config, models=ModelsConfig(),
                           seed=0, out_dir=tmp_path)

    sample = read_json(tmp_path / "sample_ids.json")
    assert len(sample["test"]) == 8 and set(sample["test"]) <= set(test["id"])
    assert sample["scored_by"] == ["zero_shot_llm"]
    by_name = {c["name"]: c for c in summary["candidates"]}
    for name in ("majority", "tfidf_lr", "zero_shot_llm"):
        predictions = pd.read_parquet(tmp_path / "predictions" / f"{name}.parquet")
        on_validation = pd.read_parquet(tmp_path / "predictions" / f"{name}.validation.parquet")
        expected_ids = sample["test"] if name == "zero_shot_llm" else test["id"].tolist()
        assert predictions["id"].tolist() == expected_ids
        assert set(on_validation["id"]) <= set(validation["id"]) and len(on_validation) > 0
        truth = test.set_index("id").loc[predictions["id"], "label"].to_numpy()
        assert by_name[name]["metrics"]["accuracy"] == pytest.approx((predictions["prediction"].to_numpy() == truth).mean())
        assert by_name[name]["n_scored"]["test"] == len(expected_ids)
    assert json.loads((tmp_path / "summary.json").read_text())["candidates"][0]["name"] == "majority"
    assert "metrics_on_sample" in by_name["tfidf_lr"] and "metrics_on_sample" not in by_name["zero_shot_llm"]


def test_baseline_config_refuses_wrong_candidates(classify_data):
    train, test = classify_data
    for candidates, message in ((["tfidf_rl"], "did you mean 'tfidf_lr'"), (["nn_reply"], "generate candidate")):
        with pytest.raises(CandidateError, match=message):
            run_baseline(train, test, test, task="classify", config=BaselineConfig(candidates=candidates),
                         models=ModelsConfig())
    with pytest.raises(ValueError, match="listed twice"):
        BaselineConfig(candidates=["majority", "majority"])

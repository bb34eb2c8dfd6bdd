"""The predict contract: one conformance test over every registered candidate, on real BANKING77 rows.

LLM candidates run the real embedded SmolLM2-135M-Instruct and MiniLM encoder at tiny sizes
(8 classes, short prompts, a few generated tokens). Every candidate is built by the one factory
(``tunewise.candidates.factory.build_candidate``), the ensemble with its pool of candidates.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from tunewise.candidates.base import load_fitted, save_fitted
from tunewise.candidates.ensemble import EnsembleCandidate, choose_members
from tunewise.candidates.factory import build_candidate, load_run_candidate, run_candidate
from tunewise.candidates.registry import (
    CANDIDATES,
    KINDS,
    PREDICTION_COLUMNS,
    CandidateError,
    NotFittedError,
    TfidfLogRegCandidate,
    candidate_kwargs,
    check_predictions,
    make_candidate,
)
from tunewise.config.sections import ModelsConfig, ProjectConfig
from tunewise.core.artifacts import read_json
from tunewise.evaluation.baseline import BaselineConfig, quick_metrics, run_baseline, stratified_sample_ids

CLASSES = 8
TRAIN_PER_CLASS = 15
TEST_PER_CLASS = 5


def _records(frame: pd.DataFrame, prefix: str, answer: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"{prefix}{i}" for i in range(len(frame))],
            "input": frame["text"].tolist(),
            "context": "[]",
            answer: frame[answer].tolist(),
            "source_file": "banking77.csv",
            "source_line": np.arange(2, len(frame) + 2),
            "synthetic": False,
        }
    )


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
        out["target"] = [
            f"Thanks for writing about {label.replace('_', ' ')}; we are on it." for label in frame["label"]
        ]
        return out

    return replies(train.groupby("label").head(3)), replies(test.groupby("label").head(1).head(4))


@pytest.fixture(scope="module")
def tiny_settings(tmp_path_factory, openai_stub):
    kb = tmp_path_factory.mktemp("kb")
    (kb / "cards.md").write_text(
        "# Cards\n\nA new card arrives within 5 working days.\n\nLost cards can be frozen in the app.\n"
    )
    from tunewise.config.sections import TrainConfig

    # fine-tuned candidates: a few real optimiser steps (the recipe itself is tested in test_train.py)
    quick_training = TrainConfig(
        max_steps=3, batch_size=4, num_threads=1, generate_sample=0, max_new_tokens=4, max_length=48
    )
    return {
        "batch_size": 8,
        "few_shot_k": 2,
        "max_new_tokens": 4,
        "max_input_tokens": 48,
        "rag_top_k": 1,
        "knowledge_base": str(kb),
        "max_iter": 300,
        "train_config": quick_training,
        # api_* candidates: a local OpenAI-compatible server (conftest.openai_stub), no key, no cache
        "base_url": openai_stub.url,
        "model": "stub",
        "api_key_env": None,
        "no_cache": True,
    }


def _params(estimator):
    """get_params with nested candidates (the ensemble's pool) replaced by their class and params:
    a clone holds new objects with the same parameters."""

    def plain(value):
        if hasattr(value, "get_params"):
            return type(value).__name__, _params(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return {k: plain(v) for k, v in estimator.get_params(deep=False).items()}


@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_candidate_conformance(name, classify_data, generate_data, tiny_settings):
    cls = CANDIDATES[name]
    assert cls.name == name and cls.kind in KINDS and cls.task in ("classify", "generate")
    train, test = classify_data if cls.task == "classify" else generate_data
    if cls.expensive:
        test = test.iloc[::3]  # every third row keeps all classes at a third of the cost

    kwargs = candidate_kwargs(name, tiny_settings)
    candidate = build_candidate(name, tiny_settings)  # the factory, from a pool of settings
    # the constructor only stores its arguments: get_params gives them back, clone rebuilds it
    assert {k: candidate.get_params()[k] for k in kwargs} == kwargs
    assert _params(clone(candidate)) == _params(candidate)
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
    accuracy = {
        name: quick_metrics("classify", make_candidate(name).fit(train).predict(test), test)["accuracy"]
        for name in ("majority", "tfidf_lr")
    }
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
    summary = run_baseline(
        train, validation, test, task="classify", config=config, models=ModelsConfig(), seed=0, out_dir=tmp_path
    )

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
        assert by_name[name]["metrics"]["accuracy"] == pytest.approx(
            (predictions["prediction"].to_numpy() == truth).mean()
        )
        assert by_name[name]["n_scored"]["test"] == len(expected_ids)
    assert json.loads((tmp_path / "summary.json").read_text())["candidates"][0]["name"] == "majority"
    assert "metrics_on_sample" in by_name["tfidf_lr"] and "metrics_on_sample" not in by_name["zero_shot_llm"]


def test_baseline_config_refuses_wrong_candidates(classify_data):
    train, test = classify_data
    for candidates, message in ((["tfidf_rl"], "did you mean 'tfidf_lr'"), (["nn_reply"], "generate candidate")):
        with pytest.raises(CandidateError, match=message):
            run_baseline(
                train, test, test, task="classify", config=BaselineConfig(candidates=candidates), models=ModelsConfig()
            )
    with pytest.raises(ValueError, match="listed twice"):
        BaselineConfig(candidates=["majority", "majority"])


# ---------------------------------------------------------------- the factory and the ensemble


def _project(tmp_path, **raw) -> ProjectConfig:
    from tunewise.config.sections import config_from_dict

    (tmp_path / "kb").mkdir(exist_ok=True)
    return config_from_dict(
        {
            "data": {"train": "train.csv", "knowledge_base": "kb", "task_description": "bank intents"},
            "seed": 7,
            "models": {"offline": True},
            "baseline": {"few_shot_k": 3, "batch_size": 5, "candidates": ["majority", "tfidf_lr"]},
            "train": {"max_steps": 9, "candidates": ["encoder_ft"], "overrides": {"encoder_ft": {"max_steps": 4}}},
            **raw,
        },
        base_dir=tmp_path,
    )


@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_factory_builds_every_registered_name(name, tmp_path):
    cfg = _project(tmp_path)
    cls = CANDIDATES[name]
    candidate = build_candidate(name, cfg)
    assert type(candidate) is cls and not hasattr(candidate, "labels_")  # unfitted
    params = candidate.get_params(deep=False)
    if cls.combines:  # the ensemble: a pool of the fine-tuned and cheap candidates the config runs
        assert [c.name for c in params["candidates"]] == ["majority", "tfidf_lr", "encoder_ft"]
        assert all(_params(c) == _params(build_candidate(c.name, cfg)) for c in params["candidates"])
    elif cls.kind == "finetuned":  # the models and train sections, train.overrides[name], the seed
        assert params["train_config"] == cfg.train.for_candidate(name) and params["seed"] == 7
        assert params["train_config"].max_steps == (4 if name == "encoder_ft" else 9)
        assert params.get("llm", cfg.models.llm) == cfg.models.llm
    else:  # the baseline and models sections, the knowledge base and the task description
        expected = {
            "few_shot_k": 3,
            "batch_size": 5,
            "task_description": "bank intents",
            "knowledge_base": str(tmp_path.resolve() / "kb"),
            "encoder": cfg.models.encoder,
        }
        assert {k: params[k] for k in expected if k in params} == {k: v for k, v in expected.items() if k in params}
    # a pool of settings ({}: every constructor default) and overrides
    assert _params(build_candidate(name, {})) == _params(make_candidate(name)) or cls.combines
    if "batch_size" in params:
        assert build_candidate(name, cfg, batch_size=2).get_params()["batch_size"] == 2
    with pytest.raises(CandidateError, match="did you mean"):
        build_candidate(name + "x", cfg)


def test_ensemble_members_rule_and_refusals(classify_data):
    # every fine-tuned candidate, plus the best cheap one other than majority (ranked on validation)
    pool = [
        ("majority", "cheap", 0.9),
        ("tfidf_lr", "cheap", 0.7),
        ("embed_lr", "cheap", 0.8),
        ("lora_llm", "finetuned", None),
        ("encoder_ft", "finetuned", 0.5),
        ("zero_shot_llm", "baseline", 0.99),
    ]
    assert choose_members(pool) == ["lora_llm", "encoder_ft", "embed_lr"]
    assert choose_members([("tfidf_lr", "cheap", None), ("encoder_ft", "finetuned", None)]) == ["encoder_ft"]
    assert choose_members([("tfidf_lr", "cheap", 0.7), ("embed_lr", "cheap", 0.8)]) == []  # no fine-tune: none

    train, _ = classify_data
    with pytest.raises(CandidateError, match="fewer than two members"):
        EnsembleCandidate(candidates=[make_candidate("majority"), make_candidate("tfidf_lr")]).fit(train, train)
    with pytest.raises(CandidateError, match="no candidates"):
        make_candidate("ensemble").fit(train)


class _Tuned(TfidfLogRegCandidate):
    """A real (differently regularised) classic model standing in for a fine-tuned one, as in test_evaluate."""

    name = "tfidf_tuned_stub"
    kind = "finetuned"


def test_fitted_ensemble_predicts_what_the_evaluate_stage_combines(classify_data):
    from tunewise.evaluation.predictions import CandidatePredictions, ensemble_candidate

    train, test = classify_data
    validation = test.iloc[1::2].assign(id=lambda f: "va" + f["id"])
    pool = [
        make_candidate("majority"),
        make_candidate("tfidf_lr", C=1.0),
        make_candidate("tfidf_lr"),
        _Tuned(C=0.5),
    ]  # pool[1]: a second tfidf_lr, refused below
    ensemble = EnsembleCandidate(candidates=[pool[0], pool[2], pool[3]]).fit(train, validation)
    assert [m.name for m in ensemble.members_] == ["tfidf_tuned_stub", "tfidf_lr"]
    predicted = ensemble.predict(test)
    check_predictions(predicted, test, ensemble)

    # the evaluate stage's path: the same rules over the members' stored predictions
    stored = []
    for member in [pool[0], pool[2], pool[3]]:
        fitted = clone(member).fit(train, validation)
        on_validation = fitted.predict(validation).assign(label=validation["label"].to_numpy())
        stored.append(CandidatePredictions(fitted.name, fitted.kind, fitted.predict(test), on_validation))
    combined, info = ensemble_candidate(stored, sorted(train["label"].unique()))
    assert info["members"] == ["tfidf_tuned_stub", "tfidf_lr"] and combined.members == info["members"]
    assert combined.test["prediction"].tolist() == predicted["prediction"].tolist()
    assert np.allclose(np.stack(combined.test["proba"]), np.stack(predicted["proba"]))
    # from members fitted already (serving), and repeated ids combine row by row
    again = EnsembleCandidate.from_members(ensemble.members_)
    doubled = pd.concat([test.head(3), test.head(3)], ignore_index=True)
    assert again.predict(doubled)["prediction"].tolist() == predicted["prediction"].head(3).tolist() * 2
    with pytest.raises(CandidateError, match="twice"):
        EnsembleCandidate(candidates=[pool[1], pool[2], pool[3]]).fit(train, validation)


def test_run_candidate_builds_the_ensemble_from_the_members_its_evaluation_recorded(classify_data, tmp_path):
    import json

    from tunewise.core.artifacts import write_parquet

    train, test = classify_data
    validation = test.iloc[1::2].assign(id=lambda f: "va" + f["id"])
    for split, frame in (("train", train), ("validation", validation)):
        write_parquet(tmp_path / "split" / f"{split}.parquet", frame)
    (tmp_path / "evaluate").mkdir()
    (tmp_path / "evaluate" / "summary.json").write_text(
        json.dumps({"candidates": [{"name": "ensemble", "kind": "finetuned", "members": ["tfidf_lr", "embed_lr"]}]})
    )
    ensemble = run_candidate("ensemble", None, tmp_path)
    assert isinstance(ensemble, EnsembleCandidate) and [m.name for m in ensemble.members_] == ["tfidf_lr", "embed_lr"]
    check_predictions(ensemble.predict(test), test, ensemble)
    (tmp_path / "evaluate" / "summary.json").write_text(json.dumps({"candidates": []}))
    with pytest.raises(CandidateError, match="records no members"):
        run_candidate("ensemble", None, tmp_path)
    with pytest.raises(CandidateError, match="no trained model"):
        run_candidate("encoder_ft", None, tmp_path)  # a fine-tuned candidate is loaded, never retrained here


@pytest.mark.parametrize("name", sorted(n for n, c in CANDIDATES.items() if c.saves_fitted))
def test_saved_fitted_candidate_loads_and_predicts_exactly_as_fitted(name, classify_data, tmp_path):
    """A cheap candidate's fitted state goes to JSON and safetensors (no pickle) and comes back into
    a candidate built with the same settings: the same probabilities to the bit. Other settings or
    other training rows are refused with the reason, so a stale model is never served."""
    train, test = classify_data
    fitted = make_candidate(name).fit(train)
    save_fitted(fitted, tmp_path / name, train)
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["fitted.json", "fitted.safetensors"]
    assert not list((tmp_path / name).glob("*.pkl")) and not list((tmp_path / name).glob("*.joblib"))

    loaded = make_candidate(name)
    with pytest.raises(NotFittedError):
        loaded.predict(test)
    assert load_fitted(loaded, tmp_path / name, train) is None
    expected, got = fitted.predict(test), loaded.predict(test)
    assert got["prediction"].tolist() == expected["prediction"].tolist()
    np.testing.assert_array_equal(np.stack(got["proba"]), np.stack(expected["proba"]))

    fewer = train.iloc[:-1]
    assert "other training rows" in load_fitted(make_candidate(name), tmp_path / name, fewer)
    params = make_candidate(name).get_params()
    if params:  # majority has no settings to change
        changed = {k: (v * 2 if isinstance(v, (int, float)) else v) for k, v in params.items()}
        reason = load_fitted(make_candidate(name, **changed), tmp_path / name, train)
        assert reason is not None and "other settings" in reason
    assert "no fitted model" in load_fitted(make_candidate(name), tmp_path / "missing", train)


def test_run_candidate_loads_what_the_baseline_stage_saved(classify_data, tmp_path):
    """The baseline stage writes baseline/models/<name>; run_candidate (evaluate, serve, suggest)
    loads it instead of fitting again, and refits when the run's training rows changed."""
    train, test = classify_data
    run_dir = tmp_path / "runs" / "r1"
    (run_dir / "split").mkdir(parents=True)
    train.to_parquet(run_dir / "split" / "train.parquet")
    validation = test.iloc[::2].assign(id=lambda f: "va" + f["id"])
    config = BaselineConfig(candidates=["tfidf_lr"], sample_size=None)
    run_baseline(
        train, validation, test, task="classify", config=config, models=ModelsConfig(), out_dir=run_dir / "baseline"
    )
    saved = run_dir / "baseline" / "models" / "tfidf_lr"
    assert (saved / "fitted.json").exists()
    loaded = load_run_candidate("tfidf_lr", None, run_dir)
    assert loaded is not None
    stored = pd.read_parquet(run_dir / "baseline" / "predictions" / "tfidf_lr.parquet")
    assert (
        run_candidate("tfidf_lr", None, run_dir).predict(test)["prediction"].tolist() == stored["prediction"].tolist()
    )
    # the split changed since the baseline stage ran: the saved model no longer applies
    train.iloc[:-3].to_parquet(run_dir / "split" / "train.parquet")
    assert load_run_candidate("tfidf_lr", None, run_dir) is None
    refitted = run_candidate("tfidf_lr", None, run_dir)
    assert refitted.pipeline_ is not loaded.pipeline_

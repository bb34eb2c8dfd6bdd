"""tunewise distill on slices of BANKING77, with teachers behind real HTTP servers on 127.0.0.1.

The API teacher is the OpenAI-compatible server of ``openai_stub`` (it answers the label sharing most
words with the message; requests are counted at the server); the client is never mocked. The local
teacher is a candidate the run built (tfidf_lr), whose probabilities give graded confidence.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from openai_stub import OpenAIStub
from tunewise.workflows.distill import DistillError, DistillStopped, choose_min_confidence, distill

INTENTS = ["card_arrival", "exchange_rate", "lost_or_stolen_card", "pin_blocked", "age_limit", "atm_support"]
GOLD_PER_INTENT, TEST_PER_INTENT, POOL_PER_INTENT = 20, 12, 25
SLOW_CHECKS = ("off_topic", "label_errors", "too_long")  # the encoder-based checks: not what is tested here


class DisagreeingStub(OpenAIStub):
    """The few-shot prompt (it has assistant turns) sees the label list reversed: where no label shares
    more words with the message than another, the two prompts answer differently."""

    @staticmethod
    def _labels(body: dict, messages: list[dict]) -> tuple[list[str] | None, bool]:
        labels, structured = OpenAIStub._labels(body, messages)
        if labels and any(m.get("role") == "assistant" for m in messages):
            labels = labels[::-1]
        return labels, structured


@pytest.fixture(scope="module")
def stub():
    with DisagreeingStub() as server:
        yield server


@pytest.fixture(scope="module")
def project(tmp_path_factory, banking77, stub):
    """A project of 20 gold rows per intent (6 intents), the official test rows of those intents, a pool
    of other training rows (with their category column, which distill must ignore), and run r1 after
    ingest, curate, split and baseline (majority, tfidf_lr)."""
    import torch

    from tunewise.config.sections import config_from_dict
    from tunewise.pipeline.runner import run_stages

    folder = tmp_path_factory.mktemp("distill")
    train = pd.read_csv(banking77 / "train.csv")
    test = pd.read_csv(banking77 / "test.csv")
    train = train[train["category"].isin(INTENTS)]
    gold = train.groupby("category", group_keys=False).head(GOLD_PER_INTENT)
    rest = train.drop(gold.index)
    pool = rest.groupby("category", group_keys=False).head(POOL_PER_INTENT)
    held = test[test["category"].isin(INTENTS)].groupby("category", group_keys=False).head(TEST_PER_INTENT)
    # two pool rows that copy test rows (one exactly, one with different case and punctuation): never teacher rows
    copies = pd.DataFrame({"text": [held["text"].iloc[0], held["text"].iloc[1].upper() + "!!"], "category": ["x", "y"]})
    pool = pd.concat([pool, copies], ignore_index=True)
    gold.to_csv(folder / "gold.csv", index=False)
    held.to_csv(folder / "test.csv", index=False)
    pool.to_csv(folder / "pool.csv", index=False)
    raw = {
        "task": "classify",
        "data": {"train": "gold.csv", "test": "test.csv", "columns": {"input": "text", "label": "category"}},
        "curate": {name: {"enabled": False} for name in SLOW_CHECKS},
        "split": {"validation_fraction": 0.25},
        "baseline": {
            "candidates": ["majority", "tfidf_lr"],
            "few_shot_k": 2,
            "batch_size": 4,
            "api_llm": {
                "base_url": stub.url,
                "model": "teacher-model",
                "api_key_env": None,
                "usd_per_million_input_tokens": 2.0,
                "usd_per_million_output_tokens": 8.0,
                "max_concurrency": 4,
                "backoff_s": 0.05,
                "cache_dir": str(folder / "api_cache"),
            },
        },
        "train": {
            "candidates": ["encoder_ft"],
            "max_steps": 12,
            "eval_every": 6,
            "batch_size": 8,
            "eval_max_rows": 32,
            "num_threads": 1,
            "precision": "fp32",
        },
        "evaluate": {"n_resamples": 300},
        "roi": {"monthly_volume": 20000},
        "tracking": "off",
    }
    cfg = config_from_dict(raw, folder)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_stages(cfg, "r1", only=["baseline"])
    finally:
        torch.set_num_threads(threads)
    return cfg, folder


def _split(cfg, run_id: str, name: str) -> pd.DataFrame:
    return pd.read_parquet(cfg.resolve(cfg.runs_dir) / run_id / "split" / f"{name}.parquet")


def test_teacher_rows_are_marked_never_in_test_and_a_rerun_costs_no_request(project, stub):
    cfg, folder = project
    stub.reset()
    result = distill(
        cfg, "r1", pool=folder / "pool.csv", teacher="api_zero_shot", students=["tfidf_lr"], out_run_id="api-1"
    )
    requests = stub.count()
    test, validation = _split(cfg, "r1", "test"), _split(cfg, "r1", "validation")
    pool_info = result["pool"]
    assert pool_info["ignored_label_column"] == "category"  # the pool's labels are ignored, and said so
    assert any("'category'" in note and "ignored" in note for note in result["notes"])
    assert pool_info["skipped"]["same_as_validation_or_test"] == 2  # the copies of test rows
    pool_rows = len(INTENTS) * POOL_PER_INTENT + 2
    assert pool_info["to_label"] == pool_rows - sum(pool_info["skipped"].values()) > 0.9 * pool_rows
    # every request is one row: validation and pool to label and filter, test to compare
    assert requests == len(validation) + pool_info["to_label"] + len(test)

    rows = pd.read_parquet(result["artifact"])
    assert len(rows) == pool_info["to_label"] and (rows["source"] == "teacher").all()
    assert (rows["teacher"] == "api_zero_shot").all() and rows["teacher_confidence"].between(0, 1).all()
    kept = rows[rows["kept"]]
    assert 0 < len(kept) <= len(rows)

    train = _split(cfg, "api-1", "train")
    teacher_rows = train[train["source"] == "teacher"]
    assert sorted(teacher_rows["id"]) == sorted(kept["id"])
    assert (teacher_rows["teacher"] == "api_zero_shot").all() and teacher_rows["teacher_confidence"].notna().all()
    assert train.loc[train["source"] == "gold", "id"].tolist() == _split(cfg, "r1", "train")["id"].tolist()
    pd.testing.assert_frame_equal(_split(cfg, "api-1", "test"), test)  # the gold test split, untouched
    normalised = {re.sub(r"\W+", " ", t).strip().lower() for t in test["input"]}
    assert not {re.sub(r"\W+", " ", t).strip().lower() for t in train["input"]} & normalised
    assert not set(teacher_rows["id"]) & set(test["id"])

    comparisons = {c["against"]: c for c in result["comparisons"]}
    assert set(comparisons) == {"teacher api_zero_shot", "tfidf_lr trained on gold alone"}
    for c in comparisons.values():
        accuracy = c["metrics"]["accuracy"]
        assert c["n"] == len(test) and accuracy["test"] in ("mcnemar_exact", "mcnemar_chi2")
        assert accuracy["difference_ci"][0] <= accuracy["difference"] <= accuracy["difference_ci"][1]
    costs = result["costs"]
    items = {line["item"]: line for line in costs["one_time"]}
    labelling = items["api_zero_shot: labelling the pool (one-time)"]
    assert labelling["usd"] > 0 and labelling["rows"] == pool_info["to_label"]
    assert "measured tokens" in labelling["arithmetic"]
    assert "a request (measured)" in costs["monthly"]["teacher api_zero_shot"]["arithmetic"]
    assert costs["monthly"]["student tfidf_lr"]["usd"] > 0
    # the project's spending ledger beside the config sums what the run spent
    ledger = json.loads((folder / "tunewise_api_spend.json").read_text())
    assert ledger["usd"] == pytest.approx(sum(line.get("spent_now_usd", 0) for line in costs["one_time"]), rel=1e-6)

    stub.reset()
    again = distill(
        cfg, "r1", pool=folder / "pool.csv", teacher="api_zero_shot", students=["tfidf_lr"], out_run_id="api-1"
    )
    assert stub.count() == 0  # every answer came from the cache
    assert again["labelled"] == result["labelled"]
    assert all(line.get("spent_now_usd", 0) == 0 for line in again["costs"]["one_time"])


def test_the_agreement_filter_keeps_rows_both_prompts_label_alike(project, stub):
    cfg, folder = project
    result = distill(cfg, "r1", pool=folder / "pool.csv", agree=True, students=["tfidf_lr"], out_run_id="agree-1")
    rows = pd.read_parquet(result["artifact"])
    same = rows["answer_api_zero_shot"] == rows["answer_api_few_shot"]
    assert same.any() and (~same).any()  # the stub's two prompts do disagree on some rows
    assert rows.loc[~same, "why_not"].eq("the prompts disagree").all() and not rows.loc[~same, "kept"].any()
    assert rows.loc[same, "kept"].all()
    assert (rows.loc[rows["kept"], "label"] == rows.loc[rows["kept"], "answer_api_zero_shot"]).all()
    assert result["rule"]["kind"] == "agreement" and "give the same label" in result["rule"]["message"]
    train = _split(cfg, "agree-1", "train")
    assert (train["source"] == "teacher").sum() == int(same.sum())
    assert set(train.loc[train["source"] == "teacher", "teacher"]) == {"api_zero_shot+api_few_shot"}
    against = {c["against"] for c in result["comparisons"]}
    assert {"teacher api_zero_shot", "teacher api_few_shot"} <= against


def test_the_confidence_filter_given_and_chosen_on_validation(project):
    cfg, folder = project
    given = distill(
        cfg,
        "r1",
        pool=folder / "pool.csv",
        teacher="tfidf_lr",
        min_confidence=0.3,
        students=["tfidf_lr"],
        out_run_id="conf-1",
    )
    rows = pd.read_parquet(given["artifact"])
    assert (rows["kept"] == (rows["teacher_confidence"] >= 0.3)).all()
    assert rows["kept"].any() and not rows["kept"].all()
    assert (rows.loc[~rows["kept"], "why_not"] == "confidence below 0.3").all()
    assert given["rule"]["min_confidence"] == 0.3 and not given["rule"]["chosen_on_validation"]
    assert "a local model" in given["costs"]["one_time"][0]["arithmetic"] and given["costs"]["one_time"][0]["usd"] == 0

    # the default: the lowest threshold at which the teacher's kept validation rows reach the target
    chosen = distill(
        cfg, "r1", pool=folder / "pool.csv", teacher="tfidf_lr", target=0.9, students=["tfidf_lr"], out_run_id="conf-2"
    )
    rule = chosen["rule"]
    validation = _split(cfg, "r1", "validation")
    predictions = pd.read_parquet(
        cfg.resolve(cfg.runs_dir) / "r1" / "baseline" / "predictions" / "tfidf_lr.validation.parquet"
    )  # reused: the baseline stage made them
    truth = validation.set_index("id").loc[predictions["id"], "label"].to_numpy()
    correct = predictions["prediction"].to_numpy() == truth
    expected = choose_min_confidence(predictions["score"].to_numpy(), correct, 0.9)
    assert rule["chosen_on_validation"] and rule["min_confidence"] == pytest.approx(expected["threshold"])
    assert rule["target"] == 0.9 and "--target 0.900" in rule["target_source"]
    assert "chosen on validation" in rule["message"]
    kept = pd.read_parquet(chosen["artifact"])
    assert (kept["kept"] == (kept["teacher_confidence"] >= rule["min_confidence"])).all()


def test_relabel_suspects_changes_train_rows_only(project, stub):
    import shutil

    cfg, folder = project
    runs = cfg.resolve(cfg.runs_dir)
    shutil.copytree(runs / "r1", runs / "rs", ignore=shutil.ignore_patterns(".lock", "distill"))
    train = pd.read_parquet(runs / "rs" / "split" / "train.parquet")
    # three exchange-rate rows mislabelled, as curation's label-error check would flag them (the stub teacher
    # answers exchange_rate for them: no other label shares a word with them)
    flipped = train.index[
        train["input"].str.contains(r"(?i)\bexchange\b.*\brate\b")
        & ~train["input"].str.contains("card|pin|age|atm|lost|stolen|arriv", case=False)
    ][:3]
    assert len(flipped) == 3
    train.loc[flipped, "label"] = "age_limit"
    train.to_parquet(runs / "rs" / "split" / "train.parquet")
    validation_id = _split(cfg, "rs", "validation")["id"].iloc[0]  # left as it is: never a training row
    issues = pd.read_parquet(runs / "rs" / "curate" / "issues.parquet")
    suspects = pd.DataFrame(
        {
            "id": [*train.loc[flipped, "id"], validation_id],
            "issue": "suspected_label_error",
            "detail": "given label unlikely",
            "action": "flagged",
            "stage": "curate",
        }
    )
    pd.concat([issues, suspects], ignore_index=True).to_parquet(runs / "rs" / "curate" / "issues.parquet")

    result = distill(
        cfg,
        "rs",
        relabel_suspects=True,
        teacher="api_zero_shot",
        min_confidence=0.0,
        students=["tfidf_lr"],
        out_run_id="rs-distilled",
    )
    assert result["suspects"] == {"suspects": 4, "in_train": 3, "in_validation_or_test": 1, "dropped_by_curation": 0}
    distilled = _split(cfg, "rs-distilled", "train").set_index("id")
    changed = distilled.loc[train.loc[flipped, "id"]]
    assert (changed["label"] == "exchange_rate").all() and (changed["gold_label"] == "age_limit").all()
    assert (changed["source"] == "teacher").all() and (changed["teacher"] == "api_zero_shot").all()
    assert len(distilled) == len(train) and (distilled["source"] == "teacher").sum() == 3
    pd.testing.assert_frame_equal(_split(cfg, "rs-distilled", "test"), _split(cfg, "rs", "test"))
    rows = pd.read_parquet(result["artifact"])
    assert (rows["part"] == "suspects").all() and (rows["gold_label"] == "age_limit").all()


def test_choose_min_confidence_takes_the_lowest_threshold_reaching_the_target():
    scores = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    correct = np.array([1, 1, 1, 1, 0, 1, 0, 0, 1, 0], dtype=bool)
    assert choose_min_confidence(scores, correct, 0.8, min_rows=1)["threshold"] == 0.5  # 5 of 6 correct
    assert choose_min_confidence(scores, correct, 1.0, min_rows=1)["threshold"] == 0.7  # the 4 sure ones
    unreachable = choose_min_confidence(scores, correct, 1.0, min_rows=5)
    assert not unreachable["reached"] and unreachable["threshold"] == 0.5  # the most accurate with 5 rows
    tied = choose_min_confidence(np.ones(4), np.array([1, 1, 0, 1], dtype=bool), 0.5)
    assert tied["threshold"] == 1.0 and tied["kept"] == 4


def test_the_spending_cap_stops_labelling_before_the_batch_that_would_cross_it(project, stub, tmp_path):
    cfg, folder = project
    stub.reset()
    settings = {
        "usd_per_million_input_tokens": 100.0,
        "usd_per_million_output_tokens": 400.0,
        "no_cache": True,
        "max_usd": None,
        "max_concurrency": 1,
        "ledger": str(tmp_path / "ledger.json"),
    }

    def with_api(**changes):
        api = cfg.baseline.api_llm.model_copy(update={**settings, **changes})
        return cfg.model_copy(update={"baseline": cfg.baseline.model_copy(update={"api_llm": api, "batch_size": 2})})

    # the dry run's estimate of validation (it errs high: validation fits) and a tenth of the pool's
    dry = distill(with_api(), "r1", pool=folder / "pool.csv", teacher="api_zero_shot", dry_run=True)
    parts = dry["estimates"]["api_zero_shot"]["parts"]
    assert parts["pool"]["rows_to_request"] == dry["pool"]["to_label"] and stub.count() == 0
    cap = parts["validation"]["usd"] + 0.1 * parts["pool"]["usd"]
    capped = with_api(max_usd=cap)
    with pytest.raises(DistillStopped, match=r"spending cap reached.*rows labelled so far are kept") as caught:
        distill(
            capped,
            "r1",
            pool=folder / "pool.csv",
            teacher="api_zero_shot",
            min_confidence=0.0,
            students=["tfidf_lr"],
            out_run_id="capped",
        )
    summary = caught.value.summary
    stop = summary["cap"]
    assert stop["scope"] == "run" and stop["max_usd"] == pytest.approx(cap)
    assert stop["spent_usd"] <= cap < stop["spent_usd"] + stop["estimate_usd"]  # the next batch would have crossed it
    rows = pd.read_parquet(summary["artifact"])
    n_validation = len(_split(cfg, "r1", "validation"))
    assert 0 < len(rows) < summary["pool"]["to_label"]
    assert stub.count() == n_validation + len(rows)  # nothing was sent for the refused batch
    assert summary["status"] == "stopped" and (rows["source"] == "teacher").all()
    assert not (cfg.resolve(cfg.runs_dir) / "capped").exists()  # no student trained on a part-labelled pool


def test_bad_input_gets_errors_naming_the_file_or_field(project, tmp_path):
    cfg, folder = project
    with pytest.raises(DistillError, match=r"--pool .*missing\.csv: file not found"):
        distill(cfg, "r1", pool=tmp_path / "missing.csv", teacher="tfidf_lr")
    (tmp_path / "empty.csv").write_text("text,category\n ,card_arrival\n")
    with pytest.raises(DistillError, match=r"empty\.csv: the pool is empty: no row with text in column 'text'"):
        distill(cfg, "r1", pool=tmp_path / "empty.csv", teacher="tfidf_lr")
    (tmp_path / "notext.csv").write_text("body\nhello\n")
    with pytest.raises(DistillError, match=r"notext\.csv: no text column .*columns found: body"):
        distill(cfg, "r1", pool=tmp_path / "notext.csv", teacher="tfidf_lr")
    with pytest.raises(DistillError, match=r"--teacher 'embed_lr': not found: run 'r1' built majority, tfidf_lr"):
        distill(cfg, "r1", pool=folder / "pool.csv", teacher="embed_lr")
    no_api = cfg.model_copy(update={"baseline": cfg.baseline.model_copy(update={"api_llm": None})})
    with pytest.raises(DistillError, match=r"baseline\.api_llm"):
        distill(no_api, "r1", pool=folder / "pool.csv", teacher="api_few_shot")
    with pytest.raises(DistillError, match="--pool FILE"):
        distill(cfg, "r1", teacher="tfidf_lr")
    with pytest.raises(DistillError, match="--teacher NAME"):
        distill(cfg, "r1", pool=folder / "pool.csv")
    with pytest.raises(DistillError, match=r"--students: 'zero_shot_llm' is a baseline classify candidate"):
        distill(cfg, "r1", pool=folder / "pool.csv", teacher="tfidf_lr", students=["zero_shot_llm"])
    with pytest.raises(DistillError, match=r"split/train\.parquet not found"):
        distill(cfg, "no-such-run", pool=folder / "pool.csv", teacher="tfidf_lr")
    already = pd.read_csv(folder / "gold.csv").head(5)
    already.to_csv(tmp_path / "known.csv", index=False)
    with pytest.raises(DistillError, match="nothing left to label: every pool row is already in the project's data"):
        distill(cfg, "r1", pool=tmp_path / "known.csv", teacher="tfidf_lr")


def test_the_command_trains_the_fine_tuned_student_with_the_train_stage(project, one_torch_thread):
    from tunewise.cli.main import app

    cfg, folder = project
    config = folder / "tunewise.yaml"
    raw = cfg.model_dump(mode="json")
    import yaml

    config.write_text(yaml.safe_dump(raw))
    command = [
        "distill",
        "-c",
        str(config),
        "--run-id",
        "r1",
        "--pool",
        str(folder / "pool.csv"),
        "--teacher",
        "api_zero_shot",
        "--min-confidence",
        "0",
    ]
    result = CliRunner().invoke(app, command, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "students (run r1-distilled) on the gold test set" in result.output
    assert "teacher api_zero_shot" in result.output and "labelling the pool (one-time)" in result.output
    run = folder / "runs" / "r1-distilled"
    summary = json.loads((run / "train" / "summary.json").read_text())  # the train stage's own summary
    assert [c["name"] for c in summary["candidates"]] == ["encoder_ft"]
    train = pd.read_parquet(run / "split" / "train.parquet")
    assert (run / "train" / "encoder_ft" / "adapter" / "tunewise_train.json").exists()
    assert (train["source"] == "teacher").sum() == len(
        pd.read_parquet(folder / "runs" / "r1" / "distill" / "teacher_rows.parquet")
    )  # min-confidence 0
    assert len(pd.read_parquet(run / "train" / "predictions" / "encoder_ft.parquet")) == len(_split(cfg, "r1", "test"))

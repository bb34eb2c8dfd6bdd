"""The decision (tunewise.decision.decide): cost lines by hand, payback arithmetic, and the verdict following the
measurements and assumptions of a real pipeline run on the demo data (curate, split, cheap baselines, a
briefly fine-tuned encoder, evaluate), never the data being a demo."""

from __future__ import annotations

import json

import pytest

from tunewise.config.sections import ConfigError, RoiConfig, config_from_dict
from tunewise.decision.decide import Money, decide, monthly_running_cost, one_time_cost, payback_months

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GENEROUS = {"monthly_volume": 20000, "value_per_outcome_usd": 2.0}


@pytest.fixture(scope="module")
def demo_run(demo_pipeline_run):
    return demo_pipeline_run


def test_a_cost_line_recomputes_by_hand_from_the_table_and_the_measured_tokens(demo_run):
    from tunewise.core.pricing import FLOPS_PER_TOKEN, GPU_UTILISATION, REFERENCE_GPUS

    _, run_dir = demo_run
    summary = json.loads((run_dir / "train" / "encoder_ft" / "train_summary.json").read_text())
    roi = RoiConfig(gpu="L4", **GENEROUS)
    total, lines = one_time_cost({"encoder_ft": summary}, flagged_rows=10, roi=roi)
    l4 = next(g for g in REFERENCE_GPUS if g["gpu"] == "L4")
    by_hand = (
        FLOPS_PER_TOKEN["encoder"]
        * summary["parameters"]
        * summary["tokens_seen"]
        / (l4["peak_bf16_tflops"] * 1e12 * GPU_UTILISATION)
        / 3600
        * l4["usd_per_hour"]
    )
    assert summary["tokens_seen"] > 0
    assert lines[0]["usd"] == pytest.approx(by_hand)
    assert lines[1]["usd"] == pytest.approx(10 * 1.0 / 60 * 40.0)  # 10 flagged rows x 1 min x $40/h
    assert lines[3]["usd"] == pytest.approx(5 * 800.0)  # engineering days x day rate
    _, cheap_lines = one_time_cost(
        {"encoder_ft": summary}, flagged_rows=10, roi=roi, candidate="tfidf_lr", kind="cheap"
    )
    assert [line["item"] for line in cheap_lines] == ["data review", "new labels", "engineering"]
    assert cheap_lines[2]["usd"] == pytest.approx(2 * 800.0)  # a cheap model's engineering days
    assert total == pytest.approx(sum(line["usd"] for line in lines))


def test_payback_and_running_cost_arithmetic():
    assert payback_months(1200.0, 100.0) == pytest.approx(12.0)
    assert payback_months(1200.0, 0.0) is None and payback_months(1200.0, -5.0) is None
    money = Money(one_time=1000.0, gain=0.1, volume=1000, value=2.0, extra_running=50.0)
    assert money.benefit() == pytest.approx(200.0) and money.net() == pytest.approx(150.0)
    roi = RoiConfig(monthly_volume=1_000_000, value_per_outcome_usd=1.0, always_on=False, serving_instance="c7i.large")
    # 1M requests x 36 ms on the 2-core machine = 10 busy hours on c7i.large (2 vCPU) at $0.08925
    assert monthly_running_cost(36.0, roi)["usd"] == pytest.approx(10 * 0.08925)
    always_on = roi.model_copy(update={"always_on": True})
    assert monthly_running_cost(36.0, always_on)["usd"] == pytest.approx(730 * 0.08925)
    api = roi.model_copy(update={"baseline_usd_per_million_tokens": 0.5})
    assert monthly_running_cost(36.0, api, api_tokens=100)["usd"] == pytest.approx(1_000_000 * 100 / 1e6 * 0.5)


def test_running_cost_scales_from_the_cores_that_measured_the_latency(tmp_path):
    from tunewise.core.machine import measuring_cores
    from tunewise.decision.costs import MEASURED_CORES
    from tunewise.decision.run_facts import read_latency_cores

    roi = RoiConfig(monthly_volume=1_000_000, value_per_outcome_usd=1.0, always_on=False, serving_instance="c7i.large")
    # 36 ms measured on 4 cores: the 2-vCPU c7i.large serves half as many requests an hour, 20 busy hours
    four = monthly_running_cost(36.0, roi, measured_cores=4)
    assert four["usd"] == pytest.approx(20 * 0.08925) and four["measured_cores"] == 4
    assert "(2 vCPUs / 4 measuring cores)" in four["arithmetic"]
    one = monthly_running_cost(36.0, roi, measured_cores=1)
    assert one["usd"] == pytest.approx(5 * 0.08925)
    # a run that did not record its cores: the development machine's 2, as before
    assert MEASURED_CORES == 2 and monthly_running_cost(36.0, roi)["measured_cores"] == 2
    assert measuring_cores() >= 1

    # what the baseline and train stages record beside each latency, read back per candidate
    run = tmp_path / "run"
    (run / "baseline").mkdir(parents=True)
    (run / "train").mkdir()
    (run / "baseline" / "summary.json").write_text(
        json.dumps(
            {
                "candidates": [
                    {"name": "tfidf_lr", "latency_cores": 8},
                    {"name": "majority"},
                    {"name": "embed_lr", "latency_cores": 8},
                ]
            }
        )
    )
    (run / "train" / "summary.json").write_text(
        json.dumps({"candidates": [{"name": "encoder_ft", "latency_cores": 4}]})
    )
    names = ["tfidf_lr", "majority", "encoder_ft", "embed_lr", "ensemble"]
    disagree = {"ensemble": ["tfidf_lr", "encoder_ft"]}
    assert read_latency_cores(run, names, disagree) == {"tfidf_lr": 8, "encoder_ft": 4, "embed_lr": 8}
    assert read_latency_cores(run, names, {"ensemble": ["tfidf_lr", "embed_lr"]})["ensemble"] == 8  # its members agree
    assert read_latency_cores(tmp_path / "old_run", names, {}) == {}


def _reevaluate(run_dir, out_dir, incumbent_file=None, **evaluate_settings):
    """The fixture run's real predictions evaluated again under other evaluate settings, into a copy
    of the run (split, curate, baseline and train stay as they are): what a team changing
    ``evaluate:`` in its config gets."""
    import shutil

    import pandas as pd

    from tunewise.config.sections import EvaluateConfig
    from tunewise.evaluation.evaluate import evaluate_candidates
    from tunewise.evaluation.predictions import load_incumbent_predictions, load_run_predictions

    for stage in ("split", "curate", "baseline", "train"):
        if (run_dir / stage).exists():
            shutil.copytree(run_dir / stage, out_dir / stage, dirs_exist_ok=True)
    test = pd.read_parquet(run_dir / "split" / "test.parquet")
    validation = pd.read_parquet(run_dir / "split" / "validation.parquet")
    candidates, skipped = load_run_predictions(run_dir)
    info = None
    if incumbent_file is not None:
        incumbent, info = load_incumbent_predictions(incumbent_file, test)
        candidates.append(incumbent)
        evaluate_settings["baseline"] = f"predictions:{incumbent_file}"
    config = EvaluateConfig(n_resamples=300, human_sheet_size=0, ensemble=False, **evaluate_settings)
    evaluation = evaluate_candidates(
        test, candidates, task="classify", config=config, validation=validation, seed=0, skipped=skipped
    )
    if info is not None:
        evaluation.summary["incumbent"]["predictions_file"] = info
    evaluation.write(out_dir / "evaluate")
    return out_dir, evaluation.summary


def test_a_near_chance_baseline_is_not_the_yardstick_and_the_cheaper_model_that_wins_is_recommended(demo_run):
    _, run_dir = demo_run
    evaluation = json.loads((run_dir / "evaluate" / "summary.json").read_text())
    # the configured baseline answers the most frequent label: within noise of chance
    assert evaluation["incumbent"]["name"] == "majority" and not evaluation["incumbent"]["meaningful"]
    assert evaluation["baseline"] == "tfidf_lr"  # the best candidate that needs no fine-tuning
    scores = {c["name"]: c["metrics"]["accuracy"] for c in evaluation["candidates"]}
    assert scores["tfidf_lr"] > scores["encoder_ft"]  # 12 fine-tuning steps do not beat TF-IDF here
    decision = decide(run_dir, RoiConfig(**GENEROUS))["decision"]
    assert decision["verdict"] == "USE_ALTERNATIVE", decision["reasons"]
    assert decision["recommended"] == "tfidf_lr"
    assert decision["reasons"][0].startswith("use tfidf_lr, which needs no fine-tuning")
    assert any("majority is not meaningful" in r for r in decision["reasons"])


def test_fine_tune_when_it_meets_the_target_and_the_money_pays_back(demo_run, tmp_path):
    _, run_dir = demo_run
    out, evaluation = _reevaluate(run_dir, tmp_path / "r", candidates=["majority", "encoder_ft"], baseline="majority")
    status = evaluation["comparisons"]["encoder_ft"]["metrics"]["accuracy"]
    assert status["relative_ci"][0] >= 0.15  # the whole interval above the minimum improvement
    result = decide(out, RoiConfig(**GENEROUS))
    decision, roi = result["decision"], result["roi"]
    assert decision["verdict"] == "FINE_TUNE", decision["reasons"]
    assert decision["recommended"] == "encoder_ft"
    assert "pays back its extra cost" in decision["reasons"][0]
    assert roi["gain"] == pytest.approx(status["difference"])
    assert roi["monthly_benefit_usd"] == pytest.approx(20000 * roi["gain"] * 2.0)
    low, high = roi["payback_months_ci95"]
    assert low <= roi["payback_months"] <= high <= 12
    assert roi["cumulative"][0]["net_usd"] == pytest.approx(-roi["one_time_cost_usd"])
    assert len(roi["cumulative"]) == 13 and roi["sensitivity"]
    # without volume and value the verdict stands on quality and says the money was not priced
    unpriced = decide(out, RoiConfig())["decision"]
    assert unpriced["verdict"] == "FINE_TUNE" and "the money side was not priced" in unpriced["reasons"][0]
    # a worthless outcome: the fine-tune no longer pays back, nothing else is meaningful: not yet
    worthless = decide(out, RoiConfig(monthly_volume=20000, value_per_outcome_usd=0.0001))["decision"]
    assert worthless["verdict"] == "NOT_YET" and "does not pay back" in worthless["reasons"][0]


def test_not_yet_when_nothing_meets_the_bar(demo_run, tmp_path):
    _, run_dir = demo_run
    out, _ = _reevaluate(
        run_dir, tmp_path / "r", candidates=["majority", "encoder_ft"], baseline="majority", threshold=50.0
    )
    decision = decide(out, RoiConfig(**GENEROUS))["decision"]
    assert decision["verdict"] == "NOT_YET", decision["reasons"]
    assert decision["recommended"] is None
    assert decision["reasons"][0].startswith("nothing meets the bar")
    assert "5000%" in decision["reasons"][0]


def test_inconclusive_when_the_interval_straddles_the_threshold_says_how_many_rows_settle_it(demo_run, tmp_path):
    from tunewise.decision.decide import test_rows_needed

    _, run_dir = demo_run
    _, first = _reevaluate(run_dir, tmp_path / "a", candidates=["majority", "encoder_ft"], baseline="majority")
    cmp = first["comparisons"]["encoder_ft"]["metrics"]["accuracy"]
    rel, (low, high) = cmp["relative_improvement"], cmp["relative_ci"]
    threshold = rel - 0.4 * (rel - low)  # inside the interval, below the observed effect
    out, _ = _reevaluate(
        run_dir, tmp_path / "b", candidates=["majority", "encoder_ft"], baseline="majority", threshold=threshold
    )
    decision = decide(out, RoiConfig(**GENEROUS))["decision"]
    assert decision["verdict"] == "INCONCLUSIVE", decision["reasons"]
    needed = decision["test_rows_needed"]
    assert needed == test_rows_needed(cmp["n"], rel, (low, high), threshold) and needed > cmp["n"]
    assert f"{needed:,} in all" in decision["reasons"][0]
    # the power arithmetic: half the distance to the threshold takes four times the rows
    assert test_rows_needed(100, 0.3, (0.1, 0.5), 0.2) == pytest.approx(
        4 * test_rows_needed(100, 0.4, (0.2, 0.6), 0.2), rel=0.02
    )


def test_incumbent_predictions_file_with_missing_ids_and_a_tie_in_cost(demo_run, tmp_path):
    import pandas as pd

    _, run_dir = demo_run
    # the team's current system happens to be the same TF-IDF model: its answers, minus 10 rows, plus 3 stray ids
    tfidf = pd.read_parquet(run_dir / "baseline" / "predictions" / "tfidf_lr.parquet")
    answers = tfidf[["id", "prediction", "latency_ms"]].iloc[10:]
    answers = pd.concat(
        [
            answers,
            pd.DataFrame({"id": ["x1", "x2", "x3"], "prediction": ["a", "b", "c"], "latency_ms": [1.0, 1.0, 1.0]}),
        ]
    )
    path = tmp_path / "current_system.csv"
    answers.to_csv(path, index=False)
    out, evaluation = _reevaluate(run_dir, tmp_path / "r", incumbent_file=path, candidates=["tfidf_lr", "encoder_ft"])
    info = evaluation["incumbent"]["predictions_file"]
    assert evaluation["incumbent"]["name"] == "incumbent" and evaluation["incumbent"]["meaningful"]
    assert (info["missing_ids"], info["extra_ids"], info["matched"]) == (10, 3, len(tfidf) - 10)
    assert evaluation["baseline"] == "incumbent"
    assert evaluation["comparisons"]["tfidf_lr"]["n"] == len(tfidf) - 10  # compared on the rows both answered
    # same model, same instance, and (here) no engineering or data review for the cheap one either: a tie in cost
    roi = RoiConfig(engineering_days_cheap=0.0, review_minutes_per_row=0.0, serving_instance="c7i.large")
    decision = decide(out, roi)["decision"]
    assert decision["verdict"] == "USE_ALTERNATIVE", decision["reasons"]
    tie = [r for r in decision["reasons"] if "cost the same; the tie is broken by quality" in r]
    assert tie, decision["reasons"]
    # with its usual engineering days the new model costs more than what already runs: keep the incumbent
    kept = decide(out, RoiConfig(serving_instance="c7i.large"))["decision"]
    assert kept["recommended"] == "incumbent", kept["reasons"]


def test_each_candidate_carries_its_own_costs(demo_run):
    _, run_dir = demo_run
    costs = decide(run_dir, RoiConfig(**GENEROUS))["roi"]["candidates"]
    # a fine-tune pays training compute and more engineering; a TF-IDF model fits a smaller instance
    assert costs["encoder_ft"]["one_time_usd"] > costs["tfidf_lr"]["one_time_usd"]
    assert any(line["item"] == "training compute: encoder_ft" for line in costs["encoder_ft"]["one_time_lines"])
    assert not any(line["item"].startswith("training compute") for line in costs["tfidf_lr"]["one_time_lines"])
    assert costs["tfidf_lr"]["instance"] == "t3.micro" and costs["encoder_ft"]["instance"] != "t3.micro"
    assert costs["encoder_ft"]["horizon_cost_usd"] > costs["tfidf_lr"]["horizon_cost_usd"]


def test_decide_stage_writes_the_decision_and_follows_the_config(demo_run):
    from tunewise.pipeline.runner import run_stages

    cfg, run_dir = demo_run
    priced = cfg.model_copy(update={"roi": RoiConfig(**GENEROUS)})
    markers = run_stages(priced, "r1", only=["decide"])
    assert markers["decide"]["metrics"]["verdict"] == "USE_ALTERNATIVE"
    assert markers["evaluate"]["status"] == "done"  # reused from the cache, not re-run
    saved = json.loads((run_dir / "decide" / "decision.json").read_text())
    assert saved["decision"]["verdict"] == "USE_ALTERNATIVE"
    assert saved["decision"]["headline"].startswith("USE_ALTERNATIVE: use tfidf_lr")


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"value_per_outcome_usd": -3}, "value_per_outcome_usd"),
        ({"monthly_volume": 0}, "monthly_volume"),
        ({"gpu": "GTX480"}, "gpu"),
        ({"horizon_months": 100000}, "horizon_months"),
    ],
)
def test_negative_or_absurd_assumptions_are_config_errors(bad, field):
    with pytest.raises(ConfigError, match=field):
        config_from_dict({"task": "classify", "data": {"train": "x.csv"}, "roi": bad})


def test_the_learning_curve_tells_the_decision_how_much_data_the_target_needs(demo_run):
    from tunewise.decision.curve import run_curve
    from tunewise.decision.decide import _more_data_reason

    cfg, run_dir = demo_run
    curve = run_curve(cfg, "r1", candidates=["tfidf_lr"], fractions=[0.2, 0.4, 0.7, 1.0], target=0.999, n_resamples=50)
    assert (run_dir / "curve" / "curve.json").exists() and (run_dir / "curve" / "curve.png").exists()
    target = curve["candidates"]["tfidf_lr"]["target"]
    reason = _more_data_reason(run_dir, "tfidf_lr", RoiConfig(usd_per_label=0.4, **GENEROUS))
    if target["reachable"]:
        assert f"{target['more_rows']:,} more labelled rows" in reason
        assert f"${target['more_rows'] * 0.4:,.0f}" in reason
    else:
        assert reason.startswith("more data of the same kind will not reach the target")
    assert _more_data_reason(run_dir, "not_in_the_curve", RoiConfig()) is None


def test_the_curve_follows_the_decision_target_and_measures_the_ensemble_through_a_member(demo_run):
    from tunewise.decision.curve import resolve_curve_candidates, run_curve
    from tunewise.pipeline.runner import run_stages

    cfg, run_dir = demo_run
    run_stages(cfg.model_copy(update={"roi": RoiConfig(**GENEROUS)}), "r1", only=["decide"])
    decision = json.loads((run_dir / "decide" / "decision.json").read_text())["decision"]
    curve = run_curve(cfg, "r1", candidates=["tfidf_lr"], fractions=[0.3, 0.6, 1.0], n_resamples=50)
    assert curve["target_source"] == "decision"
    assert curve["target"] == pytest.approx(min(1.0, decision["target_score"]))
    evaluation = json.loads((run_dir / "evaluate" / "summary.json").read_text())
    evaluation["ensemble"] = {"members": ["encoder_ft", "tfidf_lr"]}
    names, notes = resolve_curve_candidates(["ensemble", "tfidf_lr"], evaluation)
    assert names == ["encoder_ft", "tfidf_lr"] and notes["ensemble_proxy"] == "encoder_ft"
    assert "measured through its strongest fine-tuned member encoder_ft" in notes["ensemble"]

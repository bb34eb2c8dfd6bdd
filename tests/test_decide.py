"""The decision (tunewise.decide): cost lines by hand, payback arithmetic, and the verdict following the
measurements and assumptions of a real pipeline run on the demo data (curate, split, cheap baselines, a
briefly fine-tuned encoder, evaluate), never the data being a demo."""

from __future__ import annotations

import json

import pytest

from tunewise.config import ConfigError, RoiConfig, config_from_dict, load_config
from tunewise.decide import Money, decide, monthly_running_cost, one_time_cost, payback_months

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GENEROUS = {"monthly_volume": 20000, "value_per_outcome_usd": 2.0}


@pytest.fixture(scope="module")
def demo_run(demo_pipeline_run):
    return demo_pipeline_run


def test_a_cost_line_recomputes_by_hand_from_the_table_and_the_measured_tokens(demo_run):
    from tunewise.train import FLOPS_PER_TOKEN, GPU_UTILISATION, REFERENCE_GPUS

    _, run_dir = demo_run
    summary = json.loads((run_dir / "train" / "encoder_ft" / "train_summary.json").read_text())
    roi = RoiConfig(gpu="L4", **GENEROUS)
    total, lines = one_time_cost({"encoder_ft": summary}, flagged_rows=10, roi=roi)
    l4 = next(g for g in REFERENCE_GPUS if g["gpu"] == "L4")
    by_hand = (FLOPS_PER_TOKEN["encoder"] * summary["parameters"] * summary["tokens_seen"]
               / (l4["peak_bf16_tflops"] * 1e12 * GPU_UTILISATION) / 3600 * l4["usd_per_hour"])
    assert summary["tokens_seen"] > 0
    assert lines[0]["usd"] == pytest.approx(by_hand)
    assert lines[1]["usd"] == pytest.approx(10 * 1.0 / 60 * 40.0)  # 10 flagged rows x 1 min x $40/h
    assert lines[3]["usd"] == pytest.approx(5 * 800.0)  # engineering days x day rate
    assert total == pytest.approx(sum(line["usd"] for line in lines))


def test_payback_and_running_cost_arithmetic():
    assert payback_months(1200.0, 100.0) == pytest.approx(12.0)
    assert payback_months(1200.0, 0.0) is None and payback_months(1200.0, -5.0) is None
    money = Money(one_time=1000.0, gain=0.1, volume=1000, value=2.0, extra_running=50.0)
    assert money.benefit() == pytest.approx(200.0) and money.net() == pytest.approx(150.0)
    roi = RoiConfig(monthly_volume=1_000_000, value_per_outcome_usd=1.0, always_on=False)
    # 1M requests x 36 ms on the 2-core machine = 10 busy hours on c7i.large (2 vCPU) at $0.08925
    assert monthly_running_cost(36.0, roi)["usd"] == pytest.approx(10 * 0.08925)
    always_on = roi.model_copy(update={"always_on": True})
    assert monthly_running_cost(36.0, always_on)["usd"] == pytest.approx(730 * 0.08925)
    api = roi.model_copy(update={"baseline_usd_per_million_tokens": 0.5})
    assert monthly_running_cost(36.0, api, api_tokens=100)["usd"] == pytest.approx(1_000_000 * 100 / 1e6 * 0.5)


def test_generous_assumptions_give_go_with_payback_inside_its_interval(demo_run):
    _, run_dir = demo_run
    result = decide(run_dir, RoiConfig(**GENEROUS))
    roi, decision = result["roi"], result["decision"]
    evaluation = json.loads((run_dir / "evaluate" / "summary.json").read_text())
    assert evaluation["gate"]["passed"], evaluation["gate"]["reasons"]
    assert decision["verdict"] == "GO", decision["reasons"]
    assert roi["gain"] == pytest.approx(evaluation["comparison"]["difference"])
    assert roi["monthly_benefit_usd"] == pytest.approx(20000 * roi["gain"] * 2.0)
    low, high = roi["payback_months_ci95"]
    assert low <= roi["payback_months"] <= high <= 12
    assert roi["cumulative"][0]["net_usd"] == pytest.approx(-roi["one_time_cost_usd"])
    assert len(roi["cumulative"]) == 13 and roi["sensitivity"]
    # the cheapest candidate meeting the target is recommended, here a classic model beside the fine-tuned one
    assert decision["recommended"] in decision["recommendation"]["meeting_target"]


def test_a_worthless_outcome_turns_the_verdict_to_no_go_naming_that_assumption(demo_run):
    _, run_dir = demo_run
    result = decide(run_dir, RoiConfig(monthly_volume=20000, value_per_outcome_usd=0.0001))
    decision = result["decision"]
    assert decision["verdict"] == "NO_GO"
    assert any("roi.value_per_outcome_usd $0.0001" in r and "beyond the 12-month horizon" in r for r in decision["reasons"])
    assert result["roi"]["payback_months"] is None or result["roi"]["payback_months"] > 12


def test_missing_assumptions_give_no_go_and_say_what_is_needed(demo_run):
    _, run_dir = demo_run
    result = decide(run_dir, RoiConfig())
    assert result["decision"]["verdict"] == "NO_GO"
    assert "no value per outcome given (roi.value_per_outcome_usd): the gain cannot be priced" in result["decision"]["reasons"]
    assert set(result["roi"]["missing"]) == {"monthly_volume", "value_per_outcome_usd"}
    assert result["roi"]["payback_months"] is None and result["roi"]["one_time_cost_usd"] is not None


def test_decide_stage_writes_the_decision_and_flips_with_the_config(demo_run):
    from tunewise.runner import run_stages

    cfg, run_dir = demo_run
    go = cfg.model_copy(update={"roi": RoiConfig(**GENEROUS)})
    markers = run_stages(go, "r1", only=["decide"])
    assert markers["decide"]["metrics"]["verdict"] == "GO"
    assert markers["evaluate"]["status"] == "done"  # reused from the cache, not re-run
    no_go = cfg.model_copy(update={"roi": RoiConfig(monthly_volume=20000, value_per_outcome_usd=0.0001)})
    assert run_stages(no_go, "r1", only=["decide"])["decide"]["metrics"]["verdict"] == "NO_GO"
    saved = json.loads((run_dir / "decide" / "decision.json").read_text())
    assert saved["decision"]["verdict"] == "NO_GO"


@pytest.mark.parametrize("bad, field", [({"value_per_outcome_usd": -3}, "value_per_outcome_usd"),
                                        ({"monthly_volume": 0}, "monthly_volume"),
                                        ({"gpu": "GTX480"}, "gpu"),
                                        ({"horizon_months": 100000}, "horizon_months")])
def test_negative_or_absurd_assumptions_are_config_errors(bad, field):
    with pytest.raises(ConfigError, match=field):
        config_from_dict({"task": "classify", "data": {"train": "x.csv"}, "roi": bad})


def test_the_learning_curve_tells_the_decision_how_much_data_the_target_needs(demo_run):
    from tunewise.curve import run_curve
    from tunewise.decide import _more_data_reason

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

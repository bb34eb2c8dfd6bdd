"""tunewise monitor: statistics against known answers, verdicts and drift on constructed logs, exit code.

Logs are built row by row in a SQLite store (no server): an incumbent and a candidate arm with
chosen accuracies, so the verdict is known in advance.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tunewise.config.sections import MonitorConfig
from tunewise.monitoring.monitor import (
    ACTION_EXIT_CODE,
    embedding_drift,
    monitor,
    monitor_run,
    newcombe_interval,
    parse_since,
    psi,
    sample_size_two_proportions,
    two_proportion_test,
)
from tunewise.monitoring.store import Store

LABELS = ["order_status", "refund_status", "return_item", "payment_failed"]


# ---------------------------------------------------------------------------------------------
# Statistics


def test_newcombe_interval_matches_the_published_example():
    # Newcombe (1998), Statistics in Medicine 17:873, table II example (b): 56/70 vs 48/80,
    # method 10 (score, no continuity correction): 0.0524 to 0.3339
    low, high = newcombe_interval(56, 70, 48, 80)
    assert low == pytest.approx(0.0524, abs=5e-4) and high == pytest.approx(0.3339, abs=5e-4)


def test_two_proportion_test_matches_statsmodels():
    from statsmodels.stats.proportion import proportions_ztest

    _, expected = proportions_ztest([56, 48], [70, 80])
    assert two_proportion_test(56, 70, 48, 80) == pytest.approx(expected, rel=1e-9)


def test_sample_size_gives_the_promised_power_in_simulation():
    n = sample_size_two_proportions(0.60, 0.70, level=0.95, power=0.8)
    # Fleiss et al. (2003) eq. 4.14 by hand: 354.8 -> 355 per group
    z_a, z_b = 1.959964, 0.841621
    by_hand = (z_a * math.sqrt(2 * 0.65 * 0.35) + z_b * math.sqrt(0.6 * 0.4 + 0.7 * 0.3)) ** 2 / 0.1**2
    assert n == math.ceil(by_hand)
    rng = np.random.default_rng(0)
    a, b = rng.binomial(n, 0.60, 4000), rng.binomial(n, 0.70, 4000)
    rejected = np.mean([two_proportion_test(int(x), n, int(y), n) < 0.05 for x, y in zip(a, b)])
    assert 0.77 <= rejected <= 0.83


def test_psi_is_zero_for_the_same_distribution_and_matches_a_hand_computation():
    train = pd.Series(["a"] * 500 + ["b"] * 500)
    assert psi(train, pd.Series(["a"] * 50 + ["b"] * 50))["psi"] == pytest.approx(0, abs=1e-9)
    shifted = psi(train, pd.Series(["a"] * 90 + ["b"] * 10))
    e = np.array([500.5, 500.5]) / 1001
    a = np.array([90.5, 10.5]) / 101
    assert shifted["psi"] == pytest.approx(float(((a - e) * np.log(a / e)).sum()))
    assert shifted["largest"][0]["value"] in ("a", "b")


def test_embedding_drift_separates_a_shifted_cloud_from_the_same_one():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(400, 32)) + 1.0
    same = rng.normal(size=(150, 32)) + 1.0
    moved = rng.normal(size=(150, 32)) + 1.0
    moved[:, :4] += 1.5
    assert embedding_drift(reference, same, 300, seed=0)["p_value"] > 0.05
    result = embedding_drift(reference, moved, 300, seed=0)
    assert result["p_value"] < 0.01 and result["distance"] > result["null_p99"]


def test_parse_since():
    now = 1_000_000.0
    assert parse_since("24h", now) == now - 86400 and parse_since("30m", now) == now - 1800
    assert parse_since("2026-01-31") == pytest.approx(1769817600.0)
    assert parse_since(None) is None
    with pytest.raises(ValueError, match="duration"):
        parse_since("yesterday")


# ---------------------------------------------------------------------------------------------
# Constructed logs


def _log(
    store: Store,
    arm: str,
    n: int,
    accuracy: float,
    *,
    labelled: float = 1.0,
    latency_ms: float = 20.0,
    failed: int = 0,
    predicted: str | None = None,
    seed: int = 0,
    inputs: list[str] | None = None,
) -> None:
    """n answered requests on ``arm`` (its candidate's name is the arm's), each with a label
    feedback (share ``labelled``); round(accuracy * labelled rows) of them are right, spread at
    random over time (the decay check compares the earlier half with the recent one)."""
    rng = np.random.default_rng(seed)
    now = time.time()
    rows, feedback = [], []
    n_labelled = int(round(n * labelled))
    n_right = int(round(accuracy * n_labelled))
    other = np.random.default_rng(seed + 1000)  # its own stream: the outputs keep their draws
    right = set(other.permutation(n_labelled)[:n_right].tolist())
    for i in range(n):
        rid = f"{arm}-{seed}-{i}"
        output = predicted or LABELS[int(rng.integers(len(LABELS)))]
        status = "fallback" if i < failed else "ok"
        rows.append(
            {
                "id": rid,
                "ts": now - (n - i),
                "endpoint": "classify",
                "user": f"u{i}",
                "arm": arm,
                "served_by": "incumbent" if status == "fallback" else arm,
                "candidate": arm,
                "input": inputs[i % len(inputs)] if inputs else f"where is my order {i}",
                "output": output,
                "score": 0.9,
                "out_of_scope": 0,
                "latency_ms": latency_ms,
                "batch_size": 1,
                "status": status,
                "error": "boom" if status == "fallback" else None,
            }
        )
        if i < n_labelled:
            truth = output if i in right else str(other.choice([x for x in LABELS if x != output]))
            feedback.append({"request_id": rid, "kind": "label", "value": truth, "ts": now})
    store.insert_requests(rows)
    store.insert_feedback(feedback)


def _frames(store: Store) -> tuple[pd.DataFrame, pd.DataFrame]:
    return store.requests_frame(), store.feedback_frame()


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'log.db'}")
    yield s
    s.close()


@pytest.fixture(scope="module")
def train() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(400)],
            "input": [f"where is my order {i}" for i in range(400)],
            "label": rng.choice(LABELS, 400),
        }
    )


@pytest.mark.parametrize(
    "candidate_accuracy,expected", [(0.92, "promote"), (0.60, "roll back"), (0.78, "keep testing")]
)
def test_verdict_on_constructed_logs(store, train, candidate_accuracy, expected):
    _log(store, "incumbent", 300, 0.78, seed=1)
    _log(store, "candidate", 300, candidate_accuracy, seed=2)
    report = monitor(*_frames(store), train=train, weights={"incumbent": 0.5, "candidate": 0.5})
    v = report["verdicts"]["candidate"]
    assert report["online_metric"] == "accuracy" and report["incumbent"] == "incumbent"
    assert v["verdict"] == expected, v["reason"]
    assert report["arms"]["candidate"]["online_metric"] == pytest.approx(candidate_accuracy, abs=0.005)
    low, high = report["arms"]["candidate"]["online_ci"]
    assert low < candidate_accuracy < high
    assert report["needs_action"] == (expected != "keep testing")
    if expected == "keep testing":
        assert v["needed_per_arm"] > 300 and v["more_needed"]["candidate"] == v["needed_per_arm"] - 300
        assert v["requests_needed"] == v["more_needed"]["candidate"] / 1.0 / 0.5


def test_too_little_feedback_keeps_testing_and_says_how_much_traffic_is_needed(store, train):
    _log(store, "incumbent", 400, 0.80, labelled=0.1, seed=1)
    _log(store, "candidate", 40, 1.0, labelled=0.25, seed=2)  # 10 labels: a perfect score that proves nothing
    report = monitor(*_frames(store), train=train, weights={"incumbent": 0.9, "candidate": 0.1})
    v = report["verdicts"]["candidate"]
    assert v["verdict"] == "keep testing" and "too little feedback" in v["reason"]
    # feedback on 1 in 4 candidate answers, a tenth of the traffic: requests = more labels / 0.25 / 0.1
    assert v["requests_needed"] == math.ceil(v["more_needed"]["candidate"] / 0.25 / 0.1)
    assert not report["needs_action"]


def test_thumbs_are_the_metric_when_no_label_was_given(store, train):
    now = time.time()
    store.insert_requests(
        [
            {
                "id": f"{arm}{i}",
                "ts": now,
                "endpoint": "chat",
                "arm": arm,
                "served_by": arm,
                "status": "ok",
                "output": "hi",
                "latency_ms": 5.0,
                "input": "hello",
            }
            for arm in ("incumbent", "candidate")
            for i in range(100)
        ]
    )
    store.insert_feedback(
        [
            {"request_id": f"incumbent{i}", "kind": "thumbs", "value": "up" if i < 50 else "down", "ts": now}
            for i in range(100)
        ]
    )
    store.insert_feedback(
        [
            {"request_id": f"candidate{i}", "kind": "thumbs", "value": "up" if i < 80 else "down", "ts": now}
            for i in range(100)
        ]
    )
    report = monitor(*_frames(store), train=train)
    assert report["online_metric"] == "thumbs_up_rate"
    assert report["verdicts"]["candidate"]["verdict"] == "promote"


def test_budgets_and_label_drift_need_action(store, train):
    _log(store, "incumbent", 200, 0.8, seed=1)
    # the candidate is slow, fails 5% of the time, and answers one label only
    _log(store, "candidate", 200, 0.8, seed=2, latency_ms=2500.0, failed=10, predicted="order_status")
    report = monitor(*_frames(store), train=train, config=MonitorConfig(latency_p99_budget_ms=1000))
    measures = {(b["arm"], b["measure"]) for b in report["budgets"]}
    assert ("candidate", "latency_p99_ms") in measures and ("candidate", "error_rate") in measures
    assert ("incumbent", "latency_p99_ms") not in measures
    assert report["arms"]["candidate"]["error_rate"] == pytest.approx(10 / 200)
    # the recent window is mostly the candidate's single label
    assert report["drift"]["predicted_labels"]["level"] == "shift"
    assert report["drift"]["feedback_labels"]["psi"] < report["drift"]["predicted_labels"]["psi"]
    assert report["needs_action"] and any("drift" in a for a in report["actions"])


def test_decay_of_an_arm_over_time_advises_a_retrain(store, train):
    _log(store, "incumbent", 400, 0.80, seed=1)
    # the candidate: 0.90 on its first 200 answers, 0.65 on the next 200 (same inputs, worse answers)
    _log(store, "candidate", 200, 0.90, seed=2)
    requests, feedback = _frames(store)
    later = requests[requests["arm"] == "candidate"].copy()
    later["id"] = later["id"] + "-later"
    later["ts"] = later["ts"] + 1000
    store.insert_requests(later.to_dict("records"))
    ids = later["id"].tolist()
    store.insert_feedback(
        [
            {
                "request_id": rid,
                "kind": "label",
                "value": row_output if k < 130 else next(x for x in LABELS if x != row_output),
                "ts": time.time(),
            }
            for k, (rid, row_output) in enumerate(zip(ids, later["output"]))
        ]
    )
    report = monitor(*_frames(store), train=train, weights={"incumbent": 0.5, "candidate": 0.5})
    decay = report["decay"]["candidate"]
    assert decay["earlier_n"] == decay["recent_n"] == 200
    assert decay["earlier"] == pytest.approx(0.90) and decay["recent"] == pytest.approx(0.65)
    assert decay["decayed"] and decay["p_value"] < 1e-6
    assert not report["decay"]["incumbent"]["decayed"]  # 0.80 throughout, right answers spread at random
    assert any(a.startswith("decay: candidate") for a in report["actions"]) and report["needs_action"]
    retrain = report["retrain"]
    assert retrain["advised"] and any("decay" in w for w in retrain["why"])
    assert retrain["feedback_rows"] == 800  # every labelled answer with its input logged
    # too little feedback to split in halves: not computed, no action
    small = monitor(*_frames(store), train=train, config=MonitorConfig(min_feedback=500))
    assert small["decay"]["candidate"]["status"] == "not computed" and not small["retrain"]["advised"]


def test_embedding_drift_with_the_embedded_encoder(store, train):
    """Recent inputs about cooking against training inputs about orders: the real MiniLM sees it."""
    recipes = [
        "how long should I roast a chicken",
        "best flour for sourdough bread",
        "can I freeze fresh basil",
        "what wine goes with mushroom risotto",
        "how to make crispy roast potatoes",
    ]
    _log(store, "incumbent", 60, 0.8, seed=1, inputs=recipes)
    config = MonitorConfig(drift_reference_rows=200, drift_window=60, drift_permutations=200)
    drifted = monitor(*_frames(store), train=train, config=config, encoder="embedded:minilm-l6")["drift"]["embedding"]
    assert drifted["drifted"] and drifted["p_value"] < 0.01

    other = Store(f"sqlite:///{Path(store.url[len('sqlite:///') :]).parent / 'same.db'}")
    _log(other, "incumbent", 60, 0.8, seed=1, inputs=list(train["input"].sample(60, random_state=0)))
    same = monitor(*_frames(other), train=train, config=config, encoder="embedded:minilm-l6")["drift"]["embedding"]
    other.close()
    assert not same["drifted"], same


def test_monitor_command_exits_3_when_action_is_needed(tmp_path, train):
    import typer
    from typer.testing import CliRunner

    from tunewise.cli.serve import register

    (tmp_path / "tunewise.yaml").write_text("task: classify\ndata:\n  train: data.csv\ntracking: off\n")
    run = tmp_path / "runs" / "r1"
    (run / "split").mkdir(parents=True)
    train.to_parquet(run / "split" / "train.parquet")
    cli = typer.Typer()
    register(cli)
    args = ["monitor", "--config", str(tmp_path / "tunewise.yaml"), "--run-id", "r1", "--no-embedding"]

    from tunewise.monitoring.store import default_store_url

    store = Store(default_store_url(run))
    _log(store, "incumbent", 200, 0.78, seed=1)
    _log(store, "candidate", 20, 0.78, seed=2)
    quiet = CliRunner().invoke(cli, args)
    assert quiet.exit_code == 0, quiet.output
    assert "keep testing" in quiet.output and "no action needed" in quiet.output
    _log(store, "candidate", 300, 0.95, seed=3)
    loud = CliRunner().invoke(cli, [*args, "--json"])
    store.close()
    assert loud.exit_code == ACTION_EXIT_CODE, loud.output
    report = json.loads(loud.output)
    assert report["verdicts"]["candidate"]["verdict"] == "promote" and report["needs_action"]
    assert monitor_run(default_store_url(run), run, encoder=None)["verdicts"]["candidate"]["verdict"] == "promote"

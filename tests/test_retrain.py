"""tunewise retrain: feedback posted to a real server becomes training rows, the pipeline re-runs into a
new run on the same test rows, and the new run must pass the same gate before `tunewise serve` takes it.

The project is 300 demo rows with cheap candidates only (majority is the gate's baseline, tfidf_lr the
candidate), so a whole pipeline run takes seconds."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from tunewise.cli.main import app
from tunewise.pipeline.precheck import load_config
from tunewise.serving.app import ServerThread, create_app
from tunewise.serving.base import ServeConfig, ServeError
from tunewise.serving.retrain import RetrainError, feedback_training_rows, retrain, retrain_gate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SLOW_CHECKS = ("off_topic", "label_errors", "too_long")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The project, its run r1 (whole pipeline), and a log filled by a real server: classify requests
    on another seed's demo texts, with label, thumbs-up and thumbs-down feedback."""
    from tunewise.demo.data import generate_demo
    from tunewise.demo.run import demo_config
    from tunewise.pipeline.runner import run_stages

    folder = tmp_path_factory.mktemp("retrain")
    files = generate_demo(folder, task="classify", n_rows=300, n_test=60)
    raw = demo_config(files, "classify", 0).model_dump(mode="json")
    raw["data"]["test"] = None  # the test comes from the split, so add-labels must freeze it
    raw["curate"].update({name: {"enabled": False} for name in SLOW_CHECKS})
    raw["baseline"]["candidates"] = ["majority", "tfidf_lr"]
    raw["train"]["candidates"] = []
    raw["evaluate"].update(
        baseline="majority",
        robustness_rows=40,
        overfit_train_rows=100,
        n_resamples=300,
        human_sheet_size=0,
        gate_beats_cheap=False,
        ensemble=False,
        forgetting=False,
    )
    raw["tracking"] = "off"
    config_file = folder / "tunewise.yaml"
    config_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(config_file)
    run_stages(cfg, "r1")
    run_dir = folder / "runs" / "r1"

    other = generate_demo(tmp_path_factory.mktemp("traffic"), task="classify", seed=7, n_rows=300, n_test=60)
    traffic = pd.read_csv(other.data).dropna(subset=["text", "intent"])
    labels = set(pd.read_parquet(run_dir / "split" / "train.parquet")["label"].astype(str))
    traffic = traffic[traffic["intent"].astype(str).isin(labels)].head(70).reset_index(drop=True)
    test_text = str(pd.read_parquet(run_dir / "split" / "test.parquet")["input"].iloc[0])

    store_url = f"sqlite:///{folder / 'log.db'}"
    served = create_app(
        run_dir,
        ServeConfig(),
        arms="incumbent:majority=0.5,candidate:tfidf_lr=0.5",
        store_url=store_url,
        project_config=cfg,
    )
    posted = {"label": [], "thumbs_up": [], "thumbs_down": [], "test_copy": None}
    with ServerThread(served) as server, httpx.Client(base_url=server.url, timeout=60) as client:

        def classify(text: str, user: str) -> dict:
            r = client.post("/v1/classify", json={"text": text, "user": user})
            r.raise_for_status()
            return r.json()

        for i, row in traffic.iterrows():
            answer = classify(str(row["text"]), f"u{i}")
            if i < 40:  # the correct label
                body = {"request_id": answer["request_id"], "label": str(row["intent"])}
                posted["label"].append(answer["request_id"])
            elif i < 55:
                body = {"request_id": answer["request_id"], "thumbs": "up"}
                posted["thumbs_up"].append(answer["request_id"])
            elif i < 60:
                body = {"request_id": answer["request_id"], "thumbs": "down"}
                posted["thumbs_down"].append(answer["request_id"])
            else:
                continue  # no feedback
            client.post("/v1/feedback", json=body).raise_for_status()
        # a test question asked live and labelled: it must not reach training
        answer = classify(test_text, "tester")
        client.post(
            "/v1/feedback", json={"request_id": answer["request_id"], "label": "order_status"}
        ).raise_for_status()
        posted["test_copy"] = answer["request_id"]
    return {
        "cfg": cfg,
        "folder": folder,
        "config_file": config_file,
        "run_dir": run_dir,
        "store_url": store_url,
        "posted": posted,
    }


def test_feedback_rows_take_labels_and_confirmed_answers_and_say_why_others_are_skipped():
    requests = pd.DataFrame(
        [
            {"id": "a", "input": "where is my parcel", "output": "refund", "out_of_scope": 0, "status": "ok"},
            {"id": "b", "input": "cancel it please", "output": "cancel_order", "out_of_scope": 0, "status": "ok"},
            {"id": "c", "input": "asdf", "output": "out_of_scope", "out_of_scope": 1, "status": "ok"},
            {"id": "d", "input": None, "output": "refund", "out_of_scope": 0, "status": "ok"},
            {"id": "e", "input": "bad answer", "output": "refund", "out_of_scope": 0, "status": "ok"},
            {"id": "f", "input": "new thing", "output": "refund", "out_of_scope": 0, "status": "ok"},
        ]
    )
    feedback = pd.DataFrame(
        [
            {"request_id": "a", "kind": "thumbs", "value": "down"},
            {"request_id": "a", "kind": "label", "value": "order_status"},  # the label wins over the thumb
            {"request_id": "b", "kind": "thumbs", "value": "up"},
            {"request_id": "b", "kind": "rating", "value": "5"},
            {"request_id": "c", "kind": "thumbs", "value": "up"},
            {"request_id": "d", "kind": "label", "value": "refund"},
            {"request_id": "e", "kind": "thumbs", "value": "down"},
            {"request_id": "f", "kind": "label", "value": "brand_new_label"},
            {"request_id": "zzz", "kind": "label", "value": "refund"},
        ]
    )
    labels = {"order_status", "cancel_order", "refund"}
    rows, skipped = feedback_training_rows(requests, feedback, task="classify", labels=labels)
    assert rows[["request_id", "label", "source"]].values.tolist() == [
        ["a", "order_status", "feedback label"],
        ["b", "cancel_order", "thumbs up"],
    ]
    assert skipped == {
        "thumbs up on an out-of-scope answer": 1,
        "input not logged (serve.store_inputs off)": 1,
        "thumbs down without a label": 1,
        "label outside the run's label set": 1,
        "request not in the window": 1,
    }
    rows, _ = feedback_training_rows(requests, feedback, task="classify", labels=labels, thumbs_up=False)
    assert rows["request_id"].tolist() == ["a"]
    # generation: a thumbs-up makes the served reply a training reply
    rows, _ = feedback_training_rows(requests, feedback, task="generate")
    assert rows.loc[rows["request_id"] == "b", "reply"].tolist() == ["cancel_order"]


def test_retrain_adds_the_feedback_reruns_on_the_same_test_rows_and_passes_the_gate(project):
    posted, cfg = project["posted"], project["cfg"]
    dry = CliRunner().invoke(
        app,
        [
            "retrain",
            "--config",
            str(project["config_file"]),
            "--run-id",
            "r1",
            "--store",
            project["store_url"],
            "--dry-run",
            "--json",
        ],
    )
    assert dry.exit_code == 0, dry.output
    counted = json.loads(dry.output)
    assert not (project["folder"] / "added_labels.jsonl").exists()  # a dry run changes nothing

    result = CliRunner().invoke(
        app,
        [
            "retrain",
            "--config",
            str(project["config_file"]),
            "--run-id",
            "r1",
            "--store",
            project["store_url"],
            "--new-run-id",
            "r2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "gate: PASSED" in result.output
    record = json.loads((project["folder"] / "runs" / "r2" / "retrain" / "retrain.json").read_text())
    assert record["rows"] == counted["rows"]
    # every labelled or thumbed-up request is a row or a counted skip; thumbs-down ones are skips
    considered = len(posted["label"]) + len(posted["thumbs_up"]) + len(posted["thumbs_down"]) + 1
    assert record["rows"] + sum(record["skipped"].values()) == considered
    assert record["skipped"]["thumbs down without a label"] == len(posted["thumbs_down"])
    assert record["skipped"]["near-copy of a test row"] >= 1
    used = pd.read_json(project["folder"] / "runs" / "r2" / "retrain" / "feedback_rows.jsonl", lines=True)
    assert posted["test_copy"] not in set(used["request_id"])
    assert set(used["request_id"]) <= set(posted["label"]) | set(posted["thumbs_up"])
    assert len(used) == record["rows"] > 20

    added = pd.read_json(project["folder"] / "added_labels.jsonl", lines=True)
    assert record["added"]["added"] == len(added) > 0
    assert set(added["text"]) <= set(used["text"])
    old_test = pd.read_parquet(project["run_dir"] / "split" / "test.parquet")["id"]
    new_split = project["folder"] / "runs" / "r2" / "split"
    assert sorted(pd.read_parquet(new_split / "test.parquet")["id"]) == sorted(old_test)  # frozen
    new_train = pd.concat([pd.read_parquet(new_split / f"{p}.parquet") for p in ("train", "validation")])
    assert new_train["id"].astype(str).str.startswith("added-").sum() > 0  # the feedback is in training

    gate = record["gate"]
    assert gate["passed"] and gate["verdict"] in ("FINE_TUNE", "USE_ALTERNATIVE") and gate["same_test_rows"]
    assert gate["against_previous"]["status"] == "computed" and not gate["against_previous"]["worse_beyond_noise"]
    assert retrain_gate(project["folder"] / "runs" / "r2")["passed"]
    create_app(project["folder"] / "runs" / "r2", ServeConfig(), project_config=cfg)  # servable: no error


def test_a_retrained_run_that_fails_the_gate_is_not_served(project, tmp_path):
    raw = yaml.safe_load(project["config_file"].read_text())
    raw["roi"]["value_per_outcome_usd"] = 0.0001  # another gate: the retrained model must pass its predecessor's
    changed = project["folder"] / "changed.yaml"
    changed.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = CliRunner().invoke(
        app,
        ["retrain", "--config", str(changed), "--run-id", "r1", "--store", project["store_url"], "--new-run-id", "r3"],
    )
    assert result.exit_code == 3, result.output
    assert "gate: FAILED" in result.output
    gate = retrain_gate(project["folder"] / "runs" / "r3")
    assert not gate["passed"]
    assert any("roi" in r and "gate changed" in r for r in gate["reasons"])
    with pytest.raises(ServeError, match="failed the gate"):
        create_app(project["folder"] / "runs" / "r3", ServeConfig())
    create_app(project["folder"] / "runs" / "r3", ServeConfig(), allow_failed_gate=True)
    served = CliRunner().invoke(app, ["serve", "--config", str(changed), "--run-id", "r3", "--port", "0"])
    assert served.exit_code != 0 and "failed the gate" in " ".join(served.output.split())


def test_retrain_without_usable_feedback_is_a_clear_error(project, tmp_path):
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    from tunewise.monitoring.store import Store

    Store(empty).close()
    with pytest.raises(RetrainError, match=r"0 labelled feedback row\(s\)"):
        retrain(project["cfg"], run_id="r1", store_url=empty, new_run_id="r4")
    assert not (project["folder"] / "runs" / "r4").exists()
    with pytest.raises(RetrainError, match="no split test set"):
        retrain(project["cfg"], run_id="nope", store_url=empty)
    with pytest.raises(RetrainError, match="--since"):
        retrain(project["cfg"], run_id="r1", store_url=empty, since="yesterday-ish")
    result = CliRunner().invoke(
        app,
        [
            "retrain",
            "--config",
            str(project["config_file"]),
            "--run-id",
            "r1",
            "--store",
            project["store_url"],
            "--min-rows",
            "100000",
        ],
    )
    assert result.exit_code != 0 and "--min-rows 100000" in " ".join(result.output.split())


def test_the_regression_check_pairs_rows_for_labels_and_for_replies(tmp_path):
    from tunewise.core.artifacts import write_parquet
    from tunewise.serving.retrain import _paired_regression

    old, new = tmp_path / "old", tmp_path / "new"
    ids = [f"t{i}" for i in range(200)]
    # classify: the new model gets 40 rows wrong that the old got right, and fixes 5
    write_parquet(
        old / "evaluate" / "per_example" / "a.parquet",
        pd.DataFrame({"id": ids, "correct": [True] * 180 + [False] * 20}),
    )
    write_parquet(
        new / "evaluate" / "per_example" / "b.parquet",
        pd.DataFrame({"id": ids, "correct": [False] * 40 + [True] * 140 + [True] * 5 + [False] * 15}),
    )
    worse = _paired_regression(old, "a", new, "b")
    assert worse["measure"] == "accuracy" and worse["rows"] == 200 and worse["worse_beyond_noise"]
    assert worse["previous_value"] == pytest.approx(0.9) and worse["new_value"] == pytest.approx(0.725)
    better = _paired_regression(new, "b", old, "a")
    assert not better["worse_beyond_noise"]
    # generate: per-row chrF, the new replies 8 points lower on every row
    rng = np.random.default_rng(0)
    chrf = rng.uniform(30, 70, 200)
    write_parquet(old / "evaluate" / "per_example" / "g.parquet", pd.DataFrame({"id": ids, "chrf": chrf}))
    write_parquet(new / "evaluate" / "per_example" / "h.parquet", pd.DataFrame({"id": ids, "chrf": chrf - 8}))
    replies = _paired_regression(old, "g", new, "h")
    assert replies["measure"] == "chrf" and replies["test"] == "paired_permutation" and replies["worse_beyond_noise"]
    same = _paired_regression(old, "g", old, "g")
    assert same["p_value"] == 1.0 and not same["worse_beyond_noise"]
    assert _paired_regression(old, "a", new, "missing")["status"] == "not computed"

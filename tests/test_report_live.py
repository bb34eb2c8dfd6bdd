"""The report's "Live traffic" section: a real SQLite request log (rows as ``tunewise serve`` writes
them) next to a copy of the shared demo run, the page opened in headless chromium, and the
``tunewise report --live`` command.

The log is built row by row (no server), so every number on the page can be counted from the rows:
an incumbent arm (tfidf_lr) right on 60% of its labelled answers and a candidate arm (encoder_ft)
right on 92%, so the monitor's verdict is "promote"; the candidate also fails 5 of its requests,
over the 1% error budget.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from test_report import (
    assert_renders_cleanly,
    assert_self_contained,
    copy_run,
    decision_fixture,
    open_in_browser,
    run_report_stage,
)
from tunewise.monitoring.store import Store
from tunewise.reporting.report import ReportError, build_report

ARMS = {"incumbent": "tfidf_lr", "candidate": "encoder_ft"}
N_REQUESTS = {"incumbent": 100, "candidate": 120}
N_RIGHT = {"incumbent": 54, "candidate": 101}  # of the labelled answers: 54/90 = 60%, 101/110 = 92%
N_LABELLED = {"incumbent": 90, "candidate": 110}
N_FAILED = {"incumbent": 0, "candidate": 5}  # 4 fallbacks (answered by the incumbent) and 1 error
SPAN_S = 3 * 3600  # requests spread over the last three hours


@pytest.fixture(scope="module")
def pipeline_run(demo_pipeline_run):
    return demo_pipeline_run


def fill_log(db: Path, run_dir: Path) -> dict:
    """Write the constructed log into a new SQLite file; return the rows for the expected counts."""
    labels = sorted(pd.read_parquet(run_dir / "split" / "train.parquet")["label"].astype(str).unique())
    store = Store(f"sqlite:///{db}")
    try:
        store.init_arms({arm: (candidate, 0.5) for arm, candidate in ARMS.items()}, reset=True)
        store.set_weights({"incumbent": 0.2, "candidate": 0.8}, reason="promote candidate to 0.8")
        now = time.time()
        rows, feedback = [], []
        for arm, n in N_REQUESTS.items():
            for i in range(n):
                rid = f"{arm}-{i}"
                output = labels[i % len(labels)]  # the training labels in turn: no drift in the outputs
                status = "ok"
                if i < N_FAILED[arm]:
                    status = "error" if i == 0 else "fallback"
                rows.append(
                    {
                        "id": rid,
                        "ts": now - SPAN_S + i * (SPAN_S / n),
                        "endpoint": "classify",
                        "user": f"u{i}",
                        "arm": arm,
                        "served_by": "incumbent" if status == "fallback" else arm,
                        "candidate": ARMS[arm],
                        "input": f"where is my order {i}",
                        "output": output,
                        "score": 0.9,
                        "out_of_scope": 0,
                        "latency_ms": 30.0 + i % 7,
                        "batch_size": 1,
                        "status": status,
                        "error": None if status == "ok" else "model failed",
                    }
                )
            ok = [r for r in rows if r["arm"] == arm and r["status"] == "ok"]
            # right answers spread over the three hours: no decay between the earlier and recent halves
            right = set(np.random.default_rng(len(arm)).permutation(N_LABELLED[arm])[: N_RIGHT[arm]].tolist())
            for j, row in enumerate(ok[: N_LABELLED[arm]]):
                # a wrong answer's truth is the next label: the feedback labels stay spread like the outputs
                wrong = labels[(labels.index(row["output"]) + 1) % len(labels)]
                truth = row["output"] if j in right else wrong
                feedback.append({"request_id": row["id"], "kind": "label", "value": truth, "ts": now})
        store.insert_requests(rows)
        assert all(store.insert_feedback(feedback))
    finally:
        store.close()
    return {"requests": rows, "feedback": feedback}


def expected_per_arm(log: dict) -> dict:
    """Counted from the inserted rows: requests assigned, failed (fallback or error), label feedback on the
    arm's own answers and the share of them that were right."""
    truth = {f["request_id"]: f["value"] for f in log["feedback"]}
    out = {}
    for arm in ARMS:
        assigned = [r for r in log["requests"] if r["arm"] == arm]
        answered = [r for r in log["requests"] if r["served_by"] == arm and r["status"] != "error"]
        labelled = [r for r in answered if r["id"] in truth]
        right = sum(r["output"] == truth[r["id"]] for r in labelled)
        out[arm] = {
            "requests": len(assigned),
            "answered": len(answered),
            "errors": sum(r["status"] in ("fallback", "error") for r in assigned),
            "feedback_n": len(labelled),
            "right": right,
        }
    return out


def test_live_section_numbers_page_and_browser(pipeline_run, tmp_path):
    from statsmodels.stats.proportion import proportion_confint

    cfg, run_dir = copy_run(pipeline_run, tmp_path, decision_fixture("FINE_TUNE"))
    run_report_stage(cfg, run_dir)  # the stage as before: no live key, no live.json
    plain = json.loads((run_dir / "report" / "summary.json").read_text())
    assert "live" not in plain and not (run_dir / "report" / "live.json").exists()
    assert 'id="live"' not in (run_dir / "report" / "index.html").read_text()

    db = tmp_path / "requests.db"
    log = fill_log(db, run_dir)
    written = build_report(run_dir, live=str(db))
    summary = json.loads(written["summary"].read_text())
    # the keys outside checks read are as they were without --live
    assert {k: v for k, v in summary.items() if k not in ("live", "timings_s")} == {
        k: v for k, v in plain.items() if k != "timings_s"
    }

    live = summary["live"]
    assert live["store"] == f"sqlite:///{db.resolve()}" and live["metric"] == "accuracy"
    assert live["window"]["requests"] == len(log["requests"]) == 220
    assert live["incumbent"] == "incumbent" and set(live["arms"]) == set(ARMS)
    evaluation = {c["name"]: c for c in json.loads((run_dir / "evaluate" / "summary.json").read_text())["candidates"]}
    for arm, want in expected_per_arm(log).items():
        got = live["arms"][arm]
        assert got["candidate"] == ARMS[arm]
        assert (got["requests"], got["answered"], got["errors"], got["feedback_n"]) == (
            want["requests"],
            want["answered"],
            want["errors"],
            want["feedback_n"],
        ), arm
        assert got["error_rate"] == pytest.approx(want["errors"] / want["requests"])
        assert got["online_metric"] == pytest.approx(want["right"] / want["feedback_n"])
        low, high = proportion_confint(want["right"], want["feedback_n"], alpha=0.05, method="wilson")
        assert got["online_ci"] == pytest.approx([low, high], abs=1e-9)
        assert got["offline_metric"] == evaluation[ARMS[arm]]["metrics"]["accuracy"]
    # 4 fallbacks answered by the incumbent: its answers outnumber its own requests
    assert live["arms"]["incumbent"]["answered"] == 104
    assert live["arms"]["incumbent"]["verdict"] is None
    assert live["arms"]["candidate"]["verdict"] == "promote"
    assert live["needs_action"] is True
    assert any(a.startswith("promote candidate:") for a in live["actions"])
    assert any(a.startswith("candidate: error_rate") for a in live["actions"])
    assert not any(a.startswith("drift: predicted labels") for a in live["actions"])

    full = json.loads(written["live"].read_text())  # the whole monitor report
    assert full["window"]["requests"] == 220 and set(full["verdicts"]) == {"candidate"}
    assert [h["reason"] for h in full["arm_history"]] == ["reset at start", "promote candidate to 0.8"]
    assert full["drift"]["embedding"]["status"] == "not computed"

    page = written["html"]
    html = page.read_text()
    assert_self_contained(html)
    # right after the verdict block, before the data quality section
    assert html.index('id="verdict"') < html.index('id="live"') < html.index('id="quality"')
    section = html[html.index('id="live"') : html.index('id="quality"')]
    for chart in ("live-metric-chart", "live-traffic-chart"):
        svg = re.search(rf'id="{chart}"><svg.*?</svg>', section, re.DOTALL)
        assert svg and svg.group(0).count("<path") > 10, chart
    assert "Needs action (2)" in section and "promote candidate to 0.8" in section
    assert section.count("stable") == 2  # predicted and feedback labels against the training labels
    assert "too slow for a page build" in section

    seen = open_in_browser(page, tmp_path)
    assert_renders_cleanly(seen, n_charts=4 + 2)  # the page's four and the two live charts
    text = seen["phone"]["text"]
    assert "Live traffic" in text and "220" in text and "promote" in text
    table = text[text.index("Per arm") : text.index("Verdicts against")]
    assert "encoder_ft" in table and "tfidf_lr" in table
    assert "0.918" in table  # 101/110, three significant digits


def test_empty_log_missing_file_and_unreadable_store(pipeline_run, tmp_path):
    cfg, run_dir = copy_run(pipeline_run, tmp_path, decision_fixture("FINE_TUNE"))
    run_report_stage(cfg, run_dir)
    empty = tmp_path / "empty.db"
    Store(f"sqlite:///{empty}").close()  # the tables, no rows
    written = build_report(run_dir, live=str(empty))
    live = json.loads(written["summary"].read_text())["live"]
    assert live["window"]["requests"] == 0 and live["arms"] == {} and live["actions"] == []
    assert live["needs_action"] is False
    html = written["html"].read_text()
    assert "No requests in the window" in html
    assert html.count("<svg") == 4 and "live-metric-chart" not in html  # no empty charts

    missing = tmp_path / "nowhere" / "requests.db"
    with pytest.raises(ReportError, match=re.escape(str(missing))):
        build_report(run_dir, live=str(missing))
    assert not missing.exists()  # not created as an empty log
    with pytest.raises(ReportError, match="no such file"):
        build_report(run_dir, live=f"sqlite:///{missing}")
    junk = tmp_path / "junk.db"
    junk.write_text("not a database\n" * 200)
    with pytest.raises(ReportError, match=re.escape(str(junk))):
        build_report(run_dir, live=str(junk))
    with pytest.raises(ReportError, match="--since 'yesterday'"):
        build_report(run_dir, live=str(empty), live_since="yesterday")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver is not installed")
    with pytest.raises(ReportError) as refused:  # nothing listens on port 1
        build_report(run_dir, live="postgresql+psycopg://bob:s3cret@127.0.0.1:1/log")
    assert "bob:***@127.0.0.1:1/log" in str(refused.value) and "s3cret" not in str(refused.value)
    # a failed --live leaves the page of the last good build
    assert "No requests in the window" in (run_dir / "report" / "index.html").read_text()


def test_report_command_with_live(pipeline_run, tmp_path):
    """``tunewise report --live`` on a project folder: the report stage (and decide before it) through the
    runner, then the page rebuilt with the live section."""
    from typer.testing import CliRunner

    from tunewise.cli.main import app
    from tunewise.pipeline.precheck import load_config
    from tunewise.pipeline.runner import _stage_key, load_stages

    cfg, run_dir = copy_run(pipeline_run, tmp_path, decision=None)
    project = run_dir.parents[1]
    config_file = project / "tunewise.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    moved = load_config(config_file)
    # The cache key holds the data files' absolute paths, which the copy changed: re-key the copied
    # stages (same inputs, same outputs) so the runner reuses them instead of training again.
    keys: dict[str, str] = {}
    for name, spec in load_stages().items():
        keys[name] = _stage_key(spec, moved, keys)
        marker_file = run_dir / name / "_stage.json"
        if marker_file.exists():
            marker = json.loads(marker_file.read_text())
            marker_file.write_text(json.dumps({**marker, "key": keys[name]}))
    db = tmp_path / "requests.db"
    fill_log(db, run_dir)
    base = ["report", "--config", str(config_file), "--run-id", "r1"]
    wide = {"COLUMNS": "1000"}  # rich wraps at 80 columns otherwise

    bad = CliRunner().invoke(app, env=wide, args=[*base, "--live", str(tmp_path / "missing.db")])
    assert bad.exit_code == 1 and "missing.db: no such file" in bad.output
    assert not (run_dir / "report").exists()  # failed before the stage ran

    started = time.perf_counter()
    result = CliRunner().invoke(app, env=wide, args=[*base, "--live", str(db), "--since", "24h"])
    assert result.exit_code == 0, result.output
    assert time.perf_counter() - started < 120
    assert "evaluate: up to date" in result.output  # nothing upstream re-ran
    assert "live: 220 request(s)" in result.output and "promote candidate:" in result.output
    page = run_dir / "report" / "index.html"
    assert f"report: {page}" in result.output
    assert 'id="live"' in page.read_text()
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert summary["live"]["arms"]["candidate"]["verdict"] == "promote"
    assert summary["live"]["window"]["since"] == pytest.approx(time.time() - 86400, abs=120)
    assert summary["decision"]["verdict"] in (
        "FINE_TUNE",
        "USE_ALTERNATIVE",
        "NOT_YET",
        "INCONCLUSIVE",
    )  # decide ran through the runner

    as_json = CliRunner().invoke(app, env=wide, args=[*base, "--live", str(db), "--json"])
    assert as_json.exit_code == 0, as_json.output
    record = json.loads(as_json.output.strip().splitlines()[-1])
    assert record["page"] == str(page) and record["live"]["needs_action"] is True
    assert set(record["stages"]) >= {"evaluate", "decide", "report"}

    plain = CliRunner().invoke(app, env=wide, args=base)  # without --live: the stage alone, as before
    assert plain.exit_code == 0, plain.output
    assert "live" not in json.loads((run_dir / "report" / "summary.json").read_text())
    assert not (run_dir / "report" / "live.json").exists()
    shutil.rmtree(run_dir / "report")

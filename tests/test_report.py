"""The report stage on a real run: the pipeline (ingest to evaluate) on small demo data with cheap
candidates and a 12-step encoder fine-tune, then the page opened in headless chromium.

The decide stage is not run here: its decision.json is a fixture in the schema decide writes, so
these tests also hold when decide is absent, and a test covers the page without any decide folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tunewise.pipeline.runner import StageContext, StageError, load_stages

EVIL = "<script>alert('x')</script>"


@pytest.fixture(scope="module")
def pipeline_run(demo_pipeline_run):
    return demo_pipeline_run


def decision_fixture(verdict: str = "FINE_TUNE", candidate: str = "encoder_ft") -> dict:
    """decide/decision.json in the schema the decide stage writes."""
    cost, net = 123.4, 940.0
    return {
        "roi": {
            "one_time_cost_usd": cost,
            "one_time_cost_lines": [
                {
                    "item": "training compute",
                    "usd": 1.2,
                    "source": "reference GPU price table",
                    "arithmetic": "4 x 134.5M params x 2.1M tokens / (70 TFLOP/s x 0.4) = 0.03 GPU-h x $1.006",
                },
                {
                    "item": "engineering",
                    "usd": 122.2,
                    "arithmetic": "0.15 days x $800",
                    "source": "roi.engineer_usd_per_day",
                },
            ],
            "monthly_running_cost_usd": {"candidate": 10.0, "baseline": 50.0},
            "monthly_benefit_usd": 900.0,
            "monthly_benefit_ci95": [300.0, 1500.0],
            "monthly_net_usd": net,
            "payback_months": 0.13,
            "payback_months_ci95": [0.08, 0.4],
            "roi_12m": 90.4,
            "break_even_gain": 0.01,
            "horizon_months": 12,
            "cumulative": [
                {"month": m, "net_usd": -cost + net * m, "low": -cost + 300 * m, "high": -cost + 1500 * m}
                for m in range(13)
            ],
            "sensitivity": [
                {
                    "assumption": "value_per_outcome_usd",
                    "base": 5.0,
                    "low": 3.75,
                    "high": 6.25,
                    "payback_low": 0.2,
                    "payback_high": 0.1,
                    "swing_months": 0.1,
                },
                {
                    "assumption": "monthly_volume",
                    "base": 10000,
                    "low": 5000,
                    "high": 20000,
                    "payback_low": 0.3,
                    "payback_high": 0.07,
                    "swing_months": 0.23,
                },
            ],
            "assumptions": {"monthly_volume": 10000, "value_per_outcome_usd": 5.0},
            "missing": [],
        },
        "decision": {
            "verdict": verdict,
            "recommended": candidate,
            "candidate": candidate,
            "reasons": [f"{candidate} pays back its $123 one-time cost in 0.13 months (interval 0.08 to 0.4)"],
        },
    }


def copy_run(pipeline_run, tmp_path: Path, decision: dict | None) -> tuple[object, Path]:
    """A copy of the run in a project folder of its own (the data files beside it, as in the original),
    without what other test modules add to the shared run (decide/, curve/)."""
    cfg, run_dir = pipeline_run
    project = tmp_path / "project"
    for name in (cfg.data.train, cfg.data.test):
        project.mkdir(parents=True, exist_ok=True)
        shutil.copy(cfg.resolve(name), project / name)
    if cfg.data.knowledge_base:  # the config is checked on load: its knowledge-base folder must exist
        shutil.copytree(cfg.resolve(cfg.data.knowledge_base), project / cfg.data.knowledge_base)
    copy = project / "runs" / "r1"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("report", "decide", "curve", "_checkpoints"))
    if decision is not None:
        (copy / "decide").mkdir()
        (copy / "decide" / "decision.json").write_text(json.dumps(decision))
    return cfg, copy


def run_report_stage(cfg, run_dir: Path) -> dict:
    """The registered report stage, called as the runner calls it (not through run_stages: once decide
    is registered the runner would run it first and replace the fixture)."""
    spec = load_stages()["report"]
    assert set(spec.reads) == {"evaluate", "decide"}
    return spec.fn(StageContext(cfg, run_dir, "report"))


def open_in_browser(page: Path, shots: Path) -> dict:
    """Load the page in headless chromium at a desktop and a phone size; what the tests check."""
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (apt-get install chromium); the browser check needs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    seen: dict = {}
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"))
        try:
            for name, width, height in (("desktop", 1280, 900), ("phone", 390, 844)):
                tab = browser.new_page(viewport={"width": width, "height": height})
                errors: list[str] = []
                requests: list[str] = []
                tab.on("console", lambda m, errors=errors: errors.append(m.text) if m.type == "error" else None)
                tab.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
                tab.on("request", lambda r, requests=requests: requests.append(r.url))
                tab.goto(page.as_uri())
                tab.wait_for_load_state("load")
                charts = tab.evaluate("""Array.from(document.querySelectorAll('svg, img')).map(e => {
                    const r = e.getBoundingClientRect(); return [r.width, r.height]; })""")
                shot = shots / f"report-{name}.png"
                tab.screenshot(path=str(shot), full_page=True)
                seen[name] = {
                    "errors": errors,
                    "outside": [u for u in requests if not u.startswith(("file:", "data:"))],
                    "charts": charts,
                    "scroll_width": tab.evaluate("document.documentElement.scrollWidth"),
                    "width": width,
                    "verdict": tab.inner_text("#verdict"),
                    "shot": shot,
                    "text": tab.inner_text("body"),
                }
                tab.close()
        finally:
            browser.close()
    return seen


def assert_renders_cleanly(seen: dict, n_charts: int) -> None:
    for name, view in seen.items():
        assert view["errors"] == [], (name, view["errors"])
        assert view["outside"] == [], f"{name}: the page fetched {view['outside']}"
        assert len(view["charts"]) == n_charts, (name, view["charts"])
        assert all(w > 50 and h > 50 for w, h in view["charts"]), (name, view["charts"])
        # the page never scrolls sideways: wide tables scroll inside their own box
        assert view["scroll_width"] <= view["width"] + 4, (name, view["scroll_width"])
        assert view["shot"].stat().st_size > 10_000
    phone_charts = seen["phone"]["charts"]
    assert all(w <= 390 for w, _ in phone_charts), phone_charts


def assert_self_contained(html: str) -> None:
    lowered = html.lower()
    for needle in ("<script", "<link", "@import", "url(http", 'src="http', "src='http", 'href="http', "<iframe"):
        assert needle not in lowered, needle
    assert "<img" not in lowered or "data:image" in lowered


# ---------------------------------------------------------------------------------------------


def test_report_with_a_decision_in_a_real_browser(pipeline_run, tmp_path):
    cfg, run_dir = copy_run(pipeline_run, tmp_path, decision_fixture("FINE_TUNE"))
    # user text that must come out escaped: a curation example and a test input
    curate = json.loads((run_dir / "curate" / "summary.json").read_text())
    kind = next(iter(curate["examples"]))
    curate["examples"][kind][0]["input"] = EVIL
    (run_dir / "curate" / "summary.json").write_text(json.dumps(curate))
    worst = json.loads((run_dir / "evaluate" / "worst_examples.json").read_text())
    next(iter(worst.values()))[0]["input"] = EVIL
    (run_dir / "evaluate" / "worst_examples.json").write_text(json.dumps(worst))

    metrics = run_report_stage(cfg, run_dir)
    assert metrics["verdict"] == "FINE_TUNE" and metrics["recommended"] == "encoder_ft"
    page = run_dir / "report" / "index.html"
    html = page.read_text()
    assert_self_contained(html)
    assert EVIL not in html and "&lt;script&gt;alert(" in html
    # every section is there, with figures from the artifacts
    evaluation = json.loads((run_dir / "evaluate" / "summary.json").read_text())
    for section in (
        "verdict",
        "quality",
        "candidates",
        "curves",
        "errors",
        "slices",
        "robustness",
        "forgetting",
        "cost",
        "reproducibility",
    ):
        assert f'id="{section}"' in html, section
    for candidate in evaluation["candidates"]:
        assert candidate["name"] in html
    for name in ("support.csv", "support_test.csv"):
        digest = hashlib.sha256((run_dir.parents[1] / name).read_bytes()).hexdigest()
        assert digest in html, name
    assert "value_per_outcome_usd" in html and "training compute" in html  # sensitivity and cost lines

    seen = open_in_browser(page, tmp_path)
    # candidates, encoder_ft's loss and validation metric, payback
    assert_renders_cleanly(seen, n_charts=4)
    desktop = seen["desktop"]
    assert desktop["verdict"].splitlines()[0].strip() == "Fine-tune (FINE_TUNE)"
    assert "Because encoder_ft pays back" in desktop["verdict"]  # the deciding reason under the verdict
    assert "$123" in desktop["verdict"] and "0.13 months" in desktop["verdict"]
    relative = evaluation["comparison"]["relative_improvement"]
    assert f"{relative * 100:+.0f}%" in desktop["verdict"] or f"{relative * 100:+.1f}%" in desktop["verdict"]
    assert "Top confusions" in desktop["text"] and "Sensitivity" in desktop["text"]


def test_summary_json_has_the_designed_shape(pipeline_run, tmp_path):
    cfg, run_dir = copy_run(pipeline_run, tmp_path, decision_fixture("FINE_TUNE"))
    run_report_stage(cfg, run_dir)
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    evaluation = json.loads((run_dir / "evaluate" / "summary.json").read_text())
    assert summary["task"] == "classify" and summary["primary_metric"] == "accuracy"
    assert [c["name"] for c in summary["candidates"]] == [c["name"] for c in evaluation["candidates"]]
    assert {c["name"] for c in summary["candidates"]} == {"majority", "tfidf_lr", "encoder_ft"}
    for entry in summary["candidates"]:
        assert set(entry) >= {"name", "kind", "metrics", "ci95", "n_eval"}
        assert entry["kind"] in ("baseline", "cheap", "finetuned") and entry["n_eval"] == 60
        low, high = entry["ci95"]["accuracy"]
        assert low <= entry["metrics"]["accuracy"] <= high
    comparison = summary["comparison"]
    assert set(comparison) >= {"candidate", "baseline", "relative_improvement", "ci95", "p_value", "threshold"}
    # the configured majority baseline is within noise of chance: the reference is tfidf_lr
    assert comparison["candidate"] == "encoder_ft" and comparison["baseline"] == "tfidf_lr"
    assert summary["roi"] == {
        **summary["roi"],
        "one_time_cost_usd": 123.4,
        "monthly_benefit_usd": 900.0,
        "payback_months": 0.13,
    }
    assert summary["decision"]["verdict"] == "FINE_TUNE" and summary["decision"]["recommended"] == "encoder_ft"
    assert summary["decision"]["reasons"]
    for stage in ("ingest", "curate", "split", "baseline", "train", "evaluate"):
        marker = json.loads((run_dir / stage / "_stage.json").read_text())
        assert summary["timings_s"][stage] == marker["seconds"]


def test_page_without_a_decide_stage_shows_the_quality_comparison(pipeline_run, tmp_path):
    cfg, run_dir = copy_run(pipeline_run, tmp_path, decision=None)
    # a project that has not given its business numbers yet
    config = json.loads((run_dir / "config.json").read_text())
    config["roi"].update(monthly_volume=None, value_per_outcome_usd=None)
    (run_dir / "config.json").write_text(json.dumps(config))
    run_report_stage(cfg, run_dir)
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert summary["decision"]["verdict"] is None and summary["decision"]["decided"] is False
    assert summary["decision"]["reasons"] == ["no decision yet: run `tunewise decide`"]
    assert summary["roi"]["payback_months"] is None and summary["comparison"]["candidate"] == "encoder_ft"
    html = (run_dir / "report" / "index.html").read_text()
    assert_self_contained(html)
    # the page names what decide will need
    assert "roi.monthly_volume" in html and "roi.value_per_outcome_usd" in html

    seen = open_in_browser(run_dir / "report" / "index.html", tmp_path)
    assert_renders_cleanly(seen, n_charts=3)  # no payback chart without decide
    verdict = seen["desktop"]["verdict"]
    assert "No decision yet: run tunewise decide" in verdict and "Quality gate" in verdict
    assert "Needed for a verdict" in verdict
    assert "Candidates" in seen["phone"]["text"] and "tfidf_lr" in seen["phone"]["text"]


def test_no_go_with_missing_numbers_says_what_is_needed(pipeline_run, tmp_path):
    decision = decision_fixture("NOT_YET", candidate="encoder_ft")
    decision["roi"].update(
        monthly_benefit_usd=None,
        monthly_benefit_ci95=None,
        monthly_net_usd=None,
        payback_months=None,
        payback_months_ci95=None,
        roi_12m=None,
        cumulative=[],
        sensitivity=[],
        missing=["value_per_outcome_usd"],
    )
    decision["decision"].update(
        recommended="tfidf_lr", reasons=["no value per outcome given (roi.value_per_outcome_usd)"]
    )
    cfg, run_dir = copy_run(pipeline_run, tmp_path, decision)
    run_report_stage(cfg, run_dir)
    html = (run_dir / "report" / "index.html").read_text()
    assert 'data-verdict="NOT_YET"' in html and "Not yet" in html
    assert "Needed for a verdict:</strong> roi.value_per_outcome_usd" in html
    assert "no value per outcome given" in html
    assert html.count("<svg") == 3  # nothing to chart for payback
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert summary["roi"]["payback_months"] is None and summary["roi"]["missing"] == ["roi.value_per_outcome_usd"]
    assert summary["decision"]["recommended"] == "tfidf_lr"


def test_report_after_the_real_decide_stage(pipeline_run, tmp_path):
    """The page and summary built on what decide actually writes, not only on the fixture."""
    stages = load_stages()
    if "decide" not in stages:
        pytest.skip("the decide stage is not in this tree yet")
    cfg, run_dir = copy_run(pipeline_run, tmp_path, decision=None)
    cfg = cfg.model_copy(deep=True)
    cfg.roi.monthly_volume, cfg.roi.value_per_outcome_usd = 20000, 1.5
    (run_dir / "decide").mkdir()
    stages["decide"].fn(StageContext(cfg, run_dir, "decide"))
    decided = json.loads((run_dir / "decide" / "decision.json").read_text())
    run_report_stage(cfg, run_dir)
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert summary["decision"]["verdict"] == decided["decision"]["verdict"]
    assert summary["decision"]["recommended"] == decided["decision"]["recommended"]
    assert summary["decision"]["reasons"] == decided["decision"]["reasons"]
    for key in ("one_time_cost_usd", "monthly_benefit_usd", "payback_months"):
        assert summary["roi"][key] == decided["roi"][key], key
    html = (run_dir / "report" / "index.html").read_text()
    word = {
        "FINE_TUNE": "Fine-tune",
        "USE_ALTERNATIVE": "Use an alternative",
        "NOT_YET": "Not yet",
        "INCONCLUSIVE": "Inconclusive",
    }[decided["decision"]["verdict"]]
    assert f'data-verdict="{decided["decision"]["verdict"]}">{word} <span' in html
    assert html.count(decided["decision"]["reasons"][0].split(":")[0]) >= 1
    assert "No decision yet" not in html


def test_generate_run_lists_the_worst_generations(tmp_path, one_torch_thread):
    """A generate run folder holding only evaluate's output (no curate, train, decide): the page still builds."""
    import pandas as pd

    from tunewise.candidates.registry import make_candidate
    from tunewise.core.artifacts import write_json
    from tunewise.demo.data import generate_demo
    from tunewise.evaluation.evaluate import EvaluateConfig, evaluate_candidates
    from tunewise.evaluation.predictions import CandidatePredictions
    from tunewise.reporting.report import build_report

    files = generate_demo(tmp_path / "data", task="generate", n_rows=200, n_test=30)
    raw, test_raw = pd.read_csv(files.data, dtype=str).fillna(""), pd.read_csv(files.test, dtype=str).fillna("")

    def records(frame):
        out = pd.DataFrame(
            {"id": frame["id"], "input": frame["text"], "target": frame["reply"], "channel": frame["channel"]}
        )
        return out[(out["input"].str.strip() != "") & (out["target"].str.strip() != "")].reset_index(drop=True)

    train, test = records(raw), records(test_raw)
    candidates = [
        CandidatePredictions("nn_reply", "cheap", make_candidate("nn_reply").fit(train).predict(test)),
        CandidatePredictions(
            "nn_reply_small", "baseline", make_candidate("nn_reply").fit(train.head(30)).predict(test)
        ),
    ]
    result = evaluate_candidates(
        test,
        candidates,
        task="generate",
        seed=0,
        slice_columns=["channel"],
        config=EvaluateConfig(baseline="nn_reply_small", n_resamples=200, min_slice_rows=5, embedding_similarity=False),
    )
    run_dir = tmp_path / "runs" / "g1"
    result.write(run_dir / "evaluate")
    write_json(run_dir / "config.json", {"task": "generate", "seed": 0, "data": {"train": "data/support.csv"}})
    build_report(run_dir)
    html = (run_dir / "report" / "index.html").read_text()
    assert_self_contained(html)
    assert "Worst generations" in html and "lowest chrf" in html
    worst = json.loads((run_dir / "evaluate" / "worst_examples.json").read_text())
    first = worst["nn_reply"]["lowest_chrf"][0]
    from markupsafe import escape

    assert str(escape(first["prediction"][:60])) in html
    assert "No curation output" in html and "No fine-tuned candidate in this run" in html
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert summary["primary_metric"] == "chrf" and summary["comparison"]["candidate"] == "nn_reply"
    assert summary["decision"]["verdict"] is None


def test_report_without_an_evaluation_names_the_stage_to_run(tmp_path):
    from tunewise.config.sections import config_from_dict

    cfg = config_from_dict({"data": {"train": "data.csv"}, "tracking": "off"}, tmp_path)
    (tmp_path / "runs" / "r").mkdir(parents=True)
    with pytest.raises(StageError, match="run `tunewise evaluate` first"):
        run_report_stage(cfg, tmp_path / "runs" / "r")


def test_the_page_shows_the_learning_curve_when_there_is_one(pipeline_run, tmp_path):
    import pandas as pd

    from tunewise.core.artifacts import write_json
    from tunewise.decision.curve import candidate_factory, learning_curve

    cfg, run_dir = copy_run(pipeline_run, tmp_path, decision_fixture("FINE_TUNE"))
    shutil.rmtree(run_dir / "curve", ignore_errors=True)
    run_report_stage(cfg, run_dir)
    assert "No learning curve yet" in (run_dir / "report" / "index.html").read_text()
    frames = {n: pd.read_parquet(run_dir / "split" / f"{n}.parquet") for n in ("train", "validation", "test")}
    curve = learning_curve(
        frames["train"],
        frames["validation"],
        frames["test"],
        candidates=["tfidf_lr"],
        factory=candidate_factory(cfg),
        fractions=[0.25, 0.5, 0.75, 1.0],
        target=0.99,
        n_resamples=50,
    )
    write_json(run_dir / "curve" / "curve.json", curve)
    run_report_stage(cfg, run_dir)
    page = (run_dir / "report" / "index.html").read_text()
    section = page[page.index('id="more-data"') : page.index('id="cost"')]
    assert "<svg" in section and "levels off at" in section and "tfidf_lr" in section
    assert curve["candidates"]["tfidf_lr"]["target"]["message"].split(":")[0] in section

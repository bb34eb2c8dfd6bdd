"""The stage runner on real files: caching by key, re-running on change, resuming after a kill."""

from __future__ import annotations

import json
import os

import pytest

from tunewise.core.artifacts import atomic_path, write_json
from tunewise.pipeline.precheck import load_config
from tunewise.pipeline.runner import StageError, run_stages


def _project(tmp_path, rows: int = 30, extra: str = "") -> str:
    data = tmp_path / "data.csv"
    lines = ["text,label"] + [f"message number {i} about my card,{'card' if i % 2 else 'refund'}" for i in range(rows)]
    data.write_text("\n".join(lines) + "\n")
    cfg = tmp_path / "tunewise.yaml"
    cfg.write_text(f"data:\n  train: data.csv\n{extra}tracking: off\n")
    return str(cfg)


def test_stage_is_cached_then_rerun_when_its_section_changes(tmp_path):
    cfg = load_config(_project(tmp_path))
    first = run_stages(cfg, "r1", only=["ingest"])
    marker = tmp_path / "runs" / "r1" / "ingest" / "_stage.json"
    finished = json.loads(marker.read_text())["finished"]
    mtime = marker.stat().st_mtime_ns
    second = run_stages(cfg, "r1", only=["ingest"])
    assert second["ingest"]["key"] == first["ingest"]["key"]
    assert marker.stat().st_mtime_ns == mtime, "a cached stage must not be re-run"
    assert json.loads(marker.read_text())["finished"] == finished

    cfg2 = load_config(_project(tmp_path))
    cfg2.data.max_chars = 500  # a change in the stage's own section
    third = run_stages(cfg2, "r1", only=["ingest"])
    assert third["ingest"]["key"] != first["ingest"]["key"]
    assert marker.stat().st_mtime_ns != mtime


def test_changed_input_file_reruns_stage(tmp_path):
    cfg = load_config(_project(tmp_path, rows=30))
    first = run_stages(cfg, "r", only=["ingest"])
    _project(tmp_path, rows=40)
    second = run_stages(cfg, "r", only=["ingest"])
    assert first["ingest"]["key"] != second["ingest"]["key"]
    assert second["ingest"]["metrics"]["rows_kept"] == 40


def test_killed_stage_resumes(tmp_path):
    cfg = load_config(_project(tmp_path))
    run_stages(cfg, "r", only=["ingest"])
    stage_dir = tmp_path / "runs" / "r" / "ingest"
    # a kill before the marker is written leaves artifacts without _stage.json: they are not trusted
    (stage_dir / "_stage.json").unlink()
    (stage_dir / "records.parquet").write_bytes(b"half-written")
    result = run_stages(cfg, "r", only=["ingest"])
    assert result["ingest"]["status"] == "done"
    import pandas as pd

    assert len(pd.read_parquet(stage_dir / "records.parquet")) == 30


def test_force_and_unknown_stage(tmp_path):
    cfg = load_config(_project(tmp_path))
    run_stages(cfg, "r", only=["ingest"])
    marker = tmp_path / "runs" / "r" / "ingest" / "_stage.json"
    mtime = marker.stat().st_mtime_ns
    run_stages(cfg, "r", only=["ingest"], force={"ingest"})
    assert marker.stat().st_mtime_ns != mtime
    with pytest.raises(StageError, match="unknown stage"):
        run_stages(cfg, "r", only=["ingest"], force={"injest"})


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"ok": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"], "no temp file may be left behind"


def test_mlflow_tracking_logs_stage_metrics(tmp_path):
    cfg_path = _project(tmp_path)
    text = open(cfg_path).read().replace("tracking: off\n", "tracking:\n  uri: mlruns\n")
    open(cfg_path, "w").write(text)
    cfg = load_config(cfg_path)
    from tunewise.pipeline.tracking import Tracker

    with Tracker(cfg, "r") as tracker:
        run_stages(cfg, "r", only=["ingest"], tracker=tracker)
    import mlflow

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    runs = mlflow.search_runs(experiment_names=["tunewise"])
    assert len(runs) == 1
    assert runs.iloc[0]["metrics.ingest.rows_kept"] == 30
    assert "metrics.ingest.seconds" in runs.columns

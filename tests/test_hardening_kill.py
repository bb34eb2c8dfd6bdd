"""Issue 18, kill -9: ``tunewise run`` killed inside a long stage, then run again, ends with the same
artifacts as a run nobody interrupted (same seed, same config).

A real project (four BANKING77 intents, 64 training and 24 test rows), the real command as a
subprocess, the tiny Llama (2 layers, the real SmolLM2 tokenizer) fine-tuned with LoRA. The kill
comes at a point seen from outside, as an operator's kill would: training has written a checkpoint
(the rerun must resume from it), or the evaluation has started (the rerun must redo it from a clean
folder). Compared: every stage's JSON artifacts (summary.json, decision.json, _stage.json with its
cache key, ...), every Parquet file (predictions, splits, issues) and the trained adapter's bytes,
leaving out what measures time (seconds, latencies, throughput) and the run folder's own path."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

INTENTS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed"]
# what differs between two identical runs: clocks, and the cost arithmetic written with a measured latency
TIMING_KEYS = {"finished", "started", "peak_rss_mib", "page_bytes", "resumed_from_step"}
TIMING_SUFFIXES = ("seconds", "_s", "_ms", "per_second", "arithmetic")


def _timing(key: str) -> bool:
    return key in TIMING_KEYS or key.endswith(TIMING_SUFFIXES) or "seconds" in key


@pytest.fixture(scope="module")
def kill_project(tiny_llm, banking77, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("kill")
    train = pd.read_csv(banking77 / "train.csv")
    test = pd.read_csv(banking77 / "test.csv")
    train[train["category"].isin(INTENTS)].groupby("category").head(16).to_csv(folder / "train.csv", index=False)
    test[test["category"].isin(INTENTS)].groupby("category").head(6).to_csv(folder / "test.csv", index=False)
    config = {
        "task": "classify", "seed": 0, "data": {"train": "train.csv", "test": "test.csv"},
        "models": {"llm": tiny_llm},
        "curate": {name: {"enabled": False} for name in ("off_topic", "label_errors", "too_long")},
        "baseline": {"candidates": ["majority", "tfidf_lr"]},
        # 40 steps, a checkpoint every 2: a kill after the 6th step leaves most of training to resume
        "train": {"candidates": ["lora_llm"], "max_steps": 40, "eval_every": 8, "checkpoint_every": 2,
                  "batch_size": 8, "learning_rate": 5e-3, "num_threads": 1, "precision": "fp32",
                  "lora_dropout": 0.0, "early_stopping": False},
        "evaluate": {"baseline": "majority", "robustness_rows": 24, "overfit_train_rows": 24, "n_resamples": 200,
                     "human_sheet_size": 0, "ensemble": False},
        "tracking": "off",
    }
    (folder / "tunewise.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def _command(folder: Path, run_id: str) -> list[str]:
    return [sys.executable, "-m", "tunewise.cli", "run", "--config", str(folder / "tunewise.yaml"), "--run-id", run_id]


ENV = {**os.environ, "TUNEWISE_PROGRESS": "off", "OMP_NUM_THREADS": "1"}


def _run(folder: Path, run_id: str) -> subprocess.CompletedProcess:
    done = subprocess.run(_command(folder, run_id), cwd=folder, capture_output=True, text=True, timeout=600, env=ENV)
    assert done.returncode == 0, f"tunewise run --run-id {run_id} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def straight(kill_project) -> Path:
    """The uninterrupted run every killed one is compared with."""
    _run(kill_project, "straight")
    return kill_project / "runs" / "straight"


def _kill_when(folder: Path, run_id: str, ready, what: str) -> str:
    """Start ``tunewise run``, SIGKILL it once ``ready(run_dir)`` returns a description; return that."""
    run_dir = folder / "runs" / run_id
    log = open(folder / f"{run_id}.killed.log", "w")
    proc = subprocess.Popen(_command(folder, run_id), cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=ENV)
    seen = None
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            seen = ready(run_dir)
            if seen:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and not seen:
            proc.kill()
        proc.wait(timeout=60)
        log.close()
    assert seen, f"the run ended (or timed out) before {what}:\n{(folder / f'{run_id}.killed.log').read_text()[-3000:]}"
    assert proc.returncode == -signal.SIGKILL
    return seen


def _normalise(value, run_dir: Path, key: str = ""):
    if isinstance(value, dict):
        return {k: _normalise(v, run_dir, k) for k, v in value.items()
                if not _timing(k)}
    if isinstance(value, list):
        items = [_normalise(v, run_dir) for v in value]
        # a set written as a list (peft's target_modules): its order follows the string hash seed
        return sorted(items) if key == "target_modules" else items
    if isinstance(value, str):
        return value.replace(str(run_dir), "<run>")
    return value


def _assert_same_artifacts(straight: Path, resumed: Path) -> int:
    """Every JSON and Parquet artifact and every weights file of ``resumed`` equals ``straight``'s
    (timings left out); returns how many files were compared."""
    ours = {p.relative_to(straight) for p in straight.rglob("*") if p.is_file()}
    theirs = {p.relative_to(resumed) for p in resumed.rglob("*") if p.is_file()}
    assert ours == theirs, (f"different files: only uninterrupted {sorted(ours - theirs)}, "
                            f"only resumed {sorted(theirs - ours)}")
    compared = 0
    for rel in sorted(ours):
        a, b = straight / rel, resumed / rel
        if rel.suffix == ".json":
            left, right = json.loads(a.read_text()), json.loads(b.read_text())
            assert _normalise(left, straight) == _normalise(right, resumed), rel
        elif rel.suffix == ".parquet":
            left, right = pd.read_parquet(a), pd.read_parquet(b)
            timing = [c for c in left.columns if _timing(c)]
            pd.testing.assert_frame_equal(left.drop(columns=timing), right.drop(columns=timing), obj=str(rel))
        elif rel.suffix == ".safetensors":
            assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest(), rel
        else:
            continue
        compared += 1
    return compared


def test_kill_9_during_training_then_rerun_equals_an_uninterrupted_run(kill_project, straight):
    checkpoints = kill_project / "runs" / "killed-train" / "_checkpoints" / "train" / "lora_llm"

    def checkpoint_written(run_dir: Path) -> str | None:
        done = sorted(p.parent.name for p in checkpoints.glob("step-*/manifest.json"))
        return done[-1] if done and int(done[-1].split("-")[1]) >= 6 else None

    step = _kill_when(kill_project, "killed-train", checkpoint_written, "training wrote its step-6 checkpoint")
    run_dir = kill_project / "runs" / "killed-train"
    assert not (run_dir / "train" / "_stage.json").exists(), "killed inside the stage"
    assert (run_dir / "baseline" / "_stage.json").exists() and not (run_dir / "evaluate").exists()

    rerun = _run(kill_project, "killed-train")
    assert "up to date" in rerun.stdout + rerun.stderr  # the stages before train are reused, not redone
    summary = json.loads((run_dir / "train" / "lora_llm" / "train_summary.json").read_text())
    assert summary["resumed_from_step"] is not None and summary["resumed_from_step"] >= int(step.split("-")[1])
    assert summary["steps_done"] == 40
    assert not (run_dir / "_checkpoints" / "train").exists(), "checkpoints are removed once training finished"
    assert _assert_same_artifacts(straight, run_dir) >= 40


def test_kill_9_during_evaluation_then_rerun_equals_an_uninterrupted_run(kill_project, straight):
    def evaluation_running(run_dir: Path) -> str | None:
        stage = run_dir / "evaluate"
        if not stage.is_dir():
            return None
        time.sleep(0.5)  # well inside the stage (it takes seconds: refits, robustness, bootstrap intervals)
        return "evaluate" if not (stage / "_stage.json").exists() else None

    _kill_when(kill_project, "killed-eval", evaluation_running, "the evaluation started")
    run_dir = kill_project / "runs" / "killed-eval"
    assert (run_dir / "train" / "_stage.json").exists() and not (run_dir / "evaluate" / "_stage.json").exists()

    _run(kill_project, "killed-eval")
    assert _assert_same_artifacts(straight, run_dir) >= 40

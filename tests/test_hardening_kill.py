"""Issue 18, kill -9: ``tunewise run`` killed inside a long stage, then run again, ends with the same
artifacts as a run nobody interrupted (same seed, same config).

A real project (four BANKING77 intents, 64 training and 24 test rows), the real command as a
subprocess, the tiny Llama (2 layers, the real SmolLM2 tokenizer) fine-tuned with LoRA. The kill
comes at a point seen from outside, as an operator's kill would: training has written a checkpoint
(the rerun must resume from it), or the evaluation has started (the rerun must redo it from a clean
folder). Compared: every stage's JSON artifacts (summary.json, decision.json, _stage.json with its
cache key, ...), every Parquet file (predictions, splits, issues) and the trained adapter's bytes,
leaving out what measures time (seconds, latencies, throughput) and the run folder's own path.

The same for the other long commands: curation and the baselines (a tenth of a second each on this
project, too short to hit from outside: the command runs under a small wrapper that pauses it just
after the stage's first artifact is renamed into place, and the kill comes there), ``tunewise curve``
(killed once its first point is fitted), ``tunewise retrain`` (killed while the new run trains) and
``tunewise serve`` (killed under feedback and request load, then started again on the same log)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from serve_runs import wait_healthy

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
        "task": "classify",
        "seed": 0,
        "data": {"train": "train.csv", "test": "test.csv"},
        "models": {"llm": tiny_llm},
        "curate": {name: {"enabled": False} for name in ("off_topic", "label_errors", "too_long")},
        "baseline": {"candidates": ["majority", "tfidf_lr"]},
        # 40 steps, a checkpoint every 2: a kill after the 6th step leaves most of training to resume
        "train": {
            "candidates": ["lora_llm"],
            "max_steps": 40,
            "eval_every": 8,
            "checkpoint_every": 2,
            "batch_size": 8,
            "learning_rate": 5e-3,
            "num_threads": 1,
            "precision": "fp32",
            "lora_dropout": 0.0,
            "early_stopping": False,
        },
        "evaluate": {
            "baseline": "majority",
            "robustness_rows": 24,
            "overfit_train_rows": 24,
            "n_resamples": 200,
            "human_sheet_size": 0,
            "ensemble": False,
        },
        "tracking": "off",
    }
    (folder / "tunewise.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def _command(folder: Path, run_id: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tunewise.cli.main",
        "run",
        "--config",
        str(folder / "tunewise.yaml"),
        "--run-id",
        run_id,
    ]


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


def _kill_when(
    folder: Path, run_id: str, ready, what: str, command: list[str] | None = None, env: dict[str, str] | None = None
) -> str:
    """Start ``tunewise run`` (or ``command``), SIGKILL it once ``ready(run_dir)`` returns a
    description; return that."""
    run_dir = folder / "runs" / run_id
    log_path = folder / f"{run_id}.killed.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        command or _command(folder, run_id), cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env or ENV
    )
    seen = None
    try:
        deadline = time.monotonic() + 600
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
    assert seen, f"the run ended (or timed out) before {what}:\n{log_path.read_text()[-3000:]}"
    assert proc.returncode == -signal.SIGKILL
    return seen


def _normalise(value, run_dir: Path, key: str = "", run_id: str | None = None):
    if isinstance(value, dict):
        return {k: _normalise(v, run_dir, k, run_id) for k, v in value.items() if not _timing(k)}
    if isinstance(value, list):
        items = [_normalise(v, run_dir, run_id=run_id) for v in value]
        # a set written as a list (peft's target_modules): its order follows the string hash seed
        return sorted(items) if key == "target_modules" else items
    if isinstance(value, str):
        value = value.replace(str(run_dir), "<run>")
        # runs compared under different ids (retrain's new run): the id written in messages and fields
        return re.sub(rf"(?<![\w-]){re.escape(run_id)}(?![\w-])", "<run-id>", value) if run_id else value
    return value


def _assert_same_artifacts(straight: Path, resumed: Path, *, run_ids: bool = False) -> int:
    """Every JSON and Parquet artifact and every weights file of ``resumed`` equals ``straight``'s
    (timings left out; ``run_ids``: each folder's own name too); returns how many files were compared."""
    ours = {p.relative_to(straight) for p in straight.rglob("*") if p.is_file()}
    theirs = {p.relative_to(resumed) for p in resumed.rglob("*") if p.is_file()}
    assert ours == theirs, (
        f"different files: only uninterrupted {sorted(ours - theirs)}, only resumed {sorted(theirs - ours)}"
    )
    compared = 0
    for rel in sorted(ours):
        a, b = straight / rel, resumed / rel
        if rel.suffix == ".json":
            left, right = json.loads(a.read_text()), json.loads(b.read_text())
            assert _normalise(left, straight, run_id=straight.name if run_ids else None) == _normalise(
                right, resumed, run_id=resumed.name if run_ids else None
            ), rel
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


def _checkpoint_at(checkpoints: Path, step: int):
    """A ``ready`` for :func:`_kill_when`: the checkpoint ``latest`` points to (what a resume starts
    from) is at ``step`` or later. Not the step folder itself: it is renamed into place before the
    pointer is rewritten, and a kill between the two resumes from the previous one (seen on a
    loaded machine: step 4 with step-6/manifest.json on disk)."""

    def ready(run_dir: Path) -> str | None:
        try:
            name = (checkpoints / "latest").read_text().strip()
        except OSError:
            return None
        return name if int(name.split("-")[1]) >= step else None

    return ready


def test_kill_9_during_training_then_rerun_equals_an_uninterrupted_run(kill_project, straight):
    checkpoints = kill_project / "runs" / "killed-train" / "_checkpoints" / "train" / "lora_llm"
    step = _kill_when(
        kill_project, "killed-train", _checkpoint_at(checkpoints, 6), "training wrote its step-6 checkpoint"
    )
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


# ---------------------------------------------------------------------------------------------
# Curation and the baselines: too short to hit from outside, so the command pauses inside the stage

# Runs ``python -m tunewise.cli.main ...`` with one hook: ``write:SUFFIX`` pauses just after an artifact
# whose path ends with SUFFIX is renamed into place (every artifact goes through artifacts.atomic_path,
# which renames with os.replace); ``call:MODULE:FUNCTION`` pauses just after FUNCTION first returns.
# The paused process touches TUNEWISE_TEST_PAUSED and sleeps until the test kills it.
PAUSING = r"""
import importlib, os, runpy, sys, time

kind, _, what = os.environ["TUNEWISE_TEST_PAUSE"].partition(":")


def pause():
    open(os.environ["TUNEWISE_TEST_PAUSED"], "w").close()
    time.sleep(3600)


if kind == "write":
    replace = os.replace

    def hooked_replace(src, dst, *args, **kwargs):
        replace(src, dst, *args, **kwargs)
        if os.fspath(dst).endswith(what):
            pause()

    os.replace = hooked_replace
else:
    module_name, _, name = what.rpartition(":")
    module = importlib.import_module(module_name)
    function = getattr(module, name)

    def hooked_call(*args, **kwargs):
        result = function(*args, **kwargs)
        pause()
        return result

    setattr(module, name, hooked_call)
runpy.run_module("tunewise.cli.main", run_name="__main__", alter_sys=True)
"""


def _kill_paused(folder: Path, run_id: str, args: list[str], pause: str, what: str) -> None:
    """Run ``tunewise ARGS`` paused at ``pause`` (see PAUSING) and SIGKILL it there."""
    paused = folder / f"{run_id}.paused"
    paused.unlink(missing_ok=True)
    env = {**ENV, "TUNEWISE_TEST_PAUSE": pause, "TUNEWISE_TEST_PAUSED": str(paused)}
    _kill_when(
        folder,
        run_id,
        lambda run_dir: paused.exists() and pause,
        what,
        command=[sys.executable, "-c", PAUSING, *args],
        env=env,
    )


def test_kill_9_during_curation_then_rerun_equals_an_uninterrupted_run(kill_project, straight):
    args = _command(kill_project, "killed-curate")[3:]
    _kill_paused(kill_project, "killed-curate", args, "write:curate/cleaned.parquet", "curation wrote cleaned.parquet")
    run_dir = kill_project / "runs" / "killed-curate"
    assert (run_dir / "curate" / "cleaned.parquet").exists() and not (run_dir / "curate" / "issues.parquet").exists()
    assert (run_dir / "ingest" / "_stage.json").exists() and not (run_dir / "curate" / "_stage.json").exists()
    assert not (run_dir / "split").exists()

    rerun = _run(kill_project, "killed-curate")
    assert "ingest: up to date" in rerun.stdout + rerun.stderr
    assert _assert_same_artifacts(straight, run_dir) >= 40


def test_kill_9_during_the_baselines_then_rerun_equals_an_uninterrupted_run(kill_project, straight):
    args = _command(kill_project, "killed-baseline")[3:]
    _kill_paused(
        kill_project,
        "killed-baseline",
        args,
        "write:baseline/predictions/majority.parquet",
        "the baseline stage wrote majority's predictions",
    )
    run_dir = kill_project / "runs" / "killed-baseline"
    assert (run_dir / "baseline" / "predictions" / "majority.parquet").exists()
    assert not (run_dir / "baseline" / "summary.json").exists() and not (run_dir / "baseline" / "_stage.json").exists()
    assert (run_dir / "split" / "_stage.json").exists() and not (run_dir / "train").exists()

    rerun = _run(kill_project, "killed-baseline")
    assert "split: up to date" in rerun.stdout + rerun.stderr
    assert _assert_same_artifacts(straight, run_dir) >= 40


# ---------------------------------------------------------------------------------------------
# tunewise curve


def _tunewise(folder: Path, *args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "tunewise.cli.main", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
        env=ENV,
    )
    assert done.returncode in ok, f"tunewise {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_kill_9_during_the_learning_curve_then_rerun_equals_an_uninterrupted_curve(kill_project, straight):
    """The curve keeps its points in memory and writes curve.json and curve.png at the end: killed
    after its first point is fitted and scored, it leaves no curve, and the rerun's equals an
    uninterrupted one's. Cheap candidates: the fits are the same code for every candidate, and
    lora_llm's bit-identical retraining is what the training kill test shows."""
    runs = kill_project / "runs"
    for name in ("curve-straight", "curve-killed"):
        shutil.copytree(straight, runs / name, ignore=shutil.ignore_patterns(".lock"))
    args = ["curve", "--config", str(kill_project / "tunewise.yaml"), "--candidates", "tfidf_lr,majority"]
    _tunewise(kill_project, *args, "--run-id", "curve-straight")
    _kill_paused(
        kill_project,
        "curve-killed",
        [*args, "--run-id", "curve-killed"],
        "call:tunewise.decision.curve:_fit_and_score",
        "the curve's first point was fitted",
    )
    assert not (runs / "curve-killed" / "curve").exists()

    _tunewise(kill_project, *args, "--run-id", "curve-killed")
    assert _assert_same_artifacts(runs / "curve-straight" / "curve", runs / "curve-killed" / "curve") == 1
    curve = json.loads((runs / "curve-killed" / "curve" / "curve.json").read_text())
    assert list(curve["candidates"]) == ["tfidf_lr", "majority"] and len(curve["candidates"]["tfidf_lr"]["n"]) == 4


# ---------------------------------------------------------------------------------------------
# tunewise retrain


@pytest.fixture(scope="module")
def retrain_project(kill_project, straight, banking77, tmp_path_factory) -> dict:
    """A copy of the project with the uninterrupted run (retrain appends to the project's
    data.added, which the other tests' runs must not read) and a request log holding labelled
    feedback on 32 BANKING77 training questions the project does not have."""
    from tunewise.monitoring.store import Store

    folder = tmp_path_factory.mktemp("kill-retrain")
    for name in ("tunewise.yaml", "train.csv", "test.csv"):
        shutil.copy(kill_project / name, folder / name)
    shutil.copytree(straight, folder / "runs" / "straight", ignore=shutil.ignore_patterns(".lock"))
    train = pd.read_csv(banking77 / "train.csv")
    fresh = train[train["category"].isin(INTENTS)].groupby("category").nth(list(range(16, 24)))
    url = f"sqlite:///{folder / 'log.db'}"
    store = Store(url)
    try:
        now = time.time()
        ids = [f"req-{i}" for i in range(len(fresh))]
        store.insert_requests(
            [
                {
                    "id": rid,
                    "ts": now,
                    "endpoint": "classify",
                    "arm": "incumbent",
                    "served_by": "incumbent",
                    "candidate": "tfidf_lr",
                    "input": text,
                    "output": label,
                    "status": "ok",
                }
                for rid, text, label in zip(ids, fresh["text"], fresh["category"])
            ]
        )
        store.insert_feedback(
            [
                {"request_id": rid, "kind": "label", "value": label, "ts": now}
                for rid, label in zip(ids, fresh["category"])
            ]
        )
    finally:
        store.close()
    return {"folder": folder, "store": url}


def _retrain_args(project: dict, new_run: str) -> list[str]:
    return [
        "retrain",
        "--config",
        str(project["folder"] / "tunewise.yaml"),
        "--run-id",
        "straight",
        "--store",
        project["store"],
        "--new-run-id",
        new_run,
    ]


def test_kill_9_during_retrain_then_rerun_equals_an_uninterrupted_retrain(retrain_project):
    """Killed while the new run trains (after the feedback rows went into data.added), run again:
    the same new run and retrain.json as a retrain nobody interrupted, the rows added once; and
    until the rerun finishes, serve refuses the half-made run."""
    from tunewise.serving.app import create_app
    from tunewise.serving.base import ServeError

    folder = retrain_project["folder"]
    runs, added = folder / "runs", folder / "added_labels.jsonl"
    # retrain exits 3 when its gate fails: the same in both runs, which is what is compared
    _tunewise(folder, *_retrain_args(retrain_project, "retrain-straight"), ok=(0, 3))
    added_once = added.read_text()
    assert len(added_once.splitlines()) >= 24
    added.unlink()  # the project as it was before: the killed retrain starts from the same files

    checkpoints = runs / "retrain-killed" / "_checkpoints" / "train" / "lora_llm"
    _kill_when(
        folder,
        "retrain-killed",
        _checkpoint_at(checkpoints, 6),
        "the new run's training wrote its step-6 checkpoint",
        command=[sys.executable, "-m", "tunewise.cli.main", *_retrain_args(retrain_project, "retrain-killed")],
    )
    killed = runs / "retrain-killed"
    assert not (killed / "retrain" / "retrain.json").exists() and added.read_text() == added_once
    with pytest.raises(ServeError, match="did not finish"):
        create_app(killed)  # no gate was checked: nothing may serve this run yet

    _tunewise(folder, *_retrain_args(retrain_project, "retrain-killed"), ok=(0, 3))
    assert added.read_text() == added_once, "the rerun adds no row twice"
    record = json.loads((killed / "retrain" / "retrain.json").read_text())
    assert record["added"]["added"] == len(added_once.splitlines()) and record["new_run"] == "retrain-killed"
    assert _assert_same_artifacts(runs / "retrain-straight", killed, run_ids=True) >= 40


# ---------------------------------------------------------------------------------------------
# tunewise serve


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(folder: Path, run_id: str, port: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunewise.cli.main",
            "serve",
            "--config",
            str(folder / "tunewise.yaml"),
            "--run-id",
            run_id,
            "--port",
            str(port),
            "--arms",
            "incumbent:tfidf_lr=0.5,candidate:lora_llm=0.5",
        ],
        cwd=folder,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=ENV,
    )


def test_kill_9_of_the_server_under_load_keeps_every_acknowledged_request_and_feedback(kill_project, straight):
    """``tunewise serve`` (LoRA and TF-IDF arms, the run's own SQLite log) killed while four clients
    classify and post label and thumbs feedback; restarted on the same log: every request and
    feedback row that was answered 200 is there, the database passes its integrity check, and the
    server answers again. serve takes no run lock (see create_app): while it runs, `tunewise export`
    writes into the same run folder, and the server and its log carry on."""
    import sqlite3
    import threading

    import httpx

    from tunewise.monitoring.store import Store
    from tunewise.workflows.export import export

    run_dir = kill_project / "runs" / "served"
    shutil.copytree(straight, run_dir, ignore=shutil.ignore_patterns(".lock"))
    questions = pd.read_csv(kill_project / "test.csv")
    port, log = _free_port(), kill_project / "served.log"
    base = f"http://127.0.0.1:{port}"
    requests: list[str] = []
    feedback: list[tuple[str, str, str]] = []  # (request_id, kind, value) answered 200
    stop = threading.Event()

    def client(worker: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as http:
            for i in range(10_000):
                if stop.is_set():
                    return
                row = questions.iloc[(worker * 7 + i) % len(questions)]
                try:
                    answer = http.post("/v1/classify", json={"text": row["text"], "user": f"u{worker}-{i}"})
                    if answer.status_code != 200:
                        continue
                    request_id = answer.json()["request_id"]
                    requests.append(request_id)
                    kind, value = ("label", row["category"]) if i % 2 else ("thumbs", "up")
                    if http.post("/v1/feedback", json={"request_id": request_id, kind: value}).status_code == 200:
                        feedback.append((request_id, kind, value))
                except httpx.HTTPError:  # the kill: the connection drops
                    if stop.is_set():
                        return
                    time.sleep(0.05)

    server = _serve(kill_project, "served", port, log)
    try:
        wait_healthy(base, server, timeout=600, log=log)  # a starved shared machine took over 300 s
        workers = [threading.Thread(target=client, args=(w,)) for w in range(4)]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 300
        while len(feedback) < 40 and time.monotonic() < deadline:
            time.sleep(0.02)
        server.send_signal(signal.SIGKILL)  # in the middle of the load
        server.wait(10)
        stop.set()
        for worker in workers:
            worker.join(30)
        acknowledged, acknowledged_feedback = list(requests), list(feedback)
        assert len(acknowledged_feedback) >= 40, f"only {len(acknowledged_feedback)} feedback rows before the kill"

        db = run_dir / "serve" / "requests.db"
        with sqlite3.connect(db) as conn:  # the log a crashed server left opens cleanly
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        server = _serve(kill_project, "served", port, log)
        wait_healthy(base, server, timeout=600, log=log)  # a starved shared machine took over 300 s
        after = httpx.post(f"{base}/v1/classify", json={"text": "my card has not arrived yet"}, timeout=30)
        assert after.status_code == 200
        assert (
            httpx.post(
                f"{base}/v1/feedback",
                json={"request_id": after.json()["request_id"], "label": "card_arrival"},
                timeout=30,
            ).status_code
            == 200
        )

        # the run lock is free while the server runs: a writer of the same run folder goes ahead
        exported = export(run_dir, candidate="lora_llm")
        assert exported == run_dir / "export" / "lora_llm-adapter" and (exported / "tunewise_export.json").exists()
        assert (
            httpx.post(f"{base}/v1/classify", json={"text": "what is the exchange rate"}, timeout=30).status_code == 200
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)

    store = Store(f"sqlite:///{db}")
    try:
        logged = store.request_ids()
        stored = {(r.request_id, r.kind): r.value for r in store.feedback_frame().itertuples()}
    finally:
        store.close()
    missing = [r for r in acknowledged if r not in logged]
    assert not missing, f"{len(missing)} of {len(acknowledged)} answered requests are not in the log"
    lost = [f for f in acknowledged_feedback if stored.get(f[:2]) != f[2]]
    assert not lost, f"{len(lost)} of {len(acknowledged_feedback)} acknowledged feedback rows are not in the log"
    assert (after.json()["request_id"], "label") in stored

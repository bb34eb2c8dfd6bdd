"""tunewise serve: real uvicorn servers on 127.0.0.1 and httpx clients.

The run folder is built quickly by hand from the demo data: the split, and an evaluation summary
whose gate names majority (incumbent) and tfidf_lr (candidate); the server refits both in about a
second. Covered: the sticky split over 10,000 users, classify / chat / feedback / metrics, every
bad input answered with a 4xx and counted, the API key, fallback to the incumbent when a candidate
fails, micro-batching, promote and rollback on a running server through the CLI, the kill -9
crash test (SQLite), and two replicas sharing one PostgreSQL log and one set of weights.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest

from serve_runs import make_classify_run, postgres_cluster, wait_healthy
from tunewise.monitoring.store import Store
from tunewise.serving.app import ServerThread, create_app
from tunewise.serving.arms import ArmSpec, assign_arm, parse_arms, resolve_arms
from tunewise.serving.base import ServeConfig, ServeError
from tunewise.serving.served_model import ServedModel, load_models

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARMS = "incumbent=0.5,candidate=0.5"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """runs/<id> with split/ and evaluate/summary.json: enough for the server to refit and serve."""
    folder = tmp_path_factory.mktemp("serve")
    run, files = make_classify_run(folder, n_rows=600)
    return run


@pytest.fixture(scope="module")
def models(run_dir):
    return load_models(run_dir, {"majority", "tfidf_lr"})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sqlite(tmp_path: Path, name: str = "log.db") -> str:
    return f"sqlite:///{tmp_path / name}"


# ---------------------------------------------------------------------------------------------
# Arms


def test_sticky_assignment_splits_10000_users_within_tolerance_of_the_weights():
    users = [f"user-{i}" for i in range(10_000)]
    for weights in ({"incumbent": 0.9, "candidate": 0.1}, {"a": 0.5, "b": 0.3, "c": 0.2}, {"a": 1.0, "b": 0.0}):
        counts = Counter(assign_arm(u, weights) for u in users)
        total = sum(weights.values())
        for arm, w in weights.items():
            # 4 binomial standard deviations at n=10,000 is at most 0.02
            assert abs(counts[arm] / len(users) - w / total) < 0.02, (weights, counts)
    before = {u: assign_arm(u, {"incumbent": 0.9, "candidate": 0.1}) for u in users}
    assert before == {u: assign_arm(u, {"incumbent": 0.9, "candidate": 0.1}) for u in users}  # sticky
    after = {u: assign_arm(u, {"incumbent": 0.5, "candidate": 0.5}) for u in users}
    # raising the canary moves users only towards it: nobody on the candidate goes back
    assert all(after[u] == "candidate" for u in users if before[u] == "candidate")


def test_arms_come_from_the_gate_and_the_decision(run_dir, tmp_path):
    specs = resolve_arms(run_dir, None)
    assert [(s.name, s.candidate, s.weight) for s in specs] == [
        ("incumbent", "majority", 0.9),
        ("candidate", "tfidf_lr", 0.1),
    ]
    assert parse_arms("incumbent=0.8, candidate:embed_lr=0.2") == {"incumbent": 0.8, "candidate:embed_lr": 0.2}
    assert [s.candidate for s in resolve_arms(run_dir, "tfidf_lr=1,candidate:embed_lr=0")] == ["tfidf_lr", "embed_lr"]
    with pytest.raises(ServeError, match="not ARM=WEIGHT"):
        parse_arms("incumbent")
    with pytest.raises(ServeError, match="positive weight"):
        resolve_arms(run_dir, "incumbent=0,candidate=0")
    other = tmp_path / "run"
    shutil.copytree(run_dir, other)
    (other / "decide").mkdir()
    (other / "decide" / "decision.json").write_text(json.dumps({"decision": {"recommended": "embed_lr"}}))
    assert [s.candidate for s in resolve_arms(other, None)] == ["majority", "embed_lr"]


# ---------------------------------------------------------------------------------------------
# Endpoints and bad input


def test_classify_chat_feedback_metrics_and_every_bad_input_is_a_counted_4xx(run_dir, models, tmp_path):
    url = _sqlite(tmp_path)
    app = create_app(run_dir, ServeConfig(max_body_bytes=4096), arms=ARMS, store_url=url, models=models)
    statuses = []
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/healthz").json()["arms"] == {"incumbent": "majority", "candidate": "tfidf_lr"}
        r = client.post("/v1/classify", json={"text": "Where is my order 12345? It has not arrived.", "user": "ann"})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["arm"] in ("incumbent", "candidate") and len(answer["request_id"]) == 32
        assert answer["arm"] == assign_arm("ann", {"incumbent": 0.5, "candidate": 0.5})
        forced = client.post(
            "/v1/classify", json={"text": "I want my money back for the broken kettle", "arm": "candidate"}
        ).json()
        assert forced["arm"] == forced["served_by"] == "candidate" and forced["model"] == "tfidf_lr"
        chat = client.post(
            "/v1/chat/completions",
            json={
                "model": "candidate",
                "temperature": 0,
                "user": "bob",
                "messages": [
                    {"role": "system", "content": "You route support messages."},
                    {"role": "user", "content": "my card payment keeps failing"},
                ],
            },
        ).json()
        assert chat["object"] == "chat.completion" and chat["tunewise"]["arm"] == "candidate"
        assert chat["choices"][0]["message"]["content"] in models["tfidf_lr"].feedback_labels()

        rid = forced["request_id"]
        first = client.post("/v1/feedback", json={"request_id": rid, "label": "refund_status", "thumbs": "down"})
        assert first.status_code == 200 and sorted(first.json()["stored"]) == ["label", "thumbs"]
        again = client.post("/v1/feedback", json={"request_id": rid, "label": "refund_status"}).json()
        assert again["stored"] == [] and again["duplicates"] == ["label"]

        bad = {
            "unknown request id": client.post("/v1/feedback", json={"request_id": "f" * 32, "label": "order_status"}),
            "label outside the set": client.post("/v1/feedback", json={"request_id": rid, "label": "astrology"}),
            "no feedback given": client.post("/v1/feedback", json={"request_id": rid}),
            "malformed JSON": client.post(
                "/v1/classify", content=b'{"text": "hi",', headers={"content-type": "application/json"}
            ),
            "missing field": client.post("/v1/classify", json={"user": "x"}),
            "unknown field": client.post("/v1/classify", json={"text": "hi", "colour": "red"}),
            "unknown arm": client.post("/v1/classify", json={"text": "hi", "arm": "nope"}),
            "oversized (Content-Length)": client.post("/v1/classify", json={"text": "x" * 5000}),
            # a chunked upload has no Content-Length: the streamed size is checked
            "oversized (streamed)": client.post(
                "/v1/classify",
                content=iter([b'{"text": "', b"y" * 5000, b'"}']),
                headers={"content-type": "application/json"},
            ),
            "max_tokens above the limit": client.post(
                "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100_000}
            ),
            "no user message": client.post(
                "/v1/chat/completions", json={"messages": [{"role": "system", "content": "x"}]}
            ),
        }
        for what, response in bad.items():
            statuses.append(response.status_code)
            assert 400 <= response.status_code < 500, (what, response.status_code, response.text)
            detail = response.json()["detail"]
            assert isinstance(detail, str) and "Traceback" not in detail, (what, detail)
        assert (
            bad["unknown request id"].status_code == 404
            and "unknown request id" in bad["unknown request id"].json()["detail"]
        )
        assert (
            bad["label outside the set"].status_code == 422
            and "astrology" in bad["label outside the set"].json()["detail"]
        )
        assert bad["malformed JSON"].status_code == 422 and "malformed JSON" in bad["malformed JSON"].json()["detail"]
        assert bad["oversized (Content-Length)"].status_code == 413
        assert bad["oversized (streamed)"].status_code == 413
        metrics = client.get("/metrics").text
    assert 'tunewise_requests_total{arm="candidate",endpoint="chat",status="ok"} 1.0' in metrics
    assert 'tunewise_rejected_requests_total{path="/v1/classify",status="413"} 2.0' in metrics
    assert 'tunewise_rejected_requests_total{path="/v1/feedback",status="404"} 1.0' in metrics

    store = Store(url)
    logged = store.requests_frame().set_index("id")
    assert set(logged.index) == {answer["request_id"], rid, chat["tunewise"]["request_id"]}
    assert logged.loc[rid, "output"] == forced["label"] and logged.loc[rid, "latency_ms"] > 0
    assert logged.loc[rid, "input"] == "I want my money back for the broken kettle"
    feedback = store.feedback_frame()
    assert sorted(feedback["kind"]) == ["label", "thumbs"]  # the second label was not stored again
    store.close()


def test_api_key_guards_the_api_but_not_health(run_dir, models, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEWISE_TEST_KEY", "s3cret")
    app = create_app(
        run_dir, ServeConfig(api_key_env="TUNEWISE_TEST_KEY"), arms=ARMS, store_url=_sqlite(tmp_path), models=models
    )
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        assert client.post("/v1/classify", json={"text": "hello"}).status_code == 401
        assert client.post("/v1/classify", json={"text": "hello"}, headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.post("/admin/arms", json={"weights": {"candidate": 1}}).status_code == 401
        ok = client.post("/v1/classify", json={"text": "hello"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


class _Broken:
    """A candidate whose model fails on every call."""

    task = "classify"
    labels_ = ["a", "b"]

    def predict(self, frame):
        raise RuntimeError("GPU fell off the bus")


class _Slow:
    """A candidate that takes 50 ms per call whatever the batch size (like a model on a busy machine)."""

    task = "classify"
    labels_ = ["a", "b"]

    def __init__(self):
        self.calls = 0
        self.threads_seen: list[tuple[int, int]] = []  # (rows, torch threads) per call

    def predict(self, frame):
        import torch

        from tunewise.candidates.registry import classification_predictions

        self.calls += 1
        self.threads_seen.append((len(frame), torch.get_num_threads()))
        time.sleep(0.05)
        return classification_predictions(frame, self.labels_, np.tile([0.7, 0.3], (len(frame), 1)), 50 / len(frame))


def test_a_failing_candidate_is_answered_by_the_incumbent_and_counted(run_dir, models, tmp_path):
    served = {"majority": models["majority"], "broken": ServedModel("broken", _Broken(), None, "out_of_scope")}
    specs = [ArmSpec("incumbent", "majority", 0.5), ArmSpec("candidate", "broken", 0.5)]
    url = _sqlite(tmp_path)
    app = create_app(run_dir, arms=specs, store_url=url, models=served)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.post("/v1/classify", json={"text": "where is my parcel", "arm": "candidate"})
        assert r.status_code == 200
        assert (
            r.json()["arm"] == "candidate" and r.json()["served_by"] == "incumbent" and r.json()["model"] == "majority"
        )
        metrics = client.get("/metrics").text
    assert 'tunewise_arm_failures_total{arm="candidate"} 1.0' in metrics
    row = Store(url).requests_frame().iloc[0]
    assert row["status"] == "fallback" and "GPU fell off the bus" in row["error"]


def test_concurrent_requests_are_micro_batched(run_dir, tmp_path):
    slow = _Slow()
    served = {"slow": ServedModel("slow", slow, None, "out_of_scope")}
    app = create_app(
        run_dir,
        ServeConfig(max_batch=16, max_wait_ms=20),
        arms=[ArmSpec("incumbent", "slow", 1.0)],
        store_url=_sqlite(tmp_path),
        models=served,
    )
    with ServerThread(app) as server:

        def one(i: int) -> int:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                return c.post("/v1/classify", json={"text": f"message {i}"}).status_code

        threads_out: list[int] = []
        workers = [threading.Thread(target=lambda i=i: threads_out.append(one(i))) for i in range(32)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    assert threads_out == [200] * 32
    assert slow.calls <= 8, f"32 concurrent requests took {slow.calls} model calls"


def test_large_micro_batches_get_batch_threads_and_single_requests_do_not(run_dir, tmp_path):
    import torch

    slow = _Slow()
    served = {"slow": ServedModel("slow", slow, None, "out_of_scope")}
    config = ServeConfig(max_batch=16, max_wait_ms=50, torch_threads=1, batch_threads=2, batch_threads_min_rows=4)
    app = create_app(
        run_dir, config, arms=[ArmSpec("incumbent", "slow", 1.0)], store_url=_sqlite(tmp_path), models=served
    )
    try:
        with ServerThread(app) as server:

            def one(i: int) -> None:
                with httpx.Client(base_url=server.url, timeout=30) as c:
                    c.post("/v1/classify", json={"text": f"message {i}"}).raise_for_status()

            workers = [threading.Thread(target=one, args=(i,)) for i in range(24)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            one(99)  # alone: a batch of one
    finally:
        torch.set_num_threads(1)
    assert any(rows >= 4 for rows, _ in slow.threads_seen)
    assert all(threads == (2 if rows >= 4 else 1) for rows, threads in slow.threads_seen), slow.threads_seen
    assert slow.threads_seen[-1] == (1, 1)


# ---------------------------------------------------------------------------------------------
# promote / rollback on a running server (through the CLI commands)


def test_promote_and_rollback_change_a_running_servers_weights(run_dir, models, tmp_path):
    import typer
    from typer.testing import CliRunner

    from tunewise.cli.serve import register

    cli = typer.Typer()
    register(cli)
    runner = CliRunner()
    no_config = str(tmp_path / "absent.yaml")
    url = _sqlite(tmp_path)
    app = create_app(
        run_dir,
        ServeConfig(arms_refresh_s=0.2, max_wait_ms=0),
        arms="incumbent=0.9,candidate=0.1",
        store_url=url,
        models=models,
    )
    users = [f"u{i}" for i in range(200)]
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:

        def shares() -> float:
            arms = [client.post("/v1/classify", json={"text": "hello", "user": u}).json()["arm"] for u in users]
            return arms.count("candidate") / len(arms)

        assert shares() < 0.25
        result = runner.invoke(cli, ["promote", "--config", no_config, "--url", server.url, "--weight", "0.5"])
        assert result.exit_code == 0, result.output
        assert client.get("/v1/arms").json()["weights"] == {"incumbent": 0.5, "candidate": 0.5}
        assert 0.35 < shares() < 0.65
        result = runner.invoke(cli, ["promote", "--config", no_config, "--url", server.url])
        assert result.exit_code == 0 and shares() == 1.0
        result = runner.invoke(
            cli, ["rollback", "--config", no_config, "--url", server.url, "--reason", "worse online"]
        )
        assert result.exit_code == 0, result.output
        assert shares() == 0.0
        bad = runner.invoke(cli, ["rollback", "--config", no_config, "--url", server.url, "--arm", "nope"])
        assert bad.exit_code == 1 and "unknown arm" in bad.output
    store = Store(url)
    history = store.arm_history()
    assert [h["weights"]["candidate"] for h in history] == [0.5, 1.0, 0.0] and history[-1]["reason"] == "worse online"
    # a restarted server keeps what promote/rollback set
    assert store.arm_weights()["candidate"] == ("tfidf_lr", 0.0)
    store.close()


# ---------------------------------------------------------------------------------------------
# kill -9


def _start_server(run_dir: Path, port: int, store_url: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TUNEWISE_PROGRESS": "off"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunewise.serving.app",
            str(run_dir),
            "--port",
            str(port),
            "--store",
            store_url,
            "--arms",
            ARMS,
            "--threads",
            "1",
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
    )


def test_kill_9_mid_load_loses_no_answered_request_and_leaves_the_log_intact(run_dir, tmp_path):
    import sqlite3

    db = tmp_path / "crash.db"
    url, port = f"sqlite:///{db}", _free_port()
    base = f"http://127.0.0.1:{port}"
    server = _start_server(run_dir, port, url, tmp_path / "server.log")
    received: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def client(worker: int) -> None:
        with httpx.Client(base_url=base, timeout=10) as c:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    r = c.post("/v1/classify", json={"text": f"where is order {worker}-{i}", "user": f"w{worker}-{i}"})
                except httpx.HTTPError as exc:
                    failures.append(type(exc).__name__)
                    if stop.is_set():
                        return
                    time.sleep(0.05)
                    continue
                if r.status_code == 200:
                    received.append(r.json()["request_id"])

    try:
        wait_healthy(base, server)
        workers = [threading.Thread(target=client, args=(w,)) for w in range(16)]
        for w in workers:
            w.start()
        deadline = time.time() + 30
        while len(received) < 300 and time.time() < deadline:
            time.sleep(0.05)
        server.send_signal(signal.SIGKILL)  # in the middle of the load
        server.wait(10)
        time.sleep(0.5)
        stop.set()
        for w in workers:
            w.join(15)
        answered_before = list(received)
        assert len(answered_before) >= 300, f"only {len(answered_before)} answers before the kill"

        server = _start_server(run_dir, port, url, tmp_path / "server.log")
        wait_healthy(base, server)
        after = httpx.post(f"{base}/v1/classify", json={"text": "is the server back?"}, timeout=10)
        assert after.status_code == 200
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    logged = Store(url).request_ids()
    missing = [r for r in answered_before if r not in logged]
    assert not missing, f"{len(missing)} of {len(answered_before)} answered requests are not in the log"
    assert after.json()["request_id"] in logged


# ---------------------------------------------------------------------------------------------
# Two replicas, one PostgreSQL


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A throwaway PostgreSQL cluster on a loopback port (tests/serve_runs.postgres_cluster)."""
    with postgres_cluster() as url:
        yield url


def test_two_replicas_on_one_postgres_share_the_log_and_the_arm_weights(run_dir, models, postgres):
    config = ServeConfig(arms_refresh_s=0.2)
    first = create_app(run_dir, config, arms=ARMS, store_url=postgres, models=models, reset_weights=True)
    second = create_app(run_dir, config, arms=ARMS, store_url=postgres, models=models)
    users = [f"user{i}" for i in range(40)]
    with ServerThread(first) as a, ServerThread(second) as b, httpx.Client(timeout=30) as client:
        ids, arms = [], {}
        for server in (a, b):
            for u in users:
                r = client.post(f"{server.url}/v1/classify", json={"text": "my parcel is late", "user": u}).json()
                ids.append(r["request_id"])
                arms.setdefault(u, set()).add(r["arm"])
        assert all(len(seen) == 1 for seen in arms.values())  # one assignment across replicas
        # feedback through the other replica finds the request in the shared log
        fb = client.post(f"{b.url}/v1/feedback", json={"request_id": ids[0], "thumbs": "up"})
        assert fb.status_code == 200 and fb.json()["stored"] == ["thumbs"]
        assert client.post(f"{a.url}/v1/feedback", json={"request_id": ids[0], "thumbs": "up"}).json()[
            "duplicates"
        ] == ["thumbs"]
        # promote through one replica; the other follows without a restart
        client.post(f"{a.url}/admin/arms", json={"weights": {"candidate": 1.0}}).raise_for_status()
        deadline = time.time() + 10
        while client.get(f"{b.url}/v1/arms").json()["weights"]["candidate"] != 1.0:
            assert time.time() < deadline, "the second replica did not pick up the new weights"
            time.sleep(0.1)
        assert client.post(f"{b.url}/v1/classify", json={"text": "hi", "user": "anyone"}).json()["arm"] == "candidate"
    store = Store(postgres)
    logged = store.request_ids()
    assert set(ids) <= logged and len(logged) == len(ids) + 1
    store.close()


def test_a_margin_threshold_defers_answers_close_to_the_out_of_scope_class(tmp_path, banking77):
    """The evaluation's in-scope-margin threshold, served: a row is answered out of scope when its
    best in-scope probability beats out_of_scope's by less than the cut (real tfidf_lr on BANKING77
    with two intents held out as out_of_scope)."""
    import pandas as pd

    from tunewise.candidates.base import in_scope_margin

    raw = pd.read_csv(banking77 / "train.csv")
    intents = sorted(raw["category"].unique())
    kept, held = intents[:6], intents[6:8]
    rows = pd.concat([raw[raw["category"].isin(kept)].groupby("category").head(30), raw[raw["category"].isin(held)]])
    rows = rows.assign(category=rows["category"].where(rows["category"].isin(kept), "out_of_scope"))
    records = pd.DataFrame(
        {"id": [f"r{i}" for i in range(len(rows))], "input": rows["text"].tolist(), "context": "[]"}
    ).assign(label=rows["category"].tolist())
    unseen = records[records["label"] == "out_of_scope"].iloc[20:]  # held-out rows not trained on
    train = pd.concat(
        [records[records["label"] != "out_of_scope"], records[records["label"] == "out_of_scope"].iloc[:20]]
    )
    run = tmp_path / "runs" / "r1"
    (run / "split").mkdir(parents=True)
    (run / "evaluate").mkdir()
    train.to_parquet(run / "split" / "train.parquet")
    train.iloc[::5].to_parquet(run / "split" / "validation.parquet")
    train.iloc[::7].to_parquet(run / "split" / "test.parquet")
    summary = {
        "gate": {"passed": True, "candidate": "tfidf_lr", "baseline": "majority"},
        "candidates": [
            {"name": "tfidf_lr", "out_of_scope_threshold": 0.3, "out_of_scope_threshold_score": "in_scope_margin"}
        ],
    }
    (run / "evaluate" / "summary.json").write_text(json.dumps(summary))
    served = load_models(run, {"tfidf_lr"})["tfidf_lr"]
    assert served.threshold == 0.3 and served.threshold_score == "in_scope_margin"

    items = [(text, "[]") for text in [*unseen["input"], *raw[raw["category"].isin(kept)]["text"].iloc[-60:]]]
    answers = served.predict(items)
    frame = pd.DataFrame({"id": [str(i) for i in range(len(items))], "input": [t for t, _ in items], "context": "[]"})
    proba = np.stack(served.candidate.predict(frame)["proba"].to_numpy())
    margin = in_scope_margin(proba, served.candidate.labels_, "out_of_scope")
    flagged = np.array([a["out_of_scope"] for a in answers])
    assert (flagged == (margin < 0.3)).all()
    assert all(a["prediction"] == "out_of_scope" for a, f in zip(answers, flagged, strict=True) if f)
    # the margin defers rows the top probability alone would answer: confident, but close to out_of_scope
    confident = np.array([a["score"] >= 0.3 for a in answers])
    assert (flagged & confident).any()
    # the same threshold on the top probability (the evaluation's choice without an out-of-scope class)
    by_confidence = ServedModel("tfidf_lr", served.candidate, 0.3, "out_of_scope").predict(items)
    assert [a["out_of_scope"] for a in by_confidence] == [bool(c < 0.3) for c in (a["score"] for a in answers)]

    # the evaluation's second cut, on the out-of-scope neighbour margin: served from the saved
    # training embeddings, a row below either cut is answered out of scope
    from tunewise.evaluation.neighbours import NEIGHBOURS_FILE, OutOfScopeNeighbours

    summary["candidates"][0]["out_of_scope_neighbour_threshold"] = 0.0
    (run / "evaluate" / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ServeError, match=NEIGHBOURS_FILE):  # the cut without its embeddings: refused
        load_models(run, {"tfidf_lr"})
    neighbours = OutOfScopeNeighbours.fit(
        train["input"].tolist(), train["label"].tolist(), "out_of_scope", "embedded:minilm-l6"
    )
    (run / "evaluate" / NEIGHBOURS_FILE).write_bytes(b"PK\x03\x04 not a whole archive")
    with pytest.raises(ServeError, match="not a readable out-of-scope neighbours file"):
        load_models(run, {"tfidf_lr"})
    neighbours.save(run / "evaluate" / NEIGHBOURS_FILE)
    served = load_models(run, {"tfidf_lr"})["tfidf_lr"]
    assert served.neighbour_threshold == 0.0
    near = neighbours.margin([t for t, _ in items]) < 0.0
    flagged_both = np.array([a["out_of_scope"] for a in served.predict(items)])
    assert (flagged_both == ((margin < 0.3) | near)).all()
    assert (near & ~(margin < 0.3)).any()  # rows only the neighbours catch
    # a margin cut below 0 (the evaluation's when the class answers in-scope messages out of scope
    # past the budget): a class answer above it is answered with the best in-scope label
    lenient = ServedModel("tfidf_lr", served.candidate, -0.2, "out_of_scope", "in_scope_margin").predict(items)
    model_says_oos = np.array([a["model_prediction"] == "out_of_scope" for a in lenient])
    overridden = model_says_oos & (margin >= -0.2)
    assert overridden.any() and (model_says_oos & (margin < -0.2)).any()
    columns = list(served.candidate.labels_)
    in_scope_columns = [i for i, label in enumerate(columns) if label != "out_of_scope"]
    best = np.asarray(columns, dtype=object)[in_scope_columns][proba[:, in_scope_columns].argmax(1)]
    for answer, flag, over, label in zip(lenient, margin < -0.2, overridden, best, strict=True):
        assert answer["out_of_scope"] == bool(flag)
        if over:
            assert answer["prediction"] == label != "out_of_scope"

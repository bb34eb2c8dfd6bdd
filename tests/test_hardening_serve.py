"""Issue 18: hardening of ``tunewise serve``, one regression test (or more) per item.

Real uvicorn servers on 127.0.0.1 (random free ports), httpx clients and raw sockets; the run
folders are built as in test_serve.py (classify: majority and tfidf_lr refitted from the demo
split) and test_serve_generate.py (generate: the embedded SmolLM2 as zero_shot_llm_gen, and
nn_reply). Nothing under test is mocked.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx
import pandas as pd
import pytest

from serve_runs import make_classify_run, postgres_cluster, wait_healthy
from tunewise.models.loading import quiet_known_warnings
from tunewise.monitoring.store import Store
from tunewise.serving.app import ServerThread, create_app
from tunewise.serving.arms import check_bind, normalise_weights
from tunewise.serving.base import ServeConfig, ServeError
from tunewise.serving.served_model import load_models

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARMS = "incumbent=0.5,candidate=0.5"
LLM, NN = "zero_shot_llm_gen", "nn_reply"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder: data/, runs/r1 (classify: split/ and evaluate/summary.json naming majority
    and tfidf_lr) and tunewise.yaml, enough for `tunewise serve` to refit and serve."""
    folder = tmp_path_factory.mktemp("hardening")
    run, files = make_classify_run(folder, n_rows=600)
    (folder / "tunewise.yaml").write_text(
        json.dumps({"task": "classify", "data": {"train": str(files.data), "test": str(files.test)}, "tracking": "off"})
    )
    return folder


@pytest.fixture(scope="module")
def run_dir(project) -> Path:
    return project / "runs" / "r1"


@pytest.fixture(scope="module")
def models(run_dir):
    return load_models(run_dir, {"majority", "tfidf_lr"})


@pytest.fixture(scope="module")
def gen_run(tmp_path_factory) -> Path:
    """A generate run: zero_shot_llm_gen (SmolLM2, replies of at most 16 tokens) and nn_reply."""
    from tunewise.config.sections import config_from_dict
    from tunewise.core.artifacts import write_json, write_parquet
    from tunewise.data.ingest import ingest
    from tunewise.demo.data import generate_demo

    folder = tmp_path_factory.mktemp("hardening_generate")
    files = generate_demo(folder / "data", task="generate", n_rows=200, n_test=40)
    run = folder / "runs" / "g1"
    train = ingest(files.data, task="generate").frame
    test = ingest(files.test, task="generate").frame
    write_parquet(run / "split" / "train.parquet", train)
    write_parquet(run / "split" / "validation.parquet", test.iloc[:10])
    write_parquet(run / "split" / "test.parquet", test.iloc[10:])
    cfg = config_from_dict(
        {
            "task": "generate",
            "data": {"train": str(files.data), "test": str(files.test)},
            "baseline": {"max_new_tokens": 16},
            "tracking": "off",
        }
    )
    write_json(run / "config.json", cfg.model_dump(mode="json"))
    write_json(
        run / "evaluate" / "summary.json",
        {
            "gate": {"passed": True, "candidate": NN, "baseline": LLM},
            "candidates": [{"name": LLM, "out_of_scope_threshold": None}, {"name": NN, "out_of_scope_threshold": None}],
        },
    )
    return run


@pytest.fixture(scope="module")
def gen_models(gen_run):
    return load_models(gen_run, {LLM, NN})


def _sqlite(tmp_path: Path, name: str = "log.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cli():
    import typer

    from tunewise.cli.serve import register

    cli = typer.Typer()
    register(cli)
    return cli


def _detail(response: httpx.Response) -> str:
    """The documented error shape: {"detail": "<a sentence>"}, never a trace."""
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str), body
    assert "Traceback" not in body["detail"]
    return body["detail"]


# ---------------------------------------------------------------------------------------------
# 1. Chat history: caps on turns and characters, the model's context limit, a per-request timeout


def test_issue18_1_chat_history_over_the_turn_and_character_caps_is_refused_with_413(run_dir, models, tmp_path):
    config = ServeConfig(max_turns=32, max_context_chars=6000)
    url = _sqlite(tmp_path)
    app = create_app(run_dir, config, arms=ARMS, store_url=url, models=models)
    # the issue's request: 1,000 turns in about 30 KB
    thousand = [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi there " * 3} for i in range(1000)]
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        chat = client.post(
            "/v1/chat/completions", json={"messages": [*thousand, {"role": "user", "content": "refund?"}]}
        )
        assert chat.status_code == 413
        assert "1001 messages" in _detail(chat) and "serve.max_turns" in _detail(chat)
        classify = client.post("/v1/classify", json={"text": "refund?", "context": thousand})
        assert classify.status_code == 413 and "serve.max_turns" in _detail(classify)
        # 32 messages pass, 33 do not
        turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(31)]
        ok = client.post("/v1/chat/completions", json={"messages": [*turns, {"role": "user", "content": "my card?"}]})
        assert ok.status_code == 200, ok.text
        over = client.post(
            "/v1/chat/completions",
            json={"messages": [*turns, {"role": "user", "content": "x"}, {"role": "user", "content": "my card?"}]},
        )
        assert over.status_code == 413
        # characters of all messages together
        wide = [{"role": "user", "content": "a" * 2500}, {"role": "assistant", "content": "b" * 2500}]
        chars = client.post("/v1/chat/completions", json={"messages": [*wide, {"role": "user", "content": "c" * 1500}]})
        assert chars.status_code == 413 and "6500 characters" in _detail(chars)
        assert "serve.max_context_chars" in _detail(chars)
        chars = client.post("/v1/classify", json={"text": "c" * 1500, "context": wide})
        assert chars.status_code == 413 and "serve.max_context_chars" in _detail(chars)
        metrics = client.get("/metrics").text
    assert 'tunewise_rejected_requests_total{path="/v1/chat/completions",status="413"} 3.0' in metrics
    # refused requests reach no model and leave no log row; the one that passed does
    assert len(Store(url).requests_frame()) == 1


def _history(words: int, turns: int) -> list[dict[str, str]]:
    sentence = "I ordered a blue kettle two weeks ago and it still has not arrived at my flat. "
    per_turn = max(1, words // (turns * len(sentence.split())))
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": sentence * per_turn} for i in range(turns)]


def test_issue18_1_the_llms_context_limit_is_enforced_by_refusing_or_dropping_the_oldest_turns(
    gen_run, gen_models, tmp_path
):
    history = _history(words=600, turns=8)  # about 600 tokens of SmolLM2 in 8 earlier turns
    question = {"role": "user", "content": "Where is my kettle?"}
    system = {"role": "system", "content": "You answer customers of Northwind Goods."}
    llm = gen_models[LLM]
    assert llm.context_tokens == 8192  # SmolLM2's own limit is the default
    body = {"messages": [system, *history, question], "arm": "incumbent", "max_tokens": 8}

    refuse = create_app(
        gen_run,
        ServeConfig(max_context_tokens=400),
        arms={"incumbent": 1.0, "candidate": 0.0},
        store_url=_sqlite(tmp_path, "refuse.db"),
        models=gen_models,
    )
    with ServerThread(refuse) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 413
        detail = _detail(r)
        assert "tokens" in detail and "400" in detail and LLM in detail and "drop the oldest turns" in detail
        short = client.post("/v1/chat/completions", json={**body, "messages": [system, question]})
        assert short.status_code == 200, short.text

    truncate = create_app(
        gen_run,
        ServeConfig(max_context_tokens=400, context_overflow="truncate"),
        arms={"incumbent": 1.0, "candidate": 0.0},
        store_url=_sqlite(tmp_path, "truncate.db"),
        models=gen_models,
    )
    with ServerThread(truncate) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        answer = r.json()
        dropped = answer["tunewise"]["dropped_turns"]
        assert 0 < dropped < len(history)
        # what was kept fits: the newest turns, the system prompt and the question
        kept = [system, *history[dropped:], question]
        assert answer["usage"]["prompt_tokens"] == sum(llm.count_tokens(m["content"]) for m in kept)
        assert answer["usage"]["prompt_tokens"] + llm.prompt_overhead_tokens() <= 400
        # a single message beyond the limit cannot be truncated: refused
        huge = client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "kettle " * 1000}], "arm": "incumbent"},
        )
        assert huge.status_code == 413 and "even without earlier turns" in _detail(huge)


def test_issue18_1_a_request_past_its_timeout_gets_504_its_model_work_stops_and_the_next_is_not_kept_waiting(
    gen_run, gen_models, tmp_path
):
    """The issue: one long request held the LLM arm for 135 s and the next waited 105 s. Here a
    ~6,000-token history (the LLM needs far longer than the timeout to read it on this machine)
    gets 504 on time, and a short request sent right after is answered within its own timeout:
    without the model call being stopped it would queue behind the long one and time out too."""
    timeout = 5.0
    url = _sqlite(tmp_path)
    app = create_app(
        gen_run,
        ServeConfig(request_timeout_s=timeout, max_context_chars=40000, max_body_bytes=60000),
        arms={"incumbent": 1.0, "candidate": 0.0},
        store_url=url,
        models=gen_models,
    )
    history = _history(words=5500, turns=10)
    assert 5000 < sum(gen_models[LLM].count_tokens(m["content"]) for m in history) < 7500
    long_body = {"messages": [*history, {"role": "user", "content": "So where is it?"}], "arm": "incumbent"}
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        started = time.monotonic()
        long = client.post("/v1/chat/completions", json=long_body)
        long_s = time.monotonic() - started
        assert long.status_code == 504, long.text
        assert f"no answer within {timeout:g} s" in _detail(long)
        assert long_s < timeout + 2.0, long_s
        started = time.monotonic()
        short = client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hello?"}], "arm": "incumbent"}
        )
        short_s = time.monotonic() - started
        assert short.status_code == 200, (short.status_code, short.text, short_s)
        assert short_s < timeout
        metrics = client.get("/metrics").text
    assert 'tunewise_request_timeouts_total{arm="incumbent"} 1.0' in metrics
    rows = Store(url).requests_frame().set_index("id")
    timed_out = rows[rows["status"] == "error"]
    assert len(timed_out) == 1 and "timeout" in timed_out["error"].iloc[0]  # logged as an error, not "ok"
    assert (rows["status"] == "ok").sum() == 1


# ---------------------------------------------------------------------------------------------
# 2. An admin key; admin functions answer loopback clients only without one; no keyless public bind


def test_issue18_2_admin_endpoints_and_forced_arms_need_the_admin_key_or_a_loopback_client(
    run_dir, models, tmp_path, monkeypatch
):
    monkeypatch.delenv("TUNEWISE_API_KEY", raising=False)
    monkeypatch.delenv("TUNEWISE_ADMIN_KEY", raising=False)
    remote = {"X-Forwarded-For": "203.0.113.7"}  # a client behind a proxy on this host (uvicorn trusts loopback)
    app = create_app(run_dir, ServeConfig(), arms=ARMS, store_url=_sqlite(tmp_path, "a.db"), models=models)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post("/admin/arms", json={"weights": {"incumbent": 1, "candidate": 1}}).status_code == 200
        assert client.post("/v1/classify", json={"text": "refund", "arm": "candidate"}).status_code == 200
        r = client.post("/admin/arms", json={"weights": {"candidate": 1}}, headers=remote)
        assert r.status_code == 403 and "loopback" in _detail(r) and "TUNEWISE_ADMIN_KEY" in _detail(r)
        r = client.post("/v1/classify", json={"text": "refund", "arm": "candidate"}, headers=remote)
        assert r.status_code == 403 and "forcing an arm" in _detail(r)
        r = client.post(
            "/v1/chat/completions",
            json={"model": "candidate", "messages": [{"role": "user", "content": "refund"}]},
            headers=remote,
        )
        assert r.status_code == 403
        assert client.post("/v1/classify", json={"text": "refund", "user": "u1"}, headers=remote).status_code == 200
        assert client.get("/v1/arms").json()["weights"] == {"incumbent": 1.0 / 2, "candidate": 1.0 / 2}

    monkeypatch.setenv("TUNEWISE_API_KEY", "api-key")
    monkeypatch.setenv("TUNEWISE_ADMIN_KEY", "admin-key")
    app = create_app(run_dir, ServeConfig(), arms=ARMS, store_url=_sqlite(tmp_path, "b.db"), models=models)
    api, admin = {"Authorization": "Bearer api-key"}, {"Authorization": "Bearer admin-key"}
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post("/admin/arms", json={"weights": {"candidate": 1}}).status_code == 401
        r = client.post("/admin/arms", json={"weights": {"candidate": 1}}, headers=api)  # loopback is not enough now
        assert r.status_code == 401 and "admin key" in _detail(r)
        assert client.post("/v1/classify", json={"text": "hi", "arm": "candidate"}, headers=api).status_code == 401
        assert client.post("/v1/classify", json={"text": "hi"}, headers=api).status_code == 200
        assert client.post("/admin/arms", json={"weights": {"candidate": 1}}, headers=admin).status_code == 200
        assert client.get("/v1/arms", headers=admin).json()["weights"] == {"incumbent": 0.0, "candidate": 1.0}
        assert client.post("/v1/classify", json={"text": "hi", "arm": "incumbent"}, headers=admin).status_code == 200
        # promote / rollback send the admin key
        from typer.testing import CliRunner

        result = CliRunner().invoke(
            _cli(), ["rollback", "--config", str(tmp_path / "absent.yaml"), "--url", server.url]
        )
        assert result.exit_code == 0, result.output
        assert client.get("/v1/arms", headers=api).json()["weights"] == {"incumbent": 1.0, "candidate": 0.0}


def test_issue18_2_a_non_loopback_bind_without_an_api_key_refuses_to_start_unless_insecure(project, monkeypatch):
    from typer.testing import CliRunner

    monkeypatch.delenv("TUNEWISE_API_KEY", raising=False)
    monkeypatch.delenv("TUNEWISE_ADMIN_KEY", raising=False)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert check_bind(host) is None
    with pytest.raises(ServeError, match="refusing to listen on 0.0.0.0 without an API key.*--insecure"):
        check_bind("0.0.0.0")
    assert "WITHOUT an API key" in check_bind("0.0.0.0", insecure=True)
    monkeypatch.setenv("TUNEWISE_API_KEY", "k")
    assert "TUNEWISE_ADMIN_KEY is not set" in check_bind("192.0.2.10")
    monkeypatch.delenv("TUNEWISE_API_KEY")

    result = CliRunner().invoke(
        _cli(),
        [
            "serve",
            "--config",
            str(project / "tunewise.yaml"),
            "--run-id",
            "r1",
            "--host",
            "0.0.0.0",
            "--port",
            str(_free_port()),
        ],
    )
    assert result.exit_code == 1 and "refusing to listen on 0.0.0.0" in result.output
    assert "serving" not in result.output
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunewise.serving.app",
            str(project / "runs" / "r1"),
            "--host",
            "0.0.0.0",
            "--port",
            str(_free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "TUNEWISE_API_KEY"},
    )
    assert done.returncode == 2 and "refusing to listen on 0.0.0.0" in done.stderr and "Traceback" not in done.stderr


# ---------------------------------------------------------------------------------------------
# 3. The Host header (DNS rebinding) when no API key is set


def test_issue18_3_without_an_api_key_only_loopback_host_headers_are_answered(run_dir, models, tmp_path, monkeypatch):
    monkeypatch.delenv("TUNEWISE_API_KEY", raising=False)
    app = create_app(run_dir, ServeConfig(), arms=ARMS, store_url=_sqlite(tmp_path, "a.db"), models=models)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        for host in ("localhost", "localhost:8000", "127.0.0.1", "127.0.0.1:1234", "[::1]", "[::1]:8000", "LOCALHOST"):
            assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
        for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil:80", "[::2]:80"):
            r = client.post("/v1/classify", json={"text": "hi"}, headers={"Host": host})
            assert r.status_code == 400, host
            assert "Host header" in _detail(r) and "localhost" in _detail(r)
            assert client.get("/healthz", headers={"Host": host}).status_code == 400
        r = client.post("/admin/arms", json={"weights": {"candidate": 1}}, headers={"Host": "attacker.example"})
        assert r.status_code == 400
        assert client.get("/v1/arms").json()["weights"] == {"incumbent": 0.5, "candidate": 0.5}
    # with an API key the key protects the server and any Host is answered
    monkeypatch.setenv("TUNEWISE_API_KEY", "k")
    app = create_app(run_dir, ServeConfig(), arms=ARMS, store_url=_sqlite(tmp_path, "b.db"), models=models)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.post("/v1/classify", json={"text": "hi"}, headers={"Host": "api.example.com", "X-API-Key": "k"})
        assert r.status_code == 200, r.text


# ---------------------------------------------------------------------------------------------
# 4. A Content-Length larger than the body does not hang the connection


def _raw_exchange(url: str, request: bytes, wait: float) -> tuple[bytes, float, bool]:
    """Send ``request`` on a raw socket; read until the server closes or ``wait`` passes:
    (what came back, seconds until the first byte, whether the server closed the connection)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(request)
        started = time.monotonic()
        data, first, closed = b"", None, False
        sock.settimeout(0.2)
        while time.monotonic() - started < wait:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                closed = True
                break
            first = first if first is not None else time.monotonic() - started
            data += chunk
    return data, (first if first is not None else math.inf), closed


def test_issue18_4_a_content_length_beyond_the_body_is_answered_408_and_closed_in_bounded_time(
    run_dir, models, tmp_path
):
    app = create_app(run_dir, ServeConfig(body_timeout_s=1.0), arms=ARMS, store_url=_sqlite(tmp_path), models=models)
    with ServerThread(app) as server:
        for method, path in (("POST", "/v1/classify"), ("POST", "/v1/feedback"), ("GET", "/healthz")):
            request = (
                f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: 100\r\n\r\n"
            ).encode() + b'{"text": "hel'
            data, first, closed = _raw_exchange(server.url, request, wait=10.0)
            assert data.startswith(b"HTTP/1.1 408"), (method, path, data[:200])
            assert first < 5.0 and closed, (method, path, first, closed)
            assert b'"detail":' in data and b"not received within 1 s" in data
        # the server is still fine
        assert httpx.post(f"{server.url}/v1/classify", json={"text": "hello"}, timeout=30).status_code == 200


# ---------------------------------------------------------------------------------------------
# 5. Arm weights: validated, and the log and the running server always agree


def test_issue18_5_arm_weights_are_validated_and_stored_and_running_weights_agree(run_dir, models, tmp_path):
    assert normalise_weights({"a": 1e308, "b": 1e308}) == {"a": 0.5, "b": 0.5}
    assert normalise_weights({"a": 5e-324, "b": 0}) == {"a": 1.0, "b": 0.0}
    for bad in ({"a": math.inf}, {"a": math.nan, "b": 1}, {"a": -1, "b": 2}, {"a": 0, "b": 0}, {}):
        with pytest.raises(ValueError):
            normalise_weights(bad)
    url = _sqlite(tmp_path)
    app = create_app(run_dir, ServeConfig(arms_refresh_s=0.2), arms=ARMS, store_url=url, models=models)

    def stored() -> dict[str, float]:
        store = Store(url)
        try:
            return {n: w for n, (_, w) in store.arm_weights().items()}
        finally:
            store.close()

    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.post("/admin/arms", json={"weights": {"incumbent": 1e308, "candidate": 1e308}})
        assert r.status_code == 200 and r.json()["weights"] == {"incumbent": 0.5, "candidate": 0.5}
        assert stored() == client.get("/v1/arms").json()["weights"] == {"incumbent": 0.5, "candidate": 0.5}
        r = client.post("/admin/arms", json={"weights": {"incumbent": 1e308, "candidate": 1e-300}})
        assert r.status_code == 200 and stored() == client.get("/v1/arms").json()["weights"] == r.json()["weights"]
        before = client.get("/v1/arms").json()["weights"]
        raw = {
            "infinite": b'{"weights": {"incumbent": 1e309}}',
            "Infinity": b'{"weights": {"incumbent": Infinity}}',
            "NaN": b'{"weights": {"incumbent": NaN, "candidate": 1}}',
            "negative": b'{"weights": {"candidate": -1}}',
            "all zero": b'{"weights": {"incumbent": 0, "candidate": 0}}',
            "empty": b'{"weights": {}}',
            "not a number": b'{"weights": {"incumbent": "lots"}}',
        }
        for what, content in raw.items():
            r = client.post("/admin/arms", content=content, headers={"content-type": "application/json"})
            assert r.status_code == 422, (what, r.status_code, r.text)
            assert _detail(r).startswith("invalid request: weights")
        time.sleep(0.5)  # a refresh from the log happened meanwhile
        assert stored() == client.get("/v1/arms").json()["weights"] == before
        history = Store(url).arm_history()
        assert [h["weights"] for h in history] == [{"incumbent": 0.5, "candidate": 0.5}, before]

    # a log left with all-zero weights (the old bug) is repaired at start, not silently ignored
    store = Store(url)
    with store.engine.begin() as conn:
        from tunewise.monitoring.store import arms_table

        conn.execute(arms_table.update().values(weight=0.0))
    store.close()
    app = create_app(run_dir, ServeConfig(), arms=ARMS, store_url=url, models=models)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        running = client.get("/v1/arms").json()["weights"]
    assert running == stored() == {"incumbent": 0.5, "candidate": 0.5}


# ---------------------------------------------------------------------------------------------
# 6. Every arm is checked before the server says it is serving


def test_issue18_6_an_arm_naming_a_missing_candidate_is_an_error_before_serving(project, run_dir, monkeypatch):
    from typer.testing import CliRunner

    monkeypatch.delenv("TUNEWISE_API_KEY", raising=False)
    result = CliRunner().invoke(
        _cli(),
        [
            "serve",
            "--config",
            str(project / "tunewise.yaml"),
            "--run-id",
            "r1",
            "--arms",
            "incumbent=1,foo:nonexistent=1",
            "--port",
            str(_free_port()),
        ],
    )
    assert result.exit_code == 1, result.output
    assert "arm 'foo'" in result.output and "'nonexistent'" in result.output and "not trained" in result.output
    assert "serving" not in result.output and "Traceback" not in result.output
    with pytest.raises(ServeError, match="arm 'foo': candidate 'nonexistent'"):
        create_app(run_dir, ServeConfig(), arms="incumbent=1,foo:nonexistent=1", store_url="sqlite://")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunewise.serving.app",
            str(run_dir),
            "--port",
            str(_free_port()),
            "--arms",
            "foo:nonexistent=1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "arm 'foo': candidate 'nonexistent'" in done.stderr and "Traceback" not in done.stderr


# ---------------------------------------------------------------------------------------------
# 7. A second, different label for a request is kept (the latest wins)


def test_issue18_7_a_second_different_label_replaces_the_first_and_both_stay_in_the_history(run_dir, models, tmp_path):
    from tunewise.serving.retrain import feedback_training_rows

    url = _sqlite(tmp_path)
    app = create_app(run_dir, ServeConfig(), arms=ARMS, store_url=url, models=models)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        rid = client.post("/v1/classify", json={"text": "I want my money back", "arm": "candidate"}).json()[
            "request_id"
        ]
        labels = sorted(models["tfidf_lr"].labels)
        first, second = labels[0], labels[1]
        r = client.post("/v1/feedback", json={"request_id": rid, "label": first, "thumbs": "down"}).json()
        assert sorted(r["stored"]) == ["label", "thumbs"] and r["replaced"] == [] and r["duplicates"] == []
        r = client.post("/v1/feedback", json={"request_id": rid, "label": first}).json()
        assert r["stored"] == [] and r["duplicates"] == ["label"]  # the same label again: a duplicate
        time.sleep(0.01)
        r = client.post("/v1/feedback", json={"request_id": rid, "label": second, "thumbs": "up"}).json()
        assert r["stored"] == ["label"] and r["replaced"] == ["label"] and r["duplicates"] == ["thumbs"]
        r = client.post("/v1/feedback", json={"request_id": rid, "label": second}).json()
        assert r["duplicates"] == ["label"]
    store = Store(url)
    try:
        feedback, requests = store.feedback_frame(), store.requests_frame()
        history = store.feedback_history(rid)
    finally:
        store.close()
    assert feedback.set_index("kind")["value"].to_dict() == {"label": second, "thumbs": "down"}
    labels_seen = history[history["kind"] == "label"]
    assert labels_seen["value"].tolist() == [first, second] and labels_seen["outcome"].tolist() == ["new", "replaced"]
    assert labels_seen["ts"].is_monotonic_increasing
    rows, _ = feedback_training_rows(requests, feedback, task="classify")
    assert rows.set_index("request_id").loc[rid, "label"] == second  # the latest label trains


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on a loopback port (tests/serve_runs.postgres_cluster)."""
    with postgres_cluster() as url:
        yield url


def test_issue18_7_label_corrections_on_postgresql_replace_and_keep_the_history(postgres):
    """Replicas share a PostgreSQL log: the same rules through its writer (ON CONFLICT ... DO UPDATE)."""
    store = Store(postgres)
    try:
        store.insert_requests(
            [{"id": "r1", "ts": 1.0, "endpoint": "classify", "arm": "a", "served_by": "a", "status": "ok"}]
        )
        writer = store.writer()

        def post(kind: str, value: str, ts: float) -> str:
            row = {"request_id": "r1", "kind": kind, "value": value, "ts": ts}
            return writer.submit("feedback", row).result(30)

        assert [post("label", "a", 10.0), post("label", "a", 11.0), post("label", "b", 12.0)] == [
            "new",
            "duplicate",
            "replaced",
        ]
        assert post("label", "c", 5.0) == "duplicate"  # older than the stored correction: the newer one stays
        assert [post("thumbs", "up", 13.0), post("thumbs", "down", 14.0)] == ["new", "duplicate"]
        feedback = store.feedback_frame().set_index("kind")
        assert feedback.loc["label", "value"] == "b" and feedback.loc["label", "ts"] == 12.0
        history = store.feedback_history("r1")
        assert history[["kind", "value", "outcome"]].values.tolist() == [
            ["label", "a", "new"],
            ["label", "b", "replaced"],
            ["thumbs", "up", "new"],
        ]
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------
# 8. The request log is private


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_issue18_8_the_request_log_is_created_0600_in_a_0700_folder(run_dir, models, tmp_path):
    old_umask = os.umask(0o022)  # the usual umask: files 0644 and folders 0755 unless made private
    try:
        own_run = tmp_path / "runs" / "r1"
        shutil.copytree(run_dir, own_run)
        app = create_app(own_run, ServeConfig(), arms=ARMS, models=models)  # the default log: runs/r1/serve/
        with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
            rid = client.post("/v1/classify", json={"text": "secret text", "user": "alice@example.com"}).json()[
                "request_id"
            ]
            client.post("/v1/feedback", json={"request_id": rid, "thumbs": "up"}).raise_for_status()
            files = sorted((own_run / "serve").iterdir())
            assert {f.name for f in files} >= {"requests.db", "requests.db-wal", "requests.db-shm"}
            for f in files:
                assert _mode(f) == 0o600, (f.name, oct(_mode(f)))
        assert _mode(own_run / "serve") == 0o700
        assert _mode(own_run / "serve" / "requests.db") == 0o600

        # a log named by URL in a new folder; and an existing world-readable log is tightened
        Store(f"sqlite:///{tmp_path / 'new' / 'deeper' / 'log.db'}").close()
        assert _mode(tmp_path / "new") == _mode(tmp_path / "new" / "deeper") == 0o700
        assert _mode(tmp_path / "new" / "deeper" / "log.db") == 0o600
        loose = tmp_path / "loose.db"
        Store(f"sqlite:///{loose}").close()
        os.chmod(loose, 0o644)
        os.chmod(tmp_path, 0o755)
        Store(f"sqlite:///{loose}").close()
        assert _mode(loose) == 0o600
        assert _mode(tmp_path) == 0o755  # a folder the user named (it could be /tmp) is left as it is
    finally:
        os.umask(old_umask)


# ---------------------------------------------------------------------------------------------
# 9. CSV cells from user text cannot run as spreadsheet formulas


def test_issue18_9_csv_cells_starting_a_formula_are_escaped_with_a_quote(tmp_path):
    import csv

    from tunewise.evaluation.human_sheet import csv_safe, read_sheet, write_sheet

    assert [csv_safe(v) for v in ("=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx", "fine", "a=b", 3, None)] == [
        "'=1+1",
        "'+1",
        "'-2",
        "'@SUM(A1)",
        "'\tx",
        "'\rx",
        "fine",
        "a=b",
        3,
        None,
    ]
    inputs = ['=HYPERLINK("http://evil.example","click")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(1,2)", "plain text"]
    records = pd.DataFrame({"id": [f"=id{i}" for i in range(5)], "input": inputs, "reference": ["=ref"] * 5})
    answers = {
        "cand": pd.Series(["=answer"] * 5, index=records["id"]),
        "base": pd.Series(["-answer"] * 5, index=records["id"]),
    }
    files = write_sheet(tmp_path, records, answers, n=5, seed=1, reference_column="reference")
    with open(files.sheet_csv, newline="", encoding="utf-8") as fh:
        sheet = list(csv.DictReader(fh))
    with open(files.key_csv, newline="", encoding="utf-8") as fh:
        key = list(csv.DictReader(fh))
    for row in sheet:
        for column in ("input", "reference", "answer_A", "answer_B"):
            value = row[column]
            assert not value.startswith(("=", "+", "-", "@")), (column, value)
        assert row["input"] == "plain text" or row["input"].startswith("'")
    assert {row["input"] for row in sheet} == {"'" + t if t[0] in "=+-@" else t for t in inputs}
    assert all(row["id"].startswith("'=") for row in key)
    # the page's own CSV export escapes the same way
    page = files.sheet_html.read_text()
    script = page[page.index("function quote") : page.index("function csv")]
    node = shutil.which("node")
    if node:
        out = subprocess.run(
            [
                node,
                "-e",
                script + "\nfor (const v of ['=1+1', '+1', '-2', '@x', 'ok', 'a,b', '=a,b'])"
                " console.log(JSON.stringify(quote(v)));",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert [json.loads(line) for line in out.stdout.split()] == [
            "'=1+1",
            "'+1",
            "'-2",
            "'@x",
            "ok",
            '"a,b"',
            '"\'=a,b"',
        ]
    else:  # pragma: no cover - node is on the development VM
        assert 'if (/^[=+\\-@\\t\\r]/.test(v)) v = "\'" + v;' in script
    # a filled sheet still reads back, including an escaped "=" (a tie)
    filled = tmp_path / "filled.csv"
    rows = [{**row, "preference": pref} for row, pref in zip(sheet, ["A", "B", "'=", "tie", ""])]
    pd.DataFrame(rows).to_csv(filled, index=False)
    ratings = read_sheet(filled, files.key_csv, "cand")
    assert ratings["ties"] == 2 and ratings["unrated"] == 1 and ratings["wins"] + ratings["losses"] == 2


# ---------------------------------------------------------------------------------------------
# 10. The known harmless transformers warning is filtered at server start


PKV = (
    "`past_key_values` is deprecated and will be removed in version 5.40.0 for `LlamaForCausalLM.forward`. "
    "Use `cache` instead."
)


def test_issue18_10_the_past_key_values_future_warning_is_filtered_and_others_are_not():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_warnings()
        warnings.warn(PKV, FutureWarning, stacklevel=1)
        warnings.warn(
            PKV.replace("5.40.0", "6.0.0").replace("LlamaForCausalLM.forward", "X.generate"),
            FutureWarning,
            stacklevel=1,
        )
        # PEFT's read of the renamed gradient-checkpointing property, once per LoRA training
        warnings.warn(
            "`is_gradient_checkpointing` is deprecated and will be removed in v6. "
            "Use `is_activation_checkpointing` instead.",
            FutureWarning,
            stacklevel=1,
        )
        warnings.warn("`something_else` is deprecated", FutureWarning, stacklevel=1)
        warnings.warn(PKV, UserWarning, stacklevel=1)  # the filter names the category too
    assert [(w.category, str(w.message)) for w in caught] == [
        (FutureWarning, "`something_else` is deprecated"),
        (UserWarning, PKV),
    ]


def test_issue18_10_a_served_llm_classifier_logs_no_past_key_values_warning(run_dir, tmp_path):
    """zero_shot_llm scores labels with a cached prompt prefix, passing the cache under its old
    name: transformers warns on every such call. The server's log stays free of it."""
    # the demo data's injected label variants ("account login" beside "account_login") would stop
    # the LLM classifier's fit: a copy of the run with those labels merged
    llm_run = tmp_path / "runs" / "r1"
    shutil.copytree(run_dir, llm_run)
    for part in ("train", "validation", "test"):
        frame = pd.read_parquet(llm_run / "split" / f"{part}.parquet")
        frame["label"] = frame["label"].str.strip().str.lower().str.replace(" ", "_")
        frame.to_parquet(llm_run / "split" / f"{part}.parquet")
    run_dir = llm_run
    port = _free_port()
    log_path = tmp_path / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TUNEWISE_PROGRESS": "off", "PYTHONWARNINGS": "always"}
    env.pop("TUNEWISE_API_KEY", None)
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tunewise.serving.app",
                str(run_dir),
                "--port",
                str(port),
                "--store",
                _sqlite(tmp_path),
                "--arms",
                "incumbent:zero_shot_llm=1",
                "--threads",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, server, timeout=300, log=log_path)
        for text in ("where is my parcel?", "I want a refund for the kettle", "my card was charged twice"):
            r = httpx.post(f"{base}/v1/classify", json={"text": text}, timeout=120)
            assert r.status_code == 200, r.text
    finally:
        server.terminate()
        server.wait(60)
    text = log_path.read_text()
    assert "past_key_values" not in text, text[-2000:]
    assert "FutureWarning" not in text

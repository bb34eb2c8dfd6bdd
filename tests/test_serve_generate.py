"""tunewise serve on a generate run: a real uvicorn server, httpx, the SQLite log, monitor and retrain.

The run folder is built by hand from the generate demo data (ingested by the real ingest, so the
split holds ``input`` / ``context`` / ``target`` records) with a config.json whose baseline caps
replies at 16 tokens, and an evaluation summary whose gate names zero_shot_llm_gen (incumbent,
the embedded SmolLM2) and nn_reply (candidate). The server refits both from the split. One module
fixture sends the traffic and the feedback; the tests check the answers, the log, the monitor's
per-arm thumbs-up rate and reply-length drift, and the rows retrain takes from thumbs up.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from tunewise.monitoring.store import Store
from tunewise.serving.app import ServerThread, create_app
from tunewise.serving.arms import assign_arm, resolve_arms
from tunewise.serving.base import ServeConfig
from tunewise.serving.served_model import load_models

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LLM, NN = "zero_shot_llm_gen", "nn_reply"
MAX_TOKENS = 16  # the LLM's own reply limit (baseline.max_new_tokens in the run's config)
SERVER_MAX = 64  # serve.max_tokens: the most a request may ask for
WEIGHTS = {"incumbent": 0.5, "candidate": 0.5}
PER_ARM = 6  # users per arm, one thumbs each
SYSTEM = {"role": "system", "content": "You answer customers of Northwind Goods."}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """runs/<id> with config.json, split/ (ingested demo data) and evaluate/summary.json."""
    from tunewise.config.sections import config_from_dict
    from tunewise.core.artifacts import write_json, write_parquet
    from tunewise.data.ingest import ingest
    from tunewise.demo.data import generate_demo

    folder = tmp_path_factory.mktemp("serve_generate")
    files = generate_demo(folder / "data", task="generate", n_rows=300, n_test=60)
    run = folder / "runs" / "g1"
    train = ingest(files.data, task="generate").frame
    test = ingest(files.test, task="generate").frame
    write_parquet(run / "split" / "train.parquet", train)
    write_parquet(run / "split" / "validation.parquet", test.iloc[:20])
    write_parquet(run / "split" / "test.parquet", test.iloc[20:])
    # what the runner saves: the server reads the baseline settings (reply length) from it
    cfg = config_from_dict(
        {
            "task": "generate",
            "data": {"train": str(files.data), "test": str(files.test)},
            "baseline": {"max_new_tokens": MAX_TOKENS},
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
def models(run_dir):
    return load_models(run_dir, {LLM, NN})


@dataclass
class Traffic:
    """What the module fixture sent and got back."""

    store_url: str
    messages: dict[str, str] = field(default_factory=dict)  # request id -> last user message
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # request id -> chat body
    thumbs: dict[str, str] = field(default_factory=dict)  # request id -> thumbs posted first
    ratings: dict[str, float] = field(default_factory=dict)
    first_of_user: dict[str, str] = field(default_factory=dict)  # user -> arm of their first request
    repeat_of_user: dict[str, str] = field(default_factory=dict)  # user -> arm of their second request
    responses: dict[str, httpx.Response] = field(default_factory=dict)  # named checks
    healthz: dict[str, Any] = field(default_factory=dict)
    metrics: str = ""


def _users_per_arm() -> dict[str, list[str]]:
    # users whose sticky arm is known in advance, PER_ARM on each
    out: dict[str, list[str]] = {"incumbent": [], "candidate": []}
    i = 0
    while min(len(v) for v in out.values()) < PER_ARM:
        user = f"customer-{i}"
        arm = assign_arm(user, WEIGHTS)
        if len(out[arm]) < PER_ARM:
            out[arm].append(user)
        i += 1
    return out


@pytest.fixture(scope="module")
def traffic(run_dir, models, tmp_path_factory) -> Traffic:
    url = f"sqlite:///{tmp_path_factory.mktemp('serve_generate_log') / 'log.db'}"
    app = create_app(run_dir, ServeConfig(max_tokens=SERVER_MAX), arms=WEIGHTS, store_url=url, models=models)
    texts = pd.read_parquet(run_dir / "split" / "test.parquet")["input"].tolist()
    out = Traffic(store_url=url)
    users = _users_per_arm()
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        out.healthz = client.get("/healthz").json()

        def chat(user: str, text: str, history: list[dict[str, str]] = ()) -> str:
            # the fields an OpenAI client sends; "model" names no arm here, so the sticky arm decides
            r = client.post(
                "/v1/chat/completions",
                json={
                    "model": "northwind-support",
                    "temperature": 0,
                    "user": user,
                    "max_tokens": SERVER_MAX,
                    "messages": [SYSTEM, *history, {"role": "user", "content": text}],
                },
            )
            assert r.status_code == 200, r.text
            body = r.json()
            rid = body["tunewise"]["request_id"]
            out.messages[rid], out.answers[rid] = text, body
            return rid

        n = 0
        for arm, names in users.items():
            for k, user in enumerate(names):
                rid = chat(user, texts[n])
                n += 1
                out.first_of_user[user] = out.answers[rid]["tunewise"]["arm"]
                # thumbs up on most nn_reply answers, down on most LLM answers
                good = (k > 0) if arm == "candidate" else (k == 0)
                out.thumbs[rid] = "up" if good else "down"
                r = client.post(
                    "/v1/feedback", json={"request_id": rid, "thumbs": out.thumbs[rid], "rating": 5 if good else 2}
                )
                assert r.status_code == 200 and sorted(r.json()["stored"]) == ["rating", "thumbs"], r.text
                out.ratings[rid] = 5.0 if good else 2.0
            # a second, multi-turn message from the first user of the arm: same arm (sticky)
            user = names[0]
            history = [{"role": "user", "content": texts[n]}, {"role": "assistant", "content": "Could you say more?"}]
            rid = chat(user, texts[n + 1], history)
            n += 2
            out.repeat_of_user[user] = out.answers[rid]["tunewise"]["arm"]
            out.responses[f"label+thumbs on {arm}"] = client.post(
                "/v1/feedback", json={"request_id": rid, "label": "order_status", "thumbs": "up"}
            )
            out.responses[f"label on {arm}"] = client.post("/v1/feedback", json={"request_id": rid, "label": "x"})

        some = next(iter(out.thumbs))
        # posted twice (the second time with the other thumb): kept once, the first one
        flipped = "down" if out.thumbs[some] == "up" else "up"
        out.responses["thumbs again"] = client.post("/v1/feedback", json={"request_id": some, "thumbs": flipped})
        out.responses["rating again"] = client.post("/v1/feedback", json={"request_id": some, "rating": 3})
        out.responses["classify"] = client.post("/v1/classify", json={"text": "where is my parcel?", "user": "x"})
        out.responses["max_tokens above the bound"] = client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": SERVER_MAX + 1}
        )
        out.responses["max_completion_tokens above the bound"] = client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": SERVER_MAX + 1},
        )
        # a short reply asked for, from each arm: both names of the limit, the smaller one wins
        for arm in ("candidate", "incumbent"):
            out.responses[f"3 tokens from {arm}"] = client.post(
                "/v1/chat/completions",
                json={
                    "messages": [{"role": "user", "content": texts[0]}],
                    "arm": arm,
                    "max_tokens": 5,
                    "max_completion_tokens": 3,
                },
            )
        out.metrics = client.get("/metrics").text
    return out


# ---------------------------------------------------------------------------------------------
# Arms and models


def test_a_generate_run_resolves_its_arms_and_loads_with_the_runs_settings(run_dir, models):
    specs = resolve_arms(run_dir, None)
    assert [(s.name, s.candidate, s.weight) for s in specs] == [("incumbent", LLM, 0.9), ("candidate", NN, 0.1)]
    # two arms on one candidate (ARM:CANDIDATE=WEIGHT)
    same = resolve_arms(run_dir, "a:nn_reply=0.5,b:nn_reply=0.5")
    assert [(s.name, s.candidate) for s in same] == [("a", NN), ("b", NN)]
    assert {m.task for m in models.values()} == {"generate"}
    assert all(m.threshold is None for m in models.values())  # no out-of-scope threshold for replies
    # the reply length came from the run's config.json, not the 128-token default
    assert models[LLM].candidate.max_new_tokens == MAX_TOKENS


# ---------------------------------------------------------------------------------------------
# The server


def test_chat_completions_answers_in_openai_shape_with_a_sticky_arm(traffic, run_dir, models):
    assert traffic.healthz["task"] == "generate"
    assert traffic.healthz["arms"] == {"incumbent": LLM, "candidate": NN}
    replies = set(pd.read_parquet(run_dir / "split" / "train.parquet")["target"])
    tokenizer = models[LLM].candidate.tokenizer_
    assert len(traffic.answers) == 2 * (PER_ARM + 1)
    for rid, body in traffic.answers.items():
        assert body["object"] == "chat.completion" and body["id"] == f"chatcmpl-{rid}" and len(rid) == 32
        assert isinstance(body["created"], int)
        (choice,) = body["choices"]
        assert choice["index"] == 0 and choice["finish_reason"] in ("stop", "length")
        assert choice["message"]["role"] == "assistant"
        content = choice["message"]["content"]
        assert isinstance(content, str) and content.strip()
        usage = body["usage"]
        assert (
            usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] and usage["prompt_tokens"] > 0
        )
        meta = body["tunewise"]
        assert meta["arm"] == meta["served_by"] and meta["out_of_scope"] is False and meta["score"] is None
        if meta["arm"] == "candidate":
            # the nearest training message's reply, whole: the demo replies are shorter than 64 words
            assert body["model"] == NN and content in replies and choice["finish_reason"] == "stop"
            assert usage["completion_tokens"] == len(content.split())
        else:
            # "length" when the LLM stopped at its own 16-token limit
            assert (choice["finish_reason"] == "length") == (usage["completion_tokens"] >= MAX_TOKENS), body
            assert body["model"] == LLM
            # 16 new tokens at most (a little slack: decode then encode may split differently)
            assert len(tokenizer(content, add_special_tokens=False)["input_ids"]) <= MAX_TOKENS + 2, content
    assert traffic.first_of_user == {u: assign_arm(u, WEIGHTS) for u in traffic.first_of_user}
    assert traffic.repeat_of_user == {u: traffic.first_of_user[u] for u in traffic.repeat_of_user}
    assert sorted(traffic.repeat_of_user.values()) == ["candidate", "incumbent"]


def test_max_tokens_cuts_the_reply_before_it_is_logged_and_says_length(traffic, models):
    rows = Store(traffic.store_url).requests_frame().set_index("id")
    for arm, model in (("candidate", NN), ("incumbent", LLM)):
        r = traffic.responses[f"3 tokens from {arm}"]
        assert r.status_code == 200, r.text
        body = r.json()
        content = body["choices"][0]["message"]["content"]
        assert body["model"] == model and body["usage"]["completion_tokens"] <= 3
        assert models[model].count_tokens(content) <= 3
        assert body["choices"][0]["finish_reason"] == "length"  # every reply here is longer than 3 tokens
        assert rows.loc[body["tunewise"]["request_id"], "output"] == content  # the log holds what was sent


def test_bad_requests_on_a_generate_server_are_clear_4xx(traffic):
    r = traffic.responses
    for name in ("max_tokens", "max_completion_tokens"):
        assert r[f"{name} above the bound"].status_code == 422
        assert (
            f"{name} {SERVER_MAX + 1} is above the server's limit {SERVER_MAX}"
            in r[f"{name} above the bound"].json()["detail"]
        )
    assert r["classify"].status_code == 422 and "/v1/chat/completions" in r["classify"].json()["detail"]
    for arm in ("incumbent", "candidate"):
        for what in (f"label+thumbs on {arm}", f"label on {arm}"):
            assert r[what].status_code == 422, (what, r[what].text)
            assert "label feedback is for classification" in r[what].json()["detail"]
    assert 'tunewise_rejected_requests_total{path="/v1/feedback",status="422"} 4.0' in traffic.metrics
    assert 'tunewise_rejected_requests_total{path="/v1/classify",status="422"} 1.0' in traffic.metrics
    # PER_ARM first messages, a second message and a 3-token request per arm
    assert f'tunewise_requests_total{{arm="candidate",endpoint="chat",status="ok"}} {PER_ARM + 2}.0' in traffic.metrics
    assert f'tunewise_requests_total{{arm="incumbent",endpoint="chat",status="ok"}} {PER_ARM + 2}.0' in traffic.metrics


def test_feedback_is_stored_once_and_every_answer_is_a_log_row(traffic):
    again = traffic.responses["thumbs again"]
    assert again.status_code == 200 and again.json()["stored"] == [] and again.json()["duplicates"] == ["thumbs"]
    assert traffic.responses["rating again"].json()["duplicates"] == ["rating"]
    store = Store(traffic.store_url)
    try:
        logged, feedback = store.requests_frame().set_index("id"), store.feedback_frame()
    finally:
        store.close()
    # answered requests only: the refused ones (classify, max_tokens) left no row
    short = {
        traffic.responses[f"3 tokens from {arm}"].json()["tunewise"]["request_id"] for arm in ("candidate", "incumbent")
    }
    assert set(logged.index) == set(traffic.answers) | short
    for rid, body in traffic.answers.items():
        row = logged.loc[rid]
        assert row["output"] == body["choices"][0]["message"]["content"]
        assert row["input"] == traffic.messages[rid]  # the last user message, not the history
        assert (row["endpoint"], row["status"]) == ("chat", "ok")
        assert row["arm"] == row["served_by"] == body["tunewise"]["arm"] and row["candidate"] == body["model"]
        assert row["latency_ms"] > 0 and pd.isna(row["score"])
    thumbs = feedback[feedback["kind"] == "thumbs"].set_index("request_id")["value"].to_dict()
    assert thumbs == traffic.thumbs  # one per request, the first posted; none from the refused label posts
    ratings = feedback[feedback["kind"] == "rating"].set_index("request_id")["value"].astype(float).to_dict()
    assert ratings == traffic.ratings
    assert "label" not in set(feedback["kind"])


# ---------------------------------------------------------------------------------------------
# monitor and retrain on the log


def test_monitor_reports_thumbs_up_rate_per_arm_and_reply_length_drift(traffic, run_dir):
    from tunewise.config.sections import MonitorConfig
    from tunewise.monitoring.monitor import monitor_run

    report = monitor_run(traffic.store_url, run_dir, MonitorConfig(min_feedback=PER_ARM), encoder=None, task="generate")
    assert report["online_metric"] == "thumbs_up_rate"
    arm_of = {rid: body["tunewise"]["arm"] for rid, body in traffic.answers.items()}
    for arm in ("incumbent", "candidate"):
        mine = [v for rid, v in traffic.thumbs.items() if arm_of[rid] == arm]
        entry = report["arms"][arm]
        assert entry["feedback_n"] == len(mine) == PER_ARM
        assert entry["online_metric"] == pytest.approx(mine.count("up") / len(mine))
        assert entry["requests_answered"] == PER_ARM + 2  # and the 3-token request
        ratings = [v for rid, v in traffic.ratings.items() if arm_of[rid] == arm]
        assert entry["rating_mean"] == pytest.approx(sum(ratings) / len(ratings))
    # 5/6 up against 1/6: the interval of the difference lies above zero even at 6 each
    assert report["verdicts"]["candidate"]["verdict"] == "promote"
    drift = report["drift"]["reply_length"]
    assert drift["n_recent"] == len(traffic.answers) + 2
    assert drift["n_reference"] == len(pd.read_parquet(run_dir / "split" / "train.parquet"))
    assert drift["psi"] >= 0 and drift["level"] in ("stable", "moderate", "shift")
    assert report["drift"]["embedding"]["status"] == "not computed"


def test_replies_cut_at_16_tokens_drift_in_length_more_than_training_replies(traffic, run_dir):
    """Per arm: nn_reply returns training replies, the LLM's are cut short, so only it shifts."""
    from tunewise.monitoring.monitor import monitor

    store = Store(traffic.store_url)
    try:
        requests, feedback = store.requests_frame(), store.feedback_frame()
    finally:
        store.close()
    train = pd.read_parquet(run_dir / "split" / "train.parquet")
    psi = {
        arm: monitor(requests[requests["arm"] == arm], feedback, train=train, task="generate")["drift"]["reply_length"][
            "psi"
        ]
        for arm in ("incumbent", "candidate")
    }
    assert psi["incumbent"] > psi["candidate"], psi


def test_retrain_takes_the_served_reply_from_thumbs_up(traffic):
    from tunewise.serving.retrain import feedback_training_rows

    store = Store(traffic.store_url)
    try:
        requests, feedback = store.requests_frame(), store.feedback_frame()
    finally:
        store.close()
    rows, skipped = feedback_training_rows(requests, feedback, task="generate")
    ups = {rid for rid, v in traffic.thumbs.items() if v == "up"}
    assert set(rows["request_id"]) == ups and len(rows) == len(ups)
    for row in rows.itertuples(index=False):
        assert row.reply == traffic.answers[row.request_id]["choices"][0]["message"]["content"]
        assert row.text == traffic.messages[row.request_id] and row.source == "thumbs up"
    assert skipped == Counter({"thumbs down without a label": len(traffic.thumbs) - len(ups)})

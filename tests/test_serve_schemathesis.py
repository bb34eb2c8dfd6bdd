"""Issue 18, item 2 (second bullet): schemathesis over ``tunewise serve``'s own OpenAPI schema.

A real uvicorn server on 127.0.0.1 (a random free port) serves a classify run built as in
test_serve.py (majority and tfidf_lr refitted from the demo split). schemathesis generates
requests from the app's schema and sends them over loopback:

- every operation, with schemathesis's own phases (schema examples, coverage, fuzzing) and modes
  (valid and invalid data), and its standard checks: no 5xx (not_a_server_error), only documented
  status codes and content types, responses matching the documented schemas (errors included:
  ``{"detail": "<sentence>"}``), invalid data refused with a 4xx;
- valid requests steered past the server's rules that a JSON schema cannot state (the arm names,
  a user message to answer, a logged request id, weights that are not all zero), so the model, the
  log, feedback and promote/rollback paths are fuzzed too: every one must answer 200.

Bounded and reproducible: a fixed seed, derandomized Hypothesis, MAX_EXAMPLES per operation and
phase, no example database. The whole file takes 20-40 s on 2 shared cores.

The schema is the real app's (``app.openapi()``, what it serves at /openapi.json; a test checks the
running server serves the same), built at collection: schemathesis.pytest.from_fixture, the way to
load a schema from a fixture, fails on pytest 9 (its lazy loader sets ``request.node._nodeid``,
which pytest 9 no longer has).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings, strategies as st

from serve_runs import make_classify_run
from tunewise.monitoring.store import Store
from tunewise.serving.app import ServerThread, create_app
from tunewise.serving.arms import ArmSpec
from tunewise.serving.base import ServeConfig
from tunewise.serving.served_model import load_models

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARMS = "incumbent=0.5,candidate=0.5"
ARM_NAMES = ("incumbent", "candidate")
MAX_EXAMPLES = 25

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 18,
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
    }
)


def _app_schema() -> dict:
    """The OpenAPI schema of the real app, as it serves it at /openapi.json (FastAPI's app.openapi()):
    create_app with no model loaded and no lifespan run (the schema does not depend on the run)."""
    app = create_app(
        Path("/nonexistent-run"),
        ServeConfig(),
        arms=[ArmSpec("incumbent", "m", 1.0)],
        models={"m": None},
        store_url="sqlite://",
    )
    return app.openapi()


APP_SCHEMA = _app_schema()
schema = schemathesis.openapi.from_dict(APP_SCHEMA, config=CONFIG)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """runs/<id> with split/ and evaluate/summary.json: enough for the server to refit and serve."""
    folder = tmp_path_factory.mktemp("schemathesis")
    run, files = make_classify_run(folder, n_rows=300)
    return run


class Served:
    def __init__(self, url: str, log: str, labels: list[str], request_ids: list[str]) -> None:
        self.url, self.log, self.labels, self.request_ids = url, log, labels, request_ids


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    """The server (no API key: loopback clients may force arms and use /admin/arms), with a few
    answered requests in its log for feedback to name."""
    models = load_models(run_dir, {"majority", "tfidf_lr"})
    log = f"sqlite:///{tmp_path_factory.mktemp('schemathesis_log') / 'log.db'}"
    app = create_app(run_dir, ServeConfig(), arms=ARMS, store_url=log, models=models)
    labels = sorted(set.intersection(*(m.feedback_labels() for m in models.values())))  # whichever arm answered
    assert len(labels) > 1
    with ServerThread(app) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        ids = []
        for i, text in enumerate(("where is my refund?", "my card was declined", "hello")):
            answer = client.post("/v1/classify", json={"text": text, "user": f"u{i}"})
            assert answer.status_code == 200, answer.text
            ids.append(answer.json()["request_id"])
        chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "refund?"}]})
        assert chat.status_code == 200, chat.text
        ids.append(chat.json()["tunewise"]["request_id"])
        yield Served(running.url, log, labels, ids)


def test_the_schema_under_test_is_the_one_the_running_server_serves(server):
    served = httpx.get(f"{server.url}/openapi.json", timeout=30)
    assert served.status_code == 200
    assert served.json() == APP_SCHEMA


# ---------------------------------------------------------------------------------------------
# schemathesis's phases, modes and checks on every operation


@schema.parametrize()
def test_every_operation_answers_without_5xx_and_as_documented(case, server):
    # positive_data_acceptance is left out here: it wants every schema-valid request accepted, and
    # this server refuses some with 422 by design, for rules a JSON schema cannot state (an arm
    # that is not one of this server's arms, a chat with no user message, feedback with none of
    # label/thumbs/rating, no weights); the steered test below sends requests that follow them.
    response = case.call_and_validate(
        base_url=server.url, timeout=30, excluded_checks=[schemathesis.checks.positive_data_acceptance]
    )
    assert response.status_code < 500, response.text


# ---------------------------------------------------------------------------------------------
# Valid requests that also follow the server's own rules: all answered 200


def _text():
    return st.text(min_size=1, max_size=200).filter(lambda t: t.strip())


def _steer(label: str, body: dict, server: Served, data: st.DataObject) -> None:
    """Edit a schema-valid body (in place) so that it also follows the server's rules."""
    arm = st.sampled_from([None, *ARM_NAMES])
    if label == "POST /v1/classify":
        body["arm"] = data.draw(arm, label="arm")
    elif label == "POST /v1/chat/completions":
        body["arm"] = data.draw(arm, label="arm")
        body["model"] = data.draw(st.sampled_from([None, "gpt-4o", *ARM_NAMES]), label="model")
        body["stream"] = False
        for name in ("max_tokens", "max_completion_tokens"):
            if body.get(name) is not None and body[name] > ServeConfig().max_tokens:
                body[name] = ServeConfig().max_tokens
        body["messages"] = [*body["messages"][-4:], {"role": "user", "content": data.draw(_text(), label="text")}]
    elif label == "POST /v1/feedback":
        body["request_id"] = data.draw(st.sampled_from(server.request_ids), label="request_id")
        body["label"] = data.draw(st.sampled_from([None, *server.labels]), label="label")
        if all(body.get(k) is None for k in ("label", "thumbs", "rating")):
            body["thumbs"] = "up"
    elif label == "POST /admin/arms":
        weight = st.floats(min_value=0, max_value=1e308, allow_nan=False, allow_infinity=False)
        weights = {
            name: data.draw(weight, label=name)
            for name in data.draw(
                st.lists(st.sampled_from(ARM_NAMES), min_size=1, max_size=2, unique=True), label="arms"
            )
        }
        if not any(w > 0 for w in weights.values()):
            weights[next(iter(weights))] = 1.0
        body["weights"] = weights


OPERATIONS = [(method, path) for path, item in APP_SCHEMA["paths"].items() for method in item]


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m.upper()} {p}" for m, p in OPERATIONS])
def test_valid_requests_that_follow_the_servers_rules_are_answered_200(method, path, server):
    operation = schema[path][method.upper()]

    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=operation.as_strategy(), data=st.data())
    def run(case, data):
        if isinstance(case.body, dict):
            _steer(operation.label, case.body, server, data)
        response = case.call_and_validate(base_url=server.url, timeout=30)
        assert response.status_code == 200, (case.as_curl_command(), response.status_code, response.text)
        if operation.label == "POST /admin/arms":
            shares = response.json()["weights"]
            assert math.isclose(sum(shares.values()), 1.0) and all(w >= 0 for w in shares.values()), shares

    run()
    if path == "/v1/classify":  # every answered request is in the log
        assert len(Store(server.log).requests_frame()) > MAX_EXAMPLES


# ---------------------------------------------------------------------------------------------
# What schemathesis does not generate: strings with an unpaired surrogate


LONE = "\ud800"  # valid JSON as the escape "\ud800"; schemathesis leaves lone surrogates out of its strings


@pytest.mark.parametrize(
    ("path", "body"),
    [
        # was 503 ("no model could answer") and no log row: the model and the log cannot encode it
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": f"my card {LONE}"}]}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": LONE}]}]}),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "assistant", "content": LONE}, {"role": "user", "content": "hi"}]},
        ),
        ("/v1/classify", {"text": "hi", "context": [{"role": "user", "content": LONE}]}),
    ],
    ids=["chat", "chat-content-part", "chat-history", "classify-context"],
)
def test_a_string_with_an_unpaired_surrogate_is_refused_with_422_and_a_pair_is_answered(path, body, server):
    before = len(Store(server.log).requests_frame())
    case = schema[path]["POST"].Case(body=body, media_type="application/json")
    response = case.call_and_validate(
        base_url=server.url, timeout=30, excluded_checks=[schemathesis.checks.positive_data_acceptance]
    )
    assert response.status_code == 422, response.text
    assert "unpaired surrogate" in response.json()["detail"]
    assert len(Store(server.log).requests_frame()) == before  # refused before any model or log write
    paired = json.loads(json.dumps(body).replace("\\ud800", "\\ud83d\\ude00"))  # a pair: one emoji
    answer = (
        schema[path]["POST"]
        .Case(body=paired, media_type="application/json")
        .call_and_validate(base_url=server.url, timeout=30)
    )
    assert answer.status_code == 200, answer.text

"""The api_* candidates' answer-length parameter and the project's spending cap, against real HTTP servers
on 127.0.0.1 (``openai_stub``; the openai client is never mocked)."""

from __future__ import annotations

import io
import json
from http.server import BaseHTTPRequestHandler

import pandas as pd
import pytest

from openai_stub import OpenAIStub
from tunewise.candidates.api import api_llm_settings
from tunewise.candidates.api_spending import SpendingCapReached, SpendLedger
from tunewise.candidates.registry import CandidateError, candidate_kwargs, make_candidate
from tunewise.config.baseline_section import ApiLlmConfig
from tunewise.config.sections import ConfigError, config_from_dict

LABELS = {
    "card_arrival": ["my new card has not arrived", "when will the card arrive"],
    "exchange_rate": ["what exchange rate do you use", "the rate for euros"],
}


class OldServer(OpenAIStub):
    """A server that knows only ``max_tokens``: ``max_completion_tokens`` is refused, as OpenAI-style servers
    do (400, "unrecognized argument") or as FastAPI ones do (422, extra field)."""

    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        raw = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        body = json.loads(raw)
        if "max_completion_tokens" in body:
            if self.status == 400:
                error = {
                    "error": {
                        "message": "Unrecognized request argument supplied: max_completion_tokens",
                        "type": "invalid_request_error",
                    }
                }
            else:
                error = {
                    "detail": [
                        {
                            "type": "extra_forbidden",
                            "loc": ["body", "max_completion_tokens"],
                            "msg": "Extra inputs are not permitted",
                        }
                    ]
                }
            record = {"path": handler.path, "body": body, "headers": {}, "attempt": 0, "text": "", "time": 0.0}
            return self._send(handler, self.status, error, record)
        handler.rfile = io.BytesIO(raw)  # the stub reads the body again
        super()._handle(handler)


@pytest.fixture
def train() -> pd.DataFrame:
    rows = [(label, text) for label, texts in LABELS.items() for text in texts]
    return pd.DataFrame(
        {
            "id": [f"tr{i}" for i in range(len(rows))],
            "input": [t for _, t in rows],
            "context": "[]",
            "label": [label for label, _ in rows],
        }
    )


def _frame(texts: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"t{i}" for i in range(len(texts))], "input": texts, "context": "[]"})


def _candidate(url: str, train: pd.DataFrame, **settings):
    settings = {
        "base_url": url,
        "model": "m",
        "api_key_env": None,
        "no_cache": True,
        "backoff_s": 0.05,
        "max_concurrency": 1,
        **settings,
    }
    return make_candidate("api_zero_shot", **candidate_kwargs("api_zero_shot", settings)).fit(train)


@pytest.mark.parametrize("status", [400, 422])
def test_max_completion_tokens_falls_back_to_max_tokens_once(train, status):
    texts = ["card arrival please", "exchange rate today", "when does my card arrive"]
    with OldServer(status) as server:
        candidate = _candidate(server.url, train)
        predictions = candidate.predict(_frame(texts))
        sent = [(r["status"], "max_completion_tokens" in r["body"], "max_tokens" in r["body"]) for r in server.requests]
    assert predictions["prediction"].tolist() == ["card_arrival", "exchange_rate", "card_arrival"]
    # one refusal, then max_tokens for that row and every later one
    assert sent == [(status, True, False)] + [(200, False, True)] * 3
    info = candidate.info()
    assert info["token_param"] == "max_tokens" and info["failed"]["n"] == 0


def test_max_completion_tokens_is_sent_where_the_server_takes_it(train):
    with OpenAIStub() as server:
        candidate = _candidate(server.url, train)
        candidate.predict(_frame(["card arrival please"]))
        body = server.requests[0]["body"]
    assert body["max_completion_tokens"] == candidate.max_tokens_ and "max_tokens" not in body
    assert candidate.info()["token_param"] == "max_completion_tokens"


def test_the_project_cap_holds_across_runs_through_the_ledger(train, tmp_path):
    ledger = tmp_path / "tunewise_api_spend.json"
    prices = {
        "usd_per_million_input_tokens": 1000.0,
        "usd_per_million_output_tokens": 4000.0,
        "batch_size": 2,
        "ledger": str(ledger),
    }
    texts = [f"card arrival question {i}" for i in range(4)]
    with OpenAIStub() as server:
        first = _candidate(server.url, train, **prices)  # a first run: no project cap, the ledger sums it
        first.predict(_frame(texts))
        spent = first.info()["usage"]["usd_spent"]
        assert spent > 0 and SpendLedger(ledger).total() == pytest.approx(spent)  # estimates settled to real cost
        data = json.loads(ledger.read_text())
        assert data["by_endpoint"] == {f"m @ {server.url}": pytest.approx(spent)}

        # a second run under a project cap that leaves room for its first batch of two rows, not its second
        # (a batch is estimated high: every row at its whole max_tokens; it really costs less than half that)
        later = _frame([f"exchange rate question {i}" for i in range(4)])
        batches = [first.estimate_cost(later.iloc[:2])["usd"], first.estimate_cost(later.iloc[2:])["usd"]]
        cap = spent + batches[0] + 0.2 * batches[1]
        second = _candidate(server.url, train, max_usd_project=cap, **prices)
        assert second.estimate_cost(later)["fits_max_usd_project"] is False
        server.reset()
        with pytest.raises(SpendingCapReached, match=r"project spending cap reached.*max_usd_project") as caught:
            second.predict(later)
        assert server.count() == 2 and caught.value.scope == "project"
        assert caught.value.predictions["id"].tolist() == ["t0", "t1"]  # kept: what was scored before the stop
        assert str(ledger) in str(caught.value)
        total = SpendLedger(ledger).total()
        assert total == pytest.approx(spent + second.info()["usage"]["usd_spent"]) and total <= cap
        assert second.info()["usage"]["project_spent_usd"] == pytest.approx(total)


def test_the_ledger_lives_beside_the_config_and_the_cap_needs_it(tmp_path, train):
    with pytest.raises(Exception, match="max_usd_project sums spending in the ledger"):
        ApiLlmConfig(base_url="http://x/v1", model="m", max_usd_project=5, ledger=None)
    raw = {
        "data": {"train": "data.csv"},
        "baseline": {"api_llm": {"base_url": "http://127.0.0.1:9/v1", "model": "m", "max_usd_project": 5}},
    }
    cfg = config_from_dict(raw, tmp_path / "project")
    settings = api_llm_settings(cfg.baseline.api_llm)
    assert settings["ledger"] == str((tmp_path / "project" / "tunewise_api_spend.json").resolve())
    assert settings["max_usd_project"] == 5
    with pytest.raises(ConfigError, match="ledger"):
        config_from_dict({**raw, "baseline": {"api_llm": {**raw["baseline"]["api_llm"], "ledger": None}}}, tmp_path)
    with pytest.raises(CandidateError, match="max_usd_project needs the ledger"):
        make_candidate(
            "api_zero_shot", base_url="http://127.0.0.1:9/v1", model="m", api_key_env=None, max_usd_project=1.0
        ).fit(train)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CandidateError, match="bad.json cannot be read"):
        SpendLedger(tmp_path / "bad.json").total()

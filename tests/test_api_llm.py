"""The api_* candidates against real HTTP servers on 127.0.0.1 (the openai client is never mocked).

Most tests use the small OpenAI-compatible server of ``openai_stub`` (http.server in a thread),
which answers deterministically and fails on a schedule (429 with Retry-After, 5xx, answers slower
than the timeout, malformed JSON); requests are counted at the server. The last test points
``api_zero_shot`` at ``tunewise serve`` itself.
"""

from __future__ import annotations

import json
import logging
import math
import stat
import time

import numpy as np
import pandas as pd
import pytest

from openai_stub import OpenAIStub
from tunewise.candidates.api import ApiLlmConfig, api_llm_settings
from tunewise.candidates.api_answers import label_probabilities, map_to_label
from tunewise.candidates.api_client import cache_key, retry_after_seconds
from tunewise.candidates.api_spending import SpendingCapReached, monthly_cost
from tunewise.candidates.registry import CandidateError, candidate_kwargs, check_predictions, make_candidate
from tunewise.core.text import answer_label_key
from tunewise.evaluation.baseline import quick_metrics

KEY_ENV = "TUNEWISE_TEST_API_KEY"
KEY = "sk-tw-9f3b1c77e2d54a60b0c1-SECRET"
LABELS = ["card_arrival", "cash_withdrawal", "exchange_rate", "lost_or_stolen_card"]


@pytest.fixture(scope="module")
def stub():
    with OpenAIStub(retry_after=1.0, slow_s=5.0) as server:
        yield server


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


@pytest.fixture
def train() -> pd.DataFrame:
    texts = {
        "card_arrival": ["my new card has not arrived", "when will the card arrive", "card arrival takes long"],
        "cash_withdrawal": ["cash withdrawal at the atm", "I took out cash", "withdrawal fee for cash"],
        "exchange_rate": ["what exchange rate do you use", "the rate for euros", "exchange fees and rate"],
        "lost_or_stolen_card": ["my card was stolen", "I lost my card", "stolen wallet and card"],
    }
    rows = [(label, text) for label, items in texts.items() for text in items]
    return pd.DataFrame(
        {
            "id": [f"tr{i}" for i in range(len(rows))],
            "input": [t for _, t in rows],
            "context": "[]",
            "label": [label for label, _ in rows],
        }
    )


def _frame(texts: list[str], labels: list[str] | None = None, prefix: str = "t") -> pd.DataFrame:
    frame = pd.DataFrame({"id": [f"{prefix}{i}" for i in range(len(texts))], "input": texts, "context": "[]"})
    if labels is not None:
        frame["label"] = labels
    return frame


def _candidate(name: str, stub: OpenAIStub, train: pd.DataFrame, **settings):
    settings = {
        "base_url": stub.url,
        "model": "stub-model",
        "api_key_env": KEY_ENV,
        "backoff_s": 0.05,
        "no_cache": True,
        **settings,
    }
    return make_candidate(name, **candidate_kwargs(name, settings)).fit(train)


def _by_text(stub: OpenAIStub) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    stub.settle()
    for request in stub.requests:
        out.setdefault(request["text"], []).append(request)
    return out


# ---------------------------------------------------------------------------------------------
# Pure pieces


def test_answers_map_to_labels_exactly_then_normalised_and_otherwise_not():
    names = ["card arrival", "cash withdrawal", "exchange rate", "lost or stolen card"]
    assert map_to_label("card_arrival", LABELS, names)[0] == "card_arrival"
    assert map_to_label("card arrival", LABELS, names)[0] == "card_arrival"
    assert map_to_label('{"label": "exchange rate"}', LABELS, names)[0] == "exchange_rate"
    assert map_to_label("  Card-Arrival. ", LABELS, names)[0] == "card_arrival"
    assert map_to_label('"LOST OR STOLEN CARD!"', LABELS, names)[0] == "lost_or_stolen_card"
    assert map_to_label("The answer is card arrival", LABELS, names) == (None, "The answer is card arrival")
    assert map_to_label('{"label": "pizza"}', LABELS, names) == (None, "pizza")
    assert map_to_label("", LABELS, names)[0] is None
    # two labels that normalise alike match neither
    assert map_to_label("A b", ["a_b", "A-B"], ["a b", "A-B"])[0] is None
    assert map_to_label("a b", ["a_b", "A-B"], ["a b", "A-B"])[0] == "a_b"  # an exact match still wins
    assert answer_label_key("Lost_or-stolen  CARD?!") == "lost or stolen card"


def test_retry_after_in_seconds_http_date_and_milliseconds():
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    now = 1_700_000_000.0
    date = "Tue, 14 Nov 2023 22:13:30 GMT"  # now + 10 s
    assert retry_after_seconds({"retry-after": date}, now=now) == pytest.approx(10.0)
    assert retry_after_seconds({"retry-after": date}, now=now + 60) == 0.0  # a date in the past: no wait
    assert retry_after_seconds({"retry-after": "soon"}) is None and retry_after_seconds({}) is None


def test_label_probabilities_from_logprobs_and_without():
    names = ["card arrival", "cash withdrawal", "exchange rate"]
    tokens = [
        {"token": '{"label": "', "logprob": 0.0, "top_logprobs": []},
        {
            "token": "card",
            "logprob": math.log(0.6),
            "top_logprobs": [
                {"token": "card", "logprob": math.log(0.6)},
                {"token": "cash", "logprob": math.log(0.3)},
                {"token": "maybe", "logprob": math.log(0.05)},
            ],
        },
        {"token": " arrival", "logprob": math.log(0.9), "top_logprobs": []},
        {"token": '"}', "logprob": 0.0, "top_logprobs": []},
    ]
    proba = label_probabilities(0, names, tokens, "card arrival")
    assert proba.sum() == pytest.approx(1.0)
    assert proba[0] == pytest.approx(0.54)  # 0.6 x 0.9: the answered label's tokens only
    assert proba[1] == pytest.approx(0.3 + 0.16 / 2)  # its first-token alternative, plus an even share of the rest
    assert proba[2] == pytest.approx(0.16 / 2)
    assert label_probabilities(2, names, None, None).tolist() == [0.0, 0.0, 1.0]


def test_settings_section_and_cache_key_and_monthly_cost():
    section = ApiLlmConfig(base_url="http://127.0.0.1:9/v1", model="m", usd_per_million_input_tokens=0.15)
    settings = api_llm_settings(section)
    assert settings["api_key_env"] == "OPENAI_API_KEY" and settings["max_concurrency"] == 4
    assert settings["timeout_s"] == 30 and settings["max_retries"] == 5 and not settings["no_cache"]
    candidate = make_candidate("api_zero_shot", **settings)  # every field is a constructor argument
    assert candidate.get_params()["usd_per_million_input_tokens"] == 0.15
    with pytest.raises(Exception, match="api_key"):
        ApiLlmConfig(base_url="x", model="m", api_key="sk-123")  # the key is never a setting
    messages = [{"role": "user", "content": "hi"}]
    assert cache_key("u/", "m", messages, {"t": 0}) == cache_key("u", "m", messages, {"t": 0})
    assert cache_key("u", "m", messages, {"t": 0}) != cache_key("u", "m", messages, {"t": 1})
    assert monthly_cost(0.002, 100_000)["usd"] == pytest.approx(200.0)


# ---------------------------------------------------------------------------------------------
# Retries, failures, the cache, the cap


def test_retries_honour_retry_after_and_a_failing_row_is_recorded_never_dropped(stub, train, key):
    stub.reset()
    texts = [
        "my card arrival is late",
        "cash withdrawal #429x2",
        "exchange rate #500x1",
        "stolen card #slowx1",
        "card arrival #badjsonx1",
        "exchange rate #500always",
        "cash withdrawal #429datex1",
        "#503x1 stolen card",
    ]
    truth = [
        "card_arrival",
        "cash_withdrawal",
        "exchange_rate",
        "lost_or_stolen_card",
        "card_arrival",
        "exchange_rate",
        "cash_withdrawal",
        "lost_or_stolen_card",
    ]
    test = _frame(texts, truth)
    candidate = _candidate("api_zero_shot", stub, train, max_retries=2, timeout_s=2.0, max_concurrency=4)
    predictions = candidate.predict(test)

    assert predictions["id"].tolist() == test["id"].tolist()  # every row, in order
    failed = predictions.iloc[5]
    assert failed["prediction"] == "" and failed["score"] == 0.0
    others = predictions.drop(index=5)
    assert others["prediction"].tolist() == [t for i, t in enumerate(truth) if i != 5]
    assert quick_metrics("classify", predictions, test)["accuracy"] == pytest.approx(7 / 8)  # the failure is wrong

    seen = _by_text(stub)
    attempts = {text: len(seen[text]) for text in texts}
    assert attempts == {
        texts[0]: 1,
        texts[1]: 3,
        texts[2]: 2,
        texts[3]: 2,
        texts[4]: 2,
        texts[5]: 3,
        texts[6]: 2,
        texts[7]: 2,
    }
    limited = seen[texts[1]]
    assert [r["status"] for r in limited] == [429, 429, 200]
    for before, after in zip(limited, limited[1:]):  # Retry-After: 1 is a lower bound on the wait
        assert after["time"] - before["time"] >= 0.95
    assert [r["status"] for r in seen[texts[6]]] == [429, 200]  # Retry-After as an HTTP date

    info = candidate.info()
    assert info["rows"] == 8 and info["failed"]["n"] == 1 and info["failed"]["share"] == pytest.approx(1 / 8)
    assert info["failed"]["reasons"] == {"HTTP 500": 1} and info["failed"]["examples"][0]["id"] == "t5"
    assert info["requests"] == stub.count() == 17 and info["retries"] == 9
    usage = candidate.usage_frame().set_index("id")
    assert usage.loc["t3", "attempts"] == 2 and usage.loc["t5", "status"] == "failed"
    assert usage.loc["t4", "status"] == "ok"  # the malformed answer was retried
    # latency is per row: the slow row's retry was fast, the failed row's time is what it cost
    assert (predictions["latency_ms"] > 0).all()
    json.dumps(info)  # goes into summary.json as it is


def test_the_cache_makes_a_rerun_free_and_no_cache_bypasses_it(stub, train, key, tmp_path):
    texts = ["card arrival please", "cash withdrawal limit", "exchange rate now", "someone stole my card"]
    test = _frame(texts)
    prices = {"usd_per_million_input_tokens": 2.0, "usd_per_million_output_tokens": 8.0}
    stub.reset()
    first = _candidate("api_zero_shot", stub, train, no_cache=False, cache_dir=str(tmp_path / "cache"), **prices)
    before = first.predict(test)
    assert stub.count() == len(texts)
    files = sorted((tmp_path / "cache").rglob("*.json"))
    assert len(files) == len(texts)
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)  # replies may hold customer data
    assert all(json.loads(f.read_text())["content"] for f in files)  # plain JSON, no pickle

    stub.reset()
    second = _candidate("api_zero_shot", stub, train, no_cache=False, cache_dir=str(tmp_path / "cache"), **prices)
    after = second.predict(test)
    assert stub.count() == 0  # nothing requested
    pd.testing.assert_frame_equal(before, after)  # latency too: the measured one is kept
    info = second.info()
    assert info["cached_rows"] == 4 and info["requests"] == 0 and info["usage"]["usd_spent"] == 0.0
    assert info["usage"]["usd_total"] == pytest.approx(first.info()["usage"]["usd_total"])
    assert info["usage"]["usd_total"] > 0
    assert second.estimate_cost(test)["rows_to_request"] == 0

    stub.reset()
    _candidate("api_zero_shot", stub, train, no_cache=True, cache_dir=str(tmp_path / "cache"), **prices).predict(test)
    assert stub.count() == len(texts)


def test_the_spending_cap_stops_before_the_batch_that_would_cross_it(stub, train, key, tmp_path):
    texts = [f"card arrival question number {i:02d}" for i in range(7)]
    test = _frame(texts)
    prices = {"usd_per_million_input_tokens": 1000.0, "usd_per_million_output_tokens": 4000.0}
    # what each row really costs, and what the cap check estimates for it
    stub.reset()
    probe = _candidate("api_zero_shot", stub, train, max_usd=None, **prices)
    probe.predict(test)
    actual = probe.usage_frame()["usd"].to_numpy()
    estimate = [probe.estimate_cost(test.iloc[i : i + 1])["usd"] for i in range(len(test))]
    assert all(e > a for e, a in zip(estimate, actual))  # the estimate errs high
    cap = actual[:4].sum() + sum(estimate[4:6]) - 1e-9  # batches of 2: the third would cross it
    assert actual[:2].sum() + sum(estimate[2:4]) <= cap  # ... and the second does not

    capped = _candidate(
        "api_zero_shot",
        stub,
        train,
        max_usd=cap,
        batch_size=2,
        no_cache=False,
        cache_dir=str(tmp_path / "cache"),
        **prices,
    )
    dry = capped.estimate_cost(test)
    assert dry["rows_to_request"] == 7 and not dry["fits_max_usd"] and dry["usd"] == pytest.approx(sum(estimate))
    stub.reset()
    with pytest.raises(SpendingCapReached, match=r"spending cap reached.*max_usd") as caught:
        capped.predict(test)
    assert stub.count() == 4  # the third batch was never sent
    error = caught.value
    assert isinstance(error, CandidateError)
    assert error.predictions["id"].tolist() == ["t0", "t1", "t2", "t3"]
    assert (error.predictions["prediction"] == "card_arrival").all()
    assert error.spent_usd == pytest.approx(actual[:4].sum()) and error.spent_usd <= cap
    assert "4 of 7 rows" in str(error)

    # answers already received are cached: a re-run with the same cap pays only for the rest
    stub.reset()
    again = _candidate(
        "api_zero_shot",
        stub,
        train,
        max_usd=cap,
        batch_size=2,
        no_cache=False,
        cache_dir=str(tmp_path / "cache"),
        **prices,
    )
    assert len(again.predict(test)) == 7 and stub.count() == 3
    assert again.info()["usage"]["usd_spent"] <= cap


def test_invalid_answers_are_counted_and_the_key_never_shows(stub, train, key, caplog, capsys):
    caplog.set_level(logging.DEBUG)  # every logger, the openai client's and httpx's included
    stub.reset()
    texts = ["card arrival #garbage", "what is the exchange rate", "#garbage again", "#echoauth stolen card"]
    test = _frame(texts, ["card_arrival", "exchange_rate", "cash_withdrawal", "lost_or_stolen_card"])
    candidate = _candidate("api_zero_shot", stub, train, max_retries=1)
    predictions = candidate.predict(test)
    assert predictions["prediction"].tolist() == ["no idea, maybe pizza", "exchange_rate", "no idea, maybe pizza", ""]
    assert predictions["score"].tolist()[0] == 0.0
    assert quick_metrics("classify", predictions, test)["accuracy"] == 0.25
    info = candidate.info()
    assert info["invalid"]["n"] == 2 and info["invalid"]["share"] == 0.5
    assert info["invalid"]["examples"][0]["reply"] == json.dumps({"label": "no idea, maybe pizza"})
    assert info["failed"]["n"] == 1
    # the server did get the key, and echoed it back in its error body
    assert all(r["headers"]["authorization"] == f"Bearer {KEY}" for r in stub.requests)
    assert "***" in info["failed"]["examples"][0]["reason"]

    with pytest.raises(CandidateError) as refused:  # 401 stops the run; the body repeats the key
        candidate.predict(_frame(["#401always card"]))
    assert "401" in str(refused.value) and KEY_ENV in str(refused.value)

    with pytest.raises(CandidateError) as unset:
        make_candidate("api_zero_shot", base_url=stub.url, model="m", api_key_env="TUNEWISE_NO_SUCH_KEY").fit(train)
    assert "TUNEWISE_NO_SUCH_KEY" in str(unset.value)

    captured = capsys.readouterr()
    seen = [
        caplog.text,
        captured.out,
        captured.err,
        json.dumps(info),
        candidate.usage_frame().to_csv(),
        repr(candidate),
        json.dumps(candidate.get_params(), default=str),
        str(refused.value),
        repr(refused.value),
        str(refused.value.__cause__),
        str(refused.value.__context__),
    ]
    assert "retry" in caplog.text  # the log did record the failures
    for text in seen:
        assert KEY not in text
        assert KEY[8:20] not in text


def test_structured_output_and_logprobs_fall_back_on_400_and_plain_answers_map(train, key):
    texts = ["card arrival please", "how much is the exchange rate", "my card got stolen"]
    with OpenAIStub(structured=False, logprobs=False) as plain:
        candidate = _candidate("api_zero_shot", plain, train)
        predictions = candidate.predict(_frame(texts))
        statuses = [
            (r["status"], "response_format" in r["body"], bool(r["body"].get("logprobs"))) for r in plain.requests
        ]
    # (json schema + logprobs) refused, (json schema) refused, then logprobs alone accepted, and kept
    assert statuses[:3] == [(400, True, True), (400, True, False), (200, False, True)]
    assert statuses[3:] == [(200, False, True)] * 2
    assert predictions["prediction"].tolist() == ["card_arrival", "exchange_rate", "lost_or_stolen_card"]
    assert (predictions["score"] == 1.0).all()  # no logprobs came back
    assert candidate.info()["features"] == {"structured_output": False, "logprobs": True}
    assert candidate.info()["failed"]["n"] == 0


def test_logprobs_give_a_confidence_and_the_predictions_keep_the_contract(stub, train, key):
    stub.reset()
    texts = ["card arrival please", "cash withdrawal fee"]
    candidate = _candidate("api_zero_shot", stub, train)
    test = _frame(texts)
    predictions = candidate.predict(test)
    check_predictions(predictions, test, candidate)
    first = stub.requests[0]["body"]
    schema = first["response_format"]["json_schema"]["schema"]["properties"]["label"]["enum"]
    assert schema == ["card arrival", "cash withdrawal", "exchange rate", "lost or stolen card"]
    assert first["logprobs"] is True and first["top_logprobs"] == 5 and first["temperature"] == 0.0
    # the stub: 0.7 on the answer's first token, 0.99 on each later one; the runner-up's first word 0.2
    assert predictions["score"].iloc[0] == pytest.approx(0.7 * 0.99 * 0.99)
    proba = np.asarray(predictions["proba"].iloc[0])
    assert proba.sum() == pytest.approx(1.0) and proba.argmax() == 0
    assert candidate.info()["usage"]["prompt_tokens"] > 0 and candidate.info()["latency_ms"]["p50"] > 0


def test_few_shot_and_generation_candidates(stub, train, key):
    stub.reset()
    few = _candidate("api_few_shot", stub, train, few_shot_k=2)
    predictions = few.predict(_frame(["my card was stolen yesterday"]))
    assert predictions["prediction"].tolist() == ["lost_or_stolen_card"]
    messages = stub.requests[-1]["body"]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[-2]["content"] == "lost or stolen card"  # the nearest example sits right before the message
    assert messages[-3]["content"] in ("my card was stolen", "stolen wallet and card")

    generate_train = train.drop(columns="label").assign(target=[f"reply {i}" for i in range(len(train))])
    test = _frame(["where is my new card", "#500always hi"])
    for name in ("api_zero_shot_gen", "api_few_shot_gen"):
        stub.reset()
        candidate = _candidate(name, stub, generate_train, few_shot_k=1, max_new_tokens=40, max_retries=1)
        replies = candidate.predict(test)
        check_predictions(replies, test, candidate)
        assert replies["prediction"].tolist() == ["Thanks for your message about where is my new card", ""]
        body = stub.requests[0]["body"]
        assert body["max_completion_tokens"] == 40 and "max_tokens" not in body and "response_format" not in body
        assert len(stub.requests[0]["body"]["messages"]) == (4 if name == "api_few_shot_gen" else 2)
        assert candidate.info()["failed"]["n"] == 1


def test_an_api_candidate_can_be_the_incumbent(stub, train, key):
    from tunewise.config.sections import EvaluateConfig
    from tunewise.evaluation.evaluate import evaluate_candidates
    from tunewise.evaluation.predictions import CandidatePredictions

    stub.reset()
    texts = ["card arrival", "cash withdrawal", "exchange rate", "stolen card", "#garbage", "#500always rate"] * 5
    labels = [
        "card_arrival",
        "cash_withdrawal",
        "exchange_rate",
        "lost_or_stolen_card",
        "card_arrival",
        "exchange_rate",
    ] * 5
    test = _frame(texts, labels)
    api = _candidate("api_zero_shot", stub, train, max_retries=0)
    predictions = api.predict(test)
    majority = make_candidate("majority").fit(train).predict(test)
    result = evaluate_candidates(
        test,
        [
            CandidatePredictions("api_zero_shot", api.kind, predictions, expensive=True),
            CandidatePredictions("majority", "cheap", majority),
        ],
        task="classify",
        config=EvaluateConfig(baseline="api_zero_shot", n_resamples=200, human_sheet_size=0),
        seed=0,
    )
    summary = result.summary
    assert summary["incumbent"]["name"] == "api_zero_shot"
    entry = next(e for e in summary["candidates"] if e["name"] == "api_zero_shot")
    assert entry["metrics"]["accuracy"] == pytest.approx(4 / 6) and entry["n_eval"] == 30  # failed and invalid: wrong


def test_requests_in_flight_stay_within_max_concurrency(stub, train, key):
    stub.reset()
    texts = [f"#delayalways card arrival {i}" for i in range(12)]
    candidate = _candidate("api_zero_shot", stub, train, max_concurrency=3, batch_size=12)
    started = time.perf_counter()
    predictions = candidate.predict(_frame(texts))
    elapsed = time.perf_counter() - started
    assert (predictions["prediction"] == "card_arrival").all() and stub.count() == 12
    assert stub.max_in_flight == 3  # overlapping, never more than allowed
    assert elapsed >= 0.2 * (1 + 11 / 3) * 0.9  # the first request alone (it negotiates), then 3 at a time


def test_the_baseline_stage_runs_an_api_candidate_and_writes_json_safe_info(stub, train, key):
    from tunewise.candidates.factory import build_candidate
    from tunewise.core.artifacts import to_json
    from tunewise.evaluation.baseline import run_within_budget

    stub.reset()
    texts = ["card arrival", "cash withdrawal", "exchange rate", "stolen card"] * 5
    labels = ["card_arrival", "cash_withdrawal", "exchange_rate", "lost_or_stolen_card"] * 5
    test, validation = _frame(texts, labels, "te"), _frame(texts[:8], labels[:8], "va")
    settings = {
        "base_url": stub.url,
        "model": "stub-model",
        "api_key_env": KEY_ENV,
        "no_cache": True,
        "few_shot_k": 2,
        "batch_size": 4,
        "usd_per_million_input_tokens": 0.15,
        "usd_per_million_output_tokens": 0.6,
        "tokenizer": len,
    }  # a callable tokenizer: one token a character
    candidate = build_candidate("api_few_shot", settings)
    run = run_within_budget(candidate, train, validation, test, budget_s=900, seed=0, by="label")
    assert run.scoring["whole"] and len(run.test) == 20 and len(run.validation) == 8
    assert quick_metrics("classify", run.test, test)["accuracy"] == 1.0
    summary = run.summary("classify", test, test["id"].tolist())
    info = json.loads(to_json(summary))["info"]  # no NaN, nothing unserialisable
    assert info["rows"] == 28 and info["requests"] == 28 and info["usage"]["usd_total"] > 0
    assert info["usage"]["usd_per_row_mean"] == pytest.approx(info["usage"]["usd_total"] / 28)
    assert candidate.monthly_cost(20_000)["usd"] == pytest.approx(20_000 * info["usage"]["usd_per_row_mean"])
    estimate = candidate.estimate_cost(test.iloc[:1])
    assert "tokenizer" in estimate["method"] and estimate["input_tokens"] > len(texts[0])


# ---------------------------------------------------------------------------------------------
# tunewise serve as the endpoint


def test_tunewise_serve_is_an_openai_compatible_endpoint(tmp_path, key, monkeypatch):
    from tunewise.demo.data import generate_demo
    from tunewise.serving.app import ServerThread, create_app
    from tunewise.serving.base import ServeConfig
    from tunewise.serving.served_model import load_models

    files = generate_demo(tmp_path / "data", task="classify", n_rows=300)
    data, held = pd.read_csv(files.data).dropna(subset=["text", "intent"]), pd.read_csv(files.test)

    def records(frame: pd.DataFrame) -> pd.DataFrame:
        # the raw demo data has label variants (" cancel_order", "discount code"): curation's work, not this test's
        frame = frame.dropna(subset=["text", "intent"])
        frame = frame[frame["intent"].astype(str).str.fullmatch(r"[a-z_]+")]
        return pd.DataFrame(
            {
                "id": frame["id"].astype(str),
                "input": frame["text"].astype(str),
                "context": "[]",
                "label": frame["intent"].astype(str),
            }
        )

    run = tmp_path / "runs" / "r1"
    (run / "split").mkdir(parents=True)
    (run / "evaluate").mkdir()
    train, test = records(data), records(held.iloc[:12])
    train.to_parquet(run / "split" / "train.parquet")
    test.to_parquet(run / "split" / "validation.parquet")
    test.to_parquet(run / "split" / "test.parquet")
    (run / "evaluate" / "summary.json").write_text(
        json.dumps(
            {
                "gate": {"passed": True, "candidate": "tfidf_lr", "baseline": "majority"},
                "candidates": [
                    {"name": "majority", "out_of_scope_threshold": None},
                    {"name": "tfidf_lr", "out_of_scope_threshold": None},
                ],
            }
        )
    )
    models = load_models(run, {"majority", "tfidf_lr"})
    app = create_app(
        run,
        ServeConfig(api_key_env=KEY_ENV),
        arms="incumbent=0.5,candidate=0.5",
        store_url=f"sqlite:///{tmp_path / 'log.db'}",
        models=models,
    )
    with ServerThread(app) as server:
        api = make_candidate(
            "api_zero_shot",
            base_url=f"{server.url}/v1",
            model="candidate",
            api_key_env=KEY_ENV,
            no_cache=True,
            backoff_s=0.05,
        ).fit(train)
        predictions = api.predict(test)
        monkeypatch.setenv("TUNEWISE_TEST_OTHER_KEY", "not-the-key")
        wrong_key = make_candidate(
            "api_zero_shot",
            base_url=f"{server.url}/v1",
            model="candidate",
            api_key_env="TUNEWISE_TEST_OTHER_KEY",
            no_cache=True,
        ).fit(train)
        with pytest.raises(CandidateError, match="401"):
            wrong_key.predict(test.iloc[:1])
    check_predictions(predictions, test, api)
    direct = make_candidate("tfidf_lr").fit(train).predict(test)
    assert predictions["prediction"].tolist() == direct["prediction"].tolist()  # the candidate arm answered
    info = api.info()
    assert info["failed"]["n"] == 0 and info["invalid"]["n"] == 0 and info["usage"]["completion_tokens"] > 0

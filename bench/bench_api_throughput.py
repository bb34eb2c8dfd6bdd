"""Benchmark: api_zero_shot's throughput against a local OpenAI-compatible server (issue 17).

The server is tests/openai_stub.py (a real HTTP server on 127.0.0.1) answering every request
after ``--delay`` seconds, like a hosted model's latency, and counting the requests it answers at
once. The same BANKING77 test rows are classified with ``max_concurrency`` 1 (the reference) and
16 (the target), cache off. Printed: rows/s of each, the ratio, and the most requests in flight
at the server. Targets: in flight stays at 16 (never more), and rows/s scale with it (ratio >= 10
of the ideal 16: the first request goes alone while the client learns what the server supports).

    .venv/bin/python bench/bench_api_throughput.py                 # 96 rows, 1 s a request (~2 min)
    .venv/bin/python bench/bench_api_throughput.py --rows 160 --delay 0.2

With short delays the client's own work per request (prompt over 77 labels, JSON schema, parsing)
on a 2-core machine shared with the server thread becomes the limit: 0.2 s gave x7.1 and 15 in
flight under load; 1 s (a hosted model's usual latency) gave x11.2 and 16.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from openai_stub import OpenAIStub  # noqa: E402  the loopback server the api_llm tests use

DATA = REPO.parent / "shared" / "datasets" / "banking77"
KEY_ENV = "TUNEWISE_BENCH_API_KEY"
CONCURRENCY = 16
MIN_RATIO = 10.0


def main() -> int:
    from tunewise.candidates.registry import candidate_kwargs, make_candidate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--delay", type=float, default=1.0, help="seconds the server takes per request")
    args = parser.parse_args()
    os.environ[KEY_ENV] = "sk-bench-local"
    train = pd.read_csv(DATA / "train.csv")
    test = pd.read_csv(DATA / "test.csv").sample(args.rows, random_state=0)
    labels = sorted(train["category"].unique())
    pool = train.groupby("category").head(3)
    train_frame = pd.DataFrame(
        {
            "id": [f"tr{i}" for i in range(len(pool))],
            "input": pool["text"].to_numpy(),
            "context": "[]",
            "label": pool["category"].to_numpy(),
        }
    )
    # "#delayalways": the stub answers after --delay seconds (see tests/openai_stub.py)
    frame = pd.DataFrame(
        {
            "id": [f"t{i}" for i in range(len(test))],
            "context": "[]",
            "input": [f"#delayalways {t}" for t in test["text"]],
        }
    )
    print(
        f"bench_api_throughput {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{len(frame)} rows, {len(labels)} labels, {args.delay:g} s a request, {os.cpu_count()} cores",
        flush=True,
    )
    rates, in_flight = {}, {}
    with OpenAIStub(delay_s=args.delay) as stub:
        for concurrency in (1, CONCURRENCY):
            stub.reset()
            settings = {
                "base_url": stub.url,
                "model": "stub-model",
                "api_key_env": KEY_ENV,
                "no_cache": True,
                "max_concurrency": concurrency,
                "batch_size": len(frame),
                "timeout_s": 30,
            }
            candidate = make_candidate("api_zero_shot", **candidate_kwargs("api_zero_shot", settings)).fit(train_frame)
            started = time.perf_counter()
            predictions = candidate.predict(frame)
            seconds = time.perf_counter() - started
            rates[concurrency] = len(predictions) / seconds
            in_flight[concurrency] = stub.max_in_flight
            print(
                f"max_concurrency {concurrency:>2}: {rates[concurrency]:.1f} rows/s ({seconds:.1f} s), "
                f"{stub.count()} requests, at most {stub.max_in_flight} in flight",
                flush=True,
            )
    ratio = rates[CONCURRENCY] / rates[1]
    flight_ok = in_flight[CONCURRENCY] == CONCURRENCY and in_flight[1] == 1
    print(
        f"in flight at max_concurrency {CONCURRENCY}: {in_flight[CONCURRENCY]} (target {CONCURRENCY}): "
        f"{'PASS' if flight_ok else 'FAIL'}"
    )
    print(
        f"rows/s ratio, concurrency {CONCURRENCY} vs 1: x{ratio:.1f} (target >= {MIN_RATIO:g}): "
        f"{'PASS' if ratio >= MIN_RATIO else 'FAIL'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

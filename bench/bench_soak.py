"""Benchmark: a soak of `tunewise serve` under a steady, bounded loopback load of valid and bad requests.

Target (issue 18): N minutes (default 20) of a steady mix at a fixed rate: 0 errors (no 5xx, no
dropped connection, every bad request answered with its documented 4xx status) and resident memory
flat within 10% after warm-up.

    .venv/bin/python bench/bench_soak.py                # 20 minutes
    .venv/bin/python bench/bench_soak.py --minutes 2    # a short check

The run served is built in a temporary folder as tests/serve_runs.py builds one (the demo data:
majority the incumbent, tfidf_lr the candidate, refitted by the server at start); the server is
`tunewise serve` in its own process on 127.0.0.1 with its default request log (SQLite, in the
run folder). ``--clients`` asyncio httpx clients send requests back to back, each pacing itself so
that all together send ``--rate`` requests a second. One cycle of the mix, 20 requests:

- valid (12): 8 classify (texts of the test split, 20 users, some with a short chat context),
  2 feedback (thumbs up on an answered request), GET /healthz, GET /metrics; expected 200;
- bad (8): empty text (422), a missing field (422), malformed JSON (422), an unknown arm (422),
  feedback on an unknown request id (404), 40 chat turns (413, serve.max_turns 32), a 70 KB body
  (413, serve.max_body_bytes 64 KB), a foreign Host header (400: DNS rebinding guard).

Printed: requests sent and answered, status counts, unexpected answers (a status other than the
one expected for that request, or no answer) by kind, p50/p95 latency of all answers in the first
and the last minute, and the server's resident memory (its process and children, from /proc)
after the warm-up (the reference) and at the end, with their ratio. Warm-up: the first
``--warmup`` seconds of the same load (default 30), whose answers count but whose memory does not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # serve_runs: the small run the serving tests use
sys.path.insert(0, str(REPO / "bench"))
from bench_serve import stop_server, wait_healthy  # noqa: E402  one way to start and stop a server for both

TARGET_RSS_GROWTH = 1.10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, MiB (Linux /proc)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def build_project(folder: Path) -> tuple[Path, list[str], list[str]]:
    """(config file, test texts, labels) of a small classify project with its run r1."""
    import pandas as pd
    import yaml

    from serve_runs import make_classify_run

    run, files = make_classify_run(folder, n_rows=600)
    config = folder / "tunewise.yaml"
    config.write_text(yaml.safe_dump({"task": "classify", "data": {"train": str(files.data)}, "tracking": "off"}))
    test = pd.read_parquet(run / "split" / "test.parquet")
    return config, test["input"].astype(str).tolist(), sorted(test["label"].astype(str).unique())


def start_server(config: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "TUNEWISE_PROGRESS": "off"}
    env.pop("TUNEWISE_API_KEY", None)  # the default: no key, loopback only
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunewise.cli.main",
            "serve",
            "--config",
            str(config),
            "--run-id",
            "r1",
            "--port",
            str(port),
        ],
        cwd=config.parent,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
    )


# one cycle of the mix: (kind, expected status)
MIX = [
    ("classify", 200),
    ("classify", 200),
    ("empty_text", 422),
    ("classify_context", 200),
    ("healthz", 200),
    ("missing_field", 422),
    ("classify", 200),
    ("feedback", 200),
    ("malformed_json", 422),
    ("classify", 200),
    ("unknown_arm", 422),
    ("classify", 200),
    ("unknown_request_id", 404),
    ("metrics", 200),
    ("too_many_turns", 413),
    ("classify_context", 200),
    ("body_too_large", 413),
    ("classify", 200),
    ("feedback", 200),
    ("foreign_host", 400),
]


class Soak:
    def __init__(self, url: str, texts: list[str], seconds: float, rate: float, clients: int) -> None:
        self.url, self.texts, self.seconds, self.rate, self.clients = url, texts, seconds, rate, clients
        self.sent = 0
        self.records: list[tuple[float, float, str, int | None, int]] = []  # (sent at, ms, kind, status, expected)
        self.answered_ids: list[str] = []  # request ids whose feedback is still to send

    def request(self, i: int) -> tuple[str, int, str, str, dict]:
        """(kind, expected status, method, path, httpx keyword arguments) of the i-th request."""
        kind, expected = MIX[i % len(MIX)]
        text = self.texts[i % len(self.texts)]
        user = f"user{i % 20}"
        json_body = {"text": text, "user": user}
        if kind == "classify":
            return kind, expected, "POST", "/v1/classify", {"json": json_body}
        if kind == "classify_context":
            context = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "How can I help?"}]
            return kind, expected, "POST", "/v1/classify", {"json": {**json_body, "context": context}}
        if kind == "healthz":
            return kind, expected, "GET", "/healthz", {}
        if kind == "metrics":
            return kind, expected, "GET", "/metrics", {}
        if kind == "feedback":
            if not self.answered_ids:  # nothing answered yet: one more classify instead
                return "classify", 200, "POST", "/v1/classify", {"json": json_body}
            return (
                kind,
                expected,
                "POST",
                "/v1/feedback",
                {"json": {"request_id": self.answered_ids.pop(0), "thumbs": "up"}},
            )
        if kind == "empty_text":
            return kind, expected, "POST", "/v1/classify", {"json": {"text": "", "user": user}}
        if kind == "missing_field":
            return kind, expected, "POST", "/v1/classify", {"json": {"user": user}}
        if kind == "malformed_json":
            return (
                kind,
                expected,
                "POST",
                "/v1/classify",
                {"content": b'{"text": "my card', "headers": {"content-type": "application/json"}},
            )
        if kind == "unknown_arm":
            return kind, expected, "POST", "/v1/classify", {"json": {**json_body, "arm": "nonexistent"}}
        if kind == "unknown_request_id":
            return kind, expected, "POST", "/v1/feedback", {"json": {"request_id": f"nope-{i}", "thumbs": "up"}}
        if kind == "too_many_turns":
            turns = [{"role": "user" if k % 2 == 0 else "assistant", "content": f"turn {k}"} for k in range(40)]
            return kind, expected, "POST", "/v1/classify", {"json": {**json_body, "context": turns}}
        if kind == "body_too_large":
            return kind, expected, "POST", "/v1/classify", {"json": {"text": "x" * 70_000, "user": user}}
        if kind == "foreign_host":
            return kind, expected, "POST", "/v1/classify", {"json": json_body, "headers": {"host": "rebind.example"}}
        raise ValueError(kind)

    async def run(self) -> None:
        import httpx

        limits = httpx.Limits(max_connections=self.clients, max_keepalive_connections=self.clients)
        period = self.clients / self.rate  # each client's pace
        async with httpx.AsyncClient(base_url=self.url, timeout=60, limits=limits) as client:
            self.started = time.perf_counter()
            deadline = self.started + self.seconds

            async def worker(k: int) -> None:
                next_at = self.started + k * period / self.clients
                while True:
                    now = time.perf_counter()
                    if now >= deadline:
                        return
                    if next_at > now:
                        await asyncio.sleep(next_at - now)
                    next_at += period
                    i = self.sent
                    self.sent += 1
                    kind, expected, method, path, kwargs = self.request(i)
                    sent = time.perf_counter()
                    try:
                        r = await client.request(method, path, **kwargs)
                        status = r.status_code
                    except httpx.HTTPError:
                        status = None
                    self.records.append(
                        (sent - self.started, (time.perf_counter() - sent) * 1000, kind, status, expected)
                    )
                    if status == 200 and kind.startswith("classify") and len(self.answered_ids) < 1000:
                        self.answered_ids.append(r.json()["request_id"])

            await asyncio.gather(*(worker(k) for k in range(self.clients)))


def percentiles(ms: list[float]) -> str:
    if not ms:
        return "no answers"
    return f"p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms ({len(ms)} answers)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="soak length after the warm-up (default 20)")
    parser.add_argument(
        "--warmup",
        type=float,
        default=30.0,
        help="seconds of the same load before the reference memory is taken (default 30)",
    )
    parser.add_argument("--rate", type=float, default=20.0, help="requests a second, all clients together")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (connections)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tunewise-soak-") as tmp:
        folder = Path(tmp)
        config, texts, _ = build_project(folder)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = folder / "server.log"
        process = start_server(config, port, log)
        try:
            ready = wait_healthy(url, process, log)
            print(
                f"server up in {ready:.1f}s (pid {process.pid}); warm-up {args.warmup:.0f}s, then "
                f"{args.minutes:g} min at {args.rate:g} req/s from {args.clients} clients",
                flush=True,
            )
            warm = Soak(url, texts, args.warmup, args.rate, args.clients)
            asyncio.run(warm.run())
            rss_start = rss_mib(process.pid)
            soak = Soak(url, texts, args.minutes * 60, args.rate, args.clients)
            samples: list[tuple[float, float]] = []

            async def sample_memory() -> None:
                while True:
                    await asyncio.sleep(30)
                    samples.append((time.perf_counter() - soak.started, rss_mib(process.pid)))

            async def both() -> None:
                sampler = asyncio.create_task(sample_memory())
                try:
                    await soak.run()
                finally:
                    sampler.cancel()

            asyncio.run(both())
            rss_end = rss_mib(process.pid)
            alive = process.poll() is None
        finally:
            stop_server(process)
        server_log = log.read_text(errors="replace")

    records = warm.records + soak.records
    statuses = Counter("no answer" if status is None else str(status) for _, _, _, status, _ in records)
    unexpected = Counter(
        f"{kind}: {'no answer' if status is None else status} (expected {expected})"
        for _, _, kind, status, expected in records
        if status != expected
    )
    server_errors = sum(1 for _, _, _, status, _ in records if status is None or status >= 500)
    length = args.minutes * 60
    first = [ms for at, ms, _, status, _ in soak.records if at < 60 and status is not None]
    last = [ms for at, ms, _, status, _ in soak.records if at >= length - 60 and status is not None]
    first_ok = [
        ms for at, ms, kind, status, _ in soak.records if at < 60 and status == 200 and kind.startswith("classify")
    ]
    last_ok = [
        ms
        for at, ms, kind, status, _ in soak.records
        if at >= length - 60 and status == 200 and kind.startswith("classify")
    ]
    growth = rss_end / rss_start if rss_start else float("nan")
    kinds = Counter(kind for _, _, kind, _, _ in records)

    print(
        f"requests: {len(records)} sent ({warm.sent} in the warm-up), {sum(1 for r in records if r[3] is not None)} "
        f"answered; by kind: {dict(sorted(kinds.items()))}"
    )
    print(f"status counts: {dict(sorted(statuses.items()))}")
    print(
        f"unexpected answers: {sum(unexpected.values())}"
        + (f" {dict(unexpected)}" if unexpected else "")
        + f"; 5xx or no answer: {server_errors}"
    )
    print(f"latency, first minute: all {percentiles(first)}; classify 200 {percentiles(first_ok)}")
    print(f"latency, last minute:  all {percentiles(last)}; classify 200 {percentiles(last_ok)}")
    trail = ", ".join(f"{at / 60:.1f} min {mib:.0f}" for at, mib in samples)
    print(
        f"server RSS: {rss_start:.1f} MiB after warm-up (reference), {rss_end:.1f} MiB at the end: x{growth:.3f} "
        f"(target <= x{TARGET_RSS_GROWTH}); every 30 s: {trail or 'none'}"
    )
    tracebacks = server_log.count("Traceback")
    print(f"server: {'still running' if alive else 'EXITED'} at the end; tracebacks in its log: {tracebacks}")
    ok = not unexpected and server_errors == 0 and alive and tracebacks == 0 and growth <= TARGET_RSS_GROWTH
    print(f"soak ({args.minutes:g} min): {'PASS' if ok else 'FAIL'}")
    print(
        json.dumps(
            {
                "minutes": args.minutes,
                "rate": args.rate,
                "requests": len(records),
                "unexpected": sum(unexpected.values()),
                "server_errors": server_errors,
                "rss_start_mib": round(rss_start, 1),
                "rss_end_mib": round(rss_end, 1),
                "rss_growth": round(growth, 4),
                "pass": ok,
            }
        )
    )
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()

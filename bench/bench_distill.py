"""Benchmark: distillation on BANKING77 (issue 17, part 3) with a teacher served over the OpenAI API.

Does a small model trained on 10 gold rows per intent plus the rows a hosted teacher labelled beat the
same model trained on the gold rows alone, beyond noise?

    .venv/bin/python bench/bench_distill.py                       # encoder_ft and embed_lr students
    .venv/bin/python bench/bench_distill.py --students embed_lr   # minutes instead of tens of minutes

The teacher, honestly: not a hosted LLM (no internet here) but `tunewise serve` (`python -m
tunewise.serving.app`, its OpenAI-compatible /v1/chat/completions) serving embed_lr trained on one half of
the BANKING77 training file (stratified, ~5,000 rows); the client is the `api_zero_shot` candidate over
real HTTP on 127.0.0.1, exactly as it would call a hosted model. The other half is the student's side:
10 gold rows per intent (770; the split keeps ~10% of them for validation) and the rest as the
unlabelled pool (~4,200 rows, its labels removed). The teacher never saw a pool row's label. Test: the
official BANKING77 test file (3,080 rows).

Steps, all through the command line: `tunewise run` on the gold project (baseline: majority, tfidf_lr,
embed_lr and api_zero_shot, the incumbent; train: encoder_ft), then `tunewise distill --teacher
api_zero_shot --pool pool.csv`. `tunewise serve` returns no log-probabilities, so every answer has
confidence 1.0 and the confidence filter keeps every answered row (said in the output). Printed per
student: test accuracy trained on gold alone and on gold + teacher rows, the paired difference with its
95% bootstrap interval and McNemar p-value (the evaluation's comparison), and PASS when the interval's
lower end is above 0. The API prices are a stated assumption ($0.15 / $0.60 per million input / output
tokens, gpt-4o-mini's list price) applied to the measured tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
BANKING77 = REPO.parent / "shared" / "datasets" / "banking77"
TUNEWISE = [sys.executable, "-m", "tunewise.cli.main"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def records(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": frame["id"].astype(str),
            "input": frame["text"].astype(str),
            "context": "[]",
            "label": frame["category"].astype(str),
        }
    )


def prepare(work: Path, gold_per_intent: int, seed: int) -> dict:
    """The teacher's run (half the training file) and the student's project (the other half)."""
    from sklearn.model_selection import train_test_split

    train = pd.read_csv(BANKING77 / "train.csv").reset_index(names="id")
    teacher_half, student_half = train_test_split(train, test_size=0.5, stratify=train["category"], random_state=seed)
    gold = student_half.groupby("category", group_keys=False).sample(n=gold_per_intent, random_state=seed)
    pool = student_half.drop(gold.index)

    # the teacher: a run folder `tunewise serve` refits embed_lr from (split, and the gate naming it)
    run = work / "teacher" / "runs" / "t1"
    for folder in (run / "split", run / "evaluate"):
        folder.mkdir(parents=True, exist_ok=True)
    fit, held = train_test_split(teacher_half, test_size=0.05, stratify=teacher_half["category"], random_state=seed)
    records(fit).to_parquet(run / "split" / "train.parquet")
    records(held).to_parquet(run / "split" / "validation.parquet")
    records(held).to_parquet(run / "split" / "test.parquet")
    (run / "evaluate" / "summary.json").write_text(
        json.dumps(
            {
                "gate": {"passed": True, "candidate": "embed_lr", "baseline": "majority"},
                "candidates": [{"name": "embed_lr", "out_of_scope_threshold": None}],
            }
        )
    )

    project = work / "student"
    project.mkdir(exist_ok=True)
    gold[["text", "category"]].to_csv(project / "gold.csv", index=False)
    pool[["text"]].to_csv(project / "pool.csv", index=False)
    shutil.copy(BANKING77 / "test.csv", project / "test.csv")
    return {
        "teacher_run": run,
        "project": project,
        "teacher_rows": len(fit),
        "gold_rows": len(gold),
        "pool_rows": len(pool),
    }


def write_config(project: Path, url: str, students: list[str], encoder_epochs: int | None) -> Path:
    import yaml

    tuned = [s for s in students if s == "encoder_ft"]
    config = {
        "task": "classify",
        "data": {"train": "gold.csv", "test": "test.csv", "columns": {"input": "text", "label": "category"}},
        "baseline": {
            "candidates": ["majority", "tfidf_lr", "embed_lr", "api_zero_shot"],
            "api_llm": {
                "base_url": url,
                "model": "candidate",
                "api_key_env": None,
                "usd_per_million_input_tokens": 0.15,
                "usd_per_million_output_tokens": 0.60,
                "max_usd": 5.0,
                "max_concurrency": 8,
                "timeout_s": 60,
                "cache_dir": str(project / "api_cache"),
            },
        },
        "train": {"candidates": tuned or ["encoder_ft"], **({"epochs": encoder_epochs} if encoder_epochs else {})},
        "evaluate": {"baseline": "api_zero_shot"},
        "roi": {"monthly_volume": 20000},
        "tracking": "off",
    }
    path = project / "tunewise.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(command: list[str], log: Path, cwd: Path) -> str:
    started = time.perf_counter()
    env = {**os.environ, "TUNEWISE_PROGRESS": "log", "TUNEWISE_PROGRESS_INTERVAL": "60", "COLUMNS": "200"}
    with log.open("a") as handle:
        handle.write(f"\n$ {' '.join(command)}\n")
        handle.flush()
        done = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=handle, text=True)
        handle.write(done.stdout)
    print(f"  {' '.join(command[3:])}: {time.perf_counter() - started:.0f} s", flush=True)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}; see {log}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", default="encoder_ft,embed_lr")
    parser.add_argument("--gold-per-intent", type=int, default=10)
    parser.add_argument("--encoder-epochs", type=int, default=None, help="train.epochs (default: sized from data)")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "out" / "distill")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="delete the work folder (and its API cache) first")
    args = parser.parse_args()
    students = [s for s in args.students.split(",") if s]
    if args.fresh and args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "log.txt"
    started = time.perf_counter()
    print(f"bench_distill: {platform.node()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    data = prepare(args.work, args.gold_per_intent, args.seed)
    print(
        f"  teacher: embed_lr on {data['teacher_rows']:,} rows; student: {data['gold_rows']} gold rows, "
        f"pool {data['pool_rows']:,} unlabelled rows",
        flush=True,
    )

    port = free_port()
    env = {**os.environ, "TUNEWISE_PROGRESS": "off"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunewise.serving.app",
            str(data["teacher_run"]),
            "--port",
            str(port),
            "--arms",
            "candidate=1",
            "--store",
            f"sqlite:///{args.work / 'teacher.db'}",
        ],
        stdout=(args.work / "server.log").open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(1200):
            if server.poll() is not None:
                raise SystemExit(f"the teacher server exited; see {args.work / 'server.log'}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        print(f"  teacher served at {url}/v1 (tunewise serve)", flush=True)
        config = write_config(data["project"], f"{url}/v1", students, args.encoder_epochs)
        project = data["project"]
        # the gold-only students: embed_lr in the baseline stage, encoder_ft in the train stage
        stage = "run" if "encoder_ft" in students else "baseline"
        run(TUNEWISE + [stage, "-c", str(config), "--run-id", "gold"], log, project)
        result = json.loads(
            run(
                TUNEWISE
                + [
                    "distill",
                    "-c",
                    str(config),
                    "--run-id",
                    "gold",
                    "--pool",
                    "pool.csv",
                    "--teacher",
                    "api_zero_shot",
                    "--students",
                    ",".join(students),
                    "--json",
                ],
                log,
                project,
            )
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    report(result, data, students, time.perf_counter() - started, args.work)


def report(result: dict, data: dict, students: list[str], seconds: float, work: Path) -> None:
    print(f"\nrule: {result['rule']['message']}")
    labelled = result["labelled"]
    print(
        f"teacher rows: {labelled['kept']:,} of {labelled['labelled']:,} kept; dropped {labelled['dropped']}; "
        f"train rows: {result['train_rows']}"
    )
    verdicts = {}
    for c in result["comparisons"]:
        m = c["metrics"]["accuracy"]
        low, high = m["difference_ci"]
        line = (
            f"{c['student']} (gold + teacher) vs {c['against']}: {m['candidate']:.4f} vs {m['baseline']:.4f}, "
            f"difference {m['difference']:+.4f} (95% CI {low:+.4f} to {high:+.4f}), p={m['p_value']:.2g}, "
            f"n={c['n']:,}"
        )
        if c["against"].endswith("trained on gold alone"):
            verdicts[c["student"]] = low > 0
            line += f"  {'PASS' if low > 0 else 'FAIL'} (gain beyond noise)"
        print(line)
    for line in result["costs"]["one_time"]:
        print(f"one-time: {line['item']}: ${line['usd']:.4f} ({line['arithmetic']})")
    for name, cost in result["costs"]["monthly"].items():
        print(f"a month: {name}: ${cost['usd']:,.2f} ({cost['arithmetic']})")
    missing = [s for s in students if s not in verdicts]
    if missing:
        print(f"no gold-only comparison for {missing}")
    print(f"\nwall time {seconds / 60:.1f} min; overall: {'PASS' if verdicts and all(verdicts.values()) else 'FAIL'}")
    (work / "result.json").write_text(
        json.dumps(
            {"result": result, "data": {k: str(v) for k, v in data.items()}, "seconds": seconds}, indent=2, default=str
        )
    )


if __name__ == "__main__":
    main()

"""Curation detection quality: recall and precision per defect kind, against known defects.

1. the demo data (``tunewise demo`` generator, seed 0) against its demo_truth.jsonl;
2. a noisy copy of BANKING77 train (bench/noisy_banking77.py: 5% exact and near duplicates, 5%
   flipped labels, 3% off-topic rows, PII in 2%).

Runs the full default curation (every check on, as ``tunewise curate`` does) and prints one line
per kind with PASS/FAIL against the issue's targets.

    .venv/bin/python bench/bench_curate.py [--only demo|banking77] [--engine local|ray]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


from tunewise.config.sections import config_from_dict  # noqa: E402
from tunewise.data.curate import curate_frame, make_engine  # noqa: E402
from tunewise.data.detection import read_truth, score_detection  # noqa: E402
from tunewise.data.ingest import ingest  # noqa: E402
from tunewise.demo.run import write_demo_project  # noqa: E402
from tunewise.pipeline.precheck import load_config  # noqa: E402

# kind -> (min recall, min precision), from the issue
DEMO_TARGETS = {
    "exact_duplicate": (0.95, 0.90),
    "pii": (0.95, 0.90),
    "garbage": (0.95, 0.90),
    "empty": (0.95, 0.90),
    "near_duplicate": (0.90, 0.90),
    "label_conflict": (0.90, 0.90),
    "off_topic": (0.90, 0.90),
    "spam": (0.90, 0.90),
    "wrong_label": (0.80, 0.90),
    "label_variant": (0.95, 0.90),
}
BANKING_TARGETS = {"wrong_label": (0.75, 0.75)}


def _report(title: str, scores: dict, targets: dict, seconds: float) -> bool:
    ok = True
    print(f"== {title} (curate {seconds:.1f}s)")
    for kind, s in scores.items():
        target = targets.get(kind)
        rec, prec = s["recall"], s["precision"]
        verdict = ""
        if target:
            passed = rec is not None and rec >= target[0] and (prec if prec is not None else 0) >= target[1]
            ok &= passed
            verdict = f"target recall>={target[0]} precision>={target[1]} {'PASS' if passed else 'FAIL'}"
        print(
            f"{kind:16s} truth={s['truth']:4d} found={s['found']:4d} reported={s['reported']:4d} "
            f"recall={_f(rec)} precision={_f(prec)} {verdict}"
        )
    return ok


def _f(x):
    return "  n/a" if x is None else f"{x:.3f}"


def bench_demo(engine: str) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path, files = write_demo_project(Path(tmp) / "demo", task="classify", seed=0)
        cfg = load_config(cfg_path)
        res = ingest(
            files.data, task="classify", columns=cfg.data.columns.model_dump(), keep_columns=cfg.data.slice_columns
        )
        t0 = time.perf_counter()
        eng = make_engine(engine)
        try:
            result = curate_frame(res.frame, cfg, engine=eng, prior_issues=res.issues)
        finally:
            eng.shutdown()
        seconds = time.perf_counter() - t0
        truth = read_truth(files.truth)
        kinds = [k for k in DEMO_TARGETS if any(t["defect"] == k for t in truth)]
        return _report(
            "demo data, classify, seed 0", score_detection(result.issues.frame(), truth, kinds), DEMO_TARGETS, seconds
        )


def bench_banking(engine: str) -> bool:
    from noisy_banking77 import make_noisy_banking77

    frame, truth = make_noisy_banking77(seed=0)
    cfg = config_from_dict({"data": {"train": "noisy.csv", "task_description": "online banking customer queries"}})
    t0 = time.perf_counter()
    eng = make_engine(engine)
    try:
        result = curate_frame(frame, cfg, engine=eng)
    finally:
        eng.shutdown()
    seconds = time.perf_counter() - t0
    kinds = ["exact_duplicate", "near_duplicate", "wrong_label", "off_topic", "pii"]
    return _report(
        f"noisy BANKING77 ({len(frame)} rows)",
        score_detection(result.issues.frame(), truth, kinds),
        BANKING_TARGETS,
        seconds,
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["demo", "banking77"])
    ap.add_argument("--engine", default="local", choices=["local", "ray"])
    args = ap.parse_args()
    ok = True
    if args.only in (None, "demo"):
        ok &= bench_demo(args.engine)
    if args.only in (None, "banking77"):
        ok &= bench_banking(args.engine)
    print("ALL TARGETS PASS" if ok else "SOME TARGETS FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Compare the numbers of two runs of the same pipeline, timings left out (issue 16: `make demo`
gives the same numbers before and after a refactor).

    .venv/bin/python bench/compare_runs.py DEMO_DIR_A DEMO_DIR_B [--run-id demo]

Walks baseline/, train/ and evaluate/summary.json and decide/decision.json of both runs and
prints every value that differs, skipping keys that hold times, rates or paths.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ARTIFACTS = ("baseline/summary.json", "train/summary.json", "evaluate/summary.json", "decide/decision.json")
# keys whose values are measured times, rates or file locations: they differ between any two runs
SKIPPED = (
    "seconds",
    "latency_ms",
    "started",
    "finished",
    "elapsed",
    "timings_s",
    "time",
    "created",
    "when",
    "rate",
    "steps_per_s",
    "tokens_per_s",
    "estimated_s_all",
    "seconds_per_row",
    "wall_s",
    "duration_s",
    "fit_s",
    "path",
    "page",
)


def differences(a: Any, b: Any, where: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if not any(part in key for part in SKIPPED):
                out += differences(a.get(key), b.get(key), f"{where}.{key}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if abs(a - b) <= 1e-9 else [(where, a, b)]
    return [] if a == b else [(where, a, b)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--run-id", default="demo")
    args = parser.parse_args()
    total = 0
    for artifact in ARTIFACTS:
        first, second = (folder / "runs" / args.run_id / artifact for folder in (args.first, args.second))
        if not (first.exists() and second.exists()):
            print(f"{artifact}: missing in {'the first' if not first.exists() else 'the second'} run")
            total += 1
            continue
        found = differences(json.loads(first.read_text()), json.loads(second.read_text()))
        total += len(found)
        print(f"{artifact}: {len(found)} differences")
        for where, x, y in found[:20]:
            print(f"  {where}: {str(x)[:90]!r} vs {str(y)[:90]!r}")
    return 0 if total == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

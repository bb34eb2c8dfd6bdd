"""Benchmark the ``label_errors`` curation check: recall, precision and wall time.

1. BANKING77 train (10,003 rows, 77 intents) with a share of labels (default 5%) flipped to a
   random *other* intent, seeded; only ``label_errors`` enabled. Targets: recall >= 0.75 and
   precision >= 0.75 against the flipped rows.
2. The demo data (``tunewise.demo.data.generate_demo``), scored against its ``wrong_label`` truth.
   Targets: recall >= 0.80 and precision >= 0.90. Two runs:
   - ``only``: only ``label_errors`` enabled, on the raw file. Its label variants ("Order Status")
     and label conflicts are still in the data and get flagged too; the line also gives the
     precision that counts those rows as true label defects (``precision_label_defects``).
   - ``pipeline``: every check enabled by default, as ``tunewise curate`` runs it, so variants
     are merged, conflicts resolved and junk dropped before ``label_errors`` sees the rows.

3. ``--synthesis``: synthetic rows for a thin class (``thin_classes`` + ``synthesize``): the
   demo data after the default pipeline, with one class (default ``warranty_claim``) cut to 8
   rows; prints the acceptance rate, the rejection reasons and a few kept rows.

Run from the repository root (BANKING77 takes 2-10 minutes on 2 shared cores):

    .venv/bin/python bench/bench_label_errors.py [--noise 0.05] [--seed 0] [--skip-banking] [--skip-demo]
    .venv/bin/python bench/bench_label_errors.py --synthesis [--thin-class warranty_claim] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("TUNEWISE_PROGRESS", "off")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tunewise.config.checks import CheckSettings
from tunewise.config.sections import CurateConfig, config_from_dict
from tunewise.data.curate import curate_frame
from tunewise.data.ingest import ingest

BANKING77 = REPO.parent / "shared" / "datasets" / "banking77" / "train.csv"
CHECK_NAMES = [
    name
    for name, field in CurateConfig.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, CheckSettings)
]


def noisy_banking77(path: Path, out: Path, noise: float, seed: int) -> set[str]:
    """Write a copy of BANKING77 with ``noise`` of its labels flipped; returns the flipped ids."""
    frame = pd.read_csv(path)
    rng = np.random.default_rng(seed)
    intents = np.array(sorted(frame["category"].unique()))
    flipped = rng.choice(len(frame), size=round(noise * len(frame)), replace=False)
    labels = frame["category"].to_numpy().copy()
    for i in flipped:
        labels[i] = rng.choice(intents[intents != labels[i]])
    frame["category"] = labels
    frame.insert(0, "id", [f"b{i}" for i in range(len(frame))])
    frame.to_csv(out, index=False)
    return {f"b{i}" for i in flipped}


def run(path: Path, only_label_errors: bool, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    curate = {name: {"enabled": False} for name in CHECK_NAMES} if only_label_errors else {}
    curate["label_errors"] = {"enabled": True}
    cfg = config_from_dict({"data": {"train": str(path)}, "seed": seed, "curate": curate})
    frame = ingest(path, task="classify").frame
    started = time.perf_counter()
    result = curate_frame(frame, cfg)
    seconds = time.perf_counter() - started
    issues = result.issues.frame()
    return frame, issues[issues["issue"] == "suspected_label_error"], seconds


def score(flagged: set[str], truth: set[str]) -> dict[str, float]:
    hits = len(flagged & truth)
    return {
        "recall": round(hits / len(truth), 3) if truth else float("nan"),
        "precision": round(hits / len(flagged), 3) if flagged else float("nan"),
        "flagged": len(flagged),
        "true": len(truth),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--demo-rows", type=int, default=1500)
    parser.add_argument("--skip-banking", action="store_true")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--synthesis", action="store_true", help="measure synthetic rows instead")
    parser.add_argument("--thin-class", default="warranty_claim")
    parser.add_argument("--thin-rows", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # on a busy shared box, 1 thread avoids OpenMP oversubscription
    if args.synthesis:
        synthesis(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if not args.skip_banking:
            noisy = tmp_path / "banking77_noisy.csv"
            truth = noisy_banking77(BANKING77, noisy, args.noise, args.seed)
            _, found, seconds = run(noisy, only_label_errors=True, seed=args.seed)
            result = score(set(found["id"]), truth)
            print(json.dumps({"data": "banking77", "noise": args.noise, **result, "seconds": round(seconds, 1)}))
        if not args.skip_demo:
            from tunewise.demo.data import generate_demo

            files = generate_demo(tmp_path / "demo", task="classify", seed=args.seed, n_rows=args.demo_rows)
            defects = pd.DataFrame([json.loads(line) for line in files.truth.read_text().splitlines()])
            wrong = set(defects.loc[defects["defect"] == "wrong_label", "id"])
            label_kinds = ["wrong_label", "label_conflict", "label_variant"]
            label_defects = set(defects.loc[defects["defect"].isin(label_kinds), "id"])
            # a conflict's original carries a label defect too: its copy contradicts it
            label_defects |= set(defects.loc[defects["defect"] == "label_conflict", "of"].dropna())
            for mode in ("only", "pipeline"):
                _, found, seconds = run(files.data, only_label_errors=mode == "only", seed=args.seed)
                flagged = set(found["id"])
                result = score(flagged, wrong)
                if mode == "only":
                    result["precision_label_defects"] = round(len(flagged & label_defects) / max(len(flagged), 1), 3)
                others = defects.set_index("id")["defect"].reindex(sorted(flagged - wrong)).fillna("clean")
                print(
                    json.dumps(
                        {
                            "data": "demo",
                            "mode": mode,
                            **result,
                            "seconds": round(seconds, 1),
                            "false_positives_by_truth": others.value_counts().to_dict(),
                        }
                    )
                )


def synthesis(args: argparse.Namespace) -> None:
    from tunewise.data.checks.labels import ThinClasses
    from tunewise.data.curate import CurateContext, Engine
    from tunewise.demo.data import generate_demo

    with tempfile.TemporaryDirectory() as tmp:
        files = generate_demo(Path(tmp) / "demo", task="classify", seed=args.seed, n_rows=args.demo_rows)
        cfg = config_from_dict(
            {
                "data": {"train": str(files.data)},
                "seed": args.seed,
                "curate": {"synthesize": True, "thin_classes": {"enabled": False}},
            }
        )
        frame = curate_frame(ingest(files.data, task="classify").frame, cfg).frame
    rows_of_class = np.flatnonzero(frame["label"] == args.thin_class)
    frame = frame.drop(index=rows_of_class[args.thin_rows :]).reset_index(drop=True)
    check = ThinClasses(cfg.curate.thin_classes, cfg)
    ctx = CurateContext(cfg, Engine())
    check.find(frame, ctx)
    started = time.perf_counter()
    added, _ = check.synthesize(frame, ctx)
    stats = ctx.notes["thin_classes"]["synthesis"]
    print(
        json.dumps(
            {
                "data": "demo",
                "thin": ctx.notes["thin_classes"]["balance"]["thin"],
                **stats,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    )
    for row in added.head(8).itertuples():
        print(f"  {row.id}: {row.input!r}")


if __name__ == "__main__":
    main()

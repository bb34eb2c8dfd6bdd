"""Benchmark ``tunewise curve`` on BANKING77: is the extrapolation calibrated, and is it fast enough?

Data: BANKING77's official training split, 10% of it held out (stratified, seeded) as the
validation split a tunewise run would have, so "100%" is the remaining 9,003 training rows; the
official 3,080-row test split scores every subset. Candidates: the cheap ones, ``tfidf_lr`` and
``embed_lr``. Both parts call ``tunewise.decision.curve.learning_curve`` as ``tunewise curve`` does.

1. Time: the curve on the default fractions (0.1, 0.25, 0.5, 1.0) for both candidates, as a run
   does it (tunewise.models.loading.embed embeds a text once per process; validation and test are
   scored at every fraction). Target: under 5 minutes on 2 cores. Its 1.0
   point is the measured accuracy with 100% of the training data.
2. Calibration: the curve fitted on subsets up to 25% (0.025, 0.05, 0.1, 0.25) predicts the
   accuracy with 100% of the data ("1x" the training rows, with the bootstrap interval over test
   examples). Targets per candidate: prediction within 1.5 accuracy points of the measured 100%
   figure, and the measured figure inside the 95% interval.

Printed: per candidate the measured accuracy by subset size, the time, the prediction, its
interval, the measured 100% accuracy, the error in points and PASS/FAIL per target.

Run from the repository root (about 5-10 minutes on 2 shared cores):

    .venv/bin/python bench/bench_curve.py [--threads 1] [--resamples 500]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

import pandas as pd

os.environ.setdefault("TUNEWISE_PROGRESS", "off")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import tunewise.decision.curve as curve  # noqa: E402
from tunewise.candidates.factory import build_candidate  # noqa: E402

BANKING77 = REPO.parent / "shared" / "datasets" / "banking77"
CANDIDATES = ["tfidf_lr", "embed_lr"]
SMALL_FRACTIONS = [0.025, 0.05, 0.1, 0.25]
TOLERANCE = 0.015


def load(validation_share: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    def records(path: Path, prefix: str) -> pd.DataFrame:
        raw = pd.read_csv(path)
        return pd.DataFrame(
            {
                "id": [f"{prefix}{i}" for i in range(len(raw))],
                "input": raw["text"],
                "context": "[]",
                "label": raw["category"],
            }
        )

    full, test = records(BANKING77 / "train.csv", "tr"), records(BANKING77 / "test.csv", "te")
    held = full.groupby("label", group_keys=False).sample(frac=validation_share, random_state=seed)
    train = full.drop(held.index).reset_index(drop=True)
    return train, held.reset_index(drop=True), test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 measured faster on a busy machine)")
    parser.add_argument("--resamples", type=int, default=500, help="bootstrap resamples of the test set")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    train, validation, test = load(0.1, args.seed)
    factory = functools.partial(build_candidate, config={})
    print(
        f"BANKING77: {len(train):,} training rows (100%), {len(validation):,} validation, {len(test):,} test; "
        f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; torch threads {args.threads}"
    )

    # 1. the default curve, timed, nothing cached
    started = time.perf_counter()
    default = curve.learning_curve(
        train,
        validation,
        test,
        candidates=CANDIDATES,
        factory=factory,
        fractions=curve.DEFAULT_FRACTIONS,
        seed=args.seed,
        n_resamples=args.resamples,
    )
    seconds = time.perf_counter() - started
    print(
        f"\n1. curve on fractions {', '.join(f'{f:g}' for f in curve.DEFAULT_FRACTIONS)} for "
        f"{', '.join(CANDIDATES)}: {seconds:.0f}s wall (load now {os.getloadavg()[0]:.1f})"
    )
    measured = {}
    for name, entry in default["candidates"].items():
        measured[name] = entry["test_accuracy"][-1]
        print(
            f"   {name:>8}: "
            + ", ".join(f"{n:,}: {a:.4f}" for n, a in zip(entry["n"], entry["test_accuracy"]))
            + f"; fits {sum(entry['fit_seconds']):.0f}s"
        )
    time_ok = seconds < 300
    print(f"   {'PASS' if time_ok else 'FAIL'}: {seconds / 60:.1f} min (target < 5 min on 2 cores)")

    # 2. calibration: fit up to 25%, predict 100%
    # tunewise.models.loading.embed keeps the texts it embedded (validation and test) in this process
    started = time.perf_counter()
    small = curve.learning_curve(
        train,
        validation,
        test,
        candidates=CANDIDATES,
        factory=factory,
        fractions=SMALL_FRACTIONS,
        seed=args.seed,
        n_resamples=args.resamples,
    )
    print(
        f"\n2. curve on fractions {', '.join(f'{f:g}' for f in SMALL_FRACTIONS)} (up to {small['sizes']['0.25']:,} "
        f"rows) predicting {len(train):,} rows ({time.perf_counter() - started:.0f}s)"
    )
    all_ok = time_ok
    for name, entry in small["candidates"].items():
        predicted = entry["expected"]["1x"]
        low, high = predicted["ci95"]
        error = predicted["accuracy"] - measured[name]
        close, inside = abs(error) <= TOLERANCE, low <= measured[name] <= high
        all_ok &= close and inside
        fit = entry["fit"]
        print(
            f"   {name:>8}: "
            + ", ".join(f"{n:,}: {a:.4f}" for n, a in zip(entry["n"], entry["test_accuracy"]))
            + f"\n             fit error = {fit['a']:.3f} n^-{fit['b']:.3f} + {fit['c']:.3f}; predicted at "
            f"{predicted['n']:,}: {predicted['accuracy']:.4f} (95% interval {low:.4f}-{high:.4f}); measured "
            f"{measured[name]:.4f}; error {error * 100:+.2f} points"
            f"\n             {'PASS' if close else 'FAIL'}: within {TOLERANCE * 100:.1f} points; "
            f"{'PASS' if inside else 'FAIL'}: measured inside the interval"
        )
    print(f"\n{'PASS' if all_ok else 'FAIL'} overall; load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

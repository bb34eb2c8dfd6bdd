"""Benchmark: few_shot_llm with the label shortlist over the whole BANKING77 test set (issue 15).

Measured in one run, on the official test split (3,080 rows, 77 labels), with the embedded
SmolLM2-135M-Instruct and MiniLM encoder:

1. shortlisted scoring of all 3,080 test rows: wall time (target < 5 min on 2 cores);
2. full-label scoring (every label, the reference) on a stratified sample of ``--full-rows``
   test rows: rows/s, extrapolated to 3,080 rows, and the speed-up of the shortlist, paired: the
   same rows scored shortlisted, interleaved in chunks of 25 so both see the same machine load;
3. accuracy of shortlisted vs full scoring on that same sample (target: within 1 point).

The shortlist size is chosen in fit on a validation set: 10% of the training rows (stratified,
seeded), the other 90% are the few-shot pool. Fitting (embedding 10,003 texts) is timed apart.

No 150-label case: BANKING77 has 77 labels, and relabelling or duplicating its labels to reach
150 would time a set whose labels do not mean anything (the shortlist's recall would be
artificially low or high), so it is left out rather than faked.

    .venv/bin/python bench/bench_shortlist.py > bench/out/shortlist.txt 2>&1
    .venv/bin/python bench/bench_shortlist.py --full-rows 100 --test-rows 500   # quicker
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench_evaluate import BANKING77, records, verdict  # noqa: E402 - the bench folder's shared readers

TARGET_SECONDS = 300.0  # all 3,080 test rows, shortlisted
TARGET_ACCURACY_GAP = 0.01  # shortlisted vs full on the same sample


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} on {os.cpu_count()} cores"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-rows", type=int, default=500, help="stratified test rows scored with every label")
    parser.add_argument("--test-rows", type=int, default=None, help="test rows scored with the shortlist (default all)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    from sklearn.model_selection import train_test_split

    from tunewise.baseline import stratified_sample_ids
    from tunewise.candidates import make_candidate

    torch.set_num_threads(args.threads)
    print(f"bench_shortlist: {datetime.datetime.now().isoformat(timespec='seconds')}, "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads; {load()}", flush=True)

    pool = records(BANKING77 / "train.csv", "tr")
    test = records(BANKING77 / "test.csv", "te")
    train, validation = train_test_split(pool, test_size=0.1, stratify=pool["label"], random_state=args.seed)
    train, validation = train.reset_index(drop=True), validation.reset_index(drop=True)
    if args.test_rows is not None and args.test_rows < len(test):
        test = test[test["id"].isin(stratified_sample_ids(test, args.test_rows, args.seed, "label"))].reset_index(drop=True)
    full_ids = stratified_sample_ids(test, args.full_rows, args.seed, "label")
    full_rows = test[test["id"].isin(full_ids)].reset_index(drop=True)
    print(f"data: {len(train)} train (few-shot pool), {len(validation)} validation, {len(test)} test rows, "
          f"{pool['label'].nunique()} labels; full-label reference on {len(full_rows)} stratified test rows", flush=True)

    started = time.perf_counter()
    few_shot = make_candidate("few_shot_llm", batch_size=args.batch_size).fit(train, validation)
    fit_seconds = time.perf_counter() - started
    info = few_shot.info()["shortlist"]
    print(f"fit: {fit_seconds:.1f} s; shortlist k={info['k']} of {info['n_labels']} labels, recall "
          f"{info['recall']} on {info['measured_on']} (target >= {info['target_recall']}); recall by k: "
          f"{info['recall_by_k']}", flush=True)

    # warm-up (model weights paged in, query embeddings of a few rows): not counted in either figure
    few_shot.predict(test.iloc[:4])

    print(f"[1/2] shortlisted scoring of {len(test)} test rows; {load()}", flush=True)
    started = time.perf_counter()
    shortlisted = few_shot.predict(test)
    short_seconds = time.perf_counter() - started
    short_rate = len(test) / short_seconds

    # The reference, interleaved with the shortlisted scorer on the same rows in chunks: on a shared
    # machine the load changes over minutes, and both see the same load this way (paired ratio).
    print(f"[2/2] full-label scoring of {len(full_rows)} test rows, interleaved with shortlisted scoring of the "
          f"same rows; {load()}", flush=True)
    full_parts, full_seconds, paired_short_seconds = [], 0.0, 0.0
    for begin in range(0, len(full_rows), 25):
        chunk = full_rows.iloc[begin : begin + 25]
        started = time.perf_counter()
        full_parts.append(few_shot.predict(chunk, shortlist=False))
        full_seconds += time.perf_counter() - started
        started = time.perf_counter()
        few_shot.predict(chunk)
        paired_short_seconds += time.perf_counter() - started
    full = pd.concat(full_parts, ignore_index=True)
    full_rate = len(full_rows) / full_seconds
    full_extrapolated = 3080 / full_rate

    on_sample = shortlisted.set_index("id").loc[full_rows["id"]]
    truth = full_rows["label"].to_numpy()
    acc_short = float((on_sample["prediction"].to_numpy() == truth).mean())
    acc_full = float((full["prediction"].to_numpy() == truth).mean())
    acc_short_all = float((shortlisted["prediction"].to_numpy() == test["label"].to_numpy()).mean())
    agree = float((on_sample["prediction"].to_numpy() == full["prediction"].to_numpy()).mean())
    short_3080 = 3080 / short_rate

    print()
    print(f"machine at the end: {load()}")
    print(f"shortlist k={info['k']} of {info['n_labels']}, validation recall {info['recall']}")
    print(f"shortlisted, {len(test)} test rows: {short_seconds:.1f} s ({short_rate:.2f} rows/s); "
          f"for 3,080 rows {short_3080:.1f} s, target < {TARGET_SECONDS:.0f} s: "
          f"ratio {short_3080 / TARGET_SECONDS:.2f} of target: {verdict(short_3080 < TARGET_SECONDS)}")
    print(f"full-label reference, {len(full_rows)} rows: {full_seconds:.1f} s ({full_rate:.2f} rows/s); "
          f"extrapolated to 3,080 rows {full_extrapolated:.1f} s")
    print(f"speed-up of the shortlist, paired (same {len(full_rows)} rows, interleaved): "
          f"{full_seconds / paired_short_seconds:.2f}x ({paired_short_seconds:.1f} s shortlisted vs {full_seconds:.1f} s full); "
          f"unpaired (run [1/2] vs the reference): {short_rate / full_rate:.2f}x")
    print(f"accuracy on the same {len(full_rows)} rows: shortlisted {acc_short:.4f}, full {acc_full:.4f}, "
          f"gap {100 * (acc_short - acc_full):+.2f} points, target within {100 * TARGET_ACCURACY_GAP:.0f}: "
          f"{verdict(abs(acc_short - acc_full) <= TARGET_ACCURACY_GAP + 1e-12)}; same label on {agree:.1%} of rows")
    print(f"accuracy shortlisted on all {len(test)} test rows: {acc_short_all:.4f}")
    print(f"fit (embedding {len(train) + len(validation)} texts, choosing k): {fit_seconds:.1f} s")
    print("150-label case: not run (BANKING77 has 77 labels; a relabelled or duplicated set would not be honest)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

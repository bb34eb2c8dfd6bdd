"""Benchmark: few_shot_llm as the baseline stage runs it, over the whole BANKING77 test set (issue 15).

Measured in one run, on the official test split (3,080 rows, 77 labels), with the embedded
SmolLM2-135M-Instruct and MiniLM encoder, 2 torch threads:

1. the default few_shot_llm (``precision: auto``: bf16 weights where the CPU has native bf16;
   ``prompt_search``: instruction and demonstrations chosen on validation; label shortlist sized
   on validation) scoring all 3,080 test rows: wall time, target < 5 min on 2 cores;
2. the reference, full scoring as it was before this issue (float32 weights, the plain prompt
   that lists every label, every label scored), on a stratified sample of ``--full-rows`` test
   rows, interleaved in chunks of 25 with the default scorer on the same rows so both see the
   same machine load (paired ratio), extrapolated to 3,080 rows;
3. accuracy on that sample: default vs the reference (target: within 1 point), and vs the same
   prompt and precision with every label scored (the shortlist's own effect);
4. ``--many-labels``: a 154-label, 5,500-row test (target < 10 min). BANKING77 has 77 intents;
   each is split in two sub-labels at random (seeded), which makes the labels harder to tell
   apart than real ones (the shortlist must grow to keep its recall), so the time is a
   pessimistic figure; accuracy is reported on the sub-labels and on the intents (sub-labels
   merged), the latter the meaningful one. The 5,500 test rows are the 3,080 official test rows
   and 2,420 training rows held out of the few-shot pool.

The default scores two batches at once on 2 cores (``baseline.scoring_workers: auto``); it is also
timed one batch at a time on both threads, on the reference's rows in one call (two rounds each,
alternating).

Fitting (embedding the pool, choosing the shortlist and the prompt on validation) is timed apart.

    .venv/bin/python bench/bench_shortlist.py > bench/out/shortlist.txt 2>&1
    .venv/bin/python bench/bench_shortlist.py --full-rows 100 --test-rows 500 --no-many-labels   # quicker
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import os
import platform
import sys
import time

import numpy as np
import pandas as pd

from bench_evaluate import BANKING77, records, verdict  # noqa: E402 - the bench folder's shared readers

TARGET_SECONDS = 300.0  # all 3,080 test rows
TARGET_MANY_SECONDS = 600.0  # 150 labels, 5,500 rows
TARGET_ACCURACY_GAP = 0.01  # default vs full-label scoring on the same sample
OFFICIAL_TEST_ROWS = 3080


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} on {os.cpu_count()} cores"


def accuracy(predictions: pd.DataFrame, truth: pd.Series) -> float:
    return float((predictions["prediction"].astype(str).to_numpy() == truth.astype(str).to_numpy()).mean())


def describe_fit(candidate, seconds: float) -> str:
    info = candidate.info()
    short, search = info["shortlist"], info["prompt_search"]
    tried = ", ".join(
        f"{t['instruction']}/{t['demos']} {t['accuracy']:.3f} on {t.get('rows', '?')} rows ({t['seconds']:.0f} s)"
        for t in search.get("tried", [])
    )
    return (
        f"fit: {seconds:.1f} s; weights {info['prompt']['dtype']}; shortlist k={short['k']} of "
        f"{short['n_labels']} labels, recall {short['recall']} on {short['measured_on']}; prompt search on "
        f"{search.get('rows')} {search.get('measured_on')} rows, the contenders on {search.get('final_rows')}: "
        f"{tried}; chosen "
        f"{search.get('chosen')}, gain over the plain prompt {search.get('gain_over_plain')}"
    )


def many_labels(args, make_candidate, stratified_sample_ids, train_test_split) -> None:
    """The 154-label timing (see the module docstring)."""
    pool = records(BANKING77 / "train.csv", "tr")
    test = records(BANKING77 / "test.csv", "te")
    rng = np.random.default_rng(args.seed)

    def split_labels(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame.copy()
        out["intent"] = out["label"]
        out["label"] = out["label"] + np.where(rng.random(len(out)) < 0.5, "_a", "_b")
        return out

    pool, test = split_labels(pool), split_labels(test)
    extra_rows = 5500 - len(test)
    rest, extra = train_test_split(pool, test_size=extra_rows, stratify=pool["label"], random_state=args.seed)
    train, validation = train_test_split(rest, test_size=0.1, stratify=rest["label"], random_state=args.seed)
    test = pd.concat([test, extra], ignore_index=True)
    train, validation = train.reset_index(drop=True), validation.reset_index(drop=True)
    print(
        f"\n[many labels] {train['label'].nunique()} labels; {len(train)} pool, {len(validation)} validation, "
        f"{len(test)} test rows; {load()}",
        flush=True,
    )
    started = time.perf_counter()
    few_shot = make_candidate("few_shot_llm", batch_size=args.batch_size).fit(train, validation)
    print(describe_fit(few_shot, time.perf_counter() - started), flush=True)
    few_shot.predict(test.iloc[:4])
    started = time.perf_counter()
    predicted = few_shot.predict(test)
    seconds = time.perf_counter() - started
    intents = predicted["prediction"].astype(str).str.replace(r"_[ab]$", "", regex=True)
    print(
        f"[many labels] {len(test)} test rows over {train['label'].nunique()} labels: {seconds:.1f} s "
        f"({len(test) / seconds:.2f} rows/s), target < {TARGET_MANY_SECONDS:.0f} s: "
        f"ratio {seconds / TARGET_MANY_SECONDS:.2f} of target: {verdict(seconds < TARGET_MANY_SECONDS)}; "
        f"accuracy {accuracy(predicted, test['label']):.4f} on the sub-labels, "
        f"{float((intents.to_numpy() == test['intent'].to_numpy()).mean()):.4f} on the intents; {load()}",
        flush=True,
    )


def main() -> int:
    from tunewise.models.loading import quiet_known_warnings

    quiet_known_warnings()  # as every tunewise command does: transformers' past_key_values notice, once per batch
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-rows", type=int, default=500, help="stratified test rows scored by the reference")
    parser.add_argument("--test-rows", type=int, default=None, help="test rows scored by the default (default all)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--batch-size", type=int, default=8, help="the baseline section's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--many-labels",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the 154-label, 5,500-row test",
    )
    parser.add_argument("--only-many-labels", action="store_true", help="time the 154-label test only")
    args = parser.parse_args()
    faulthandler.enable()  # a crash inside a native kernel still leaves a stack in the log

    import torch
    from sklearn.model_selection import train_test_split

    from tunewise.candidates.registry import make_candidate
    from tunewise.evaluation.baseline import stratified_sample_ids
    from tunewise.llm.scoring import scoring_workers

    torch.set_num_threads(args.threads)
    print(
        f"bench_shortlist: {datetime.datetime.now().isoformat(timespec='seconds')}, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads; {load()}",
        flush=True,
    )

    if args.only_many_labels:
        many_labels(args, make_candidate, stratified_sample_ids, train_test_split)
        return 0
    pool = records(BANKING77 / "train.csv", "tr")
    test = records(BANKING77 / "test.csv", "te")
    train, validation = train_test_split(pool, test_size=0.1, stratify=pool["label"], random_state=args.seed)
    train, validation = train.reset_index(drop=True), validation.reset_index(drop=True)
    if args.test_rows is not None and args.test_rows < len(test):
        test = test[test["id"].isin(stratified_sample_ids(test, args.test_rows, args.seed, "label"))].reset_index(
            drop=True
        )
    sample_ids = stratified_sample_ids(test, args.full_rows, args.seed, "label")
    sample = test[test["id"].isin(sample_ids)].reset_index(drop=True)
    print(
        f"data: {len(train)} train (few-shot pool), {len(validation)} validation, {len(test)} test rows, "
        f"{pool['label'].nunique()} labels; reference on {len(sample)} stratified test rows",
        flush=True,
    )

    started = time.perf_counter()
    default = make_candidate("few_shot_llm", batch_size=args.batch_size).fit(train, validation)
    print(describe_fit(default, time.perf_counter() - started), flush=True)
    # the reference: float32, the plain prompt (every label listed), every label scored
    reference = make_candidate(
        "few_shot_llm", batch_size=args.batch_size, precision="fp32", prompt_search=False, shortlist=False
    ).fit(train, validation)

    # warm-up (weights paged in, a few query embeddings): not counted
    default.predict(test.iloc[:4])
    reference.predict(test.iloc[:4])

    print(f"[1/2] default scoring of {len(test)} test rows; {load()}", flush=True)
    started = time.perf_counter()
    scored = default.predict(test)
    default_seconds = time.perf_counter() - started
    default_rate = len(test) / default_seconds

    print(
        f"[2/2] reference scoring of {len(sample)} rows, interleaved with the default on the same rows; {load()}",
        flush=True,
    )
    reference_parts, reference_seconds, paired_seconds = [], 0.0, 0.0
    for begin in range(0, len(sample), 25):
        chunk = sample.iloc[begin : begin + 25]
        started = time.perf_counter()
        reference_parts.append(reference.predict(chunk))
        reference_seconds += time.perf_counter() - started
        started = time.perf_counter()
        default.predict(chunk)
        paired_seconds += time.perf_counter() - started
    reference_scored = pd.concat(reference_parts, ignore_index=True)
    # scoring_workers auto against 1, on the whole sample per call (as the baseline stage calls it),
    # alternating so both see the same machine: two rounds each
    workers_seconds, one_batch_seconds = 0.0, 0.0
    for _ in range(2):
        started = time.perf_counter()
        default.predict(sample)
        workers_seconds += time.perf_counter() - started
        default.scoring_workers = 1
        started = time.perf_counter()
        one_batch = default.predict(sample)
        one_batch_seconds += time.perf_counter() - started
        default.scoring_workers = "auto"
    every_label = default.predict(sample, shortlist=False)  # same prompt and precision, no shortlist
    reference_rate = len(sample) / reference_seconds

    on_sample = scored.set_index("id").loc[sample["id"]].reset_index()
    acc_default = accuracy(on_sample, sample["label"])
    acc_reference = accuracy(reference_scored, sample["label"])
    acc_every_label = accuracy(every_label, sample["label"])
    agree = float((on_sample["prediction"].to_numpy() == reference_scored["prediction"].to_numpy()).mean())
    per_3080 = OFFICIAL_TEST_ROWS / default_rate

    print()
    print(f"machine at the end: {load()}")
    print(
        f"default, {len(test)} test rows: {default_seconds:.1f} s ({default_rate:.2f} rows/s); for 3,080 rows "
        f"{per_3080:.1f} s, target < {TARGET_SECONDS:.0f} s: ratio {per_3080 / TARGET_SECONDS:.2f} of target: "
        f"{verdict(per_3080 < TARGET_SECONDS)}"
    )
    print(
        f"reference (fp32, every label listed and scored), {len(sample)} rows: {reference_seconds:.1f} s "
        f"({reference_rate:.2f} rows/s); extrapolated to 3,080 rows {OFFICIAL_TEST_ROWS / reference_rate:.1f} s"
    )
    print(
        f"speed-up over the reference, paired (same {len(sample)} rows, interleaved): "
        f"{reference_seconds / paired_seconds:.2f}x ({paired_seconds:.1f} s default vs {reference_seconds:.1f} s)"
    )
    print(
        f"accuracy on the same {len(sample)} rows: default {acc_default:.4f}, reference {acc_reference:.4f}, "
        f"gap {100 * (acc_default - acc_reference):+.2f} points, target within {100 * TARGET_ACCURACY_GAP:.0f} "
        f"(or better): {verdict(acc_default >= acc_reference - TARGET_ACCURACY_GAP - 1e-12)}; same label on "
        f"{agree:.1%} of rows; the default's prompt with every label scored {acc_every_label:.4f}"
    )
    print(f"accuracy of the default on all {len(test)} test rows: {accuracy(scored, test['label']):.4f}")
    print(
        f"scoring_workers auto ({scoring_workers('auto')} batches at once, each on its share of the threads) vs 1 "
        f"(one batch on all {args.threads} threads), the same {len(sample)} rows in one call, two rounds each, "
        f"alternating: {one_batch_seconds / workers_seconds:.2f}x ({workers_seconds:.1f} s vs {one_batch_seconds:.1f} s); "
        f"accuracy {acc_default:.4f} vs {accuracy(one_batch, sample['label']):.4f}, same label on "
        f"{float((on_sample['prediction'].to_numpy() == one_batch['prediction'].to_numpy()).mean()):.1%} of rows"
    )
    if args.many_labels:
        del reference
        many_labels(args, make_candidate, stratified_sample_ids, train_test_split)
    return 0


if __name__ == "__main__":
    sys.exit(main())

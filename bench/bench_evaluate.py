"""Benchmark: evaluating a classification candidate on the BANKING77 test set (3,080 rows, 77 labels).

Targets (from the issue):

1. predict() of the zero_shot_llm candidate (the embedded SmolLM2-135M-Instruct, every one of
   the 77 labels scored per message) on the full test set, plus the evaluation, in under
   2 minutes on 2 cores;
2. the bootstrap of every metric (accuracy, macro / micro / weighted P/R/F1, ECE) with 2,000
   resamples in under 10 s.

    .venv/bin/python bench/bench_evaluate.py              # full test set
    .venv/bin/python bench/bench_evaluate.py --rows 300   # quick look (the LLM time is extrapolated)
    .venv/bin/python bench/bench_evaluate.py --predictions /tmp/zs.parquet  # reuse saved predictions

The LLM scoring itself lives in tunewise.candidates.prompting (batched, length-sorted, one forward pass
per batch for all labels through a label trie); this script times it and the evaluation around
it. The evaluation runs at full size (3,080 rows) with three candidates, as the stage does:
zero_shot_llm on the rows it scored, a word TF-IDF + logistic regression fitted here (real
predictions on every row, in seconds) and majority; comparisons on shared ids with McNemar,
relative improvements, out-of-scope thresholds chosen on validation predictions. With --rows the
LLM's predict time is extrapolated linearly to the full test set.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

BANKING77 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "banking77"


def records(path: Path, prefix: str) -> pd.DataFrame:
    raw = pd.read_csv(path)
    return pd.DataFrame(
        {
            "id": [f"{prefix}{i}" for i in range(len(raw))],
            "input": raw["text"].astype(str),
            "context": "[]",
            "label": raw["category"].astype(str),
        }
    )


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    from tunewise.models.loading import quiet_known_warnings

    quiet_known_warnings()  # as every tunewise command does: transformers' past_key_values notice, once per batch
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="score only this many test rows (seeded sample)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the target machine has 2 cores)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--predictions",
        type=Path,
        default=None,
        help="parquet of zero_shot_llm test predictions: read it if it exists, else write it",
    )
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from tunewise.candidates.registry import make_candidate
    from tunewise.core.stats import (
        calibration_error_resampled,
        classification_metrics_with_ci,
        resample_weights,
    )
    from tunewise.evaluation.evaluate import EvaluateConfig, evaluate_candidates
    from tunewise.evaluation.predictions import CandidatePredictions

    train = records(BANKING77 / "train.csv", "tr")
    test = records(BANKING77 / "test.csv", "te")
    n_full = len(test)
    # a validation slice of train for the out-of-scope threshold (the majority candidate's only)
    validation = train.sample(n=500, random_state=1)
    train = train.drop(validation.index).reset_index(drop=True)
    print(
        f"BANKING77: {len(train)} train, {len(validation)} validation, {n_full} test rows, "
        f"{test['label'].nunique()} labels; torch threads {args.threads}"
    )

    # ---- 1. the LLM candidate's predict() on the test set (or a seeded sample of it)
    scored = (
        test if args.rows is None or args.rows >= len(test) else test.sample(n=args.rows, random_state=0).sort_index()
    )
    if args.predictions is not None and args.predictions.exists():
        zero_shot = pd.read_parquet(args.predictions)
        zero_shot = zero_shot[zero_shot["id"].isin(set(scored["id"]))].reset_index(drop=True)
        predict_s = float("nan")
        print(f"zero_shot_llm: predictions read from {args.predictions} ({len(zero_shot)} rows)")
    else:
        started = time.perf_counter()
        candidate = make_candidate("zero_shot_llm", batch_size=args.batch_size).fit(train)
        fit_s = time.perf_counter() - started
        started = time.perf_counter()
        zero_shot = candidate.predict(scored)
        predict_s = time.perf_counter() - started
        del candidate
        if args.predictions is not None:
            args.predictions.parent.mkdir(parents=True, exist_ok=True)
            zero_shot.to_parquet(args.predictions, index=False)
        print(
            f"zero_shot_llm: fit (model load, label tokens) {fit_s:.1f} s; predict {predict_s:.1f} s for "
            f"{len(scored)} rows = {1000 * predict_s / len(scored):.0f} ms/row"
        )

    # ---- 2. the evaluation at full size: the LLM's rows, a cheap model and majority on all rows,
    # comparisons on shared ids, thresholds on validation, per class, confusions, slices of none
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from tunewise.candidates.registry import classification_predictions

    # a quick word TF-IDF + LR, fitted here only to have real predictions on all 3,080 rows
    started = time.perf_counter()
    word_lr = make_pipeline(TfidfVectorizer(sublinear_tf=True), LogisticRegression(max_iter=300)).fit(
        train["input"], train["label"]
    )
    classes = [str(c) for c in word_lr.classes_]
    cheap_test = classification_predictions(test, classes, word_lr.predict_proba(test["input"]), 0.0)
    cheap_val = classification_predictions(validation, classes, word_lr.predict_proba(validation["input"]), 0.0)
    print(f"word TF-IDF + LR (bench-only cheap model) fitted and scored in {time.perf_counter() - started:.1f} s")
    majority = make_candidate("majority").fit(train)
    candidates = [
        CandidatePredictions("zero_shot_llm", "baseline", zero_shot, expensive=True),
        CandidatePredictions("word_lr", "cheap", cheap_test, cheap_val),
        CandidatePredictions("majority", "cheap", majority.predict(test), majority.predict(validation)),
    ]
    started = time.perf_counter()
    evaluation = evaluate_candidates(
        test,
        candidates,
        task="classify",
        validation=validation,
        config=EvaluateConfig(n_resamples=args.resamples),
        seed=0,
    )
    evaluate_s = time.perf_counter() - started
    entries = {e["name"]: e for e in evaluation.summary["candidates"]}
    print(
        f"evaluation of 3 candidates ({len(test)} rows; zero_shot_llm on {len(zero_shot)}) with {args.resamples} "
        f"resamples: {evaluate_s:.2f} s (parts: {evaluation.summary['timings_s']})"
    )
    for name, entry in entries.items():
        print(
            f"  {name}: accuracy {entry['metrics']['accuracy']:.3f} [{entry['ci95']['accuracy'][0]:.3f}, "
            f"{entry['ci95']['accuracy'][1]:.3f}] n={entry['n_eval']}, macro F1 {entry['metrics']['macro_f1']:.3f}, "
            f"ECE {entry['metrics']['ece']:.3f}"
        )
    comparison = evaluation.summary["comparison"]
    if comparison:
        print(
            f"  gate candidate {comparison['candidate']} vs {comparison['baseline']}: relative improvement "
            f"{comparison['relative_improvement']:+.1%} [{comparison['ci95'][0]:+.1%}, {comparison['ci95'][1]:+.1%}], "
            f"p={comparison['p_value']:.2g}, n={comparison['n']}"
        )

    # ---- 3. the bootstrap alone: every classification metric and ECE on all rows
    labels = sorted(set(test["label"]) | set(cheap_test["prediction"]))
    index = {label: i for i, label in enumerate(labels)}
    y_true = test["label"].map(index).to_numpy()
    y_pred = cheap_test["prediction"].map(index).to_numpy()
    started = time.perf_counter()
    weights = resample_weights(len(y_true), args.resamples, seed=0)
    _, ci, resampled = classification_metrics_with_ci(y_true, y_pred, len(labels), weights)
    calibration_error_resampled(cheap_test["score"].to_numpy(), y_true == y_pred, weights)
    bootstrap_s = time.perf_counter() - started
    print(
        f"bootstrap: {args.resamples} resamples x {len(resampled) + 1} metrics on {len(y_true)} rows, "
        f"{len(labels)} classes, in {bootstrap_s:.2f} s"
    )

    # ---- verdicts
    print()
    scale = n_full / len(scored)
    if np.isfinite(predict_s):
        total = predict_s * scale + evaluate_s
        note = "" if scale == 1 else f" (predict extrapolated x{scale:.1f} from {len(scored)} rows)"
        print(f"{verdict(total < 120)}: predict + evaluation on {n_full} rows: {total:.1f} s (target < 120 s){note}")
    else:
        print(f"n/a: predict time not measured (predictions read from file); evaluation {evaluate_s:.1f} s")
    print(
        f"{verdict(bootstrap_s < 10)}: bootstrap of all metrics, {args.resamples} resamples: {bootstrap_s:.2f} s (target < 10 s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

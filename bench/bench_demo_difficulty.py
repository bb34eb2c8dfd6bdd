"""Benchmark: how hard the demo's intents are, measured with tunewise's own candidates.

Target (issue 14 part 6): the demo data set should be about as hard as real support traffic
(BANKING77: TF-IDF + logistic regression about 91%, fine-tuned models 92-94%). On the demo's
400-row test split TF-IDF (``tfidf_lr``) should land around 80-90%, with room for a better model
(``embed_lr``, ``encoder_ft``) to do better.

    .venv/bin/python bench/bench_demo_difficulty.py                       # seed 0, tfidf_lr + embed_lr
    .venv/bin/python bench/bench_demo_difficulty.py --seeds 0 1 2
    .venv/bin/python bench/bench_demo_difficulty.py --candidates tfidf_lr embed_lr encoder_ft

Each candidate is fitted on the training file's rows without an injected defect (what a perfect
curation leaves) and on all rows whose label is a known intent (no curation: duplicates, conflicts
and wrong labels included), then scored on the clean test split. Per-intent recall and the most
frequent confusions of the first candidate show where the intents overlap.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tunewise.candidates.factory import build_candidate  # noqa: E402
from tunewise.demo.data import INTENTS, generate_demo  # noqa: E402

TARGET = (0.80, 0.90)


def records(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"id": frame["id"], "input": frame["text"], "context": "[]", "label": frame["intent"]})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--candidates", nargs="+", default=["tfidf_lr", "embed_lr"])
    parser.add_argument("--no-raw", action="store_true", help="skip the uncurated training variant")
    parser.add_argument("--confusions", type=int, default=12)
    args = parser.parse_args()

    from threadpoolctl import threadpool_limits

    results = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            files = generate_demo(tmp, seed=seed)
            gen_s = time.perf_counter() - start
            data = pd.read_csv(files.data, dtype=str, keep_default_na=False)
            test = pd.read_csv(files.test, dtype=str, keep_default_na=False)
            truth = {json.loads(line)["id"] for line in files.truth.read_text().splitlines()}
        clean = data[~data["id"].isin(truth)]
        raw = data[data["intent"].isin(INTENTS) & (data["text"].str.strip() != "")]
        variants = {"clean": clean} if args.no_raw else {"clean": clean, "raw": raw}
        print(
            f"seed {seed}: generated in {gen_s:.2f}s; train clean {len(clean)}, raw {len(raw)}, test {len(test)}; "
            f"mean words/message {test['text'].str.split().str.len().mean():.1f}"
        )
        for variant, train in variants.items():
            for name in args.candidates:
                settings = {"encoder": "embedded:minilm-l6", "llm": "embedded:smollm2-135m-instruct", "offline": True}
                candidate = build_candidate(name, settings)
                start = time.perf_counter()
                with threadpool_limits(1 if name == "tfidf_lr" else None):
                    candidate.fit(records(train))
                    pred = candidate.predict(records(test))
                seconds = time.perf_counter() - start
                right = pred["prediction"].to_numpy() == test["intent"].to_numpy()
                acc = float(right.mean())
                results.append({"seed": seed, "train": variant, "candidate": name, "accuracy": acc, "seconds": seconds})
                print(f"  {variant:5s} {name:12s} accuracy {acc:.4f}  ({seconds:.1f}s)")
                if variant == "clean" and name == args.candidates[0] and args.confusions:
                    pairs = Counter(zip(test["intent"][~right], pred["prediction"][~right]))
                    recall = pd.Series(right, index=test.index).groupby(test["intent"]).mean().sort_values()
                    print("    lowest recall: " + ", ".join(f"{k} {v:.2f}" for k, v in recall.head(5).items()))
                    print(
                        "    top confusions (true -> predicted): "
                        + "; ".join(f"{a} -> {b} x{n}" for (a, b), n in pairs.most_common(args.confusions))
                    )
    frame = pd.DataFrame(results)
    summary = frame.groupby(["train", "candidate"])["accuracy"].agg(["mean", "min", "max"])
    print("\n" + summary.to_string(float_format=lambda v: f"{v:.4f}"))
    tfidf = frame[(frame["train"] == "clean") & (frame["candidate"] == "tfidf_lr")]["accuracy"]
    if len(tfidf):
        ok = TARGET[0] <= tfidf.mean() <= TARGET[1]
        print(
            f"\ntfidf_lr (clean) mean {tfidf.mean():.4f}, target {TARGET[0]:.2f}-{TARGET[1]:.2f}: {'PASS' if ok else 'FAIL'}"
        )
        others = frame[(frame["train"] == "clean") & (frame["candidate"] != "tfidf_lr")]
        for name, acc in others.groupby("candidate")["accuracy"].mean().items():
            print(f"{name} (clean) mean {acc:.4f}: {'beats' if acc > tfidf.mean() else 'does not beat'} tfidf_lr")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

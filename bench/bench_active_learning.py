"""Benchmark ``tunewise suggest``'s ranking: do suggested rows teach the model more than random ones?

BANKING77 (official splits: 10,003 training rows as the pool, 3,080 test rows, 77 intents). Each
seed starts from 10 labelled rows per intent (770); then 5 rounds of 200 rows each (1,770 at the
end), two arms from the same start:

- ``suggest``: ``tunewise.workflows.labelling.rank_for_labelling`` on the current model's margin
  uncertainty (cluster-margin: the 2,000 most uncertain rows, KMeans into 200 clusters, the most
  uncertain row of each, near-duplicates of labelled rows skipped);
- ``random``: 200 unlabelled rows drawn uniformly.

The labels of the picked rows are revealed from the data. The model is ``embed_lr`` (MiniLM
embeddings + logistic regression, tunewise.candidates.registry), refit each round. Every text is embedded
once up front and ``tunewise.models.loading.embed`` is pointed at that table, so the 30 refits do not
re-embed the same texts (the numbers are the encoder's, only computed once).

Printed: test accuracy after each round per arm and seed; then per arm the final accuracy (mean over
seeds), the gap suggest - random per seed, its mean and spread (standard deviation, min-max).
Target (issue 8): the mean final accuracy of ``suggest`` above ``random``: PASS/FAIL.

Run from the repository root (about 10-15 minutes on 2 shared cores, mostly embedding 13k texts):

    .venv/bin/python bench/bench_active_learning.py [--seeds 0,1,2] [--rounds 5] [--batch 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("TUNEWISE_PROGRESS", "off")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import tunewise.models.loading as models  # noqa: E402
from tunewise.candidates.factory import build_candidate  # noqa: E402
from tunewise.workflows.labelling import margin_uncertainty, rank_for_labelling  # noqa: E402

BANKING77 = REPO.parent / "shared" / "datasets" / "banking77"


def records(texts: list[str], labels: list[str], prefix: str) -> pd.DataFrame:
    return pd.DataFrame(
        {"id": [f"{prefix}{i}" for i in range(len(texts))], "input": texts, "context": "[]", "label": labels}
    )


def accuracy(model, test: pd.DataFrame) -> float:
    return float((model.predict(test)["prediction"].to_numpy() == test["label"].to_numpy()).mean())


def run_arm(
    arm: str,
    start: np.ndarray,
    train: pd.DataFrame,
    test: pd.DataFrame,
    vectors: np.ndarray,
    rounds: int,
    batch: int,
    seed: int,
) -> list[float]:
    """Test accuracy at the start and after each round of ``batch`` rows picked by ``arm``."""
    rng = np.random.default_rng(seed + 1000)
    labelled = np.zeros(len(train), dtype=bool)
    labelled[start] = True
    texts = train["input"].tolist()
    scores = []
    for step in range(rounds + 1):
        model = build_candidate("embed_lr", {}).fit(train[labelled], None)
        scores.append(accuracy(model, test))
        if step == rounds:
            break
        pool = np.flatnonzero(~labelled)
        if arm == "random":
            picked = rng.choice(pool, size=batch, replace=False)
        else:
            proba = np.vstack(model.predict(train.iloc[pool])["proba"].to_numpy())
            selection = rank_for_labelling(
                [texts[i] for i in pool],
                margin_uncertainty(proba),
                [texts[i] for i in np.flatnonzero(labelled)],
                batch,
                embed_fn=lambda batch_texts: models.embed(batch_texts),
                labelled_vectors=vectors[labelled],
                seed=seed,
            )
            picked = pool[selection.indices]
        labelled[picked] = True  # labels revealed from the data
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--per-intent", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 measured faster on a busy machine)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    raw_train, raw_test = pd.read_csv(BANKING77 / "train.csv"), pd.read_csv(BANKING77 / "test.csv")
    train = records(raw_train["text"].tolist(), raw_train["category"].tolist(), "tr")
    test = records(raw_test["text"].tolist(), raw_test["category"].tolist(), "te")
    print(
        f"load: {os.getloadavg()[0]:.1f} (1-minute load average, {os.cpu_count()} CPUs); torch threads {args.threads}"
    )

    # embed every text once; embed_lr and the ranking then look their vectors up
    real_embed = models.embed
    t0 = time.perf_counter()
    unique = list(dict.fromkeys(train["input"].tolist() + test["input"].tolist()))
    table = dict(zip(unique, real_embed(unique)))
    print(f"embedded {len(unique):,} distinct texts once in {time.perf_counter() - t0:.0f}s")

    def cached_embed(texts, spec=models.DEFAULT_ENCODER, **kwargs):
        missing = [t for t in texts if t not in table]
        if missing:
            table.update(zip(missing, real_embed(missing, spec, **kwargs)))
        return np.stack([table[t] for t in texts]) if len(texts) else np.zeros((0, 384), dtype=np.float32)

    models.embed = cached_embed
    vectors = cached_embed(train["input"].tolist())

    seeds = [int(s) for s in args.seeds.split(",")]
    finals: dict[str, list[float]] = {"suggest": [], "random": []}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        start = np.concatenate(
            [
                rng.choice(np.flatnonzero(train["label"].to_numpy() == c), size=args.per_intent, replace=False)
                for c in sorted(train["label"].unique())
            ]
        )
        for arm in ("suggest", "random"):
            t0 = time.perf_counter()
            scores = run_arm(arm, start, train, test, vectors, args.rounds, args.batch, seed)
            finals[arm].append(scores[-1])
            sizes = [len(start) + args.batch * r for r in range(args.rounds + 1)]
            print(
                f"seed {seed} {arm:>7}: "
                + ", ".join(f"{n}: {a:.4f}" for n, a in zip(sizes, scores))
                + f"  ({time.perf_counter() - t0:.0f}s)"
            )

    gaps = np.array(finals["suggest"]) - np.array(finals["random"])
    print()
    for arm, values in finals.items():
        print(
            f"final test accuracy {arm:>7}: mean {np.mean(values):.4f} (per seed: "
            + ", ".join(f"{v:.4f}" for v in values)
            + ")"
        )
    print(
        f"gap suggest - random: mean {gaps.mean() * 100:+.2f} points, std {gaps.std(ddof=1) * 100 if len(gaps) > 1 else 0:.2f}, "
        f"min {gaps.min() * 100:+.2f}, max {gaps.max() * 100:+.2f} (per seed: "
        + ", ".join(f"{g * 100:+.2f}" for g in gaps)
        + ")"
    )
    verdict = "PASS" if gaps.mean() > 0 else "FAIL"
    print(
        f"{verdict}: suggested rows {'beat' if gaps.mean() > 0 else 'do not beat'} random rows on mean final test "
        f"accuracy over {len(seeds)} seeds (target: higher)"
    )
    print(f"wall time {time.perf_counter() - started:.0f}s; load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

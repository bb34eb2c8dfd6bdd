"""Write a BANKING77 slice with held-out intents as out-of-scope, for the default-pipeline check.

From ../shared/datasets/banking77 (CC BY 4.0, Casanueva et al. 2020), seeded: ``--intents`` of
the 77 intents drawn at random, ``--held`` of them held out. The training file keeps every row of
the in-scope intents and ``--oos-per-intent`` rows of each held-out intent labelled
``out_of_scope`` (what a team that collected a few off-topic messages has); the test file is the
official test rows of the drawn intents, the held-out ones labelled ``out_of_scope``. The files are
plain ``text,category`` CSVs, as a team would hand them to ``tunewise init``:

    .venv/bin/python bench/oos_slice.py --out /tmp/oos
    cd /tmp/oos && tunewise init train.csv --test test.csv && tunewise run

``bench_oos.py`` measures the out-of-scope target itself on the whole data set (a quarter of the
intents held out, the same candidate without out-of-scope rows as the reference); this slice is the
small end-to-end check a session runs before it calls out-of-scope work done.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from bench_evaluate import BANKING77  # noqa: E402 - the bench folder's shared data path

OOS = "out_of_scope"


def build(train: pd.DataFrame, test: pd.DataFrame, *, intents: int, held: int, oos_per_intent: int, seed: int):
    """The slice's training and test frames and the held-out intents."""
    rng = np.random.default_rng(seed)
    drawn = sorted(rng.choice(sorted(train["category"].unique()), size=intents, replace=False).tolist())
    held_out = sorted(rng.choice(drawn, size=held, replace=False).tolist())
    in_scope = train[train["category"].isin(drawn) & ~train["category"].isin(held_out)]
    oos_rows = (
        train[train["category"].isin(held_out)]
        .sample(frac=1.0, random_state=seed)
        .groupby("category", group_keys=False)
        .head(oos_per_intent)
        .assign(category=OOS)
    )
    slice_train = pd.concat([in_scope, oos_rows]).sort_index()
    slice_test = test[test["category"].isin(drawn)]
    slice_test = slice_test.assign(category=slice_test["category"].where(~slice_test["category"].isin(held_out), OOS))
    return slice_train, slice_test, held_out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write train.csv and test.csv into")
    parser.add_argument("--intents", type=int, default=24, help="intents drawn from the 77")
    parser.add_argument("--held", type=int, default=6, help="of those, intents held out as out-of-scope")
    parser.add_argument("--oos-per-intent", type=int, default=10, help="training rows of each held-out intent kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=BANKING77)
    args = parser.parse_args()
    if not 0 < args.held < args.intents <= 77:
        parser.error("need 0 < --held < --intents <= 77")
    train = pd.read_csv(args.data / "train.csv")
    test = pd.read_csv(args.data / "test.csv")
    slice_train, slice_test, held_out = build(
        train, test, intents=args.intents, held=args.held, oos_per_intent=args.oos_per_intent, seed=args.seed
    )
    args.out.mkdir(parents=True, exist_ok=True)
    slice_train.to_csv(args.out / "train.csv", index=False)
    slice_test.to_csv(args.out / "test.csv", index=False)
    print(f"held out: {', '.join(held_out)}")
    print(
        f"train.csv: {len(slice_train):,} rows ({(slice_train['category'] == OOS).sum()} {OOS}); "
        f"test.csv: {len(slice_test):,} rows ({(slice_test['category'] == OOS).sum()} {OOS}) in {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

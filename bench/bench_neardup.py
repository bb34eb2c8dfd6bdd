"""Benchmark: near-duplicate detection over a million short texts.

Targets (from the issue): the engine (hashing, LSH, exact Jaccard check, clustering) over
1,000,000 texts of ~100 characters in under 3 minutes on 2 cores, peak memory under 8 GiB,
recall of the known near-duplicate pairs >= 0.95, precision 1.0, and at least 5x the throughput
of a plain datasketch MinHash + MinHashLSH loop measured in the same run on the same texts.

    .venv/bin/python bench/bench_neardup.py            # full size, about 2-3 minutes in all
    .venv/bin/python bench/bench_neardup.py --n 100000 # quick look

The texts come from a seeded support-message generator (a few hundred words in slot-filled
sentences). 5% of rows are edited copies of another row (1-2 word substitutions, insertions,
deletions, case, punctuation or number changes); a copy whose true Jaccard with its source is at
least the threshold is a "known pair". A known pair counts as found when both rows end up in one
cluster. Precision is checked independently: every reported pair's Jaccard is recomputed with
Python sets of shingle strings.

Peak memory is the process's ru_maxrss read right after the engine returns, so it includes the
generated texts but not the datasketch loop, which runs afterwards on the first
``--reference-n`` texts with the engine's bands x rows (its recall on those is printed too).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time

import numpy as np

from tunewise.core.text import dedup_keys
from tunewise.data.neardup import (
    datasketch_reference,
    find_near_duplicates,
    lsh_params,
    shingle_set,
)

OPENERS = [
    "",
    "",
    "",
    "hi",
    "hello",
    "hey",
    "hi there",
    "good morning",
    "good evening",
    "dear support",
    "quick question",
    "urgent",
    "please help",
    "excuse me",
    "sorry to bother you",
    "hello team",
]
ASKS = [
    "i need to",
    "i want to",
    "how do i",
    "how can i",
    "can i",
    "can you help me",
    "please help me",
    "why can't i",
    "is it possible to",
    "i would like to",
    "i tried to",
    "i was unable to",
    "what happens if i",
    "where do i go to",
    "who can help me",
    "i keep failing to",
    "what is the fee to",
    "is there a limit to",
    "do i have to pay to",
    "when can i",
]
VERBS = [
    "transfer",
    "cancel",
    "activate",
    "block",
    "top up",
    "verify",
    "change",
    "order",
    "return",
    "track",
    "refund",
    "withdraw",
    "deposit",
    "exchange",
    "close",
    "open",
    "link",
    "unlink",
    "update",
    "reset",
    "freeze",
    "unfreeze",
    "report",
    "dispute",
    "confirm",
    "replace",
    "renew",
    "upgrade",
    "downgrade",
    "pay",
    "send",
    "receive",
    "check",
    "find",
    "use",
    "add",
    "remove",
    "set up",
    "switch",
    "recover",
    "download",
    "upload",
    "schedule",
    "postpone",
    "split",
    "convert",
    "claim",
    "redeem",
    "register",
    "connect",
]
DETS = [
    "my",
    "the",
    "a",
    "our",
    "this",
    "that",
    "your",
    "his",
    "her",
    "their",
    "an old",
    "the new",
    "my second",
    "a shared",
    "the joint",
]
ADJS = [
    "virtual",
    "physical",
    "blue",
    "premium",
    "basic",
    "business",
    "personal",
    "joint",
    "savings",
    "current",
    "expired",
    "stolen",
    "lost",
    "damaged",
    "frozen",
    "pending",
    "declined",
    "foreign",
    "local",
    "monthly",
    "weekly",
    "annual",
    "recurring",
    "instant",
    "delayed",
    "duplicate",
    "unknown",
    "suspicious",
    "incorrect",
    "missing",
    "extra",
    "large",
    "small",
    "recent",
    "old",
    "new",
    "contactless",
    "metal",
    "plastic",
    "digital",
    "standard",
    "express",
    "international",
    "domestic",
    "temporary",
    "permanent",
    "primary",
    "backup",
    "default",
    "linked",
]
NOUNS = [
    "card",
    "account",
    "payment",
    "transfer",
    "balance",
    "pin",
    "password",
    "app",
    "statement",
    "refund",
    "charge",
    "fee",
    "limit",
    "deposit",
    "withdrawal",
    "cheque",
    "loan",
    "mortgage",
    "subscription",
    "invoice",
    "receipt",
    "order",
    "parcel",
    "delivery",
    "package",
    "address",
    "phone number",
    "email",
    "profile",
    "device",
    "wallet",
    "voucher",
    "coupon",
    "reward",
    "point",
    "booking",
    "reservation",
    "ticket",
    "flight",
    "hotel room",
    "rental car",
    "insurance",
    "policy",
    "claim",
    "contract",
    "plan",
    "bill",
    "meter",
    "reading",
    "tariff",
    "router",
    "modem",
    "sim card",
    "laptop",
    "tablet",
    "camera",
    "printer",
    "headset",
    "charger",
    "screen",
    "battery",
    "warranty",
    "repair",
    "appointment",
    "prescription",
    "pharmacy",
    "doctor",
    "dentist",
    "exchange rate",
    "currency",
    "direct debit",
    "standing order",
    "beneficiary",
    "payee",
    "identity",
    "document",
    "passport",
    "licence",
    "certificate",
    "verification code",
    "security question",
    "login",
    "username",
    "membership",
    "gift card",
    "credit line",
    "overdraft",
    "interest rate",
    "transaction",
    "merchant",
    "terminal",
    "atm",
]
PREPS = [
    "from",
    "to",
    "with",
    "for",
    "on",
    "in",
    "at",
    "through",
    "via",
    "after",
    "before",
    "without",
    "about",
    "into",
    "using",
]
TIMES = [
    "",
    "",
    "yesterday",
    "today",
    "last week",
    "this morning",
    "last night",
    "on monday",
    "on tuesday",
    "on friday",
    "over the weekend",
    "two days ago",
    "a week ago",
    "last month",
    "since january",
    "right now",
    "this afternoon",
    "earlier today",
    "every month",
    "again",
]
FOLLOWUPS = [
    "it was supposed to arrive {time}",
    "but nothing happened",
    "the reference is {num}",
    "my order number is #{num}",
    "the app shows error {num}",
    "and it still says pending",
    "i was charged {num} dollars twice",
    "please call me back",
    "this is the third time",
    "nobody answered my email",
    "the amount was {num} euros",
    "can you explain why",
    "i did not authorise this",
    "what should i do now",
    "thanks in advance",
    "my customer id is {num}",
    "it worked fine {time}",
    "the website keeps timing out",
    "i am travelling {time}",
    "is there a faster way",
]
EXTRA_WORDS = (
    ADJS
    + NOUNS[:40]
    + ["please", "really", "still", "just", "now", "asap", "again", "kindly", "urgently", "actually", "also", "maybe"]
)


def _sentence(rng: random.Random) -> str:
    num = str(rng.randint(10, 99_999_999))
    head = " ".join(
        w
        for w in (
            rng.choice(OPENERS),
            rng.choice(ASKS),
            rng.choice(VERBS),
            rng.choice(DETS),
            rng.choice(ADJS),
            rng.choice(NOUNS),
            rng.choice(PREPS),
            rng.choice(DETS),
            rng.choice(NOUNS),
            rng.choice(TIMES),
        )
        if w
    )
    text = head[0].upper() + head[1:] + "?"
    while len(text) < 90:  # about 100 characters: add follow-up clauses
        follow = rng.choice(FOLLOWUPS).format(time=rng.choice(TIMES[2:]), num=num)
        text += " " + follow[0].upper() + follow[1:] + rng.choice([".", ".", "!", "?"])
    return text


def _edit(text: str, rng: random.Random) -> str:
    """1-2 small edits of the kind that make a near-duplicate."""
    words = text.split()
    for _ in range(rng.choice([1, 1, 2])):
        kind = rng.choice(["substitute", "insert", "delete", "case", "punctuation", "number", "append"])
        pos = rng.randrange(len(words))
        if kind == "substitute":
            words[pos] = rng.choice(EXTRA_WORDS)
        elif kind == "insert":
            words.insert(pos, rng.choice(EXTRA_WORDS))
        elif kind == "delete" and len(words) > 4:
            del words[pos]
        elif kind == "case":
            words[pos] = words[pos].upper() if rng.random() < 0.5 else words[pos].capitalize()
        elif kind == "punctuation":
            words[pos] = words[pos].rstrip(".?!,") + rng.choice([",", "!!", "...", "?", ""])
        elif kind == "number":
            digits = [k for k, w in enumerate(words) if any(c.isdigit() for c in w)]
            if digits:
                words[rng.choice(digits)] = str(rng.randint(10, 99_999_999))
            else:
                words[pos] = rng.choice(EXTRA_WORDS)
        else:
            words.append(rng.choice(["please", "thanks", "asap", "thank you", "cheers", "?", "!!!"]))
    return " ".join(words)


def generate(n: int, seed: int = 7, dup_fraction: float = 0.05) -> tuple[list[str], list[tuple[int, int]]]:
    """(texts, injected (source, copy) pairs); copies' sources are original rows."""
    rng = random.Random(seed)
    texts = [_sentence(rng) for _ in range(n)]
    copies = rng.sample(range(n), int(n * dup_fraction))
    copy_set = set(copies)
    injected = []
    for row in copies:
        source = rng.randrange(n)
        while source in copy_set or source == row:
            source = rng.randrange(n)
        texts[row] = _edit(texts[source], rng)
        injected.append((min(source, row), max(source, row)))
    return texts, injected


def _jaccard(a: set[str], b: set[str]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def _shingle_sets_of(texts: list[str], rows: np.ndarray, shingle: int) -> dict[int, set[str]]:
    rows = np.unique(rows)
    normalised = dedup_keys([texts[r] for r in rows.tolist()])
    return {int(r): shingle_set(t, shingle) for r, t in zip(rows.tolist(), normalised)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="number of texts")
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--shingle", type=int, default=3)
    parser.add_argument("--reference-n", type=int, default=20_000, help="texts for the datasketch loop")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    texts, injected = generate(args.n, args.seed)
    gen_s = time.perf_counter() - t0

    # known pairs: injected copies whose true Jaccard clears the threshold
    inj = np.array(injected, dtype=np.int64).reshape(-1, 2)
    sets = _shingle_sets_of(texts, inj.ravel(), args.shingle)
    inj_jac = np.array([_jaccard(sets[i], sets[j]) for i, j in injected])
    known = inj[inj_jac >= args.threshold]
    known_jac = inj_jac[inj_jac >= args.threshold]
    del sets

    t0 = time.perf_counter()
    result = find_near_duplicates(texts, threshold=args.threshold, num_perm=args.num_perm, shingle=args.shingle, seed=1)
    wall_s = time.perf_counter() - t0
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    load_during = os.getloadavg()

    recall = float(np.mean(result.cluster[known[:, 0]] == result.cluster[known[:, 1]])) if len(known) else 1.0
    near_band = known_jac < args.threshold + 0.1
    recall_near = (
        float(np.mean(result.cluster[known[near_band, 0]] == result.cluster[known[near_band, 1]]))
        if near_band.any()
        else 1.0
    )

    # precision: recompute every reported pair's Jaccard with Python sets of shingle strings
    t0 = time.perf_counter()
    sets = _shingle_sets_of(texts, result.pairs.ravel(), args.shingle)
    real = [_jaccard(sets[i], sets[j]) >= args.threshold for i, j in result.pairs.tolist()]
    precision = float(np.mean(real)) if real else 1.0
    jac_agree = (
        bool(np.allclose([_jaccard(sets[i], sets[j]) for i, j in result.pairs.tolist()], result.jaccard, atol=1e-6))
        if real
        else True
    )
    del sets
    check_s = time.perf_counter() - t0

    # the plain datasketch loop, same normalisation, shingles, threshold and exact check
    ref_n = min(args.reference_n, args.n)
    sample = texts[:ref_n]
    t0 = time.perf_counter()
    bands, rows, _ = lsh_params(args.threshold, args.num_perm)  # same banding as the engine
    ref_pairs = datasketch_reference(sample, args.threshold, args.num_perm, args.shingle, params=(bands, rows))
    ref_s = time.perf_counter() - t0
    ref_tps = ref_n / ref_s
    engine_tps = args.n / wall_s
    speedup = engine_tps / ref_tps
    sample_known = known[known[:, 1] < ref_n]
    ref_recall = float(np.mean([tuple(p) in ref_pairs for p in sample_known.tolist()])) if len(sample_known) else 1.0
    load_after = os.getloadavg()

    stats = result.stats
    print(
        f"generated {args.n} texts in {gen_s:.1f}s, mean {np.mean([len(t) for t in texts[:10000]]):.0f} chars; "
        f"injected copies {len(injected)}, known pairs (Jaccard >= {args.threshold}) {len(known)}, "
        f"of which {int(near_band.sum())} below {args.threshold + 0.1:.1f}"
    )
    print("engine phases (s):", json.dumps(stats["timings_s"]))
    print(
        f"engine counts: distinct={stats['distinct_texts']} shingles={stats['shingles']} "
        f"bands={stats['bands']}x{stats['rows']} candidates={stats['candidates']} "
        f"verified={stats['verified']} pairs={stats['pairs']} capped_buckets={stats['capped_buckets']} "
        f"duplicate_rows={stats['duplicate_rows']}"
    )
    print(f"precision check of {len(real)} pairs in {check_s:.1f}s; engine Jaccard == Python Jaccard: {jac_agree}")
    print(
        f"datasketch loop on {ref_n} texts: {ref_s:.1f}s, {len(ref_pairs)} pairs, recall of known pairs {ref_recall:.3f}"
    )
    print(
        f"load average (1 min): before {load_before[0]:.2f}, after engine {load_during[0]:.2f}, "
        f"at end {load_after[0]:.2f} on {os.cpu_count()} cores"
    )
    print(
        f"texts={args.n} wall_s={wall_s:.1f} texts_per_s={engine_tps:.0f} peak_rss_gib={peak_rss_gib:.2f} "
        f"recall={recall:.4f} recall_near_threshold={recall_near:.4f} precision={precision:.4f} "
        f"datasketch_loop_texts_per_s={ref_tps:.0f} speedup={speedup:.1f}x"
    )
    checks = {
        "wall < 180 s": wall_s < 180,
        "peak memory < 8 GiB": peak_rss_gib < 8,
        "recall >= 0.95": recall >= 0.95,
        "precision == 1.0": precision == 1.0,
        "speedup >= 5x": speedup >= 5,
    }
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'} {name}")
    if args.json:
        print(
            json.dumps(
                {
                    "texts": args.n,
                    "wall_s": wall_s,
                    "texts_per_s": engine_tps,
                    "peak_rss_gib": peak_rss_gib,
                    "recall": recall,
                    "precision": precision,
                    "datasketch_loop_texts_per_s": ref_tps,
                    "speedup": speedup,
                    "load_avg": [load_before[0], load_during[0], load_after[0]],
                    "stats": stats,
                }
            )
        )
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

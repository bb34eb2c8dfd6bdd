"""A noisy copy of BANKING77 train with known injected defects, for curation benchmarks.

From ../shared/datasets/banking77/train.csv (CC BY 4.0, Casanueva et al. 2020), seeded:
5% exact and near duplicates (half each), 5% flipped labels (to a random other intent), 3%
off-topic rows, PII in 2% of rows. Returns a record frame and the truth rows in the
``demo_truth.jsonl`` shape ({"id", "defect", "of"}), so tunewise.data.detection scores it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

BANKING77 = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "banking77"

_OFF_TOPIC_SUBJECTS = [
    "the weather in Lisbon",
    "tonight's football match",
    "a good lasagne recipe",
    "the plot of that new film",
    "how tall Mount Everest is",
    "my cat's strange behaviour",
    "the best hiking trails nearby",
    "learning the guitar",
    "the history of the Roman empire",
    "how to grow tomatoes",
    "the rules of chess",
    "a birthday gift for my niece",
    "why the sky is blue",
    "the best pizza in Naples",
    "how volcanoes form",
    "training for a marathon",
    "my favourite video game",
    "painting a bedroom wall",
    "the speed of light",
    "a poem about autumn",
]
_OFF_TOPIC_FRAMES = [
    "Can you tell me about {s}?",
    "I was wondering about {s}.",
    "What do you think of {s}?",
    "Quick question about {s}",
    "Any thoughts on {s}? Just curious.",
    "Let's talk about {s}!",
    "I need some advice on {s}.",
    "Do you know anything about {s}?",
]
_OFF_TOPIC_ENDINGS = ["", " Thanks!", " Cheers.", " Just wondering.", " I'm bored at work."]
_NEAR_EDITS = ("please ", "hi, ", "hello, ", "hey ")


def _pii_snippet(rng: np.random.Generator) -> str:
    kind = rng.integers(0, 4)
    if kind == 0:
        return (
            f" my email is {['ana', 'li.wei', 'j.smith', 'omar'][rng.integers(0, 4)]}{rng.integers(10, 99)}@example.com"
        )
    if kind == 1:
        return f" call me on +44 7{rng.integers(100, 999)} {rng.integers(100000, 999999)}"
    if kind == 2:
        return " my card number is 4111 1111 1111 1111"
    return " my IBAN is DE89 3704 0044 0532 0130 00"


def make_noisy_banking77(seed: int = 0, path: Path | None = None) -> tuple[pd.DataFrame, list[dict]]:
    rng = np.random.default_rng(seed)
    base = pd.read_csv(path or (BANKING77 / "train.csv"))
    n = len(base)
    labels = sorted(base["category"].unique())
    rows = [{"id": f"b{i:05d}", "input": t, "label": c} for i, (t, c) in enumerate(zip(base["text"], base["category"]))]
    truth: list[dict] = []
    order = rng.permutation(n)
    n_dup, n_flip, n_off, n_pii = int(0.05 * n), int(0.05 * n), int(0.03 * n), int(0.02 * n)
    flip_idx = order[:n_flip]
    pii_idx = order[n_flip : n_flip + n_pii]
    dup_src = order[n_flip + n_pii : n_flip + n_pii + n_dup]
    for i in flip_idx:
        new = labels[rng.integers(0, len(labels))]
        while new == rows[i]["label"]:
            new = labels[rng.integers(0, len(labels))]
        rows[i]["label"] = new
        truth.append({"id": rows[i]["id"], "defect": "wrong_label", "of": None})
    for i in pii_idx:
        rows[i]["input"] = rows[i]["input"].rstrip() + _pii_snippet(rng)
        truth.append({"id": rows[i]["id"], "defect": "pii", "of": None})
    extra = []
    for k, i in enumerate(dup_src):
        src = rows[i]
        if k % 2 == 0:
            text, defect = src["input"], "exact_duplicate"
        else:
            text, defect = (
                _NEAR_EDITS[rng.integers(0, len(_NEAR_EDITS))] + src["input"][0].lower() + src["input"][1:],
                "near_duplicate",
            )
        new_id = f"d{k:05d}"
        extra.append({"id": new_id, "input": text, "label": src["label"]})
        truth.append({"id": new_id, "defect": defect, "of": src["id"]})
    combos = [(f, s, e) for f in _OFF_TOPIC_FRAMES for s in _OFF_TOPIC_SUBJECTS for e in _OFF_TOPIC_ENDINGS]
    picks = rng.choice(len(combos), size=n_off, replace=False)  # distinct: no accidental duplicates
    for k, c in enumerate(picks):
        frame, subject, ending = combos[c]
        new_id = f"o{k:05d}"
        extra.append(
            {"id": new_id, "input": frame.format(s=subject) + ending, "label": labels[rng.integers(0, len(labels))]}
        )
        truth.append({"id": new_id, "defect": "off_topic", "of": None})
    # copies and off-topic rows go to random places, as they would in a real export
    all_rows = rows + extra
    perm = rng.permutation(len(all_rows))
    frame = pd.DataFrame([all_rows[p] for p in perm])
    frame["context"] = "[]"
    frame["source_file"] = "noisy_banking77"
    frame["source_line"] = np.arange(2, len(frame) + 2)
    frame["synthetic"] = False
    return frame, truth

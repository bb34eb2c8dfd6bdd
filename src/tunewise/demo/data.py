"""Demo data: a realistic, messy customer-support data set with known, recorded defects.

``generate_demo`` writes, for the fictional online store "Northwind Goods":

- ``support.csv``: the raw training file (default 1,500 rows) with columns ``id``, ``text``
  (customer message), ``intent`` (label), ``reply`` (agent reply), ``channel``
  (email/chat/phone/app) and ``customer_tier`` (standard/plus/business);
- ``support_test.csv``: a clean, frozen test set (400 rows) from the same distribution, with no
  injected defects, no text shared with the training file and no near duplicate of a training row
  of the same template;
- ``kb/``: short Markdown policy files; every clean reply states only facts from them;
- ``demo_truth.jsonl``: one ``{"id", "defect", "of", "detail"}`` object per injected defect.

Messages come from the package's own grammar (templates with ``(a|b)`` choices, ``[optional]``
parts and ``{slot}`` values), styled per channel, all drawn from one seeded
``numpy.random.Generator``: the same seed gives the same bytes. A hand-written generator rather
than a library (Faker and friends) because the defects must be known exactly and the output
stable across library versions.

Injected defects, as shares of all raw rows (``n_rows``). Each is drawn as the target share times
a seed-dependent factor in [0.85, 1.15], rounded, at least one row; the documented ranges
(``DEFECT_SHARES``) hold for ``n_rows >= 1000``. A row carries at most one defect; the original
of a copy is itself clean and comes earlier in the file.

==================  ======  ===========  ====================================================
defect              target  range        what it is
==================  ======  ===========  ====================================================
exact_duplicate     4.0%    3.0-5.0%     copy of another row's text, label and reply; the text
                                         may differ in whitespace or case only (``of`` = row)
near_duplicate      4.0%    3.0-5.0%     copy with a small edit (order number, filler word,
                                         punctuation, one typo); same label (``of`` = row)
label_conflict      2.0%    1.5-2.5%     copy of a row's text (or a whitespace/case variant)
                                         with a different, plausible intent (``of`` = row)
wrong_label         4.0%    3.0-5.0%     intent replaced by a plausible wrong one; ``detail``
                                         names the true intent
label_variant       3.0%    2.0-4.0%     intent spelt differently ("Order Status",
                                         "order-status ", "ORDER_STATUS"); ``detail`` = canon
off_topic           2.0%    1.5-2.5%     not about the store: weather, recipes, sport, homework
spam                1.0%    0.7-1.3%     prize and crypto promotions with links
empty               0.5%    0.3-0.8%     empty or whitespace-only text
garbage             1.0%    0.7-1.3%     keyboard mash, punctuation runs, repeated words
pii                 4.0%    3.0-5.0%     an email, phone number, Luhn-valid card number, IBAN
                                         or IP address in the text or reply; ``detail`` = kind,
                                         ``field`` = text|reply
empty_reply         0.5%    0.3-0.8%     the reply is empty or whitespace
template_slot       1.0%    0.7-1.3%     an unfilled placeholder left in the reply
copied_reply        1.5%    1.0-2.0%     one canned reply pasted onto unrelated messages
==================  ======  ===========  ====================================================

The last three matter for ``task="generate"`` (reply as target); the file is the same for both
tasks. A few clean rows also hold PII-looking numbers that are not PII (a 16-digit reference that
fails the Luhn check, a long tracking number); they are listed in ``DemoFiles.decoy_ids`` and are
not in the truth file.

The package: ``templates`` loads the text tables (``templates.json``, package data: templates,
replies, the knowledge base, word lists); ``generator`` draws the clean rows (``Draw``, the
grammar, channel styling, replies, the de-duplicating ``Pool``); ``defects`` counts and injects
the defects; this module writes the files. ``DEFECT_SHARES``, ``INTENTS`` and ``PLACEHOLDERS``
are importable from here as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tunewise.core.artifacts import write_csv, write_text
from tunewise.core.records import TASKS
from tunewise.demo.defects import COPY_KINDS, DEFECT_SHARES, NEW_ROW_KINDS, defect_counts, inject_defects
from tunewise.demo.generator import INTENT_WEIGHTS, INTENTS, Draw, Pool, Row, quota
from tunewise.demo.templates import KNOWLEDGE_BASE, PLACEHOLDERS

__all__ = [
    "COLUMNS",
    "DATA_FILE",
    "DEFECT_SHARES",
    "INTENTS",
    "KB_DIR",
    "MIN_ROWS",
    "PLACEHOLDERS",
    "TEST_FILE",
    "TEST_ROWS",
    "TRUTH_FILE",
    "DemoFiles",
    "generate_demo",
]

DATA_FILE = "support.csv"
TEST_FILE = "support_test.csv"
TRUTH_FILE = "demo_truth.jsonl"
KB_DIR = "kb"
TEST_ROWS = 400
MIN_ROWS = 200
COLUMNS = ("id", "text", "intent", "reply", "channel", "customer_tier")


@dataclass(frozen=True)
class DemoFiles:
    """Where ``generate_demo`` wrote its files, and how many defects of each kind it injected."""

    data: Path
    test: Path
    truth: Path
    knowledge_base: Path
    defect_counts: dict[str, int]
    n_rows: int = 0
    decoy_ids: tuple[str, ...] = field(default_factory=tuple)


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------
def generate_demo(
    out_dir: str | Path, task: str = "classify", seed: int = 0, n_rows: int = 1500, n_test: int = TEST_ROWS
) -> DemoFiles:
    """Write the demo support data set, its clean test set, knowledge base and defect truth.

    The files are the same for both tasks (``classify`` uses ``intent``, ``generate`` uses
    ``reply``); ``task`` is only checked. The same seed writes the same bytes.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if n_rows < MIN_ROWS:
        raise ValueError(f"n_rows={n_rows} is too small for every defect kind; use at least {MIN_ROWS}")
    if n_test < len(INTENTS):
        raise ValueError(f"n_test={n_test} must be at least the number of intents ({len(INTENTS)})")
    out_dir = Path(out_dir)
    draw = Draw(seed)
    counts = defect_counts(n_rows, draw)
    n_added = sum(counts[k] for k in COPY_KINDS + NEW_ROW_KINDS)
    n_base = n_rows - n_added

    # One pool for train and test, so no test text repeats (or near-repeats) a training text.
    pool = Pool(draw)
    base = [pool.row(intent) for intent in quota(n_base, INTENT_WEIGHTS)]
    test = [pool.row(intent) for intent in quota(n_test, INTENT_WEIGHTS)]
    draw.rng.shuffle(base)
    draw.rng.shuffle(test)

    rows = inject_defects(base, counts, pool, draw)
    for prefix, group in (("r", rows), ("t", test)):
        width = max(5, len(str(len(group))))
        for i, row in enumerate(group):
            row.id = f"{prefix}{i + 1:0{width}d}"

    # the project's input data: ingest reads it verbatim (no CSV-injection quotes, "same seed, same bytes")
    data_path = write_csv(out_dir / DATA_FILE, _frame(rows), escape=False)
    test_path = write_csv(out_dir / TEST_FILE, _frame(test), escape=False)
    truth = [_truth_line(r) for r in rows if r.kind is not None]
    truth_path = write_text(out_dir / TRUTH_FILE, "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in truth))
    kb_dir = out_dir / KB_DIR
    for name, text in KNOWLEDGE_BASE.items():
        write_text(kb_dir / name, text)
    return DemoFiles(
        data=data_path,
        test=test_path,
        truth=truth_path,
        knowledge_base=kb_dir,
        defect_counts={k: sum(1 for t in truth if t["defect"] == k) for k in DEFECT_SHARES},
        n_rows=len(rows),
        decoy_ids=tuple(r.id for r in rows if r.decoy),
    )


def _truth_line(row: Row) -> dict:
    line = {"id": row.id, "defect": row.kind, "of": row.of.id if row.of is not None else None, "detail": row.detail}
    line.update(row.extra)
    return line


def _frame(rows: list[Row]) -> pd.DataFrame:
    return pd.DataFrame([(r.id, r.text, r.intent, r.reply, r.channel, r.tier) for r in rows], columns=list(COLUMNS))

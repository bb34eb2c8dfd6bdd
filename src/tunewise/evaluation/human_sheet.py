"""A blind side-by-side sheet for people: which of two answers is better?

``write_sheet`` samples inputs, shows two candidates' answers as A and B in a random order per
row, and writes:

- ``sheet.csv``: item, input, [reference], answer_A, answer_B, preference (A, B or tie; blank
  until rated), comment; for spreadsheets;
- ``sheet.html``: the same rows as a self-contained form (no network, no external script) whose
  "Download ratings" link saves the filled sheet as CSV with the same columns;
- ``key.csv``: which candidate is A and which is B in each item, kept apart so raters stay blind.

``read_sheet`` joins a filled sheet with its key and returns the win rate of one candidate with a
Wilson interval (ties reported separately and left out of the rate).

Cells come from user text (inputs, answers, comments): in both CSV files, and in the CSV the page
downloads, a cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a
leading single quote (:func:`tunewise.core.artifacts.csv_safe`, which ``write_csv`` applies), so a
spreadsheet shows it as text instead of running it as a formula (CSV injection); ``read_sheet``
takes the quote off again.
"""

from __future__ import annotations

import csv
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# csv_safe and csv_safe_frame moved to artifacts (every CSV write escapes); still importable from here
from tunewise.core.artifacts import (
    FORMULA_PREFIXES,
    csv_safe,
    csv_safe_frame,
    csv_unescape,
    read_json,
    write_csv,
    write_json,
    write_text,
)
from tunewise.core.errors import TunewiseError
from tunewise.core.stats import wilson_interval

__all__ = [
    "SHEET_COLUMNS",
    "SheetError",
    "SheetFiles",
    "csv_safe",
    "csv_safe_frame",
    "fold_ratings",
    "read_sheet",
    "write_sheet",
]

SHEET_COLUMNS = ("item", "input", "reference", "answer_A", "answer_B", "preference", "comment")
_PREFERENCES = {"a": "A", "b": "B", "tie": "tie", "=": "tie", "same": "tie", "equal": "tie"}


class SheetError(TunewiseError, ValueError):
    """A sheet or key cannot be read; the message names the file and line."""


@dataclass
class SheetFiles:
    sheet_csv: Path
    sheet_html: Path
    key_csv: Path
    n_items: int


def write_sheet(
    out_dir: str | Path,
    records: pd.DataFrame,
    answers: dict[str, pd.Series],
    *,
    n: int = 50,
    seed: int = 0,
    reference_column: str | None = None,
    title: str = "Which answer is better?",
) -> SheetFiles:
    """Write the blind sheet for the two candidates in ``answers`` (name -> answers indexed by id).

    ``records`` holds ``id`` and ``input`` (and ``reference_column`` when given); only ids both
    candidates answered are sampled, ``n`` of them at most, seeded.
    """
    if len(answers) != 2:
        raise SheetError(f"a side-by-side sheet compares exactly two candidates, got {len(answers)}")
    (name_1, answers_1), (name_2, answers_2) = answers.items()
    answers_1 = answers_1.copy()
    answers_2 = answers_2.copy()
    answers_1.index = answers_1.index.astype(str)
    answers_2.index = answers_2.index.astype(str)
    records = records.assign(id=records["id"].astype(str))
    shared = records[records["id"].isin(set(answers_1.index) & set(answers_2.index))]
    rng = np.random.default_rng(seed)
    chosen = (
        shared.iloc[np.sort(rng.choice(len(shared), size=min(n, len(shared)), replace=False))]
        if len(shared)
        else shared
    )
    first_is_a = rng.random(len(chosen)) < 0.5  # the order of the two answers, drawn per item
    rows, key = [], []
    for i, (record, a_first) in enumerate(zip(chosen.itertuples(index=False), first_is_a), start=1):
        rid = str(record.id)
        name_a, name_b = (name_1, name_2) if a_first else (name_2, name_1)
        pick = {name_1: answers_1, name_2: answers_2}
        rows.append(
            {
                "item": i,
                "input": str(record.input),
                "reference": str(getattr(record, reference_column)) if reference_column else "",
                "answer_A": str(pick[name_a][rid]),
                "answer_B": str(pick[name_b][rid]),
                "preference": "",
                "comment": "",
            }
        )
        key.append({"item": i, "id": rid, "A": name_a, "B": name_b})
    out = Path(out_dir)
    sheet = pd.DataFrame(rows, columns=list(SHEET_COLUMNS))
    sheet_csv = write_csv(out / "sheet.csv", sheet)  # write_csv escapes formula-like cells
    key_csv = write_csv(out / "key.csv", pd.DataFrame(key, columns=["item", "id", "A", "B"]))
    sheet_html = write_text(out / "sheet.html", _html(rows, title, show_reference=bool(reference_column)))
    return SheetFiles(sheet_csv, sheet_html, key_csv, len(rows))


def _html(rows: list[dict[str, Any]], title: str, show_reference: bool) -> str:
    def cell(text: str) -> str:
        return html.escape(text).replace("\n", "<br>")

    items = []
    for row in rows:
        i = row["item"]
        reference = f'<div class="ref"><b>Reference:</b> {cell(row["reference"])}</div>' if show_reference else ""
        choices = "".join(
            f'<label><input type="radio" name="p{i}" value="{v}"> {label}</label> '
            for v, label in (("A", "A is better"), ("B", "B is better"), ("tie", "About the same"))
        )
        items.append(
            f'<section><h3>Item {i}</h3><div class="in"><b>Input:</b> {cell(row["input"])}</div>{reference}'
            f'<div class="pair"><div><h4>A</h4>{cell(row["answer_A"])}</div><div><h4>B</h4>{cell(row["answer_B"])}</div></div>'
            f'<div>{choices}</div><input class="c" type="text" id="c{i}" placeholder="comment (optional)"></section>'
        )
    # The rows travel as JSON inside the page so the export writes exactly the CSV columns;
    # "</" is escaped so no text can close the script element.
    data = json.dumps(rows, ensure_ascii=False).replace("</", "<\\/")
    columns = json.dumps(list(SHEET_COLUMNS))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; max-width: 60em; margin: 2em auto; line-height: 1.4; }}
section {{ border: 1px solid #ccc; border-radius: 6px; padding: 0.8em 1em; margin: 1em 0; }}
.pair {{ display: grid; grid-template-columns: 1fr 1fr; gap: 1em; margin: 0.6em 0; }}
.pair > div {{ background: #f6f6f6; padding: 0.5em; border-radius: 4px; }}
.ref {{ color: #555; margin-top: 0.4em; }}
.c {{ width: 100%; margin-top: 0.4em; }}
#bar {{ position: sticky; top: 0; background: white; padding: 0.5em 0; border-bottom: 1px solid #ccc; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>For each input, pick the better answer. The two answers come from different systems, in a random
order. When done, click <b>Download ratings</b> and send the CSV file back.</p>
<div id="bar"><a id="download" href="#" download="ratings.csv">Download ratings</a> <span id="count"></span></div>
{"".join(items)}
<script>
const ROWS = {data};
const COLUMNS = {columns};
function quote(v) {{
  v = String(v);
  if (/^[=+\\-@\\t\\r]/.test(v)) v = "'" + v;  // a spreadsheet would run it as a formula
  return /[",\\n\\r]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v;
}}
function csv() {{
  const lines = [COLUMNS.join(",")];
  let rated = 0;
  for (const row of ROWS) {{
    const picked = document.querySelector('input[name="p' + row.item + '"]:checked');
    const out = Object.assign({{}}, row, {{preference: picked ? picked.value : "",
                                         comment: document.getElementById("c" + row.item).value}});
    if (picked) rated++;
    lines.push(COLUMNS.map(c => quote(out[c])).join(","));
  }}
  document.getElementById("count").textContent = rated + " of " + ROWS.length + " rated";
  return lines.join("\\r\\n") + "\\r\\n";
}}
function refresh() {{
  const link = document.getElementById("download");
  link.href = "data:text/csv;charset=utf-8," + encodeURIComponent(csv());
}}
document.addEventListener("change", refresh);
document.addEventListener("input", refresh);
refresh();
</script></body></html>
"""


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.exists():
        raise SheetError(f"{path}: file not found")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise SheetError(f"{path}: missing column(s) {missing}; columns: {reader.fieldnames}")
        # undo csv_safe: the sheet and key tunewise wrote (and the page's download) escape formula-like cells
        return [{name: csv_unescape(value) for name, value in row.items()} for row in reader]


def read_sheet(filled: str | Path, key: str | Path, candidate: str, level: float = 0.95) -> dict[str, Any]:
    """Win rate of ``candidate`` in a filled sheet: wins / (wins + losses), Wilson interval.

    A blank preference is an unrated item; anything but A, B or tie (any case) is an error naming
    the line.
    """
    filled, key = Path(filled), Path(key)
    sheet_rows = _read_csv(filled, ("item", "preference"))
    key_rows = {row["item"]: row for row in _read_csv(key, ("item", "A", "B"))}
    names = {row["A"] for row in key_rows.values()} | {row["B"] for row in key_rows.values()}
    if candidate not in names:
        raise SheetError(f"{key}: candidate {candidate!r} is not in this sheet; it compares {sorted(names)}")
    wins = losses = ties = unrated = 0
    opponent = None
    for line, row in enumerate(sheet_rows, start=2):  # line 1 is the header
        raw = (row.get("preference") or "").strip()
        if raw.startswith("'") and raw[1:].startswith(FORMULA_PREFIXES):  # "'=" typed or stripped of its spaces
            raw = raw[1:]
        if not raw:
            unrated += 1
            continue
        choice = _PREFERENCES.get(raw.lower())
        if choice is None:
            raise SheetError(f"{filled}:{line}: preference {raw!r} is not A, B or tie")
        item = str(row["item"]).strip()
        if item not in key_rows:
            raise SheetError(f"{filled}:{line}: item {item!r} is not in {key}")
        mapping = key_rows[item]
        opponent = mapping["B"] if mapping["A"] == candidate else mapping["A"]
        if choice == "tie":
            ties += 1
        elif mapping[choice] == candidate:
            wins += 1
        else:
            losses += 1
    decided = wins + losses
    low, high = wilson_interval(wins, decided, level)
    return {
        "candidate": candidate,
        "opponent": opponent,
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "unrated": unrated,
        "n_rated": decided + ties,
        "win_rate": wins / decided if decided else None,
        "ci95": [low, high] if decided else None,
        "tie_rate": ties / (decided + ties) if decided + ties else None,
        "interval": "wilson, ties left out",
    }


def fold_ratings(evaluate_dir: str | Path, filled: str | Path) -> dict[str, Any]:
    """Read a filled sheet against the evaluation's key and record the win rate beside the metrics.

    Writes ``human_ratings.json`` and adds ``human_ratings`` to ``summary.json`` in ``evaluate_dir``
    (the decision reads it there); returns the ratings.
    """
    evaluate_dir = Path(evaluate_dir)
    summary = read_json(evaluate_dir / "summary.json")
    sheet = summary.get("human_sheet", {})
    key = evaluate_dir / "human" / "key.csv"
    if not sheet.get("candidates") or not key.exists():
        raise SheetError(
            f"{filled}: there is no sheet key at {key}; write the sheet first with `tunewise evaluate --human-sheet`"
        )
    ratings = {**read_sheet(filled, key, sheet["candidates"][0]), "sheet": str(filled)}
    write_json(evaluate_dir / "human_ratings.json", ratings)
    summary["human_ratings"] = ratings
    write_json(evaluate_dir / "summary.json", summary)
    return ratings

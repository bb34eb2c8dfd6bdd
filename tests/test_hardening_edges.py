"""Issue 18, the remaining edges: unseen test labels are rows in the issues table, every CSV tunewise
writes escapes formulas (and reads back the original text), and every command that writes into a
run folder takes its lock. Real files, real BANKING77 rows, a real second process holding the lock."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from test_hardening_data import bank, project, read_summary, rows_of  # noqa: F401  (bank: a fixture)
from test_hardening_runs import HOLDER
from tunewise.cli.main import app
from tunewise.core.artifacts import csv_safe, csv_unescape, read_csv, write_csv
from tunewise.data.issues import ISSUE_KINDS
from tunewise.pipeline.precheck import load_config
from tunewise.pipeline.runner import run_stages

WIDE = {"COLUMNS": "1000"}
# text a spreadsheet would run, text that only looks escaped, and text that must stay as it is
TRICKY = [
    '=HYPERLINK("http://x","y")',
    "+1 card",
    "-2 top up",
    "@SUM(A1)",
    "\tindented",
    "'=already quoted",
    "''+twice",
    "'plain quote",
    "a=b fine",
    "my card = lost",
    "",
]


# ---------------------------------------------------------------------- 1. unseen test labels


def test_unseen_test_labels_are_flagged_rows_in_the_split_issues_table(tmp_path, bank):  # noqa: F811
    assert "unseen_label" in ISSUE_KINDS
    seen = ["card_arrival", "exchange_rate", "top_up_failed"]
    train = rows_of(bank["train"], seen, 10)
    test = pd.concat(
        [
            rows_of(bank["test"], seen, 3),
            rows_of(bank["test"], ["lost_or_stolen_card"], 2),
            rows_of(bank["test"], ["pin_blocked"], 1),
        ],
        ignore_index=True,
    )
    cfg = load_config(project(tmp_path, train, test=test))
    run_stages(cfg, "r", only=["split"])

    split_dir = tmp_path / "runs" / "r" / "split"
    issues = pd.read_parquet(split_dir / "issues.parquet")
    unseen = issues[issues["issue"] == "unseen_label"]
    # one row per test row whose label training lacks, with its file and line; flagged, not dropped
    assert sorted(unseen["line"].tolist()) == [11, 12, 13]  # test.csv: a header, 9 seen rows, then these
    assert set(unseen["action"]) == {"flagged"} and set(unseen["stage"]) == {"split"}
    assert set(unseen["source"]) == {str(tmp_path / "test.csv")}
    details = unseen.sort_values("line")["detail"].tolist()
    assert "test row's label 'lost_or_stolen_card' never occurs in the training split" in details[0]
    assert "'pin_blocked'" in details[2] and "every trained model scores it wrong" in details[2]
    summary = read_summary(tmp_path, "r", "split")
    assert sum(summary["unseen_labels"]["test"].values()) == len(unseen)
    # the rows stay in the test split: the score counts them
    test_split = pd.read_parquet(split_dir / "test.parquet")
    assert len(test_split) == len(test) and set(unseen["id"]) <= set(test_split["id"].astype(str))
    # the CSV for people holds them too
    assert (read_csv(split_dir / "issues.csv")["issue"] == "unseen_label").sum() == 3


# ---------------------------------------------------------------------- 2. CSV formula escaping


def test_csv_formula_escaping_everywhere_and_reading_back_gives_the_original_text(tmp_path, bank):  # noqa: F811
    # the helpers: moved to artifacts, still importable from human_sheet; lossless round trip
    from tunewise.evaluation import human_sheet

    assert human_sheet.csv_safe is csv_safe and human_sheet.csv_safe_frame is not None
    for text in TRICKY:
        assert csv_unescape(csv_safe(text)) == text
    assert csv_safe("'=already quoted") == "''=already quoted" and csv_safe("'plain quote") == "'plain quote"

    # write_csv escapes text cells by default (a spreadsheet never sees a leading = + - @), numbers stay
    path = write_csv(tmp_path / "t.csv", pd.DataFrame({"text": TRICKY, "n": range(len(TRICKY))}))
    with open(path, newline="", encoding="utf-8") as fh:
        cells = [row["text"] for row in csv.DictReader(fh)]
    assert not any(c.startswith(("=", "+", "-", "@", "\t")) for c in cells)
    assert cells[0] == "'" + TRICKY[0] and cells[-4:] == ["'plain quote", "a=b fine", "my card = lost", ""]
    back = read_csv(path)
    assert back["text"].tolist() == TRICKY and back["n"].tolist() == [str(i) for i in range(len(TRICKY))]
    raw = write_csv(tmp_path / "raw.csv", pd.DataFrame({"text": ["=1+1"]}), escape=False)  # the opt-out
    assert raw.read_text().splitlines()[1] == "=1+1"

    # the issues table: an id a user chose (from the file's id column) lands in issues.csv escaped
    seen = ["card_arrival", "exchange_rate", "top_up_failed"]
    train = rows_of(bank["train"], seen, 10)
    test = pd.concat([rows_of(bank["test"], seen, 2), rows_of(bank["test"], ["pin_blocked"], 2)], ignore_index=True)
    test.insert(0, "id", [f"t{i}" for i in range(len(test) - 2)] + ["=cmd|' /C calc'!A0", "-5+3"])
    cfg = load_config(project(tmp_path, train, test=test))
    run_stages(cfg, "r", only=["split"])
    issues_csv = tmp_path / "runs" / "r" / "split" / "issues.csv"
    assert "\n'=cmd|' /C calc'!A0," in issues_csv.read_text() and "\n'-5+3," in issues_csv.read_text()
    assert set(read_csv(issues_csv)["id"]) == {"=cmd|' /C calc'!A0", "-5+3"}

    # suggest's sheet -> add-labels: the rows added are the original texts and labels
    sheet = pd.DataFrame(
        {
            "id": ["p1", "p2", "p3", "p4"],
            "text": ["=2+5 is my balance?", "-card arrived late", "'=odd but real", "where is my card"],
            "suggested_label": ["balance", "card_arrival", "card_arrival", "card_arrival"],
            "confidence": [0.5, 0.4, 0.3, 0.2],
            "uncertainty": [0.9, 0.8, 0.7, 0.6],
            "cluster": [0, 1, 2, 3],
            "label": ["@balance", "card_arrival", "card_arrival", ""],
        }
    )
    filled = write_csv(tmp_path / "to_label.csv", sheet)
    result = CliRunner().invoke(
        app,
        ["add-labels", str(filled), "--config", str(tmp_path / "tunewise.yaml"), "--run-id", "r", "--json"],
        env=WIDE,
    )
    assert result.exit_code == 0, result.output
    added = [json.loads(line) for line in (tmp_path / "added_labels.jsonl").read_text().splitlines()]
    assert [(r["text"], r["label"]) for r in added] == [
        ("=2+5 is my balance?", "@balance"),
        ("-card arrived late", "card_arrival"),
        ("'=odd but real", "card_arrival"),
    ]

    # the human sheet: CSV files escaped, the key and a filled sheet read back as written
    records = pd.DataFrame({"id": ["a", "b", "c"], "input": ["=1+1", "+cash", "@me"]})
    answers = {
        "-lora": pd.Series({"a": "-yes", "b": "=no", "c": "ok"}),
        "few_shot": pd.Series({"a": "@x", "b": "fine", "c": "+1"}),
    }
    files = human_sheet.write_sheet(tmp_path / "human", records, answers, n=3, seed=0)
    text = files.sheet_csv.read_text() + files.key_csv.read_text()
    assert not re.search(r"(^|,)[=+\-@]", text, re.MULTILINE), text
    rows = read_csv(files.sheet_csv)
    key = read_csv(files.key_csv).set_index("item")
    assert sorted(rows["input"]) == sorted(records["input"])
    assert set(key["A"]) | set(key["B"]) == {"-lora", "few_shot"}
    rows["preference"] = ["A", "B", "tie"]
    write_csv(tmp_path / "filled.csv", rows)  # filled and saved as the sheet was written: escaped again
    ratings = human_sheet.read_sheet(tmp_path / "filled.csv", files.key_csv, "-lora")
    assert ratings["wins"] + ratings["losses"] == 2 and ratings["ties"] == 1 and ratings["opponent"] == "few_shot"
    picks = [key.loc[str(i), p] for i, p in zip(rows["item"], rows["preference"]) if p != "tie"]
    assert ratings["wins"] == picks.count("-lora")


# ---------------------------------------------------------------------- 3. a run lock for every command


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    } | {str(p.relative_to(folder)): (-1, 0) for p in folder.rglob("*") if p.is_dir()}


COMMANDS = {
    "add-labels": ["add-labels", "{tmp}/labelled.csv"],
    "suggest": ["suggest", "--pool", "{tmp}/labelled.csv", "--k", "2"],
    "curve": ["curve", "--candidates", "tfidf_lr"],
    "export": ["export", "r"],
    "retrain": ["retrain", "--store", "sqlite:///{tmp}/requests.db", "--new-run-id", "r-new"],
    "evaluate --human-ratings": ["evaluate", "--human-ratings", "{tmp}/labelled.csv"],
    "report --live": ["report", "--live", "postgresql+psycopg://user@localhost/requests"],
}


def test_every_command_that_writes_into_a_run_folder_refuses_while_another_process_holds_its_lock(tmp_path, bank):  # noqa: F811
    config = project(tmp_path, rows_of(bank["train"], ["card_arrival", "exchange_rate"], 8))
    pd.DataFrame({"text": ["where is my card"], "label": ["card_arrival"]}).to_csv(
        tmp_path / "labelled.csv", index=False
    )
    run_dir = tmp_path / "runs" / "r"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "TUNEWISE_PROGRESS": "off"},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for name, args in COMMANDS.items():
            before = _snapshot(tmp_path)
            argv = [a.format(tmp=tmp_path) for a in args]
            argv += ["--config", config] + ([] if name == "export" else ["--run-id", "r"])
            result = CliRunner().invoke(app, argv, env=WIDE)
            output = re.sub(r"\s+", " ", result.output)
            assert result.exit_code != 0, f"{name}: {output}"
            assert f"in use by another tunewise process (pid {holder.pid}" in output, f"{name}: {output}"
            assert _snapshot(tmp_path) == before, f"{name} wrote while the run folder was held"
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    # the holder gone, the same command goes on to its own checks (here: nothing to export yet)
    result = CliRunner().invoke(app, ["export", "r", "--config", config], env=WIDE)
    assert result.exit_code == 1 and "in use" not in result.output and "trained candidates" in result.output

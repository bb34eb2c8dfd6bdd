"""Issue 18, data side: bad input is caught before work starts, on real files and real BANKING77 rows.

Each test is named after the behaviour it holds: a one-label training file, test labels training
never saw, a class of one example, names in the config that name nothing, and files init and
ingest must read as what they are (per-file format, a JSON object, latin-1, binary data).
Throughout: rows read = rows kept + rows in the issues table.
"""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from tunewise.cli.main import app
from tunewise.config.sections import ConfigError
from tunewise.data.ingest import IngestError, detect_encoding, ingest, sniff
from tunewise.pipeline.precheck import load_config
from tunewise.pipeline.runner import StageError, run_stages

WIDE = {"COLUMNS": "1000"}  # rich wraps messages at 80 columns otherwise
# Checks that load the sentence encoder or the LLM tokenizer: off unless a test needs them.
SLOW_OFF = {"off_topic": {"enabled": False}, "label_errors": {"enabled": False}, "too_long": {"enabled": False}}


@pytest.fixture(scope="module")
def bank(banking77) -> dict[str, pd.DataFrame]:
    return {"train": pd.read_csv(banking77 / "train.csv"), "test": pd.read_csv(banking77 / "test.csv")}


def rows_of(frame: pd.DataFrame, categories: list[str], n: int) -> pd.DataFrame:
    """The first ``n`` rows of each category, in category order."""
    return pd.concat([frame[frame["category"] == c].head(n) for c in categories], ignore_index=True)


def project(folder, train: pd.DataFrame, *, test: pd.DataFrame | None = None, extra: dict | None = None) -> str:
    """A project folder with train.csv (test.csv) from BANKING77 rows and a tunewise.yaml."""
    train.to_csv(folder / "train.csv", index=False)
    raw: dict = {"data": {"train": "train.csv"}, "curate": dict(SLOW_OFF), "tracking": "off"}
    if test is not None:
        test.to_csv(folder / "test.csv", index=False)
        raw["data"]["test"] = "test.csv"
    for section, values in (extra or {}).items():
        raw.setdefault(section, {}).update(values)
    (folder / "tunewise.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(folder / "tunewise.yaml")


def read_summary(folder, run: str, stage: str) -> dict:
    return json.loads((folder / "runs" / run / stage / "summary.json").read_text())


# ------------------------------------------------------------------------------ 1. one label


def test_one_class_training_data_is_refused_before_work_starts(tmp_path, bank):
    config = project(tmp_path, rows_of(bank["train"], ["card_arrival"], 12))
    result = CliRunner().invoke(app, ["run", "--config", config, "--run-id", "r"], env=WIDE)
    assert result.exit_code == 1, result.output
    assert (
        f"{tmp_path / 'train.csv'}: column 'category' holds a single label ('card_arrival'); "
        "classification needs at least two (12 rows kept)"
    ) in result.output
    assert "Traceback" not in result.output
    run = tmp_path / "runs" / "r"
    assert not (run / "curate").exists() and not (run / "baseline").exists()
    assert not (run / "ingest" / "_stage.json").exists(), "a refused stage must not be cached as done"


def test_one_class_left_after_curation_is_refused_at_split(tmp_path, bank):
    # a second label whose every row is junk: curation drops them all and one label is left
    train = pd.concat(
        [
            rows_of(bank["train"], ["card_arrival"], 12),
            pd.DataFrame({"text": ["!!!!", "???", "...."], "category": ["junk"] * 3}),
        ],
        ignore_index=True,
    )
    cfg = load_config(project(tmp_path, train))
    with pytest.raises(StageError) as info:
        run_stages(cfg, "r", only=["baseline"])
    message = str(info.value)
    assert "the training split holds a single label ('card_arrival') after curation" in message
    assert "classification needs at least two labels" in message and "curate/issues.csv" in message
    assert not (tmp_path / "runs" / "r" / "baseline").exists()
    # thin_classes names the class curation emptied
    lost = read_summary(tmp_path, "r", "curate")["checks"]["thin_classes"]["balance"]["lost"]
    assert lost == {"junk": 3}


# ------------------------------------------------------------------- 2. test labels not in train


def test_test_labels_never_seen_in_training_are_warned(tmp_path, bank, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
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
    results = run_stages(cfg, "r", only=["split"])

    summary = read_summary(tmp_path, "r", "split")
    assert summary["unseen_labels"]["test"] == {"lost_or_stolen_card": 2, "pin_blocked": 1}
    assert results["split"]["metrics"]["unseen_label_test_rows"] == 3
    examples = summary["unseen_label_examples"]["test"]
    assert [(e["label"], e["line"]) for e in examples] == [  # the rows' lines in test.csv (a header, 9 seen rows)
        ("lost_or_stolen_card", 11),
        ("lost_or_stolen_card", 12),
        ("pin_blocked", 13),
    ]
    assert {e["source"] for e in examples} == {str(tmp_path / "test.csv")}
    assert summary["unseen_labels"]["validation"] == {}
    err = capsys.readouterr().err
    assert "2 test label(s) never seen in training: 'lost_or_stolen_card' (2 rows), 'pin_blocked' (1 row)" in err
    # nothing is lost: every test row read is kept (unseen rows are scored, and counted wrong)
    ingest_summary = read_summary(tmp_path, "r", "ingest")
    assert ingest_summary["test_rows_read"] == ingest_summary["test_rows_kept"] + ingest_summary["test_rows_rejected"]
    assert summary["sizes"]["test"] == len(test)


# ------------------------------------------------------------------------ 3. a class of one


def test_a_class_with_a_single_example_is_kept_and_flagged_as_thin(tmp_path, bank):
    categories = [
        "card_arrival",
        "exchange_rate",
        "top_up_failed",
        "pin_blocked",
        "lost_or_stolen_card",
        "cash_withdrawal_charge",
        "apple_pay_or_google_pay",
        "age_limit",
    ]
    single = "Who won the tennis final at Wimbledon this year?"
    train = pd.concat(
        [rows_of(bank["train"], categories, 6), pd.DataFrame({"text": [single], "category": ["sports_chat"]})],
        ignore_index=True,
    )
    cfg = load_config(project(tmp_path, train, extra={"curate": {"off_topic": {"enabled": True}}}))
    run_stages(cfg, "r", only=["curate"])

    issues = pd.read_csv(tmp_path / "runs" / "r" / "curate" / "issues.csv")
    row = issues[issues["id"].astype(str) == str(len(train) - 1)]
    off = row[row["issue"] == "off_topic"]
    assert len(off) == 1, "the off-topic check must still judge the row (this test needs it doubted)"
    assert off["action"].item() == "flagged"
    assert "kept: the only row of class 'sports_chat'" in off["detail"].item()
    thin = row[row["issue"] == "thin_class"]
    assert len(thin) == 1 and "class 'sports_chat' has 1 rows" in thin["detail"].item()
    cleaned = pd.read_parquet(tmp_path / "runs" / "r" / "curate" / "cleaned.parquet")
    assert single in set(cleaned["input"])
    summary = read_summary(tmp_path, "r", "curate")
    assert summary["checks"]["thin_classes"]["balance"]["thin"]["sports_chat"] == 1
    dropped = int((issues["action"] == "dropped").sum())
    assert summary["rows_out"] == summary["rows_in"] - dropped == len(train) - dropped


def test_a_class_whose_only_rows_are_spam_is_not_dropped(tmp_path, bank):
    from tunewise.config.sections import config_from_dict
    from tunewise.core.records import records_from_texts
    from tunewise.data.checks.topic import OffTopic
    from tunewise.data.curate import CurateContext, Engine, _apply
    from tunewise.data.issues import IssueTable

    base = rows_of(bank["train"], ["card_arrival", "exchange_rate"], 5)
    spam = "Best online casino bonus, 200 free spins for new players"
    texts = base["text"].tolist() + [spam, spam.replace("200", "300")]
    labels = base["category"].tolist() + ["card_arrival", "promo"]
    frame = records_from_texts(texts, labels)
    cfg = config_from_dict({"data": {"train": "train.csv"}})
    check = OffTopic(cfg.curate.off_topic, cfg)
    findings = check.find(frame, CurateContext(cfg, Engine()))
    issues = IssueTable("curate")
    kept, counts = _apply(frame.copy(), findings, check, issues, {})
    assert counts == {
        "found": 2,
        "dropped": 1,
        "flagged": 1,  # card_arrival has other rows; promo has none
        "dropped_spam": 1,
        "flagged_spam": 1,
        "dropped_off_topic": 0,
        "flagged_off_topic": 0,
    }
    assert "promo" in set(kept["label"]) and len(kept) == len(frame) - 1
    assert len(kept) + counts["dropped"] == len(frame)


# ---------------------------------------------------------------- 4. names in the config


def _expect_config_error(tmp_path, bank, extra: dict, needles: list[str], command: str = "run") -> None:
    config = project(tmp_path, rows_of(bank["train"], ["card_arrival", "exchange_rate"], 10), extra=extra)
    result = CliRunner().invoke(app, [command, "--config", config, "--run-id", "r"], env=WIDE)
    assert result.exit_code == 1, result.output
    for needle in needles:
        assert needle in result.output, result.output
    assert not (tmp_path / "runs").exists(), "nothing may run before the config is checked"


def test_unknown_evaluate_baseline_is_refused_before_work_starts(tmp_path, bank):
    _expect_config_error(
        tmp_path,
        bank,
        {"evaluate": {"baseline": "zero_shot_lm"}},
        [
            f"{tmp_path / 'tunewise.yaml'}:",
            "evaluate.baseline: unknown candidate 'zero_shot_lm' (did you mean 'zero_shot_llm'?); known: ",
            "embed_lr, encoder_ft, ensemble",
            "or predictions:FILE",
        ],
    )


def test_evaluate_baseline_not_run_by_the_config_is_refused(tmp_path, bank):
    _expect_config_error(
        tmp_path,
        bank,
        {
            "evaluate": {"baseline": "embed_lr"},
            "baseline": {"candidates": ["majority", "tfidf_lr"]},
            "train": {"candidates": ["encoder_ft"]},
        },
        [
            "evaluate.baseline: 'embed_lr' is not among the candidates this config runs "
            "(majority, tfidf_lr, encoder_ft, ensemble): add it to baseline.candidates"
        ],
    )


def test_missing_predictions_file_of_evaluate_baseline_is_refused(tmp_path, bank):
    _expect_config_error(
        tmp_path,
        bank,
        {"evaluate": {"baseline": "predictions:current.csv"}},
        ["evaluate.baseline: predictions file", "current.csv does not exist"],
        command="ingest",
    )
    # with the file there, the config loads
    (tmp_path / "current.csv").write_text("id,prediction\n0,card_arrival\n")
    assert load_config(tmp_path / "tunewise.yaml").incumbent_predictions_file() == tmp_path / "current.csv"


def test_unknown_candidates_and_check_actions_are_refused_before_work_starts(tmp_path, bank):
    extra = {
        "baseline": {"candidates": ["majority", "tfidf_lrr"]},
        "train": {"candidates": ["encoder_ft", "zero_shot_llm"]},
        "curate": {**SLOW_OFF, "pii": {"action": "relabel"}},
    }
    _expect_config_error(
        tmp_path,
        bank,
        extra,
        [
            "baseline.candidates: unknown candidate 'tfidf_lrr' (did you mean 'tfidf_lr'?)",
            "train.candidates: 'zero_shot_llm' is a baseline classify candidate; fine-tuned classify candidates: "
            "encoder_ft",
            "curate.pii.action: 'relabel' is not valid for this check; choose from redact, drop, flag",
        ],
        command="split",
    )
    text = (tmp_path / "tunewise.yaml").read_text().splitlines()
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "tunewise.yaml")
    lines = {}
    for message in str(info.value).splitlines():  # each names the file and the line of the value
        where, line, rest = message.split(":", 2)
        assert where == str(tmp_path / "tunewise.yaml")
        lines[rest.split(":")[0].strip()] = text[int(line) - 1].strip()
    assert lines == {
        "baseline.candidates": "- tfidf_lrr",
        "train.candidates": "- zero_shot_llm",
        "curate.pii.action": "action: relabel",
    }


# ------------------------------------------------------------------------- 5. files and init


def test_init_detects_each_files_format_separately(tmp_path, bank):
    train = rows_of(bank["train"], ["card_arrival", "exchange_rate"], 10)
    train.to_csv(tmp_path / "train.csv", index=False)
    test = rows_of(bank["test"], ["card_arrival", "exchange_rate"], 4)
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test.to_dict("records")))
    config = tmp_path / "tunewise.yaml"
    result = CliRunner().invoke(
        app, ["init", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.jsonl"), "-o", str(config)], env=WIDE
    )
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(config.read_text())["data"]
    assert (data["format"], data["test_format"], data["encoding"]) == ("csv", "jsonl", "utf-8")
    results = run_stages(load_config(config), "r", only=["ingest"])
    metrics = results["ingest"]["metrics"]
    assert (metrics["file_format"], metrics["test_file_format"]) == ("csv", "jsonl")
    assert metrics["test_rows_read"] == metrics["test_rows_kept"] == 8 and metrics["test_rows_rejected"] == 0


def test_a_json_file_holding_one_object_gets_a_clear_error(tmp_path, bank):
    rows = rows_of(bank["train"], ["card_arrival", "exchange_rate"], 3).to_dict("records")
    path = tmp_path / "tickets.json"
    path.write_text(json.dumps({"version": 2, "data": rows}, indent=2))
    expected = f"{path} holds a JSON object; expected a list of records or JSON Lines"
    with pytest.raises(IngestError) as info:
        ingest(path, task="classify")
    assert str(info.value).startswith(expected) and "under key 'data'" in str(info.value)
    result = CliRunner().invoke(app, ["init", str(path), "-o", str(tmp_path / "tunewise.yaml")], env=WIDE)
    assert result.exit_code == 1 and expected in result.output
    # a pretty-printed single record too; one record per line (JSON Lines) stays fine
    path.write_text(json.dumps(rows[0], indent=2))
    with pytest.raises(IngestError, match="holds a JSON object"):
        ingest(path, task="classify", file_format="json")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(ingest(path, task="classify").frame) == 6


def test_latin1_file_keeps_its_accented_rows(tmp_path, bank):
    train = rows_of(bank["train"], ["card_arrival", "exchange_rate"], 6)
    accented = pd.DataFrame(
        {
            "text": ["Où est ma carte bancaire ?", "Quel est le taux de change de l'euro à la livre ?"],
            "category": ["card_arrival", "exchange_rate"],
        }
    )
    frame = pd.concat([train, accented], ignore_index=True)
    path = tmp_path / "train.csv"
    frame.to_csv(path, index=False, encoding="latin-1")
    assert detect_encoding(path) == "latin-1" and sniff(path)["encoding"] == "latin-1"

    # read as UTF-8 the accented rows are rejected, each with its line: read = kept + issues
    as_utf8 = ingest(path, task="classify")
    assert as_utf8.rows_read == len(as_utf8.frame) + len(as_utf8.issues) == 14 and len(as_utf8.issues) == 2
    assert set(as_utf8.issues.frame()["line"]) == {14, 15}

    config = tmp_path / "tunewise.yaml"
    result = CliRunner().invoke(app, ["init", str(path), "-o", str(config)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "is not UTF-8: it is read as latin-1 (data.encoding)" in result.output
    assert yaml.safe_load(config.read_text())["data"]["encoding"] == "latin-1"
    metrics = run_stages(load_config(config), "r", only=["ingest"])["ingest"]["metrics"]
    assert metrics["rows_read"] == metrics["rows_kept"] == 14 and metrics["rows_rejected"] == 0
    records = pd.read_parquet(tmp_path / "runs" / "r" / "ingest" / "records.parquet")
    assert set(accented["text"]) <= set(records["input"])


def test_unknown_encoding_is_a_config_error(tmp_path, bank):
    config = project(
        tmp_path,
        rows_of(bank["train"], ["card_arrival", "exchange_rate"], 3),
        extra={"data": {"encoding": "latin-9000"}},
    )
    with pytest.raises(ConfigError, match=r"data.encoding: .*unknown text encoding 'latin-9000'"):
        load_config(config)


@pytest.mark.parametrize("strip_nul", [False, True])
def test_random_binary_data_gets_a_clear_message(tmp_path, strip_nul):
    data = random.Random(0).randbytes(20_000)
    if strip_nul:
        data = data.replace(b"\x00", b"")
    path = tmp_path / "tickets.csv"
    path.write_bytes(data)
    expected = f"{path} does not look like a text data file"
    with pytest.raises(IngestError) as info:
        ingest(path, task="classify")
    assert str(info.value).startswith(expected) and "universal-newline" not in str(info.value)
    result = CliRunner().invoke(app, ["init", str(path), "-o", str(tmp_path / "tunewise.yaml")], env=WIDE)
    assert result.exit_code == 1 and expected in result.output and "universal-newline" not in result.output


def test_parquet_under_a_text_name_is_named(tmp_path, bank):
    path = tmp_path / "tickets.csv"
    rows_of(bank["train"], ["card_arrival", "exchange_rate"], 3).to_parquet(path)
    with pytest.raises(IngestError, match="does not look like a text data file .*looks like a Parquet file"):
        ingest(path, task="classify")
